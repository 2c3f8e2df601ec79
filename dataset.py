"""Label file -> decoded images in memory -> tf.data for training (whole images or FOV patches).

Label files are read by label_files.parse_label_file.

Training batches are a pure function of (seed, step): sample i of the stream is drawn from the
images decoded once with random numbers hashed from (seed, i). So a run is reproducible, parallel
maps stay deterministic, and a resumed run continues with exactly the batches it would have seen.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

import fov
import label_files
import scale
import utils


@dataclass
class Example:
    name: str
    image: np.ndarray  # uint8 HxWxC: RGB, or the preprocessed gray image
    label: np.ndarray  # uint8 HxW, {0, 1}
    mask: np.ndarray  # uint8 HxW, {0, 1}


def load_examples(
    samples: Iterable[label_files.Sample],
    preprocess: bool = False,
    fov_diameter: float | None = None,
) -> list[Example]:
    """Reads and checks every sample once: the decoded-image cache that training draws from.
    With fov_diameter, each image, label and mask is first resized so its FOV has that diameter
    (scale.disc_factor); the image is then what the model sees (utils.model_input)."""
    return list(iter_examples(samples, preprocess, fov_diameter))


def iter_examples(
    samples: Iterable[label_files.Sample],
    preprocess: bool = False,
    fov_diameter: float | None = None,
) -> Iterator[Example]:
    """load_examples one at a time, for passes that keep nothing of an image once done."""
    for sample in samples:
        rgb = utils.read_image(sample.image)
        label = utils.read_binary_for(sample.label, rgb, sample.image)
        mask = fov.read(rgb, sample.image, sample.mask)
        factor = scale.disc_factor(mask, fov_diameter, sample.image)
        if factor != 1:
            size = utils.scaled_size(mask.shape, factor)
            rgb = utils.resize(rgb, size)
            label, mask = utils.resize_binary(label, size), utils.resize_binary(mask, size)
        yield Example(sample.name, utils.model_input(rgb, preprocess), label, mask)


def load_label_files(
    paths: str,
    preprocess: bool = False,
    fov_diameter: float | None = None,
    flag: str = '--label_file_path',
) -> list[Example]:
    """The examples of one label file or of a comma-separated list of them, in order. Training
    draws every image equally often, so each file weighs in proportion to its images."""
    return load_examples(label_files.samples_of(paths, flag), preprocess, fov_diameter)


# ----------------------------------------------------------------------------- training stream
# Whole batches are drawn at once (vectorised gathers and selects, tf.data's "vectorise after
# batching"), yet sample i of the stream is a pure function of (seed, i): every random number of
# a sample comes from a counter-based hash of (seed, i, what it is for).

_HASH_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # splitmix64's finaliser
_GOLDEN = 0x9E3779B97F4A7C15


def _hash(seed, purpose, counter):
    """splitmix64 of (seed, purpose, counter): uint64, elementwise over `counter` (int64)."""

    def u64(value):
        return tf.constant(value, tf.uint64)

    x = tf.cast(counter, tf.uint64) * u64(_GOLDEN) + u64((seed * 1000003 + purpose) % 2**64) * u64(
        _HASH_MULTIPLIERS[1]
    )
    for shift, multiplier in ((30, _HASH_MULTIPLIERS[0]), (27, _HASH_MULTIPLIERS[1])):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(shift))) * u64(multiplier)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(31)))


def _uniform(seed, purpose, counter):
    """Uniform floats in [0, 1), one per counter."""
    bits = tf.bitwise.right_shift(_hash(seed, purpose, counter), tf.constant(40, tf.uint64))
    return tf.cast(bits, tf.float32) / 2.0**24


# what each random number is for
_ORDER, _POSITION_Y, _POSITION_X, _FLIP_LR, _FLIP_UD, _TRANSPOSE, _BRIGHTNESS, _CONTRAST = range(8)


def _canvas(examples, margin, image_size):
    """One uint8 tensor [N, H, W, C+2] of image, label and mask channels, each image at the top
    left after `margin` zeros (patches) or the padded images centred on an image_size canvas
    (whole images); and the flat indices of each image's FOV pixels (ragged)."""
    height = max(e.image.shape[0] for e in examples) + 2 * margin
    width = max(e.image.shape[1] for e in examples) + 2 * margin
    canvas = np.zeros((len(examples), height, width, examples[0].image.shape[2] + 2), np.uint8)
    fov = []
    for i, example in enumerate(examples):
        h, w = example.label.shape
        canvas[i, margin : margin + h, margin : margin + w] = np.concatenate(
            [example.image, example.label[..., None], example.mask[..., None]], axis=-1
        )
        fov.append(np.flatnonzero(canvas[i, :, :, -1]).astype(np.int64))
    if not margin:  # whole images: centred on a canvas of at least image_size
        pad_h, pad_w = max(image_size - height, 0), max(image_size - width, 0)
        canvas = np.pad(
            canvas,
            [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)],
        )
    # from_row_lengths, not tf.ragged.constant: that walks every index in Python (minutes for
    # 65 images of a megapixel).
    return tf.constant(canvas), tf.RaggedTensor.from_row_lengths(
        np.concatenate(fov), [len(indices) for indices in fov]
    )


def _epoch_order(seed, samples, count):
    """The image of each sample: every epoch (count samples) visits the images in its own
    random order, ranked by a hash of (seed, epoch, image)."""
    epochs = samples // count
    keys = _hash(seed, _ORDER, epochs[:, None] * count + tf.range(count, dtype=tf.int64)[None])
    order = tf.argsort(
        tf.bitcast(tf.bitwise.right_shift(keys, tf.constant(1, tf.uint64)), tf.int64),
        axis=1,
        stable=True,
    )
    return tf.gather(order, samples % count, batch_dims=1)


def _crop(canvas, image_index, top, left, side, flip_ud, flip_lr):
    """side x side crops of the canvas images at (top, left), each flipped where asked: one
    crop_and_resize with boxes on exact pixel centres (nearest), reversed boxes flipping."""
    height, width = canvas.shape[1] - 1, canvas.shape[2] - 1
    top, left = tf.cast(top, tf.float32), tf.cast(left, tf.float32)
    bottom, right = top + side - 1, left + side - 1
    y0, y1 = tf.where(flip_ud, bottom, top), tf.where(flip_ud, top, bottom)
    x0, x1 = tf.where(flip_lr, right, left), tf.where(flip_lr, left, right)
    boxes = tf.stack([y0 / height, x0 / width, y1 / height, x1 / width], axis=1)
    return tf.image.crop_and_resize(
        canvas, boxes, tf.cast(image_index, tf.int32), [side, side], method='nearest'
    )


def _transpose_where(block, chosen):
    """Each sample's block transposed (rows for columns) where `chosen`: with the flips, every
    one of the 8 symmetries of the square (flips and 90-degree turns) is equally likely."""
    count = tf.shape(block, out_type=tf.int64)[0]
    both = tf.concat([block, tf.transpose(block, [0, 2, 1, 3])], axis=0)
    return tf.gather(both, tf.range(count) + count * tf.cast(chosen, tf.int64))


def jitter(image: tf.Tensor, seed: int, samples: tf.Tensor) -> tf.Tensor:
    """Brightness (+-0.1) and contrast (x0.8 to x1.2 about each channel's mean) of [B, S, S, C]."""
    delta = (_uniform(seed, _BRIGHTNESS, samples) * 0.2 - 0.1)[:, None, None, None]
    factor = (0.8 + 0.4 * _uniform(seed, _CONTRAST, samples))[:, None, None, None]
    image = image + delta
    mean = tf.reduce_mean(image, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((image - mean) * factor + mean, 0.0, 1.0)


def _patch_corners(fov, width, patch_size):
    """(seed, samples, image_index) -> the top-left corners of patches centred on a random FOV
    pixel of each sample's image (`fov`: each image's flat FOV indices on a canvas `width` wide)."""
    pixels, starts, sizes = fov.values, fov.row_starts(), fov.row_lengths()

    def corners(seed, samples, image_index):
        size = tf.gather(sizes, image_index)
        uniform = _uniform(seed, _POSITION_Y, samples)
        pick = tf.minimum(tf.cast(uniform * tf.cast(size, tf.float32), tf.int64), size - 1)
        centre = tf.gather(pixels, tf.gather(starts, image_index) + pick)
        return centre // width - patch_size // 2, centre % width - patch_size // 2

    return corners


def _crop_corners(shape, side):
    """(seed, samples, image_index) -> the top-left corners of random side x side crops of a
    canvas of `shape`."""

    def corners(seed, samples, image_index):
        del image_index  # every image lies on the same canvas

        def offset(purpose, room):
            return tf.cast(_uniform(seed, purpose, samples) * (room + 1), tf.int64)

        return offset(_POSITION_Y, shape[1] - side), offset(_POSITION_X, shape[2] - side)

    return corners


def _augmented_crops(canvas, image_index, top, left, side, augmentation, seed, samples):
    """(image, label, mask) of the crops at (top, left): flipped, transposed and jittered, each
    sample at random, where `augmentation` asks."""

    def chosen(purpose):
        return (_uniform(seed, purpose, samples) < 0.5) & augmentation

    block = _crop(canvas, image_index, top, left, side, chosen(_FLIP_UD), chosen(_FLIP_LR))
    if augmentation:
        block = _transpose_where(block, chosen(_TRANSPOSE))
    image = block[..., :-2] / 255.0
    if augmentation:
        image = jitter(image, seed, samples)
    return image, tf.cast(block[..., -2], tf.int32), block[..., -1]


def training_dataset(
    examples: list[Example],
    batch_size: int,
    patch_size: int = 0,
    image_size: int = 1024,
    augmentation: bool = False,
    seed: int = 0,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """An endless tf.data stream of (image, label, mask) batches for steps start_step, ...

    patch_size > 0: square patches centred on random FOV pixels; 0: whole images zero-padded
    (centred) to at least image_size and cropped at random to image_size x image_size.
    Images are visited in a fresh random order every epoch. Under tf.distribute, pass the
    InputContext and the per-replica batch_size: each input pipeline yields one batch per step
    for each of its replicas in turn (the order tf.distribute hands them out), and replica q of
    R takes samples q, q + R, ... of the step's global batch, so the global batch of a step is
    the same for every number of replicas and workers.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    replicas = input_context.num_replicas_in_sync if input_context else 1
    local_replicas = replicas // pipelines
    first_replica = (input_context.input_pipeline_id if input_context else 0) * local_replicas
    count, side = len(examples), patch_size or image_size
    canvas, fov = _canvas(examples, patch_size // 2, image_size)
    corners = (
        _patch_corners(fov, canvas.shape[2], patch_size)
        if patch_size
        else _crop_corners(canvas.shape, side)
    )

    def make_batch(element):
        step, replica = element // local_replicas, first_replica + element % local_replicas
        first_sample = step * batch_size * replicas + replica
        samples = first_sample + replicas * tf.range(batch_size, dtype=tf.int64)
        image_index = _epoch_order(seed, samples, count)
        top, left = corners(seed, samples, image_index)
        return _augmented_crops(canvas, image_index, top, left, side, augmentation, seed, samples)

    dataset = tf.data.Dataset.range(start_step * local_replicas, np.iinfo(np.int64).max)
    dataset = dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
