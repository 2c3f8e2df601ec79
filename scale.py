"""Bringing a photo to the scale a model learned vessels at, and its probabilities back.

A model knows vessels at the widths its training images showed (scale.json: their median FOV
diameter, and the calibre of the main vessels it predicts there). Each photo's factor comes from
the first rule that applies: the FOV diameter the user gives (evaluate.py --photo_fov_diameter);
the diameter of the photo's FOV disc (fov.diameter: a circle fitted to its curved boundary);
where the FOV is no disc (it fills the frame, or it is cut on every side), the calibre of the
main vessels predicted in the photo, matched to the model's by a few predict-measure-resize
passes (docs/scale.md); with --scale_by=vessels those passes also start from the disc's factor
for photos that show one. That rule needs the main vessels in view: a crop showing only thin
vessels (the macula alone) is enlarged too much; give such photos --photo_fov_diameter.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import morphology

import errors
import fov
import utils

RESCALE_TOLERANCE = 0.05  # an image this close to the model's scale is predicted as it is
MIN_FOV_DIAMETER = 32  # pixels; a smaller FOV is no fundus photo to rescale
MAX_FOV_DIAMETER = 10000  # pixels; 3x HRF's, the largest a model's scale may be
MAX_SCALED_PIXELS = 100 * 10**6  # an image brought to the model's scale may not grow past this
CALIBRE_PERCENTILE = 90  # of the widths along the skeleton: the main vessels' calibre
MIN_SKELETON_PX = 50  # fewer skeleton pixels than this tell no calibre
CALIBRE_RESPONSE = 0.6  # d log(measured calibre) / d log(resize factor), measured (docs/scale.md)
CALIBRE_PASSES = 3  # predict-measure-resize passes before the last prediction
MIN_FACTOR, MAX_FACTOR = 0.25, 4.0  # the resize the calibre rule may choose
MAX_STEP = 1.5  # the most one calibre pass may enlarge or shrink by
CALIBRE_PIXELS = 4 * 10**6  # the calibre rule enlarges a photo no larger than this (or its own)
CALIBRE_BUDGET = 5 * 10**6  # pixels predicted by all passes of the calibre rule together
VESSELS_KEPT = 0.8  # a resize that loses more of the predicted vessels is past what the model reads
# Where the FOV shows no disc, an enlargement is also refused where it floods the map: it marks
# FLOODED times the vessels of the pass before, or its vessels do not join up (the largest
# connected piece gains less than JOINED_UP of them: brought towards its scale, a vessel tree
# joins up; past it, texture and noise are marked beside it).
FLOODED = 2.0
JOINED_UP = 0.02
DOUBT = 2.0  # a factor this far from what the vessels' calibre asks is flagged


@dataclass(frozen=True)
class ModelScale:
    """What scale.json records of a run: its training images' median FOV diameter and the
    main-vessel calibre (px) the model predicts at that scale (None for older runs)."""

    fov_diameter: float
    vessel_calibre: float | None = None


@dataclass(frozen=True)
class Decision:
    """The factor one photo was resized by, and the rule that set it (for the log and report)."""

    factor: float
    rule: str
    doubt: str | None = None  # why the map may be wrong at this scale, for the report's flags


NATIVE = Decision(1.0, 'native size')


def factor_for(diameter: float, target: float, shape: tuple, path: str) -> float:
    """The factor that brings a FOV diameter to `target`: 1 within RESCALE_TOLERANCE. A FOV too
    small to rescale, or a result over MAX_SCALED_PIXELS, is an error naming the file."""
    if diameter < MIN_FOV_DIAMETER:
        raise errors.UserError(
            f'{path}: the field of view is only {diameter:.1f} px across; at '
            f"least {MIN_FOV_DIAMETER} px are needed to bring it to the model's "
            'scale'
        )
    factor = target / diameter
    _check_size(shape, factor, path)
    return 1.0 if abs(factor - 1) <= RESCALE_TOLERANCE else factor


def _check_size(shape, factor, path):
    height, width = utils.scaled_size(shape, factor)
    if height * width > MAX_SCALED_PIXELS:
        raise errors.UserError(
            f"{path}: bringing it to the model's scale (x{factor:.2f}) would "
            f'make a {width}x{height} image (over '
            f'{MAX_SCALED_PIXELS // 10**6} megapixels); is the FOV a small '
            'bright spot in a dark frame? Crop the photo to its FOV'
        )


def disc_diameter(mask: np.ndarray, path: str) -> float:
    """fov.diameter of a FOV that must show its disc (training and labelled evaluation); an
    error naming the file where it does not."""
    diameter = fov.diameter(mask)
    if diameter is None:
        raise errors.UserError(
            f'{path}: the FOV shows no disc boundary (it fills the frame), so '
            'its scale is unknown; give a FOV mask that shows the disc'
        )
    return diameter


def disc_factor(mask: np.ndarray, target: float | None, path: str) -> float:
    """The factor that brings the FOV disc of `mask` to `target` (None: 1)."""
    return factor_for(disc_diameter(mask, path), target, mask.shape, path) if target else 1.0


def decide(
    mask: np.ndarray,
    model_scale: ModelScale | None,
    path: str,
    given_diameter: float | None = None,
) -> Decision | None:
    """The Decision for a photo from its FOV alone (the given diameter, then its disc); None
    where neither tells the scale."""
    if model_scale is None:
        return NATIVE
    target = model_scale.fov_diameter
    if given_diameter:
        return Decision(
            factor_for(given_diameter, target, mask.shape, path),
            f'FOV diameter {given_diameter:.0f} px (--photo_fov_diameter)',
        )
    diameter = fov.diameter(mask)
    if diameter is None:
        return None
    return Decision(
        factor_for(diameter, target, mask.shape, path),
        f'FOV diameter {diameter:.0f} px (circle fit)',
    )


def main_calibre(vessels: np.ndarray) -> float | None:
    """The main vessels' calibre in pixels of a binary map: the CALIBRE_PERCENTILE-th percentile
    of twice the distance to the background along its skeleton; None for too few vessels."""
    vessels = morphology.remove_small_objects(np.asarray(vessels, bool), max_size=30)
    skeleton = morphology.skeletonize(vessels)
    if skeleton.sum() < MIN_SKELETON_PX:
        return None
    widths = 2 * ndimage.distance_transform_edt(vessels)[skeleton]
    return float(np.percentile(widths, CALIBRE_PERCENTILE))


def at_model_scale(rgb: np.ndarray, factor: float, preprocess: bool) -> np.ndarray:
    """What the model sees of an RGB image resized by `factor`: the image resized, then
    preprocessed (CLAHE's tiles are relative to the image); float HxWxC in [0, 1]."""
    if factor != 1:
        rgb = utils.resize(rgb, utils.scaled_size(rgb.shape, factor))
    return utils.model_input(rgb, preprocess).astype(np.float32) / 255.0


def to_native(probability: np.ndarray, shape: tuple) -> np.ndarray:
    """Probabilities predicted at the model's scale, resized back to the image's (height, width)."""
    return (
        probability if probability.shape[:2] == tuple(shape) else utils.resize(probability, shape)
    )


def predict_at_scale(
    predict_one: Callable[[np.ndarray], np.ndarray],
    rgb: np.ndarray,
    mask: np.ndarray,
    preprocess: bool,
    model_scale: ModelScale | None,
    path: str,
    given_diameter: float | None = None,
    by_vessels: bool = False,
) -> tuple[np.ndarray, Decision]:
    """(probabilities at the image's native size, Decision): `predict_one` (float HxWxC in [0, 1] ->
    HxW or HxWxK probabilities) of the image resized by the first rule that applies; with
    `by_vessels`, the FOV disc's factor is where the calibre rule starts."""
    decision = decide(mask, model_scale, path, given_diameter)
    refine = by_vessels and not given_diameter and model_scale and model_scale.vessel_calibre
    if decision is None or refine:
        return _by_calibre(predict_one, rgb, mask, preprocess, model_scale, path, decision)
    probability = predict_one(at_model_scale(rgb, decision.factor, preprocess))
    return to_native(probability, mask.shape), decision


@dataclass(frozen=True)
class _Pass:
    factor: float
    calibre: float | None
    share: float  # of the FOV predicted as vessels
    connected: float  # of the vessels, in their largest connected piece
    probability: np.ndarray


def _by_calibre(predict_one, rgb, mask, preprocess, model_scale, path, disc):
    """The calibre rule, from the `disc` Decision's factor (None: no disc, from 1): resize, at
    most MAX_STEP a pass and within CALIBRE_PIXELS, until the main vessels predicted are as wide
    as the model's. A resize that loses vessels (a blurred or diseased photo enlarged past what
    the model reads: docs/scale.md) or, without a disc, floods the map is refused, and the
    factor before it kept."""
    if model_scale.vessel_calibre is None:
        probability = predict_one(at_model_scale(rgb, 1.0, preprocess))
        return to_native(probability, mask.shape), Decision(
            1.0, 'native size (the FOV shows no disc and the model records no vessel calibre)'
        )
    factor, kept, wanted, refused = (disc.factor if disc else 1.0), None, None, None
    spent = 0
    for passes_left in range(CALIBRE_PASSES, -1, -1):
        probability = predict_one(at_model_scale(rgb, factor, preprocess))
        spent += probability.shape[0] * probability.shape[1]
        latest = _measured(factor, probability, mask)
        refused = kept and _refusal(kept, latest, flooding=disc is None)
        if refused:
            break
        if latest.calibre is None:
            if disc:
                return to_native(probability, mask.shape), disc
            raise errors.UserError(
                f'{path}: the FOV shows no disc and too few vessels to tell '
                'the scale; give --photo_fov_diameter'
            )
        kept = latest
        wanted = factor * (model_scale.vessel_calibre / latest.calibre) ** (1 / CALIBRE_RESPONSE)
        factor = _next_factor(factor, wanted, rgb.shape, stepwise=disc is None)
        if (
            not passes_left
            or abs(factor / kept.factor - 1) <= RESCALE_TOLERANCE
            or spent + np.prod(utils.scaled_size(rgb.shape, factor)) > CALIBRE_BUDGET
        ):
            break
    return to_native(kept.probability, mask.shape), _calibre_decision(kept, disc, refused, wanted)


def _next_factor(factor, wanted, shape, stepwise):
    """The factor the next pass tries: `wanted`, within MIN_FACTOR..MAX_FACTOR and CALIBRE_PIXELS
    (a photo larger than that is not enlarged); `stepwise` (no disc to start from), at most
    MAX_STEP away from `factor`."""
    step = MAX_STEP if stepwise else np.inf
    high = min(MAX_FACTOR, factor * step, max(factor, np.sqrt(CALIBRE_PIXELS / np.prod(shape[:2]))))
    return float(np.clip(wanted, max(MIN_FACTOR, factor / step), high))


def _measured(factor, probability, mask):
    """The calibre, vessel share and connectedness of the map `probability` at `factor`."""
    inside = utils.resize_binary(mask, probability.shape[:2]).astype(bool)
    vessels = (_vessel_probability(probability) >= 0.5) & inside
    pieces, count = ndimage.label(vessels, np.ones((3, 3)))
    largest = np.bincount(pieces.ravel())[1:].max() if count else 0
    found = max(int(vessels.sum()), 1)
    share = vessels.sum() / max(inside.sum(), 1)
    return _Pass(factor, main_calibre(vessels), share, largest / found, probability)


def _refusal(kept, latest, flooding):
    """Why the resize from `kept` to `latest` is refused, or None."""
    resize = f'a resize to x{latest.factor:.2f}'
    if latest.calibre is None or latest.share < VESSELS_KEPT * kept.share:
        return f'{resize} lost vessels'
    if flooding and latest.factor > kept.factor:
        if latest.share > FLOODED * kept.share:
            return f'{resize} marked {latest.share / kept.share:.1f}x the vessels'
        if latest.connected < kept.connected + JOINED_UP:
            return f'{resize} did not join the vessels up'
    return None


def _calibre_decision(kept, disc, refused, wanted):
    """The Decision of the calibre rule, doubted where the factor kept is far from what the
    vessels' calibre asks (a refused resize, or a bound of the rule, stood between)."""
    start = f'from {disc.rule}' if disc else 'the FOV shows no disc'
    stop = f'; stopped where {refused}' if refused else ''
    doubt = None
    if wanted and not 1 / DOUBT <= wanted / kept.factor <= DOUBT:
        doubt = f"the vessels' calibre asks for x{wanted:.2f}; predicted at x{kept.factor:.2f}"
        doubt += '' if refused else ' (a bound of the calibre rule)'  # else the rule says why
    return Decision(kept.factor, f'main-vessel calibre ({start}{stop})', doubt)


def _vessel_probability(probability):
    return probability[..., 1] if probability.ndim == 3 else probability


def reference_calibre(
    predict_one: Callable[[np.ndarray], np.ndarray], examples: Iterable
) -> float | None:
    """The median over `examples` (dataset.Example, already at the model's scale) of the
    main-vessel calibre the model predicts: what the calibre rule matches a photo's to."""
    calibres = [
        _measured(1.0, predict_one(example.image.astype(np.float32) / 255.0), example.mask).calibre
        for example in examples
    ]
    calibres = [value for value in calibres if value is not None]
    return float(np.median(calibres)) if calibres else None
