"""Metrics on hand-worked matrices, and the streamed (histogram) AUCs and threshold against the
exact rank computation, on tiny examples and on real DRIVE predictions."""

import json

import numpy as np
import pytest
from scipy import stats

import fileio
import label_files
import metrics
from conftest import ROOT

# 2x4 example; the last pixel (a false alarm) lies outside the mask.
LABELS = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
PREDICTIONS = np.array([[1, 0, 1, 0], [1, 0, 0, 1]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])


def counted(labels, scores, mask=None, threshold=0.5):
    return metrics.count_pixels(np.asarray(labels), np.asarray(scores, np.float32), mask, threshold)


def exact_roc_auc(labels, scores):
    """The rank-sum (Mann-Whitney) formula, ties at mid-rank."""
    labels = np.asarray(labels, bool)
    ranks = stats.rankdata(scores)
    positives, negatives = labels.sum(), (~labels).sum()
    return (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def exact_average_precision(labels, scores):
    """The mean precision at each positive, the scores ranked one by one (no ties)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
    hits = np.cumsum(np.asarray(labels, bool)[order])
    return float(np.mean((hits / np.arange(1, hits.size + 1))[np.asarray(labels, bool)[order]]))


def exact_best_f1(labels, scores):
    """The highest F1 of any threshold at one of the scores, from the ranked scores."""
    order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
    ranked, hits = np.asarray(scores)[order], np.cumsum(np.asarray(labels, bool)[order])
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tp, predicted = hits[last_of_tie], last_of_tie + 1
    return float(np.max(2 * tp / (predicted + hits[-1])))


def test_confusion_matrix_ignores_masked_pixels():
    # Inside the mask: TP at (0,0),(1,0); FN at (0,1); FP at (0,2); TN at (0,3),(1,1),(1,2).
    np.testing.assert_array_equal(
        metrics.confusion_matrix(LABELS, PREDICTIONS, MASK), [[3, 1], [1, 2]]
    )
    np.testing.assert_array_equal(metrics.confusion_matrix(LABELS, PREDICTIONS), [[3, 2], [1, 2]])


def test_scores_from_hand_worked_matrix():
    scores = metrics.scores_from_confusion([[3, 1], [1, 2]])
    expected = {
        'IoU': 2 / 4,
        'mIoU': (2 / 4 + 3 / 5) / 2,
        'F1': 4 / 6,
        'Acc': 5 / 7,
        'Se': 2 / 3,
        'Sp': 3 / 4,
        'Precision': 2 / 3,
    }
    assert scores == pytest.approx(expected)


def test_original_printout_numbers():
    # The original README's matrix and its printed IoU / mIoU.
    scores = metrics.scores_from_confusion([[4678420, 87758], [120699, 360200]])
    assert scores['IoU'] == pytest.approx(0.6334222562986124)
    assert scores['mIoU'] == pytest.approx(0.79538286)


def test_nothing_to_count_is_undefined_and_written_as_null(tmp_path):
    # No vessel labelled, none predicted: F1, Se, Precision and vessel IoU have nothing to count.
    scores = metrics.scores_from_confusion([[10, 0], [0, 0]])
    assert all(np.isnan(scores[key]) for key in ('F1', 'Se', 'Precision', 'IoU'))
    assert scores['Sp'] == 1 and scores['Acc'] == 1 and scores['mIoU'] == 1  # defined IoUs only
    # One false alarm: precision and F1 are 0, sensitivity still undefined.
    scores = metrics.scores_from_confusion([[9, 1], [0, 0]])
    assert scores['F1'] == 0 and scores['Precision'] == 0 and np.isnan(scores['Se'])
    path = tmp_path / 'metrics.json'
    no_vessel = counted([0, 0], [0.1, 0.2]).histogram
    fileio.write_json(path, {'scores': scores, 'auc': metrics.roc_auc(no_vessel)})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        'scores': {**scores, 'Se': None},
        'auc': None,
    }


def test_auc_on_known_example():
    histogram = counted([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]).histogram
    assert metrics.roc_auc(histogram) == pytest.approx(0.75)
    # Average precision: recall steps of 1/2 at precisions 1 and 2/3.
    assert metrics.pr_auc(histogram) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_roc_auc_equals_rank_sum_formula_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.2
    scores = np.round(0.7 * rng.random(5000) + 0.3 * labels, 2)  # rounding makes many ties
    assert metrics.roc_auc(counted(labels, scores).histogram) == pytest.approx(
        exact_roc_auc(labels, scores), abs=1e-12
    )


def test_pr_auc_equals_mean_precision_at_each_positive_without_ties():
    rng = np.random.default_rng(1)
    labels = rng.random(2000) < 0.3
    scores = (rng.random(2000) + 0.5 * labels) / 1.5
    assert metrics.pr_auc(counted(labels, scores).histogram) == pytest.approx(
        exact_average_precision(labels, scores), abs=1e-4
    )


def test_probabilities_near_0_and_1_keep_their_order():
    # Far below the 1/2^16 step of a linear histogram, still ranked by the logit bins.
    labels = np.array([0, 1, 0, 1])
    scores = np.array([1e-7, 1e-6, 1 - 1e-4, 1 - 1e-5])
    assert metrics.roc_auc(counted(labels, scores).histogram) == pytest.approx(0.75)
    assert len(set(metrics.probability_bins(scores))) == 4


def test_threshold_is_inclusive_and_mask_applies():
    labels = np.array([1, 0, 1, 0])
    probabilities = np.array([0.5, 0.49, 0.2, 0.9])
    counts = counted(labels, probabilities, np.array([1, 1, 1, 0]))
    np.testing.assert_array_equal(counts.matrix, [[1, 0], [1, 1]])  # 0.5 counts, 0.9 masked out
    np.testing.assert_array_equal(
        counted(labels, probabilities, threshold=0.1).matrix, [[0, 2], [0, 2]]
    )
    assert metrics.scores(counts)['AUC_ROC'] == pytest.approx(0.5)  # 0.5, 0.2 vs 0.49


def test_counts_of_images_add_up_to_the_counts_of_their_pixels():
    rng = np.random.default_rng(2)
    labels, scores = rng.random((3, 50, 40)) < 0.15, rng.random((3, 50, 40))
    total = metrics.no_pixels()
    for label, score in zip(labels, scores, strict=True):
        total += counted(label, score)
    whole = counted(labels, scores)
    np.testing.assert_array_equal(total.matrix, whole.matrix)
    np.testing.assert_array_equal(total.histogram, whole.histogram)
    assert total.histogram.sum() == labels.size


def test_best_f1_threshold_on_hand_worked_ranking():
    # At 0.9: TP 1, FP 0 -> F1 2/4; 0.8: 2, 0 -> 4/5; 0.7: 2, 1 -> 4/6; 0.6: 3, 1 -> 6/7;
    # 0.2: 3, 2 -> 6/8. Best: 0.6, i.e. a threshold that keeps 0.6 and drops 0.2.
    labels, scores = np.array([1, 1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    threshold, f1 = metrics.best_f1_threshold(counted(labels, scores).histogram)
    assert f1 == pytest.approx(6 / 7) and 0.5999 < threshold <= 0.6
    assert metrics.scores(counted(labels, scores, threshold=threshold))['F1'] == pytest.approx(
        6 / 7
    )


def test_best_f1_threshold_never_splits_tied_scores():
    # Half the tie at 0.5 would give F1 1 (TP 2, FP 0), but no threshold selects only that half:
    # 0.5 gives TP 2, FP 1 -> 4/5, and 0.9 gives TP 1 -> 2/3.
    labels, scores = np.array([1, 1, 0]), np.array([0.9, 0.5, 0.5])
    for order in (slice(None), slice(None, None, -1)):
        threshold, f1 = metrics.best_f1_threshold(counted(labels[order], scores[order]).histogram)
        assert f1 == pytest.approx(0.8) and 0.4999 < threshold <= 0.5


@pytest.fixture(scope='module')
def drive_predictions(drive):
    """(labels, probabilities) inside the FOV of 4 DRIVE test images, predicted by models/drive."""
    import dataset
    import inference
    import model

    unet, architecture, _, _ = inference.load_model(f'{ROOT}/models/drive')
    predict = inference.make_predictor(unet, model.in_channels(architecture['preprocess']))
    samples = label_files.parse_label_file(drive['test'])[:4]
    pairs = []
    for example in dataset.iter_examples(samples, architecture['preprocess']):
        probability = inference.predict_image(predict, example.image.astype(np.float32) / 255)
        inside = example.mask.astype(bool)
        pairs.append((example.label[inside], probability[inside]))
    return pairs


def test_streamed_aucs_match_the_exact_ranking_on_real_drive_predictions(drive_predictions):
    whole_set = (
        np.concatenate([labels for labels, _ in drive_predictions]),
        np.concatenate([probabilities for _, probabilities in drive_predictions]),
    )
    for labels, probabilities in [*drive_predictions, whole_set]:
        histogram = metrics.count_pixels(labels, probabilities).histogram
        assert metrics.roc_auc(histogram) == pytest.approx(
            exact_roc_auc(labels, probabilities), abs=1e-4
        )
        assert metrics.pr_auc(histogram) == pytest.approx(
            exact_average_precision(labels, probabilities), abs=1e-4
        )
        threshold, f1 = metrics.best_f1_threshold(histogram)
        assert f1 == pytest.approx(exact_best_f1(labels, probabilities), abs=1e-4)
        assert metrics.scores(metrics.count_pixels(labels, probabilities, threshold=threshold))[
            'F1'
        ] == pytest.approx(f1, abs=1e-6)
