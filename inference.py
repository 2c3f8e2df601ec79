"""A trained run folder's U-Net as a vessel predictor: its architecture and weights loaded and
checked, and images of any size predicted whole, in tiles, or averaged over flips."""

import re
import warnings
from collections.abc import Callable

import h5py
import keras
import numpy as np
import tensorflow as tf
from absl import logging

import errors
import fileio
import model
import run_folder
import scale


def load_model(
    logdir: str, checkpoint: str = 'last', given: dict | None = None
) -> tuple[keras.Model, dict, str, int]:
    """Builds the saved architecture, checks it against any architecture flag the user gave, and
    loads the weights `checkpoint` names: 'last' (the newest checkpoint, or the exported weights
    of a run folder without checkpoints), 'best' (the best validation step's) or a step whose
    checkpoint is kept. `given`: the architecture settings the user named ({key: value}).
    Returns the model, the architecture, the checkpoint's name for outputs ('step4000',
    'best-step3500', 'last') and its step."""
    if not logdir:
        raise errors.UserError('--logdir is required')
    architecture = run_folder.load_architecture(logdir)
    weights = run_folder.weights_path(logdir)
    if architecture is None or not fileio.is_regular_file(weights, missing_ok=True):
        raise errors.UserError(
            f'--logdir={logdir}: no trained model ({run_folder.ARCHITECTURE_FILE}, '
            f'{run_folder.WEIGHTS_FILE} and {run_folder.SCALE_FILE} are written by '
            'train.py)'
        )
    model.check_architecture(architecture, given or {}, f'--logdir={logdir}')
    check_weights_width(weights, architecture)
    unet = model.build_from_architecture(architecture)
    name, step, source = restore(unet, logdir, checkpoint)
    check_finite(unet, source)
    return unet, architecture, name, step


def restore(unet: keras.Model, logdir: str, checkpoint: str) -> tuple[str, int, str]:
    """Loads into `unet` the weights `checkpoint` names; returns the name outputs take from them,
    their step and the file they came from."""
    if checkpoint.isdigit():
        step = int(checkpoint)
        restore_step(unet, logdir, step)
        return f'step{step}', step, run_folder.checkpoint_prefix(logdir, step)
    if checkpoint == 'best':
        best = run_folder.read_best(logdir)
        if best is None:
            raise errors.UserError(
                f'--checkpoint=best: {logdir} has no best checkpoint (train '
                'with --validation_label_file to keep one)'
            )
        load_weights(unet, run_folder.best_weights_path(logdir))
        return f'best-step{best["step"]}', best['step'], run_folder.best_weights_path(logdir)
    step = run_folder.restore_newest(tf.train.Checkpoint(model=unet), logdir)
    if step:
        return f'step{step}', step, run_folder.checkpoint_prefix(logdir, step)
    weights = run_folder.weights_path(logdir)  # a run folder without checkpoints: shipped models
    load_weights(unet, weights)
    return 'last', 0, weights


def check_finite(unet: keras.Model, source: str) -> None:
    """Refuses weights with NaN or infinite values, and weights whose predictions are not finite
    (e.g. values near 1e38): either would give an empty map, not an error."""
    broken = [weight.path for weight in unet.weights if not np.isfinite(weight.numpy()).all()]
    if broken:
        raise errors.UserError(
            f'{source}: {len(broken)} weight arrays hold NaN or infinite values ({broken[0]}, '
            '...); these weights are broken'
        )
    probe = np.full((1, 32, 32, unet.input_shape[-1]), 0.5, np.float32)
    if not np.isfinite(model.predict_probabilities(unet, probe).numpy()).all():
        raise errors.UserError(
            f'{source}: the model predicts NaN or infinite values (weights too large to '
            'compute with); these weights are broken'
        )


def check_weights_width(weights, architecture):
    """Refuses, before the model is built (a wide one takes gigabytes), weights whose widest
    layer is not the architecture's: base_channels * 2 ** depth channels at the bottom."""
    base = architecture['base_channels'] * 2 ** architecture['depth']
    try:
        with h5py.File(weights, 'r') as stream:
            shapes = {}
            stream.visititems(
                lambda name, item: (
                    shapes.update({name: item.shape}) if isinstance(item, h5py.Dataset) else None
                )
            )
    except OSError:
        return  # not HDF5: load_weights names the file
    strays = [name for name in shapes if not _LAYER_WEIGHT.fullmatch(name)]
    if strays:
        raise errors.UserError(
            f'{weights}: holds {strays[0]!r}, which is no layer\'s weights (not a file Keras '
            'wrote for this model)'
        )
    widest = max((shape[-1] for shape in shapes.values() if shape), default=base)
    if widest != base:
        raise errors.UserError(
            f'{weights}: does not fit the architecture in {run_folder.ARCHITECTURE_FILE} '
            f'(its widest layer has {widest} channels; '
            f'base_channels={architecture["base_channels"]} at depth {architecture["depth"]} '
            f'has {base})'
        )


_LAYER_WEIGHT = re.compile(r'layers/[^/]+/vars/\d+')  # where Keras 3 keeps a layer's arrays


def load_weights(unet, weights):
    fileio.is_regular_file(weights)
    try:
        with warnings.catch_warnings():  # Keras warns once per layer before it raises
            warnings.simplefilter('ignore')
            unet.load_weights(weights)
    except OSError as error:
        raise errors.UserError(
            f'{weights}: not a readable weights file, truncated or corrupt '
            f'({errors.first_line(error)})'
        ) from None
    except ValueError as error:
        raise errors.UserError(
            f'{weights}: does not fit the architecture in '
            f'{run_folder.ARCHITECTURE_FILE} ({errors.first_line(error)})'
        ) from None


def restore_step(unet, logdir, step):
    """Loads the model's weights from the kept checkpoint of `step`."""
    kept = run_folder.checkpoint_steps(run_folder.checkpoint_dir(logdir))
    if step not in kept:
        raise errors.UserError(
            f'--checkpoint={step}: no such checkpoint in {run_folder.checkpoint_dir(logdir)} '
            f'(kept: {", ".join(map(str, sorted(kept))) or "none"})'
        )
    try:
        run_folder.read_checkpoint(tf.train.Checkpoint(model=unet), logdir, step)
    except errors.UserError as error:
        raise errors.UserError(f'{run_folder.checkpoint_dir(logdir)}/{error}') from None


class Predictor:
    """Photo in, vessel probabilities at the photo's own size and its scale.Decision out: a
    trained U-Net with the scale it learned (None: photos as they are), tiles, flips and the
    scale rule, made once (Predictor.from_run reads them from a run folder)."""

    def __init__(
        self,
        unet: keras.Model,
        preprocess: bool,
        model_scale: scale.ModelScale | None = None,
        *,
        tile_size: int = 0,
        tile_overlap: int = 128,
        tta: bool = False,
        by_vessels: bool = False,
        photo_fov_diameter: float | None = None,
    ) -> None:
        self.unet, self.preprocess, self.model_scale = unet, preprocess, model_scale
        self.tiles, self.tta, self.by_vessels = (tile_size, tile_overlap), tta, by_vessels
        self.photo_fov_diameter = photo_fov_diameter
        self.classes = model.make_predictor(unet, model.in_channels(preprocess))  # traced once
        self.checkpoint, self.step = 'given', 0  # what from_run loaded

    @classmethod
    def from_run(
        cls,
        logdir: str,
        checkpoint: str = 'last',
        given: dict | None = None,
        rescale: bool = True,
        **settings,
    ) -> 'Predictor':
        """The predictor of a run folder's weights (load_model's `checkpoint` and `given`), at
        the scale it recorded where `rescale`; `settings`: __init__'s keywords."""
        unet, architecture, name, step = load_model(logdir, checkpoint, given)
        model_scale = run_folder.load_scale(logdir) if rescale else None
        if rescale and model_scale is None:
            logging.warning(
                "%s: no readable %s (train.py writes it): images are predicted at their "
                "own size, not brought to the model's scale",
                logdir,
                run_folder.SCALE_FILE,
            )
        predictor = cls(unet, architecture['preprocess'], model_scale, **settings)
        predictor.checkpoint, predictor.step = name, step
        return predictor

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Every class's probabilities (HxWxK) of one whole image as the model sees it."""
        return self.classes(image[None])[0].numpy()

    def at_model_scale(self, image: np.ndarray) -> np.ndarray:
        """Vessel probabilities (HxW) of an image as the model sees it: whole or in tiles, with
        flips where asked."""

        def once(view):
            return predict_image(lambda batch: self.classes(batch)[..., 1], view, *self.tiles)

        return predict_flipped(once, image) if self.tta else once(image)

    def __call__(
        self, rgb: np.ndarray, inside: np.ndarray, path: str
    ) -> tuple[np.ndarray, scale.Decision]:
        """(vessel probabilities at the photo's size, scale.Decision) of an RGB photo and its
        FOV mask; `path` names it in errors."""
        return scale.predict_at_scale(
            self.at_model_scale,
            rgb,
            inside,
            self.preprocess,
            self.model_scale,
            path,
            self.photo_fov_diameter,
            by_vessels=self.by_vessels,
        )


def make_predictor(unet: keras.Model, channels: int) -> Callable[[np.ndarray], tf.Tensor]:
    """Image batch of any size -> vessel probability (padding inside, traced once)."""
    probabilities = model.make_predictor(unet, channels)
    return lambda images: probabilities(images)[..., 1]


def predict_image(
    predict_batch: Callable[[np.ndarray], tf.Tensor],
    image: np.ndarray,
    tile_size: int = 0,
    overlap: int = 128,
) -> np.ndarray:
    """Vessel probabilities (HxW float32) for one HxWxC float image in [0, 1].

    With tile_size > 0 (overlap-tile strategy): the image is padded to a multiple of 16 as for
    whole-image inference, cut into tile_size tiles aligned to 16, each predicted with `overlap`
    pixels of real image context on every side (never beyond the image), and only its centre
    kept. Where `overlap` covers the receptive field this equals whole-image inference."""
    height, width = image.shape[:2]
    if not tile_size:
        return finite(predict_batch(image[None])[0].numpy())
    padded = np.pad(image, [(0, -height % model.MULTIPLE), (0, -width % model.MULTIPLE), (0, 0)])
    out = np.zeros(padded.shape[:2], np.float32)
    for top in range(0, padded.shape[0], tile_size):
        for left in range(0, padded.shape[1], tile_size):
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1 = min(top + tile_size + overlap, padded.shape[0])
            x1 = min(left + tile_size + overlap, padded.shape[1])
            probability = predict_batch(padded[None, y0:y1, x0:x1])[0].numpy()
            out[top : top + tile_size, left : left + tile_size] = probability[
                top - y0 : top - y0 + tile_size, left - x0 : left - x0 + tile_size
            ]
    return finite(out[:height, :width])


def finite(probability: np.ndarray) -> np.ndarray:
    """`probability`, refused where any value is NaN or infinite (broken weights or input)."""
    if not np.isfinite(probability).all():
        raise errors.UserError(
            'the model predicted NaN or infinite values for this image (broken weights?)'
        )
    return probability


def predict_flipped(
    predict_one: Callable[[np.ndarray], np.ndarray], image: np.ndarray
) -> np.ndarray:
    """The mean of `predict_one` over the image and its vertical, horizontal and double flips, each
    prediction flipped back."""
    flips = ((), (0,), (1,), (0, 1))
    return sum(np.flip(predict_one(np.flip(image, axes)), axes) for axes in flips) / len(flips)
