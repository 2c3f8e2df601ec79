"""Label file -> decoded images in memory -> tf.data for training (whole images or FOV patches).

Label files are read by utils.parse_label_file.

Training batches are a pure function of (seed, step): sample i of the stream is drawn with the
stateless seed (seed, i) from the images decoded once. So a run is reproducible, parallel maps
stay deterministic, and a resumed run continues with exactly the batches it would have seen.
"""
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

import utils


@dataclass
class Example:
    name: str
    image: np.ndarray  # uint8 HxWxC: RGB, or the preprocessed gray image
    label: np.ndarray  # uint8 HxW, {0, 1}
    mask: np.ndarray   # uint8 HxW, {0, 1}


def load_examples(samples, preprocess=False, fov_diameter=None):
    """Reads and checks every sample once: the decoded-image cache that training draws from.
    With fov_diameter, each image, label and mask is first resized so its FOV has that diameter
    (utils.scale_factor); the image is then what the model sees (utils.model_input)."""
    examples = []
    for sample in samples:
        rgb = utils.read_image(sample.image)
        label = utils.read_binary_for(sample.label, rgb, sample.image)
        mask = utils.fov_mask(rgb, sample.image, sample.mask)
        factor = utils.scale_factor(mask, fov_diameter, sample.image)
        if factor != 1:
            size = utils.scaled_size(mask.shape, factor)
            rgb = utils.resize(rgb, size)
            label, mask = utils.resize_binary(label, size), utils.resize_binary(mask, size)
        examples.append(Example(sample.name, utils.model_input(rgb, preprocess), label, mask))
    return examples


def load_label_files(paths, preprocess=False, fov_diameter=None, flag='--label_file_path'):
    """The examples of one label file or of a comma-separated list of them, in order. Training
    draws every image equally often, so each file weighs in proportion to its images."""
    samples = [sample for path in paths.split(',')
               for sample in utils.parse_label_file(path.strip(), flag)]
    return load_examples(samples, preprocess, fov_diameter)


# ----------------------------------------------------------------------------- training stream

def _stack(examples, margin):
    """One uint8 tensor [N, H+2*margin, W+2*margin, C+2] of image, label and mask channels (padded
    with zeros to the largest image), and the flat indices of each image's FOV pixels."""
    height = max(e.image.shape[0] for e in examples) + 2 * margin
    width = max(e.image.shape[1] for e in examples) + 2 * margin
    channels = examples[0].image.shape[2] + 2
    stack = np.zeros((len(examples), height, width, channels), np.uint8)
    fov = []
    for i, example in enumerate(examples):
        h, w = example.label.shape
        block = np.concatenate([example.image, example.label[..., None],
                                example.mask[..., None]], axis=-1)
        stack[i, margin:margin + h, margin:margin + w] = block
        fov.append(np.flatnonzero(stack[i, :, :, -1]).astype(np.int64))
    return tf.constant(stack), tf.ragged.constant(fov, dtype=tf.int64)


def augment(image, label, mask, seed):
    """Random flips and 90-degree rotations applied alike to image, label and mask, then
    brightness/contrast jitter on the image only. `seed` is a stateless seed [2]."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    stacked = tf.concat([image, tf.cast(label[..., None], tf.float32), mask[..., None]], -1)
    stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[0])
    stacked = tf.image.stateless_random_flip_up_down(stacked, seeds[1])
    turns = tf.random.stateless_uniform([], seeds[2], 0, 4, tf.int32)
    stacked = tf.image.rot90(stacked, turns)
    image, label, mask = stacked[..., :-2], tf.cast(stacked[..., -2], tf.int32), stacked[..., -1]
    image = tf.image.stateless_random_brightness(image, 0.1, seeds[3])
    image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seeds[4])
    return tf.clip_by_value(image, 0.0, 1.0), label, mask


def _split(block):
    """uint8 [h, w, C+2] -> image float [0, 1] [h, w, C], label int32 [h, w], mask float [h, w]."""
    image = tf.cast(block[..., :-2], tf.float32) / 255.0
    return image, tf.cast(block[..., -2], tf.int32), tf.cast(block[..., -1], tf.float32)


def training_dataset(examples, batch_size, patch_size=0, image_size=1024, augmentation=False,
                     seed=0, start_step=0, input_context=None):
    """An endless tf.data stream of (image, label, mask) batches for steps start_step, ...

    patch_size > 0: square patches centred on random FOV pixels; 0: whole images zero-padded
    (centred) to at least image_size and cropped at random to image_size x image_size.
    Images are visited in a fresh random order every epoch. Under tf.distribute, pass the
    InputContext: each input pipeline takes every num_input_pipelines-th sample of the global
    stream and batch_size is the per-replica batch.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    global_batch = batch_size * (input_context.num_replicas_in_sync if input_context else 1)
    count = len(examples)
    margin = patch_size // 2
    stack, fov = _stack(examples, margin)
    target_h, target_w = max(stack.shape[1], image_size), max(stack.shape[2], image_size)

    def make_example(index):
        seed_pair = tf.stack([tf.constant(seed, tf.int64), index])
        seeds = tf.random.experimental.stateless_split(seed_pair, 2)  # position, augmentation
        epoch_order = tf.random.experimental.stateless_shuffle(
            tf.range(count), tf.stack([tf.constant(seed, tf.int64), index // count]))
        chosen = tf.cast(epoch_order[index % count], tf.int64)
        if patch_size:
            pixels = fov[chosen]
            pick = tf.random.stateless_uniform([], seeds[0], 0, tf.size(pixels, tf.int64),
                                               tf.int64)
            width_padded = tf.shape(stack, out_type=tf.int64)[2]
            centre_y, centre_x = pixels[pick] // width_padded, pixels[pick] % width_padded
            corner = tf.stack([chosen, centre_y - margin, centre_x - margin, 0])
            block = tf.slice(stack, corner, [1, patch_size, patch_size, -1])[0]
        else:
            block = tf.image.resize_with_crop_or_pad(stack[chosen], target_h, target_w)
            block = tf.image.stateless_random_crop(
                block, [image_size, image_size, stack.shape[-1]], seeds[0])
        image, label, mask = _split(block)
        if augmentation:
            image, label, mask = augment(image, label, mask, seeds[1])
        return image, label, mask

    first = start_step * global_batch + pipeline_id
    dataset = tf.data.Dataset.range(first, np.iinfo(np.int64).max, pipelines)
    dataset = dataset.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)

