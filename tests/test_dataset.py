"""Label-file parsing (fixtures and fuzzing), FOV-centred patches, augmentation that keeps image,
label and mask aligned, seeded determinism, exact resume, and the split across replicas."""

import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dataset
import errors
import fileio
import label_files


def write_label_file(root, text, files=('a b.png', 'c.png')):
    for folder in ('imgs', 'labs', 'msks'):
        os.makedirs(root / folder, exist_ok=True)
        for name in files:
            fileio.write_png(str(root / folder / name), np.zeros((8, 8), np.uint8))
    path = root / 'list.txt'
    path.write_bytes(text.encode())
    return str(path)


def test_parses_header_lines_crlf_blank_lines_and_spaces(tmp_path):
    path = write_label_file(
        tmp_path, 'imgs,labs,msks\r\n\r\na b.png, c.png ,c.png\r\n\nc.png,c.png,c.png'
    )
    samples = label_files.parse_label_file(path)
    assert [s.name for s in samples] == ['a b', 'c']
    assert samples[0] == label_files.Sample(
        'a b',
        str(tmp_path / 'imgs/a b.png'),
        str(tmp_path / 'labs/c.png'),
        str(tmp_path / 'msks/c.png'),
    )


@pytest.mark.parametrize(
    'text, message',
    [
        ('', r'list.txt: empty label file'),
        ('imgs,labs\nc.png,c.png,c.png', r'list.txt:1: expected the folders "images,labels,masks"'),
        (
            'imgs,labs,msks\n\nc.png,c.png',
            r'list.txt:3: expected "image,label,mask", found "c.png,c.png"',
        ),
        ('imgs,labs,msks\nc.png,c.png,c.png,c.png', r'list.txt:2: expected "image,label,mask"'),
        (
            'imgs,labs,msks\nc.png,gone.png,c.png',
            r'list.txt:2: listed file .*labs/gone.png not found',
        ),
        ('imgs,labs,msks\n', r'list.txt: lists no images'),
    ],
)
def test_bad_label_files_name_file_and_line(tmp_path, text, message):
    with pytest.raises(errors.UserError, match=message):
        label_files.parse_label_file(write_label_file(tmp_path, text))


def test_missing_label_file(tmp_path):
    with pytest.raises(errors.UserError, match=r'--label_file_path=.*nope.txt: file not found'):
        label_files.parse_label_file(str(tmp_path / 'nope.txt'))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.sampled_from('imgslabc.pn,\r\n\t x/_é\x00'), max_size=80))
def test_parser_fuzz_parses_or_raises_its_own_error(tmp_path, text):
    path = write_label_file(tmp_path, text)
    try:
        samples = label_files.parse_label_file(path)
    except errors.UserError as error:
        assert '\n' not in str(error).strip() or 'found' in str(error)
    else:
        assert samples and all(os.path.isfile(s.image) for s in samples)


# ----------------------------------------------------------------------------- training stream


def make_example(name, size=48, seed=0):
    """An image whose label is its own threshold and whose mask a lower one, so geometry is
    checkable after any flip or rotation (photometric jitter is monotone)."""
    image = np.random.default_rng(seed).integers(80, 176, (size, size, 1)).astype(np.uint8)
    return dataset.Example(
        name, image, (image[..., 0] > 128).astype(np.uint8), (image[..., 0] > 100).astype(np.uint8)
    )


def batches(examples, count, **kwargs):
    iterator = iter(dataset.training_dataset(examples, **kwargs))
    return [next(iterator) for _ in range(count)]


def test_patches_are_centred_inside_the_fov():
    example = make_example('a', 64)
    example.mask[:] = 0
    example.mask[40:44, 10:13] = 1  # a small FOV near the edge
    for images, _labels, masks in batches([example], 3, batch_size=16, patch_size=16, seed=5):
        assert images.shape == (16, 16, 16, 1)
        np.testing.assert_array_equal(masks[:, 8, 8], 1)
        assert masks.numpy().sum() < 16 * 12 + 1  # no more than the FOV's 12 pixels each


def test_augmentation_moves_label_and_mask_with_the_image():
    examples = [make_example('a', seed=1), make_example('b', seed=2)]
    plain = batches(examples, 2, batch_size=8, patch_size=16, seed=3)
    augmented = batches(examples, 2, batch_size=8, patch_size=16, seed=3, augmentation=True)
    for images, labels, masks in augmented:
        for image, label, mask in zip(
            images.numpy()[..., 0], labels.numpy(), masks.numpy(), strict=True
        ):
            assert image[label == 0].max() < image[label == 1].min()
            assert image[mask == 0].max() < image[mask == 1].min()
    assert not np.allclose(plain[0][0], augmented[0][0])


def coordinate_example(size=64, offset=100):
    """An RGB image whose red and green values are each pixel's row and column (+ offset)."""
    rows, columns = np.mgrid[0:size, 0:size] + offset
    image = np.stack([rows, columns, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    centre = np.zeros((size, size), np.uint8)
    centre[8:-8, 8:-8] = 1  # the FOV: 16px patches centred there lie inside the image
    return dataset.Example('xy', image, centre, centre)


def symmetry(patch):
    """(rows run along axis 1, rows decrease, columns decrease) of a patch of coordinate_example:
    which of the 8 symmetries of the square it shows. Brightness and contrast jitter are
    increasing in value, so the directions survive them."""
    rows, columns = patch[..., 0], patch[..., 1]
    swapped = bool(np.all(rows[:, 1:] != rows[:, :-1]))
    along = (lambda a: a[:, 1] - a[:, 0]) if swapped else (lambda a: a[1] - a[0])
    across = (lambda a: a[1] - a[0]) if swapped else (lambda a: a[:, 1] - a[:, 0])
    assert np.all(along(rows) != 0) and np.all(across(columns) != 0)
    return swapped, bool(np.all(along(rows) < 0)), bool(np.all(across(columns) < 0))


def test_patches_are_exact_windows_and_augmentation_draws_every_symmetry_alike():
    example = coordinate_example()
    ((plain, _, _),) = batches([example], 1, batch_size=64, patch_size=16, seed=2)
    for patch in np.rint(plain.numpy() * 255).astype(int):  # the image's own pixels, in place
        top, left = patch[0, 0, 0] - 100, patch[0, 0, 1] - 100
        np.testing.assert_array_equal(patch, example.image[top : top + 16, left : left + 16])
    counts = {}
    for images, _, _ in batches(
        [example], 4, batch_size=200, patch_size=16, seed=2, augmentation=True
    ):
        for patch in images.numpy():
            found = symmetry(patch)
            counts[found] = counts.get(found, 0) + 1
    assert len(counts) == 8 and all(60 < count < 140 for count in counts.values()), counts


def test_same_seed_same_batches_other_seed_other_batches():
    examples = [make_example('a', seed=1), make_example('b', seed=2)]
    first, second = (
        batches(examples, 3, batch_size=4, patch_size=16, seed=7, augmentation=True)
        for _ in range(2)
    )
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    other = batches(examples, 1, batch_size=4, patch_size=16, seed=8)
    assert not np.array_equal(first[0][0], other[0][0])


def test_resume_continues_the_same_stream():
    examples = [make_example('a', seed=1), make_example('b', seed=2)]
    stream = batches(examples, 5, batch_size=4, patch_size=16, seed=7, augmentation=True)
    resumed = batches(
        examples, 2, batch_size=4, patch_size=16, seed=7, augmentation=True, start_step=3
    )
    for a, b in zip(stream[3:], resumed, strict=True):
        np.testing.assert_array_equal(a[0], b[0])


def test_every_image_once_per_epoch_in_whole_image_mode():
    examples = [make_example(str(i), size=20 + 4 * i, seed=i) for i in range(3)]
    images = batches(examples, 6, batch_size=1, image_size=32, seed=0)
    # Each image is zero-padded (centred) to 32x32; its mean identifies it.
    sums = [int(np.rint(b[0].numpy().sum() * 255)) for b in images]
    expected = sorted(int(e.image.astype(int).sum()) for e in examples)
    assert sorted(sums[:3]) == expected and sorted(sums[3:]) == expected
    assert images[0][0].shape == (1, 32, 32, 1)


def test_large_images_are_cropped_to_image_size():
    ((image, label, mask),) = batches([make_example('a', size=64)], 1, batch_size=1, image_size=32)
    assert image.shape == (1, 32, 32, 1) and label.shape == (1, 32, 32)


@pytest.mark.parametrize('pipelines, replicas', [(2, 2), (1, 2), (2, 4)])
def test_every_layout_of_replicas_draws_the_same_global_batches(pipelines, replicas):
    """Each worker's input pipeline hands its batches to its replicas in turn (MirroredStrategy's
    order); replica q of R takes samples q, q + R, ... of each step's global batch of 8, so one
    worker with 2 replicas, 2 with one each and 2 with two each all train on one stream."""
    examples = [make_example('a', seed=1), make_example('b', seed=2)]
    whole = batches(examples, 2, batch_size=8, patch_size=16, seed=4)
    local = replicas // pipelines
    turns = {}  # replica -> its batches, step by step
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        stream = batches(
            examples,
            2 * local,
            batch_size=8 // replicas,
            patch_size=16,
            seed=4,
            input_context=context,
        )
        for turn, (images, _, _) in enumerate(stream):
            turns.setdefault(pipeline * local + turn % local, []).append(images.numpy())
    for step in range(2):
        merged = [turns[sample % replicas][step][sample // replicas] for sample in range(8)]
        np.testing.assert_array_equal(np.stack(merged), whole[step][0])


def test_replicas_of_one_worker_resume_at_the_step_they_stopped_at():
    """A stream of one worker with 2 replicas, started at step 1, continues where the run from
    step 0 was after its step 0 (its third and fourth batches)."""
    examples = [make_example('a', seed=1), make_example('b', seed=2)]
    context = tf.distribute.InputContext(1, 0, 2)
    turns = batches(examples, 4, batch_size=4, patch_size=16, seed=4, input_context=context)
    resumed = batches(
        examples, 2, batch_size=4, patch_size=16, seed=4, input_context=context, start_step=1
    )
    for turn, again in zip(turns[2:], resumed, strict=True):
        np.testing.assert_array_equal(turn[0], again[0])


def test_load_examples_checks_sizes(tmp_path):
    path = write_label_file(tmp_path, 'imgs,labs,msks\nc.png,c.png,c.png')
    fileio.write_png(str(tmp_path / 'labs/c.png'), np.zeros((8, 9), np.uint8))
    with pytest.raises(errors.UserError, match=r'labs/c.png: size 9x8 differs from its image'):
        dataset.load_label_files(path)
