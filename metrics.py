"""Segmentation metrics: the confusion matrix and the threshold scores this field reports, and
AUCs that stream over any number of images.

An image's pixels are counted once (`count_pixels`): the confusion matrix at the threshold and a
histogram of the probabilities of each class. Counts add up, so a whole set's scores cost the
memory of one histogram, whatever its size. The histogram's bins are equal steps of the logit,
which resolves probabilities near 0 and 1 as finely as those near one half; the AUCs are those
of the exact rank computation with the probabilities of each bin tied (on real DRIVE maps
AUC-ROC within 1e-7 of the exact one, average precision and the best F1 within 3e-5:
tests/test_metrics.py)."""

import dataclasses

import numpy as np

BINS = 2**16
LOGIT_LIMIT = 20.0  # probabilities within about 2e-9 of 0 or 1 share the end bins

# What may choose a run's best step (train.py --best_metric): the highest value, the lowest loss.
BEST_METRICS = ('F1', 'AUC_ROC', 'loss')


def confusion_matrix(labels, predictions, mask=None) -> np.ndarray:
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
    """numerator / denominator, NaN (undefined) when the denominator is 0: F1 of an image with no
    vessel that is predicted to have none is undefined, not 0."""
    return float(numerator) / float(denominator) if denominator else float('nan')


def scores_from_confusion(matrix) -> dict[str, float]:
    """The field's threshold metrics from a 2x2 confusion matrix; vessel is the positive class.
    A ratio with nothing to count (F1, IoU, Se, Precision of an image with no vessel labelled or
    predicted) is NaN, reported as undefined (null in JSON); mIoU averages the defined IoUs."""
    (tn, fp), (fn, tp) = np.asarray(matrix, dtype=np.int64)
    iou_vessel = _ratio(tp, tp + fp + fn)
    iou_background = _ratio(tn, tn + fn + fp)
    defined = [iou for iou in (iou_vessel, iou_background) if not np.isnan(iou)]
    return {
        'IoU': iou_vessel,
        'mIoU': sum(defined) / len(defined) if defined else float('nan'),  # over defined classes
        'F1': _ratio(2 * tp, 2 * tp + fp + fn),
        'Acc': _ratio(tp + tn, tp + tn + fp + fn),
        'Se': _ratio(tp, tp + fn),
        'Sp': _ratio(tn, tn + fp),
        'Precision': _ratio(tp, tp + fp),
    }


# ----------------------------------------------------------------------------- streaming counts


def probability_bins(probabilities) -> np.ndarray:
    """The histogram bin of each probability in [0, 1]."""
    probabilities = np.asarray(probabilities, np.float64)
    with np.errstate(divide='ignore'):
        logits = np.log(probabilities) - np.log1p(-probabilities)
    bins = np.floor((logits + LOGIT_LIMIT) * (BINS / (2 * LOGIT_LIMIT)))
    return np.clip(bins, 0, BINS - 1).astype(np.int64)


def bin_floor(index: int) -> float:
    """The lowest probability in bin `index`: every probability of that bin and above is at or
    above it, every one below is under it."""
    if index == 0:
        return 0.0
    logit = index * (2 * LOGIT_LIMIT / BINS) - LOGIT_LIMIT
    return float(1 / (1 + np.exp(-logit)))


@dataclasses.dataclass
class PixelCounts:
    """What every metric needs of a set of pixels: the confusion matrix at the threshold and the
    histograms of the probabilities of background (row 0) and vessel (row 1) pixels."""

    matrix: np.ndarray
    histogram: np.ndarray

    def __add__(self, other: 'PixelCounts') -> 'PixelCounts':
        return PixelCounts(self.matrix + other.matrix, self.histogram + other.histogram)


def no_pixels() -> PixelCounts:
    return PixelCounts(np.zeros((2, 2), np.int64), np.zeros((2, BINS), np.int64))


def count_pixels(labels, probabilities, mask=None, threshold: float = 0.5) -> PixelCounts:
    """The PixelCounts of the pixels where `mask` is set (all when it is None); a probability at
    or above `threshold` is vessel."""
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        labels, probabilities = labels[keep], probabilities[keep]
    labels, probabilities = labels.ravel(), probabilities.ravel()
    matrix = confusion_matrix(labels, probabilities >= threshold)
    histogram = np.bincount(probability_bins(probabilities) + BINS * labels, minlength=2 * BINS)
    return PixelCounts(matrix, histogram.reshape(2, BINS))


def scores(counts: PixelCounts) -> dict[str, float]:
    """Every metric the field reports, from PixelCounts."""
    return {
        **scores_from_confusion(counts.matrix),
        'AUC_ROC': roc_auc(counts.histogram),
        'AUC_PR': pr_auc(counts.histogram),
    }


def _ranked(histogram):
    """The occupied bins from the highest down, with the vessel (true positive) and background
    (false positive) pixels counted at or above each."""
    occupied = np.flatnonzero(histogram.sum(axis=0))[::-1]
    return (occupied, np.cumsum(histogram[1, occupied]), np.cumsum(histogram[0, occupied]))


def roc_auc(histogram: np.ndarray) -> float:
    """Area under the ROC curve; pixels of one bin tie (they count half)."""
    _, tp, fp = _ranked(histogram)
    if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
        return float('nan')
    return float(np.trapezoid(np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]))


def pr_auc(histogram: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    _, tp, fp = _ranked(histogram)
    if tp.size == 0 or tp[-1] == 0:
        return float('nan')
    return float(np.sum(np.diff(np.r_[0.0, tp / tp[-1]]) * tp / (tp + fp)))


def best_f1_threshold(histogram: np.ndarray) -> tuple[float, float]:
    """The threshold (inclusive) at which F1 is highest, and that F1; it never splits a bin."""
    bins, tp, fp = _ranked(histogram)
    f1 = 2 * tp / (tp + fp + tp[-1])
    best = int(np.argmax(f1))
    return bin_floor(bins[best]), float(f1[best])


def curves(histogram: np.ndarray, points: int = 512) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and precision-recall (recall, precision) curves, thinned for plotting."""
    _, tp, fp = _ranked(histogram)
    keep = np.unique(np.linspace(0, tp.size - 1, min(points, tp.size)).astype(int))
    tp, fp = tp[keep], fp[keep]
    return {
        'fpr': np.r_[0.0, fp / max(fp[-1], 1)],
        'tpr': np.r_[0.0, tp / max(tp[-1], 1)],
        'recall': tp / max(tp[-1], 1),
        'precision': tp / np.maximum(tp + fp, 1),
    }
