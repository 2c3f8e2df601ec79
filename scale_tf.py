"""scale.py's FOV rule in TensorFlow: the exported SavedModel's serve_at_scale. Each function
mirrors one of scale.py and utils.py (tests/test_scale.py checks them equal on the same inputs):
the same factor and sizes, the same resizes (pixel-area averaging down, bilinear up). One
difference: a preprocessed image is resized after preprocessing, not before."""

import keras
import tensorflow as tf

import model
import scale


def factor(model_diameter: float, diameter: tf.Tensor) -> tf.Tensor:
    """scale.factor_for without its checks: 1 within scale.RESCALE_TOLERANCE."""
    value = model_diameter / tf.cast(diameter, tf.float64)
    return tf.where(tf.abs(value - 1) <= scale.RESCALE_TOLERANCE, tf.ones_like(value), value)


def scaled_size(size: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """utils.scaled_size: each side times `factor`, rounded half to even as Python's round."""
    scaled = tf.round(tf.cast(size, tf.float64) * tf.cast(factor, tf.float64))
    return tf.maximum(1, tf.cast(scaled, tf.int32))


def resize(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """utils.resize of an HxWxC float image: area averaging when it shrinks, bilinear when it
    grows."""
    shrinks = tf.reduce_prod(size) < tf.reduce_prod(tf.shape(image)[:2])
    return tf.cond(
        shrinks,
        lambda: tf.image.resize(image, size, 'area'),
        lambda: tf.image.resize(image, size, 'bilinear'),
    )


def predict_at_scale(
    unet: keras.Model, images: tf.Tensor, diameters: tf.Tensor, model_diameter: float
) -> tf.Tensor:
    """Vessel probabilities [N, H, W] of each image [N, H, W, C] predicted at the model's scale:
    resized so its FOV diameter becomes `model_diameter`, predicted, resized back."""

    def one(args):
        image, diameter = args
        size = tf.shape(image)[:2]
        scaled = resize(image, scaled_size(size, factor(model_diameter, diameter)))
        probability = model.predict_probabilities(unet, scaled[None])[0]
        return resize(probability[..., 1:2], size)[..., 0]

    return tf.map_fn(one, (images, diameters), fn_output_signature=tf.float32)
