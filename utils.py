"""What several scripts share: image I/O with clear errors, atomic writes, metrics, overlays.

Nothing here imports TensorFlow, so preprocessing and metric tests stay fast.
"""
import json
import os
import sys
import tempfile

import cv2
import numpy as np
from absl import flags
from scipy import ndimage


class UserError(Exception):
    """A problem with the user's input: reported as one line, never as a traceback."""


def run_main(main):
    """Wraps an absl `main` so that a UserError ends the program with one line and exit code 2."""

    def wrapped(argv):
        try:
            return main(argv)
        except UserError as error:
            print(f'error: {error}', file=sys.stderr)
            sys.exit(2)

    return wrapped


# The flags several scripts share, each defined once here; a script declares the ones it takes
# with define_flags(...) at its top, and they count as that script's own (--helpshort lists them).
flags.disclaim_key_flags()
_POSITIVE = {'lower_bound': 1}
_SHARED_FLAGS = {  # name: (define, default, help[, bounds])
    'logdir': (flags.DEFINE_string, None, 'Run folder: checkpoints, weights, architecture.json, '
               'train_logs/ and evaluation outputs.'),
    'label_file_path': (flags.DEFINE_string, None, 'Label file written by preprocess.py, e.g. '
                        'data/DRIVE/training.txt.'),
    'seed': (flags.DEFINE_integer, 0, 'Random seed.'),
    'batch_size': (flags.DEFINE_integer, 4, 'Global batch size of training, split across '
                   "replicas (evaluate.py predicts one image at a time and accepts it for the "
                   "original's commands).", _POSITIVE),
    'preprocess': (flags.DEFINE_bool, False, 'Use the preprocessed gray images (the image '
                   "folder + '_pre') instead of RGB."),
    'transpose_conv': (flags.DEFINE_bool, False, 'Upsample with Conv2DTranspose instead of '
                       'nearest-neighbour + 1x1 conv.'),
    'base_channels': (flags.DEFINE_integer, 32, 'Channels of the first U-Net level (the original: '
                      '32); 16 is about 4x cheaper.', _POSITIVE),
    'num_classes': (flags.DEFINE_integer, 2, 'Output classes (background, vessel).',
                    {'lower_bound': 2}),
    'visulize': (flags.DEFINE_bool, False, 'Write figures (alias --visualize).'),
}


def define_flags(*names):
    """Defines the named shared flags (once per process, whichever script asks first)."""
    for name in names:
        if name in flags.FLAGS:
            continue
        define, default, help_text, *bounds = _SHARED_FLAGS[name]
        define(name, default, help_text, **(bounds[0] if bounds else {}))
        if name == 'visulize':
            flags.DEFINE_alias('visualize', 'visulize')


# ----------------------------------------------------------------------------- image I/O

def read_image(path, gray=False):
    """Reads PNG/JPEG/TIFF/GIF/BMP as uint8: HxWx3 RGB, or HxW when `gray` (a label or mask
    stored as RGB, as DRIVE's GIFs, must have nearly equal channels: its 2nd_manual palette is
    (4, 2, 4) and (252, 254, 252))."""
    if not os.path.isfile(path):
        raise UserError(f'{path}: file not found')
    with open(path, 'rb') as stream:
        data = stream.read()
    if not data:
        raise UserError(f'{path}: file is empty')
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    # OpenCV fills a truncated JPEG with grey instead of failing: require the end marker.
    if image is None or (data[:2] == b'\xff\xd8' and data.rstrip(b'\0')[-2:] != b'\xff\xd9'):
        raise UserError(f'{path}: not a readable image (corrupt or unsupported format)')
    if image.dtype != np.uint8:
        raise UserError(f'{path}: expected 8-bit pixels, found {image.dtype}')
    if image.ndim == 3:
        image = image[:, :, 2::-1]  # OpenCV's BGR(A) to RGB
    if not gray:
        return np.ascontiguousarray(image if image.ndim == 3 else np.stack([image] * 3, axis=-1))
    if image.ndim == 3 and np.ptp(image.astype(np.int16), axis=-1).max() > 8:
        raise UserError(f'{path}: a colour image where a gray one is expected')
    return np.ascontiguousarray(image if image.ndim == 2 else image[..., 0])


def read_binary(path):
    """Reads a label or mask file as uint8 {0, 1}. Accepts 0/1, 0/255 and near-binary palettes
    (all values within 15 of 0 or 255, as DRIVE's 2nd_manual GIFs: 2, 4, 252, 254); any grey level
    in between is an error."""
    image = read_image(path, gray=True)
    values = np.unique(image)
    if set(values.tolist()) <= {0, 1}:
        return image.copy()
    if np.all((values <= 15) | (values >= 240)):
        return (image >= 128).astype(np.uint8)
    shown = ', '.join(str(v) for v in values[:6]) + (', ...' if len(values) > 6 else '')
    raise UserError(f'{path}: not a binary image (values {shown}; expected 0/255 or 0/1)')


def read_binary_for(path, image, image_path):
    """read_binary(path), checked to be the size of `image` (read from image_path)."""
    binary = read_binary(path)
    if binary.shape != image.shape[:2]:
        raise UserError(f'{path}: size {binary.shape[1]}x{binary.shape[0]} differs from its image '
                        f'{image_path} ({image.shape[1]}x{image.shape[0]})')
    return binary


def temporary_path(path):
    """A fresh hidden name beside `path` that keeps its whole ending ('.weights.h5' stays)."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix='.tmp.', suffix=f'.{name}', dir=directory)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    return temporary


def write_atomic(path, data):
    """Writes bytes or text to `path` through a temporary file and a rename: a killed process
    leaves either the old file or the new one, never half of one."""
    temporary = temporary_path(path)
    try:
        with open(temporary, 'wb') as stream:
            stream.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_png(path, image):
    """Writes a uint8 HxW or HxWx3 RGB image as PNG, atomically."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[:, :, ::-1]  # RGB to OpenCV's BGR
    ok, encoded = cv2.imencode('.png', image)
    if not ok:
        raise UserError(f'{path}: could not encode image of shape {image.shape}')
    write_atomic(path, encoded.tobytes())


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported on first use (it is slow)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path, dpi=100):
    """Lays out a matplotlib figure, saves it as PNG atomically, and closes it."""
    figure.tight_layout()
    temporary = temporary_path(path)
    figure.savefig(temporary, dpi=dpi, format='png')
    pyplot().close(figure)
    os.replace(temporary, path)


def write_json(path, value):
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


# ------------------------------------------------------------------- the four steps and the FOV

def rgb_to_gray(image):
    """ITU-R 601 luma of an RGB uint8 image, as float64."""
    return image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def standardize(gray):
    """Per-image zero mean and unit variance, then rescaled to 0-255 (uint8)."""
    gray = np.asarray(gray, np.float64)
    std = gray.std()
    normalized = (gray - gray.mean()) / std if std > 0 else np.zeros_like(gray)
    span = normalized.max() - normalized.min()
    if span == 0:
        return np.zeros(gray.shape, np.uint8)
    return np.rint(255 * (normalized - normalized.min()) / span).astype(np.uint8)


def clahe(gray, clip_limit=2.0, tiles=8):
    """Contrast-limited adaptive histogram equalisation on a uint8 image."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(gray)


def adjust_gamma(gray, gamma=1.2):
    """out = 255 * (in / 255) ** (1 / gamma): gamma > 1 brightens dark vessels' surroundings, as in
    the original (and orobix/retina-unet)."""
    table = np.rint(255 * (np.arange(256) / 255.0) ** (1.0 / gamma)).astype(np.uint8)
    return table[gray]


def preprocess_image(image):
    """The four steps in order: RGB to gray, standardise, CLAHE, gamma. Returns every stage."""
    gray = np.clip(np.rint(rgb_to_gray(image)), 0, 255).astype(np.uint8)
    standardized = standardize(gray)
    equalized = clahe(standardized)
    return {'gray': gray, 'standardized': standardized, 'clahe': equalized,
            'gamma': adjust_gamma(equalized)}


def derive_fov_mask(image, threshold=12):
    """FOV mask (uint8 {0,1}) of a fundus image: the bright disc on a black background.
    Max over channels above `threshold`, holes filled, largest component, one 3x3 erosion."""
    foreground = image.max(axis=-1) > threshold if image.ndim == 3 else image > threshold
    foreground = ndimage.binary_fill_holes(foreground)
    eroded = ndimage.binary_erosion(_largest_component(foreground), np.ones((3, 3), bool))
    return _largest_component(eroded).astype(np.uint8)


def _largest_component(binary):
    components, count = ndimage.label(binary)
    if count == 0:
        return binary
    return components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))


# ----------------------------------------------------------------------------- metrics

def confusion_matrix(labels, predictions, mask=None):
    """2x2 matrix [[TN, FP], [FN, TP]] (rows: label, columns: prediction) over pixels where
    `mask` is set (all pixels when mask is None)."""
    labels = np.asarray(labels).astype(bool).ravel()
    predictions = np.asarray(predictions).astype(bool).ravel()
    if mask is not None:
        keep = np.asarray(mask).astype(bool).ravel()
        labels, predictions = labels[keep], predictions[keep]
    counts = np.bincount(labels.astype(np.int64) * 2 + predictions, minlength=4)
    return counts.reshape(2, 2)


def _ratio(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else 0.0


def scores_from_confusion(matrix):
    """The field's threshold metrics from a 2x2 confusion matrix; vessel is the positive class."""
    (tn, fp), (fn, tp) = np.asarray(matrix, dtype=np.int64)
    iou_vessel = _ratio(tp, tp + fp + fn)
    iou_background = _ratio(tn, tn + fn + fp)
    return {
        'IoU': iou_vessel,
        'mIoU': (iou_vessel + iou_background) / 2,
        'F1': _ratio(2 * tp, 2 * tp + fp + fn),
        'Acc': _ratio(tp + tn, tp + tn + fp + fn),
        'Se': _ratio(tp, tp + fn),
        'Sp': _ratio(tn, tn + fp),
        'Precision': _ratio(tp, tp + fp),
    }


def _ranked_counts(labels, scores):
    """Each distinct score from the highest down, with the true and false positives counted at
    or above it."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind='stable')
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(labels)[last_of_tie]
    false_positives = (last_of_tie + 1) - true_positives
    return scores[last_of_tie], true_positives, false_positives


def roc_auc(labels, scores):
    """Exact area under the ROC curve (ties count half), from every distinct score."""
    _, tp, fp = _ranked_counts(labels, scores)
    if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
        return float('nan')
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return float(np.trapezoid(tpr, fpr))


def pr_auc(labels, scores):
    """Area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    _, tp, fp = _ranked_counts(labels, scores)
    if tp.size == 0 or tp[-1] == 0:
        return float('nan')
    precision = tp / (tp + fp)
    recall = np.r_[0.0, tp / tp[-1]]
    return float(np.sum(np.diff(recall) * precision))


def curves(labels, scores, points=512):
    """ROC (fpr, tpr) and precision-recall (recall, precision) curves, thinned for plotting."""
    _, tp, fp = _ranked_counts(labels, scores)
    keep = np.unique(np.linspace(0, tp.size - 1, min(points, tp.size)).astype(int))
    tp, fp = tp[keep], fp[keep]
    return {
        'fpr': np.r_[0.0, fp / max(fp[-1], 1)], 'tpr': np.r_[0.0, tp / max(tp[-1], 1)],
        'recall': tp / max(tp[-1], 1), 'precision': tp / np.maximum(tp + fp, 1),
    }


def best_f1_threshold(labels, scores):
    """The threshold (inclusive) at which F1 is highest, and that F1."""
    thresholds, tp, fp = _ranked_counts(labels, scores)
    f1 = 2 * tp / (tp + fp + tp[-1])
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def evaluate_pixels(labels, probabilities, mask, threshold=0.5):
    """Every metric the field reports for one image or a whole set, inside the FOV `mask`."""
    keep = np.asarray(mask).astype(bool)
    labels, probabilities = np.asarray(labels)[keep], np.asarray(probabilities)[keep]
    matrix = confusion_matrix(labels, probabilities >= threshold)
    scores = scores_from_confusion(matrix)
    scores['AUC_ROC'] = roc_auc(labels, probabilities)
    scores['AUC_PR'] = pr_auc(labels, probabilities)
    return matrix, scores


# ----------------------------------------------------------------------------- drawing

OVERLAY_COLOURS = {'hit': (0, 255, 0), 'false_alarm': (255, 0, 0), 'miss': (0, 0, 255)}


def overlay(image, label, prediction, alpha=1.0):
    """Colours an RGB copy of `image`: green where vessel is predicted and labelled, red where
    predicted but not labelled, blue where labelled but missed. `alpha` blends the colours."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    label, prediction = np.asarray(label).astype(bool), np.asarray(prediction).astype(bool)
    out = image.astype(np.float32)
    for name, where in (('hit', label & prediction), ('false_alarm', prediction & ~label),
                        ('miss', label & ~prediction)):
        colour = np.array(OVERLAY_COLOURS[name], np.float32)
        out[where] = (1 - alpha) * out[where] + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
