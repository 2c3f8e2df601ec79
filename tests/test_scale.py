"""Scale: a model predicts each image at the FOV diameter it learned, and datasets mix at one scale."""

import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest

import dataset
import errors
import fileio
import fov
import label_files
import model
import report
import run_folder
import scale
import utils
from conftest import ROOT, TRAINED_DEPTH, last_line, require_shared, run_here, train_here


def disc_mask(size, diameter):
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), diameter // 2, 1, -1)
    return mask


def test_fov_diameter_and_scale_factor():
    mask = disc_mask(400, 301)
    assert fov.diameter(mask) == pytest.approx(301, rel=0.01)
    assert scale.disc_factor(mask, 150, 'x.png') == pytest.approx(150 / fov.diameter(mask))
    assert scale.disc_factor(mask, 310, 'x.png') == 1.0  # within 5%: as it is
    assert scale.disc_factor(mask, None, 'x.png') == 1.0  # a model with no recorded scale
    with pytest.raises(
        errors.UserError, match=r'^x.png: the field of view is only 2\d.\d px across'
    ):
        scale.disc_factor(disc_mask(400, 21), 538, 'x.png')
    with pytest.raises(errors.UserError, match=r'^x.png: the FOV shows no disc boundary'):
        scale.disc_factor(np.ones((400, 400), np.uint8), 538, 'x.png')


def test_predict_at_scale_predicts_at_the_model_scale_and_answers_at_native_size():
    rgb = np.zeros((400, 360, 3), np.uint8)
    rgb[..., 2] = np.arange(360) * 255 // 359  # a horizontal ramp survives resizing
    mask = disc_mask(400, 300)[:, :360]
    seen = []

    def predict(image):
        seen.append(image.shape)
        return image[..., -1]  # the ramp itself (or its gray image), in [0, 1]

    probability, decision = scale.predict_at_scale(
        predict, rgb, mask, False, scale.ModelScale(150), 'x.png'
    )
    factor = 150 / fov.diameter(mask)
    assert decision.factor == pytest.approx(factor) and 'circle fit' in decision.rule
    assert seen == [(round(400 * factor), round(360 * factor), 3)]
    assert probability.shape == (400, 360)
    np.testing.assert_allclose(probability, rgb[..., 2] / 255, atol=0.02)
    # Preprocessed models get the gray image computed at the model's scale.
    scale.predict_at_scale(predict, rgb, mask, True, scale.ModelScale(150), 'x.png')
    assert seen[-1] == (round(400 * factor), round(360 * factor), 1)


def stripes_model(native_height, lost_above=None):
    """A fake model of a 200-px-high photo: vertical vessels 4 px wide at native size, whose
    predicted width grows as factor ** CALIBRE_RESPONSE; past `lost_above` it finds only every
    other vessel. Returns (predict, the factors it was called at)."""
    factors = []

    def predict(image):
        factor = image.shape[0] / native_height
        factors.append(factor)
        width = round(4 * factor**scale.CALIBRE_RESPONSE)
        period = 4 * width * (2 if lost_above and factor > lost_above else 1)
        probability = np.zeros(image.shape[:2], np.float32)
        for left in range(width, image.shape[1] - width, period):
            probability[:, left : left + width] = 1
        return probability

    return predict, factors


def stripes_scale():
    """A model scale of a 270 px FOV whose vessel calibre is the fake's at x2.5."""
    return scale.ModelScale(270, scale.main_calibre(stripes_model(200)[0](np.zeros((500, 500)))))


def test_scale_by_vessels_starts_at_the_disc_factor_and_matches_the_model_calibre():
    rgb, mask = np.full((200, 200, 3), 128, np.uint8), disc_mask(200, 180)
    disc = 270 / fov.diameter(mask)  # about 1.5
    model_scale = stripes_scale()
    predict, factors = stripes_model(200)
    _, by_disc = scale.predict_at_scale(predict, rgb, mask, False, model_scale, 'x.png')
    assert by_disc.factor == pytest.approx(disc) and factors == [pytest.approx(disc, rel=0.01)]
    factors.clear()
    _, decision = scale.predict_at_scale(
        predict, rgb, mask, False, model_scale, 'x.png', by_vessels=True
    )
    assert factors[0] == pytest.approx(disc, rel=0.01)
    assert decision.factor == pytest.approx(2.5, rel=0.1)  # the model calibre's factor
    assert decision.rule.startswith('main-vessel calibre (from FOV diameter 18')
    # A diameter the user gives is kept as it is.
    _, given = scale.predict_at_scale(predict, rgb, mask, False, model_scale, 'x.png', 135, True)
    assert given.factor == pytest.approx(2.0) and '--photo_fov_diameter' in given.rule


def test_scale_by_vessels_keeps_the_factor_before_a_step_that_loses_vessels():
    rgb, mask = np.full((200, 200, 3), 128, np.uint8), disc_mask(200, 180)
    model_scale = stripes_scale()
    predict, factors = stripes_model(200, lost_above=2.0)
    probability, decision = scale.predict_at_scale(
        predict, rgb, mask, False, model_scale, 'x.png', by_vessels=True
    )
    assert len(factors) == 2 and factors[1] > 2.0  # it tried the calibre's factor, lost vessels
    assert decision.factor == pytest.approx(270 / fov.diameter(mask))
    assert re.search(r'stopped where a resize to x2\.\d\d lost vessels\)$', decision.rule)
    # The probabilities are those predicted at the kept factor, back at native size.
    kept = predict(np.zeros((*utils.scaled_size((200, 200), decision.factor), 1)))
    np.testing.assert_array_equal(probability, utils.resize(kept, (200, 200)))


def test_load_examples_brings_images_labels_and_masks_to_one_fov_diameter(synthetic):
    samples = label_files.parse_label_file(synthetic['training'])
    native = dataset.load_examples(samples)
    target = 2 * fov.diameter(native[0].mask)
    examples = dataset.load_examples(samples, preprocess=True, fov_diameter=target)
    for before, after in zip(native, examples, strict=True):
        assert fov.diameter(after.mask) == pytest.approx(target, rel=0.02)
        assert after.image.shape[2] == 1 and after.image.shape[:2] == after.label.shape
        assert after.label.mean() == pytest.approx(before.label.mean(), rel=0.1)  # vessel share


def test_mixed_label_files_weigh_each_image_equally(tmp_path):
    """Three bright images in one label file, one dark in another: every epoch draws each image
    once, so the stream holds exactly three bright patches for each dark one."""
    files = []
    for name, count, value in (('bright', 3, 200), ('dark', 1, 60)):
        for folder in ('images', 'labels', 'masks'):
            os.makedirs(tmp_path / name / folder)
        for index in range(count):
            fileio.write_png(
                str(tmp_path / name / 'images' / f'{index}.png'),
                np.full((64, 64, 3), value, np.uint8),
            )
            fileio.write_png(
                str(tmp_path / name / 'labels' / f'{index}.png'), np.zeros((64, 64), np.uint8)
            )
            fileio.write_png(
                str(tmp_path / name / 'masks' / f'{index}.png'), np.full((64, 64), 255, np.uint8)
            )
        files.append(tmp_path / name / 'list.txt')
        files[-1].write_text(
            'images,labels,masks\n' + ''.join(f'{i}.png,{i}.png,{i}.png\n' for i in range(count))
        )
    examples = dataset.load_label_files(f'{files[0]},{files[1]}')
    assert len(examples) == 4
    stream = dataset.training_dataset(examples, batch_size=4, patch_size=16, seed=3)
    brightest = np.concatenate(
        [images.numpy().max(axis=(1, 2, 3)) for images, _, _ in stream.take(10)]
    )
    assert np.sum(brightest > 0.5) == 30 and np.sum(brightest < 0.5) == 10
    with pytest.raises(
        errors.UserError, match=f'^--label_file_path={tmp_path}/nope.txt: file not found$'
    ):
        dataset.load_label_files(f'{files[0]},{tmp_path}/nope.txt')


def test_training_records_the_scale_it_learned(trained, synthetic):
    samples = label_files.parse_label_file(synthetic['training'])
    masks = [utils.read_binary(sample.mask) for sample in samples]
    expected = np.median([np.sqrt(4 * mask.sum() / np.pi) for mask in masks])  # whole discs
    recorded = run_folder.load_scale(trained)
    assert recorded.fov_diameter == pytest.approx(expected, rel=0.01)
    # The main vessels the model predicts are about as wide as the labels' main vessels.
    labelled = np.median(
        [scale.main_calibre(utils.read_binary(s.label)) or np.nan for s in samples]
    )
    assert recorded.vessel_calibre == pytest.approx(labelled, rel=0.5)


def test_a_rerun_of_a_finished_run_keeps_its_vessel_calibre(trained, synthetic, tmp_path):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    train_here(logdir, synthetic['training'], max_iters=200, save_interval=100, depth=TRAINED_DEPTH)
    assert run_folder.load_scale(logdir) == run_folder.load_scale(trained)
    assert run_folder.load_scale(logdir).vessel_calibre is not None


def vessel_share(directory, name):
    mask = utils.read_binary(os.path.join(directory, f'{name}_mask.png'))
    return mask, mask.mean()


def test_predict_brings_a_2x_photo_to_the_model_scale(trained, synthetic, tmp_path):
    """The same retina photographed at twice the resolution gets the same vessel map (at its own
    size); predicted as it is, the net, which knows only thin vessels, misses most of it."""
    image = utils.read_image(label_files.parse_label_file(synthetic['test'])[0].image)
    photos = tmp_path / 'photos'
    photos.mkdir()
    fileio.write_png(str(photos / 'small.png'), image)
    fileio.write_png(
        str(photos / 'large.png'),
        cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
    )
    shares = {}
    for how in ('rescale', 'norescale', 'tiles'):
        flags = {
            'rescale': [],
            'norescale': ['--norescale'],
            'tiles': ['--tile_size=32', '--tile_overlap=128'],
        }[how]
        result = run_here(
            'evaluate.py',
            f'--logdir={trained}',
            f'--predict={photos}',
            f'--predict_dir={tmp_path / how}',
            *flags,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        shares[how] = {name: vessel_share(tmp_path / how, name) for name in ('small', 'large')}
    small, large = shares['rescale']['small'], shares['rescale']['large']
    assert large[0].shape == (192, 192) and small[0].shape == (96, 96)
    assert large[1] == pytest.approx(small[1], rel=0.25)
    assert abs(shares['norescale']['large'][1] - small[1]) > 3 * abs(large[1] - small[1])
    for name in ('small', 'large'):  # tiles at the model's scale: the same maps
        np.testing.assert_array_equal(shares['tiles'][name][0], shares['rescale'][name][0])


def test_a_run_without_scale_json_predicts_images_as_they_are(trained, tmp_path):
    old = tmp_path / 'old'
    os.makedirs(old)
    for name in (run_folder.ARCHITECTURE_FILE, run_folder.WEIGHTS_FILE):
        os.link(os.path.join(trained, name), old / name)
    photo = tmp_path / 'eye.png'
    image = np.zeros((192, 192, 3), np.uint8)
    cv2.circle(image, (96, 96), 90, (150, 60, 30), -1)
    cv2.line(image, (20, 96), (170, 90), (60, 20, 10), 9)
    fileio.write_png(str(photo), image)
    outputs = {}
    for logdir, flags in ((old, []), (trained, ['--norescale'])):
        out = tmp_path / f'out{len(outputs)}'
        result = run_here(
            'evaluate.py',
            f'--logdir={logdir}',
            f'--predict={photo}',
            f'--predict_dir={out}',
            *flags,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert (f'{logdir}: no readable scale.json' in result.stderr) == (logdir == old)
        outputs[len(outputs)] = utils.read_image(str(out / 'eye_prob.png'), gray=True)
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_tiny_field_of_view_is_named_and_the_other_photos_are_written(trained, tmp_path):
    photos = tmp_path / 'photos'
    photos.mkdir()
    speck = np.zeros((300, 300, 3), np.uint8)
    cv2.circle(speck, (150, 150), 8, (200, 100, 50), -1)
    fileio.write_png(str(photos / 'speck.png'), speck)
    fine = np.zeros((120, 120, 3), np.uint8)
    cv2.circle(fine, (60, 60), 55, (200, 100, 50), -1)
    fileio.write_png(str(photos / 'fine.png'), fine)
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--predict={photos}',
        f'--predict_dir={tmp_path / "out"}',
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert lines[0].startswith(f'error: {photos / "speck.png"}: the field of view is only 1')
    assert last_line(result.stderr) == 'error: 1 of 2 images could not be predicted (named above)'
    assert sorted(os.listdir(tmp_path / 'out')) == [
        'features.csv',
        'fine_mask.png',
        'fine_overlay.png',
        'fine_prob.png',
        'manifest.csv',
        'report.html',
    ]


def test_a_corrupt_scale_file_is_named(trained, tmp_path):
    broken = tmp_path / 'broken'
    os.makedirs(broken)
    for name in (run_folder.ARCHITECTURE_FILE, run_folder.WEIGHTS_FILE):
        os.link(os.path.join(trained, name), broken / name)
    (broken / run_folder.SCALE_FILE).write_text(json.dumps({'fov_diameter': -3}))
    result = run_here('evaluate.py', f'--logdir={broken}', f'--predict={tmp_path}/none*')
    assert result.returncode == 2
    assert last_line(result.stderr) == (
        f'error: {broken / run_folder.SCALE_FILE}: "fov_diameter" must be '
        'a FOV diameter from 32 to 10000 pixels, found -3'
    )


def test_a_tiny_spot_in_a_huge_frame_is_refused_before_any_allocation():
    mask = np.zeros((3000, 4000), np.uint8)
    cv2.circle(mask, (2000, 1500), 22, 1, -1)  # a 44 px FOV: the model's 919 px is 21x that
    with pytest.raises(
        errors.UserError,
        match=r"spot.png: bringing it to the model's scale "
        r"\(x2\d.\d\d\) would make a \d+x\d+ image \(over 100 megapixels\)",
    ):
        scale.disc_factor(mask, 919, 'spot.png')
    assert scale.disc_factor(mask, 44, 'spot.png') == 1.0


@pytest.fixture(scope='module')
def drive_chase_predict():
    import inference

    unet, architecture, _, _ = inference.load_model(os.path.join(ROOT, 'models', 'drive_chase'))
    traced = inference.make_predictor(unet, model.in_channels(architecture['preprocess']))
    return (
        lambda image: inference.predict_image(traced, image),
        run_folder.load_scale(os.path.join(ROOT, 'models', 'drive_chase')),
    )


def test_a_crop_without_its_disc_takes_its_scale_from_the_vessels(drive_chase_predict):
    """The central 70% of a DRIVE photo (its FOV cut on every side, no disc left to fit, the main
    vessels in view), as it is and enlarged 1.5x: the calibre rule brings both near the scale
    the disc rule gives the whole photo, so the same pixels get nearly the same vessel share."""
    predict, model_scale = drive_chase_predict
    path = os.path.join(require_shared('DRIVE'), 'test', 'images', '01_test.tif')
    rgb = utils.read_image(path)
    whole, by_disc = scale.predict_at_scale(predict, rgb, fov.derive(rgb), True, model_scale, path)
    assert 'circle fit' in by_disc.rule
    height, width = round(0.7 * rgb.shape[0]), round(0.7 * rgb.shape[1])
    top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    box = np.s_[top : top + height, left : left + width]
    reference = (whole[box] >= 0.5).mean()
    for zoom in (1.0, 1.5):
        crop = utils.resize(rgb[box], utils.scaled_size((height, width), zoom))
        inside = fov.derive(crop)
        assert fov.sides_touched(inside) == fov.SIDES and fov.diameter(inside) is None
        probability, decision = scale.predict_at_scale(
            predict, crop, inside, True, model_scale, path
        )
        assert 'calibre' in decision.rule
        assert decision.factor * zoom == pytest.approx(by_disc.factor, rel=0.2), zoom
        share = (utils.resize(probability, (height, width)) >= 0.5).mean()
        assert share == pytest.approx(reference, rel=0.1), zoom


def test_the_tensorflow_twin_computes_the_same_sizes_and_resizes():
    """scale_tf (the SavedModel's serve_at_scale) against scale.py and utils.py on the same
    inputs: the same sizes for every diameter, the same pixels (cv2's fixed-point weights aside)
    shrinking and growing by whole and fractional factors."""
    import tensorflow as tf

    import scale_tf

    shape, target = (584, 565), 919.0
    for diameter in np.float32(np.linspace(300.0, 1500.0, 241)):
        expected = utils.scaled_size(shape, scale.factor_for(float(diameter), target, shape, 'x'))
        factor = scale_tf.factor(target, tf.constant(diameter))
        assert tuple(scale_tf.scaled_size(tf.constant(shape), factor).numpy()) == expected
    assert float(scale_tf.factor(target, tf.constant(np.float32(target * 1.04)))) == 1.0
    image = np.random.default_rng(0).random((60, 70, 3)).astype(np.float32)
    for size in ((30, 35), (20, 35), (47, 53), (90, 105), (83, 97), (121, 141)):
        twin = scale_tf.resize(tf.constant(image), tf.constant(size)).numpy()
        np.testing.assert_allclose(twin, utils.resize(image, size), atol=1e-5)


def test_scale_by_vessels_on_real_photos(drive_chase_predict):
    """drive_chase with --scale_by=vessels: an HRF photo (whose vessels are thinner at the disc's
    scale than the model learned them) is enlarged well past the disc's factor; STARE's blurred
    im0004, which loses vessels when enlarged, keeps the disc's factor."""
    predict, model_scale = drive_chase_predict
    for name, folder, enlarged in (('03_h.jpg', 'HRF', True), ('im0004.ppm', 'STARE', False)):
        subfolder = 'images' if folder == 'HRF' else 'stare-images'
        path = os.path.join(require_shared(folder), subfolder, name)
        rgb = utils.read_image(path)
        inside = fov.derive(rgb)
        disc = scale.decide(inside, model_scale, path)
        _, decision = scale.predict_at_scale(
            predict, rgb, inside, True, model_scale, path, by_vessels=True
        )
        if enlarged:
            assert decision.factor > 1.3 * disc.factor, name
            assert decision.rule.startswith('main-vessel calibre (from FOV diameter'), name
        else:
            assert decision.factor == disc.factor, name
            assert re.search(r'a resize to x\d\.\d\d lost vessels\)$', decision.rule), name


def tree_model(native_side, joined_at=2.0, flood_above=None):
    """A fake model of a frame-filling photo: horizontal vessels every 30 px, 3 px wide at native
    size and predicted as wide as 3 * factor ** CALIBRE_RESPONSE, joined by one vertical vessel;
    each is cut by gaps that close as the factor nears `joined_at` (brought to its scale, the
    tree joins up); past `flood_above` it also marks blobs of texture everywhere. Returns
    (predict, the sizes it was asked to predict)."""
    sizes = []

    def predict(image):
        factor = image.shape[0] / native_side
        sizes.append(image.shape[:2])
        height, width = image.shape[:2]
        probability = np.zeros((height, width), np.float32)
        line = max(1, round(3 * factor**scale.CALIBRE_RESPONSE))
        tops = range(round(15 * factor), height - line, round(30 * factor))
        whole = (factor - 1) / (joined_at - 1) * len(tops)  # how many reach the vertical one
        for index, top in enumerate(tops):
            probability[top : top + line] = 1
            if index >= whole:  # cut off from the vertical vessel
                probability[top : top + line, width // 2 - 4 * line : width // 2 + 4 * line] = 0
        probability[:, width // 2 : width // 2 + line] = 1
        if flood_above and factor > flood_above:
            probability[(np.arange(height)[:, None] // 7 + np.arange(width) // 7) % 3 == 0] = 1
        return probability

    return predict, sizes


def test_a_frame_filling_photo_is_brought_to_the_scale_of_its_vessels():
    """No disc to fit: the calibre rule steps (at most MAX_STEP a pass) until the vessels are
    as wide as the model's, each step joining the vessel tree up."""
    rgb, mask = np.full((300, 300, 3), 128, np.uint8), np.ones((300, 300), np.uint8)
    predict, _ = tree_model(300)
    model_scale = scale.ModelScale(919, scale.main_calibre(predict(np.zeros((600, 600))) >= 0.5))
    predict, sizes = tree_model(300)
    _, decision = scale.predict_at_scale(predict, rgb, mask, False, model_scale, 'x.png')
    assert decision.factor == pytest.approx(2.0, rel=0.15), decision
    assert [size[0] / 300 for size in sizes][:2] == [1.0, pytest.approx(scale.MAX_STEP, abs=0.01)]
    assert decision.doubt is None


def test_an_enlargement_that_floods_the_map_is_refused_and_flagged():
    rgb, mask = np.full((300, 300, 3), 128, np.uint8), np.ones((300, 300), np.uint8)
    predict, _ = tree_model(300)
    model_scale = scale.ModelScale(919, scale.main_calibre(predict(np.zeros((1500, 1500))) >= 0.5))
    predict, sizes = tree_model(300, joined_at=5.0, flood_above=1.2)
    probability, decision = scale.predict_at_scale(predict, rgb, mask, False, model_scale, 'x.png')
    assert decision.factor == 1.0 and len(sizes) == 2  # tried x1.5, which flooded
    assert re.search(
        r'stopped where a resize to x1\.50 (marked \d\.\dx the vessels|did not join)', decision.rule
    )
    np.testing.assert_array_equal(probability, predict(np.zeros((300, 300))))
    flags = report.photo_flags(mask, {'vessel_density': 0.4}, decision)
    assert any(flag.startswith("scale in doubt: the vessels' calibre asks for x") for flag in flags)
    assert '40% of the FOV marked as vessel, far more than retinas show' in '; '.join(flags)


def test_the_calibre_rule_predicts_within_its_pixel_bounds_whatever_the_photo():
    """A 1600x1000 frame-filling photo whose vessels ask for a 4x enlargement (25.6 megapixels,
    about 12 GB, before the bound): no pass predicts more than CALIBRE_PIXELS, all passes
    together no more than CALIBRE_BUDGET."""
    rgb, mask = np.zeros((1000, 1600, 3), np.uint8), np.ones((1000, 1600), np.uint8)
    predict, _ = tree_model(1000, joined_at=5.0)
    model_scale = scale.ModelScale(919, scale.main_calibre(predict(np.zeros((4000, 40))) >= 0.5))
    predict, sizes = tree_model(1000, joined_at=5.0)
    _, decision = scale.predict_at_scale(predict, rgb, mask, False, model_scale, 'x.png')
    pixels = [height * width for height, width in sizes]
    assert max(pixels) <= scale.CALIBRE_PIXELS and sum(pixels) <= scale.CALIBRE_BUDGET
    assert 'a bound of the calibre rule' in decision.doubt
