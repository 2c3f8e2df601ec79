"""evaluate.py as users run it: the original's printout, FOV metrics, overlays, the second observer
on real DRIVE, prediction on new images, the SavedModel export, bad input."""

import csv
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

import dataset
import errors
import evaluate
import features
import fileio
import fov
import label_files
import metrics
import model
import photos
import run_folder
import utils
from conftest import SHARED_DATA, evaluation_dir, last_line, run_here, run_script, tmpfs


def fov_pixels(label_file):
    masks = glob.glob(os.path.join(os.path.dirname(label_file), 'test', 'masks', '*.png'))
    return sum(int((cv2.imread(path, cv2.IMREAD_GRAYSCALE) > 0).sum()) for path in masks)


def test_evaluate_prints_the_original_lines_and_writes_everything(trained, synthetic):
    result = run_script(
        'evaluate.py',
        f'--logdir={trained}',
        f'--label_file_path={synthetic["test"]}',
        '--batch_size=1',
        '--preprocess=True',
        '--base_channels=8',
        '--visulize=True',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == 'confuse mat:' and lines[3].startswith('IoU:  ')
    assert lines[4].startswith('mIoU:  ')
    out = evaluation_dir(trained, 'SYNTH-test_step200_threshold0.5')
    assert f'metrics: {out}/metrics.json' in result.stdout
    written = json.load(open(os.path.join(out, 'metrics.json')))
    assert written['checkpoint'] == 'step200' and written['label_file'] == synthetic['test']
    assert np.sum(written['confusion_matrix']) == fov_pixels(synthetic['test'])
    assert [row['image'] for row in written['per_image']] == ['05_test', '06_test']
    assert written['scores']['F1'] > 0.5 and written['scores']['AUC_ROC'] > 0.9
    assert float(lines[3].split()[1]) == pytest.approx(written['scores']['IoU'])
    csv_lines = open(os.path.join(out, 'metrics.csv')).read().splitlines()
    assert csv_lines[0].startswith('image,F1,Acc,Se,Sp') and csv_lines[-1].startswith('all,')
    overlays = sorted(os.listdir(os.path.join(out, 'overlays')))
    assert overlays == [
        '05_test.png',
        '05_test_prob.png',
        '06_test.png',
        '06_test_prob.png',
        'pr.png',
        'roc.png',
    ]
    stacked = utils.read_image(os.path.join(out, 'overlays', '05_test.png'))
    assert stacked.shape == (192, 96, 3)  # input above, coloured comparison below
    events = glob.glob(os.path.join(out, 'events.out.tfevents.*'))
    assert len(events) == 1


def test_correctly_spelt_alias_and_architecture_conflicts(trained, synthetic, tmp_path):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    result = run_here(
        'evaluate.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["test"]}',
        '--visualize',
        '--transpose_conv=True',
    )
    assert result.returncode == 2
    assert last_line(result.stderr) == (
        f'error: --logdir={logdir} holds a model of another '
        'architecture: --transpose_conv=True (trained with False)'
    )
    architecture = json.load(open(logdir / 'architecture.json'))
    (logdir / 'architecture.json').write_text(json.dumps({**architecture, 'base_channels': 16}))
    result = run_here('evaluate.py', f'--logdir={logdir}', f'--label_file_path={synthetic["test"]}')
    assert result.returncode == 2
    assert last_line(result.stderr).startswith(
        f'error: {logdir}/model.weights.h5: does not fit the architecture in architecture.json'
    )
    result = run_here(
        'evaluate.py', f'--logdir={tmp_path}', f'--label_file_path={synthetic["test"]}'
    )
    assert result.returncode == 2 and 'no trained model' in last_line(result.stderr)


def test_threshold_calibrated_on_training_images_with_flips(trained, synthetic, tmp_path):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    result = run_here(
        'evaluate.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["test"]}',
        f'--calibrate_on={synthetic["training"]}',
        '--tta',
        '--nofeatures',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.load(
        open(
            os.path.join(
                evaluation_dir(logdir, 'SYNTH-test_step200_calibrated-on-SYNTH-training_tta'),
                'metrics.json',
            )
        )
    )
    assert written['calibrated_on'] == synthetic['training'] and written['tta'] is True
    # Recomputed here: flip-averaged probabilities of the saved model, the F1 of every threshold
    # on a 0.005 grid over the training images, and the test confusion matrix.
    unet = model.build_from_architecture(run_folder.load_architecture(str(logdir)))
    unet.load_weights(str(logdir / run_folder.WEIGHTS_FILE))

    def pixels(label_file):
        examples = dataset.load_label_files(label_file, preprocess=True)
        images = np.stack([e.image for e in examples]).astype(np.float32) / 255
        flipped_back = [
            np.flip(model.predict_probabilities(unet, np.flip(images, axes))[..., 1].numpy(), axes)
            for axes in ((), (1,), (2,), (1, 2))
        ]
        fov = np.stack([e.mask for e in examples]).astype(bool)
        return np.stack([e.label for e in examples])[fov], np.mean(flipped_back, axis=0)[fov]

    labels, probabilities = pixels(synthetic['training'])

    def f1(threshold):
        return metrics.scores_from_confusion(
            metrics.confusion_matrix(labels, probabilities >= threshold)
        )['F1']

    chosen = written['threshold']
    assert f1(chosen) >= max(f1(t) for t in np.arange(0.005, 1, 0.005)) - 1e-4
    printed = re.search(r'threshold ([\d.]+), the best F1 \(([\d.]+)\)', result.stdout).groups()
    assert float(printed[0]) == pytest.approx(chosen, abs=1e-4)
    assert float(printed[1]) == pytest.approx(f1(chosen), abs=1e-3)  # batched vs one by one
    labels, probabilities = pixels(synthetic['test'])
    expected = metrics.confusion_matrix(labels, probabilities >= chosen)
    assert np.abs(np.array(written['confusion_matrix']) - expected).max() <= 3  # float rounding
    result = run_here(
        'evaluate.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["test"]}',
        f'--calibrate_on={synthetic["training"]}',
        '--threshold=0.3',
    )
    assert result.returncode == 2
    assert last_line(result.stderr) == 'error: give --threshold or --calibrate_on, not both'


def test_real_drive_test_set_and_second_observer(trained, drive):
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--label_file_path={drive["test"]}',
        '--visulize=True',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = evaluation_dir(trained, 'DRIVE-test_step200_threshold0.5')
    outputs = set(os.listdir(os.path.join(out, 'overlays')))
    assert {f'{n:02d}_test{kind}.png' for n in range(1, 21) for kind in ('', '_prob')} <= outputs
    assert {'roc.png', 'pr.png'} <= outputs
    assert utils.read_image(os.path.join(out, 'overlays', '01_test.png')).shape == (1168, 565, 3)

    # DRIVE's human baseline computed here straight from the shipped GIFs, inside the FOV.
    def read(folder, name):
        path = os.path.join(SHARED_DATA, 'DRIVE', 'test', folder, f'{name}.gif')
        return cv2.imread(path, cv2.IMREAD_GRAYSCALE) >= 128

    matrix = np.zeros((2, 2), np.int64)
    for number in range(1, 21):
        fov = read('mask', f'{number:02d}_test_mask')
        first = read('1st_manual', f'{number:02d}_manual1')[fov]
        second = read('2nd_manual', f'{number:02d}_manual2')[fov]
        matrix += np.array(
            [
                [np.sum(~first & ~second), np.sum(~first & second)],
                [np.sum(first & ~second), np.sum(first & second)],
            ]
        )
    human_f1 = 2 * matrix[1, 1] / (2 * matrix[1, 1] + matrix[0, 1] + matrix[1, 0])
    assert 0.77 < human_f1 < 0.81  # DRIVE's known second-observer F1, about 0.79
    observer = next(line for line in result.stdout.splitlines() if 'second observer' in line)
    assert f'F1 {human_f1:.4f}' in observer
    written = json.load(open(os.path.join(out, 'metrics.json')))
    assert written['images'] == 20 and np.sum(written['confusion_matrix']) == fov_pixels(
        drive['test']
    )


def test_predict_new_images_of_any_format(trained, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'photos'
    folder.mkdir()
    image = np.zeros((70, 90, 3), np.uint8)
    cv2.circle(image, (45, 35), 30, (40, 90, 200), -1)
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(folder / 'a.jpg'), image)
    cv2.imwrite(str(folder / 'b.tif'), image[:50])
    cv2.imwrite(str(folder / 'c.webp'), image)
    (folder / 'notes.txt').write_text('not an image: skipped in folder mode')
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--predict={folder}',
        f'--predict_dir={tmp_path / "out"}',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / 'out')) == [
        f'{name}_{kind}.png' for name in 'abc' for kind in ('mask', 'overlay', 'prob')
    ] + ['features.csv', 'manifest.csv', 'report.html']
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'features.csv')))
    assert list(rows[0])[: len(features.COLUMNS)] == list(features.COLUMNS)
    assert [(row['image'], row['source']) for row in rows] == [
        ('a.jpg', 'predicted'),
        ('b.tif', 'predicted'),
        ('c.webp', 'predicted'),
    ]
    assert utils.read_image(str(tmp_path / 'out' / 'b_prob.png'), gray=True).shape == (50, 90)
    mask = utils.read_binary(str(tmp_path / 'out' / 'a_mask.png')).astype(bool)
    assert not mask[0, 0] and mask.shape == (70, 90)  # outside the derived FOV: never vessel
    # The overlay: the photo as read, pure green where the mask says vessel.
    overlay = utils.read_image(str(tmp_path / 'out' / 'a_overlay.png'))
    assert mask.any() and (overlay[mask] == (0, 255, 0)).all()
    np.testing.assert_array_equal(overlay[~mask], utils.read_image(str(folder / 'a.jpg'))[~mask])
    result = run_here('evaluate.py', f'--logdir={trained}', f'--predict={tmp_path}/*.nope')
    assert result.returncode == 2 and 'matches no files' in last_line(result.stderr)
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--predict={folder}/a.jpg',
        '--threshold=0',
        f'--predict_dir={tmp_path / "zero"}',
        '--nofeatures',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / 'zero')) == [
        'a_mask.png',
        'a_overlay.png',
        'a_prob.png',
        'manifest.csv',  # written without features too
    ]
    np.testing.assert_array_equal(  # every FOV pixel is vessel at threshold 0, and no other
        utils.read_binary(str(tmp_path / 'zero' / 'a_mask.png')),
        fov.derive(utils.read_image(str(folder / 'a.jpg'))),
    )


def test_the_evaluation_folder_names_what_was_evaluated():
    assert evaluate.evaluation_name('data/DRIVE/test.txt', 'step4000', 0.5, None, False) == (
        'DRIVE-test_step4000_threshold0.5'
    )
    assert (
        evaluate.evaluation_name(
            'data/DRIVE/test.txt',
            'best-step3500',
            0.5,
            'data/DRIVE/training.txt',
            True,
            False,
            (256, 128),
        )
        == 'DRIVE-test_best-step3500_calibrated-on-DRIVE-training_tta_norescale_tiles256-128'
    )


def test_exported_savedmodel_matches_keras_in_a_fresh_process(trained, tmp_path, drive):
    export_dir = tmp_path / 'export'
    os.mkdir(tmp_path / 'photos')
    photo = str(tmp_path / 'photos' / 'photo.png')
    cv2.imwrite(photo, cv2.imread(drive_image(drive, 'images', '01_test.png')))
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--predict={photo}',
        f'--predict_dir={tmp_path / "out"}',
        f'--export_dir={export_dir}',
        '--nofeatures',
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.exists(export_dir / 'saved_model.pb')
    path = drive_image(drive, 'images_pre', '01_test.png')
    mask = utils.read_binary(drive_image(drive, 'masks', '01_test.png'))
    diameter = fov.diameter(mask)
    script = (
        'import sys, numpy as np, tensorflow as tf, cv2\n'
        'image = cv2.imread(sys.argv[2], cv2.IMREAD_GRAYSCALE)[None, ..., None] / 255.0\n'
        'image = tf.constant(image, tf.float32)\n'
        'loaded = tf.saved_model.load(sys.argv[1])\n'
        'np.save(sys.argv[3], loaded.serve(image).numpy())\n'
        'diameters = tf.constant([float(sys.argv[4])])\n'
        'np.save(sys.argv[5], loaded.serve_at_scale(image, diameters).numpy())\n'
    )
    subprocess.run(
        [
            sys.executable,
            '-c',
            script,
            str(export_dir),
            path,
            str(tmp_path / 'p.npy'),
            str(diameter),
            str(tmp_path / 'scaled.npy'),
        ],
        check=True,
        env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''},
    )
    served = np.load(tmp_path / 'p.npy')
    unet, _ = load_trained(trained)
    image = utils.read_image(path, gray=True).astype(np.float32) / 255.0
    expected = model.predict_probabilities(unet, image[None, ..., None]).numpy()[..., 1]
    assert served.shape == (1, 584, 565)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    # At scale: DRIVE's 538 px FOV brought to the synthetic model's, predicted, and sized back.
    factor = run_folder.load_scale(trained).fov_diameter / diameter
    small = cv2.resize(
        image, (round(565 * factor), round(584 * factor)), interpolation=cv2.INTER_AREA
    )
    probability = model.predict_probabilities(unet, small[None, ..., None]).numpy()[0, ..., 1]
    expected = cv2.resize(probability, (565, 584), interpolation=cv2.INTER_LINEAR)
    scaled = np.load(tmp_path / 'scaled.npy')
    assert scaled.shape == (1, 584, 565)
    assert np.abs(scaled[0] - expected).mean() < 0.01 and np.abs(scaled[0] - expected).max() < 0.2


def drive_image(drive, folder, name):
    """A file of preprocess.py's DRIVE test folders."""
    return os.path.join(os.path.dirname(drive['test']), 'test', folder, name)


def load_trained(logdir):
    architecture = run_folder.load_architecture(logdir)
    unet = model.build_from_architecture(architecture)
    unet.load_weights(os.path.join(logdir, run_folder.WEIGHTS_FILE))
    return unet, architecture


def test_predict_reports_bad_files_and_goes_on_with_the_rest(trained, tmp_path):
    folder = tmp_path / 'photos [1]'  # glob characters in the folder's name
    folder.mkdir()
    image = np.zeros((64, 80, 3), np.uint8)
    cv2.circle(image, (40, 32), 28, (40, 90, 200), -1)
    for end in ((20, 10), (62, 20), (30, 56)):  # three dark vessels from the middle
        cv2.line(image, (40, 32), end, (20, 40, 110), 2)
    cv2.imwrite(str(folder / 'eye.png'), image)
    cv2.imwrite(str(folder / 'eye.jpg'), image)  # the same stem: must not overwrite eye.png's
    cv2.imwrite(str(folder / 'deep.png'), image.astype(np.uint16) * 257)  # 16-bit
    cv2.imwrite(str(folder / 'black.png'), np.zeros((64, 80, 3), np.uint8))
    (folder / 'broken.jpg').write_bytes((folder / 'eye.jpg').read_bytes()[:200])
    out = tmp_path / 'out'
    result = run_here(
        'evaluate.py', f'--logdir={trained}', f'--predict={folder}', f'--predict_dir={out}'
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert errors == [
        f'error: {folder}/black.png: no field of view found (the image is black)',
        f'error: {folder}/broken.jpg: not a readable image (corrupt or unsupported format)',
        'error: 2 of 5 images could not be predicted (named above)',
    ]
    assert 'wrote 9 files' in result.stdout
    assert sorted(os.listdir(out)) == sorted(
        [
            f'{name}_{kind}.png'
            for name in ('deep', 'eye.jpg', 'eye.png')
            for kind in ('mask', 'overlay', 'prob')
        ]
        + ['features.csv', 'manifest.csv', 'report.html']
    )
    rows = {row['image']: row for row in csv.DictReader(open(out / 'features.csv'))}
    assert sorted(rows) == ['black.png', 'broken.jpg', 'deep.png', 'eye.jpg', 'eye.png']
    for name in ('black.png', 'broken.jpg'):  # a row that says why, and no numbers
        assert rows[name]['flags'].startswith('could not be read or predicted: ')
        assert rows[name]['vessel_density'] == ''
    assert float(rows['eye.png']['vessel_density']) > 0
    # 16 bits scaled to 8 give the same image, so the same prediction.
    np.testing.assert_array_equal(
        utils.read_image(str(out / 'deep_prob.png'), gray=True),
        utils.read_image(str(out / 'eye.png_prob.png'), gray=True),
    )
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--predict={folder}/deep.png',
        f'--predict_dir={tmp_path / "single"}',
    )
    assert result.returncode == 0 and os.listdir(tmp_path / 'single')  # a file with '[' in its path
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--predict={folder}/eye.png',
        f'--predict_dir={folder}',
    )
    assert result.returncode == 2
    assert last_line(result.stderr) == (
        f'error: --predict_dir={folder}: the folder of the input '
        f'images ({folder}/eye.png); choose another folder'
    )


@pytest.mark.parametrize('threshold', ['1.5', '-1', 'nan'])
def test_a_threshold_outside_0_1_is_refused_before_anything_is_written(
    trained, synthetic, tmp_path, threshold
):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    before = sorted(os.listdir(logdir / 'evaluations')) if (logdir / 'evaluations').exists() else []
    result = run_here(
        'evaluate.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["test"]}',
        f'--threshold={threshold}',
    )
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert re.search(
        r'flag --threshold=\S+: --threshold must be a probability between 0 and 1', result.stderr
    )
    assert (sorted(os.listdir(logdir / 'evaluations')) if before else []) == before


def test_corrupt_weights_and_a_mistyped_architecture_say_what_is_wrong(
    trained, synthetic, tmp_path
):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    weights = logdir / 'model.weights.h5'
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.rmtree(logdir / 'checkpoints')  # as a shipped model: the weights file is all there is
    result = run_here('evaluate.py', f'--logdir={logdir}', f'--label_file_path={synthetic["test"]}')
    assert result.returncode == 2
    assert last_line(result.stderr).startswith(
        f'error: {weights}: not a readable weights file, truncated or corrupt ('
    )
    architecture = json.load(open(logdir / 'architecture.json'))
    for key, value, expected in (
        ('base_channels', '8', 'an integer from 1 to 512, found "8"'),
        ('num_classes', 1, 'an integer from 2 to 256, found 1'),
        ('preprocess', 'yes', 'true or false, found "yes"'),
    ):
        (logdir / 'architecture.json').write_text(json.dumps({**architecture, key: value}))
        with pytest.raises(
            errors.UserError, match=f'architecture.json: "{key}" must be {expected}'
        ):
            run_folder.load_architecture(str(logdir))


def test_labels_without_vessels_report_undefined_not_nan(trained, synthetic, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(os.path.dirname(synthetic['test']), data)
    for label in (data / 'test' / 'labels').glob('*.png'):
        cv2.imwrite(str(label), np.zeros(cv2.imread(str(label)).shape[:2], np.uint8))
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    result = run_here('evaluate.py', f'--logdir={logdir}', f'--label_file_path={data / "test.txt"}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'Se undefined' in result.stdout and 'AUC_ROC undefined' in result.stdout
    out = evaluation_dir(logdir, 'data-test_step200_threshold0.5')
    written = json.loads(open(os.path.join(out, 'metrics.json')).read(), parse_constant=pytest.fail)
    assert written['scores']['Se'] is None and written['scores']['AUC_ROC'] is None
    assert written['scores']['Sp'] == pytest.approx(written['scores']['Acc'])  # all negatives
    assert ',,' in open(os.path.join(out, 'metrics.csv')).read()  # undefined: an empty cell
    assert evaluate.evaluation_name(
        'data/DRIVE/test.txt',
        'step10',
        0.5,
        'data/DRIVE/training.txt, data/CHASEDB/training.txt',
        False,
    ) == ('DRIVE-test_step10_calibrated-on-DRIVE-training+CHASEDB-training')


def test_calibrating_on_the_evaluated_images_is_refused(trained, synthetic, tmp_path):
    result = run_here(
        'evaluate.py',
        f'--logdir={trained}',
        f'--label_file_path={synthetic["test"]}',
        f'--calibrate_on={synthetic["training"]},{synthetic["test"]}',
        f'--output_dir={tmp_path / "out"}',
    )
    assert result.returncode == 2
    first = label_files.parse_label_file(synthetic['test'])[0].image
    assert last_line(result.stderr) == (
        f'error: --calibrate_on={synthetic["training"]},{synthetic["test"]}: lists {first}, an '
        f'image of the evaluated {synthetic["test"]}; calibrate on other images (the training '
        'set)'
    )
    assert not os.path.exists(tmp_path / 'out' / 'evaluations')


def test_the_last_checkpoint_is_what_an_evaluation_loads_and_names(trained, synthetic, tmp_path):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    stale = model.build_from_architecture(run_folder.load_architecture(str(logdir)))
    stale.save_weights(str(logdir / run_folder.WEIGHTS_FILE))  # as if killed before the export
    scores = {}
    for checkpoint in ('last', '200'):
        result = run_here(
            'evaluate.py',
            f'--logdir={logdir}',
            f'--checkpoint={checkpoint}',
            f'--label_file_path={synthetic["test"]}',
            '--nofeatures',
            f'--output_dir={tmp_path / checkpoint}',
        )
        assert result.returncode == 0, result.stderr[-2000:]
        scores[checkpoint] = json.load(
            open(
                evaluation_dir(tmp_path / checkpoint, 'SYNTH-test_step200_threshold0.5')
                + '/metrics.json'
            )
        )['scores']
    assert scores['last'] == scores['200'] and scores['last']['F1'] > 0.5


def test_a_full_disk_stops_predicting_with_one_line_and_no_half_written_photo(trained, tmp_path):
    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(8):  # noise compresses badly: each photo's outputs take about 300 KB
        image = rng.integers(0, 255, (300, 300, 3)).astype(np.uint8)
        cv2.circle(image, (150, 150), 60, (0, 0, 0), -1)
        fileio.write_png(str(photos / f'{index}.png'), image)
    with tmpfs(tmp_path / 'small', '1m') as disk:
        result = run_here(
            'evaluate.py',
            f'--logdir={trained}',
            f'--predict={photos}',
            f'--predict_dir={disk}',
            # At the model's own scale (noisy maps, large files), found once: no vessel rule.
            f'--photo_fov_diameter={run_folder.load_scale(trained).fov_diameter}',
            '--nofeatures',  # noise measured at the 1000 px reference takes seconds a photo
        )
        assert result.returncode == 2
        assert re.fullmatch(
            rf'error: {disk}: the disk is full \(writing \S+\.png\); nothing of '
            r'it was kept',
            last_line(result.stderr),
        ), last_line(result.stderr)
        assert 'Traceback' not in result.stderr
        names = os.listdir(disk)
        assert not [name for name in names if name.startswith(fileio.TEMPORARY_PREFIX)]
        stems = {name.rsplit('_', 1)[0] for name in names}
        assert 0 < len(stems) < 8
        assert all(
            sorted(name for name in names if name.startswith(f'{stem}_'))
            == [f'{stem}_{kind}.png' for kind in ('mask', 'overlay', 'prob')]
            for stem in stems
        )


def test_weights_of_another_width_are_refused_before_the_model_is_built(trained, tmp_path):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    architecture = json.load(open(logdir / 'architecture.json'))
    for change, expected in (
        ({'base_channels': 512}, 'base_channels=512 at depth 4 has 8192'),
        ({'depth': 2}, 'base_channels=8 at depth 2 has 32'),
    ):
        (logdir / 'architecture.json').write_text(json.dumps({**architecture, **change}))
        result = run_here('evaluate.py', f'--logdir={logdir}', f'--predict={tmp_path}/none*')
        assert result.returncode == 2
        assert last_line(result.stderr) == (  # the trained run: base 8, depth 4, 128 at the bottom
            f'error: {logdir}/model.weights.h5: does not fit the architecture in '
            f'architecture.json (its widest layer has 128 channels; {expected})'
        )


def test_an_evaluation_runs_in_process_from_its_config_alone(trained, synthetic, tmp_path):
    """evaluate.run reads no flags: unit tests and bench call it with an EvalConfig."""
    config = evaluate.EvalConfig(
        logdir=str(trained),
        label_file_path=synthetic['test'],
        output_dir=str(tmp_path),
        features=False,
    )
    result = evaluate.run(config)
    assert result['images'] == 2 and np.sum(result['confusion_matrix']) == fov_pixels(
        synthetic['test']
    )
    written = json.load(open(os.path.join(result['out_dir'], 'metrics.json')))
    assert written['scores'] == pytest.approx(result['scores'])
    assert [row['image'] for row in written['per_image']] == [
        row['image'] for row in result['per_image']
    ]
    photo_dir = os.path.join(os.path.dirname(synthetic['test']), 'test', 'images')
    rows = evaluate.run(
        dataclasses.replace(config, predict=photo_dir, predict_dir=str(tmp_path / 'out'))
    )
    assert len(rows) == 2 and all(0 < row['share'] < 0.5 for row in rows)
    assert len(os.listdir(tmp_path / 'out')) == 2 * len(photos.PREDICTION_FILES) + 1  # manifest
