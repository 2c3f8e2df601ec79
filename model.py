"""The original's U-Net in Keras 3, the pad-to-16 helper, and the check of a saved architecture.

Changes from Ronneberger et al. (2015), as in the original: half the channels (32-64-128-256,
512 at the bottom), 'same' padding (no cropping at the skip connections), and a choice of
Conv2DTranspose or nearest-neighbour upsampling + 1x1 conv. Every 3x3 conv is followed by batch
norm and ReLU; a 1x1 head gives `num_classes` logits. Batch norm uses momentum 0.9 (usable moving
statistics after a few hundred steps, not thousands) and is synchronised across replicas, so
every replica and worker normalises with the global batch and ends with the same weights.
"""

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import errors

DEPTH, MAX_DEPTH = 4, 4  # the original's levels of pooling, and the most a model may have
NUM_CLASSES, BASE_CHANNELS = 2, 32  # the original's head (background, vessel) and width
MULTIPLE = 2**MAX_DEPTH  # input sides must be multiples of this, whatever the depth
ARCHITECTURE_KEYS = ('num_classes', 'base_channels', 'transpose_conv', 'preprocess', 'depth')
MAX_BASE_CHANNELS = 512  # 16x the original's width; more is no U-Net a machine here can hold


def _conv_block(x, channels, name):
    for i in (1, 2):
        x = layers.Conv2D(channels, 3, padding='same', use_bias=False, name=f'{name}_conv{i}')(x)
        x = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f'{name}_bn{i}')(x)
        x = layers.ReLU(name=f'{name}_relu{i}')(x)
    return x


def _upsample(x, channels, transpose_conv, name):
    if transpose_conv:
        return layers.Conv2DTranspose(channels, 2, strides=2, name=f'{name}_transpose')(x)
    x = layers.UpSampling2D(2, interpolation='nearest', name=f'{name}_nearest')(x)
    return layers.Conv2D(channels, 1, name=f'{name}_conv1x1')(x)


def build_unet(
    num_classes: int = NUM_CLASSES,
    base_channels: int = BASE_CHANNELS,
    transpose_conv: bool = False,
    in_channels: int = 1,
    depth: int = DEPTH,
) -> keras.Model:
    """U-Net of `depth` poolings taking (batch, H, W, in_channels) images, H and W multiples of
    16, and returning (batch, H, W, num_classes) float32 logits."""
    inputs = keras.Input((None, None, in_channels), name='image')
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_channels * 2**level, f'down{level}')
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f'pool{level}')(x)
    x = _conv_block(x, base_channels * 2**depth, 'bottom')
    for level in reversed(range(depth)):
        channels = base_channels * 2**level
        x = _upsample(x, channels, transpose_conv, f'up{level}')
        x = layers.Concatenate(name=f'up{level}_concat')([skips[level], x])
        x = _conv_block(x, channels, f'up{level}')
    logits = layers.Conv2D(num_classes, 1, dtype='float32', name='logits')(x)
    return keras.Model(inputs, logits, name='unet')


def in_channels(preprocess: bool) -> int:
    """Preprocessed images are gray, raw ones RGB."""
    return 1 if preprocess else 3


def build_from_architecture(architecture: dict) -> keras.Model:
    return build_unet(
        architecture['num_classes'],
        architecture['base_channels'],
        architecture['transpose_conv'],
        in_channels(architecture['preprocess']),
        architecture['depth'],
    )


def predict_probabilities(model: keras.Model, images: tf.Tensor | np.ndarray) -> tf.Tensor:
    """Softmax probabilities for images of any size: pads height and width up to a multiple of
    16 with zeros, runs the model, crops back. Used by training summaries and evaluation alike."""
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    pad_h, pad_w = (-height) % MULTIPLE, (-width) % MULTIPLE
    padded = tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    logits = model(padded, training=False)
    return tf.nn.softmax(logits[:, :height, :width, :], axis=-1)


def make_predictor(model: keras.Model, channels: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """predict_probabilities traced once for images of any size: float [N, H, W, channels] in
    [0, 1] -> softmax probabilities [N, H, W, classes]."""
    spec = tf.TensorSpec([None, None, None, channels], tf.float32)
    return tf.function(lambda images: predict_probabilities(model, images), input_signature=[spec])


def check_architecture(saved: dict, requested: dict, where: str) -> dict:
    """Raises a one-line error naming every flag that contradicts the saved architecture; flags
    left unset (None) take the saved value. Returns the merged architecture."""
    conflicts = [
        f'--{key}={requested[key]} (trained with {saved[key]})'
        for key in ARCHITECTURE_KEYS
        if requested.get(key) is not None and requested[key] != saved[key]
    ]
    if conflicts:
        raise errors.UserError(
            f'{where} holds a model of another architecture: ' + ', '.join(conflicts)
        )
    return dict(saved)
