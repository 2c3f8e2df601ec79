"""Metrics on hand-worked matrices, exact AUCs against independent formulas, I/O errors, overlays."""
import json

import numpy as np
import pytest
from scipy import stats

import utils

# 2x4 example; the last pixel (a false alarm) lies outside the mask.
LABELS = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
PREDICTIONS = np.array([[1, 0, 1, 0], [1, 0, 0, 1]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])


def test_confusion_matrix_ignores_masked_pixels():
    # Inside the mask: TP at (0,0),(1,0); FN at (0,1); FP at (0,2); TN at (0,3),(1,1),(1,2).
    np.testing.assert_array_equal(utils.confusion_matrix(LABELS, PREDICTIONS, MASK),
                                  [[3, 1], [1, 2]])
    np.testing.assert_array_equal(utils.confusion_matrix(LABELS, PREDICTIONS), [[3, 2], [1, 2]])


def test_scores_from_hand_worked_matrix():
    scores = utils.scores_from_confusion([[3, 1], [1, 2]])
    expected = {'IoU': 2 / 4, 'mIoU': (2 / 4 + 3 / 5) / 2, 'F1': 4 / 6, 'Acc': 5 / 7,
                'Se': 2 / 3, 'Sp': 3 / 4, 'Precision': 2 / 3}
    assert scores == pytest.approx(expected)


def test_original_printout_numbers():
    # The original README's matrix and its printed IoU / mIoU.
    scores = utils.scores_from_confusion([[4678420, 87758], [120699, 360200]])
    assert scores['IoU'] == pytest.approx(0.6334222562986124)
    assert scores['mIoU'] == pytest.approx(0.79538286)


def test_nothing_to_count_is_undefined_and_written_as_null(tmp_path):
    # No vessel labelled, none predicted: F1, Se, Precision and vessel IoU have nothing to count.
    scores = utils.scores_from_confusion([[10, 0], [0, 0]])
    assert all(np.isnan(scores[key]) for key in ('F1', 'Se', 'Precision', 'IoU'))
    assert scores['Sp'] == 1 and scores['Acc'] == 1 and scores['mIoU'] == 1  # defined IoUs only
    # One false alarm: precision and F1 are 0, sensitivity still undefined.
    scores = utils.scores_from_confusion([[9, 1], [0, 0]])
    assert scores['F1'] == 0 and scores['Precision'] == 0 and np.isnan(scores['Se'])
    path = tmp_path / 'metrics.json'
    utils.write_json(path, {'scores': scores, 'auc': utils.roc_auc([0, 0], [0.1, 0.2])})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        'scores': {**scores, 'Se': None}, 'auc': None}


def test_auc_on_known_example():
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert utils.roc_auc(labels, scores) == pytest.approx(0.75)
    # Average precision: recall steps of 1/2 at precisions 1 and 2/3.
    assert utils.pr_auc(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_roc_auc_equals_rank_sum_formula_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.2
    scores = np.round(rng.random(5000) + 0.3 * labels, 2)  # rounding makes many ties
    ranks = stats.rankdata(scores)
    positives, negatives = labels.sum(), (~labels).sum()
    expected = (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    assert utils.roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_pr_auc_equals_mean_precision_at_each_positive_without_ties():
    rng = np.random.default_rng(1)
    labels = rng.random(2000) < 0.3
    scores = rng.random(2000) + 0.5 * labels
    order = np.argsort(-scores)
    hits = np.cumsum(labels[order])
    expected = np.mean((hits / np.arange(1, 2001))[labels[order]])
    assert utils.pr_auc(labels, scores) == pytest.approx(expected)


def test_threshold_is_inclusive_and_mask_applies():
    labels = np.array([1, 0, 1, 0])
    probabilities = np.array([0.5, 0.49, 0.2, 0.9])
    matrix, scores = utils.evaluate_pixels(labels, probabilities, np.array([1, 1, 1, 0]))
    np.testing.assert_array_equal(matrix, [[1, 0], [1, 1]])  # 0.5 counts, 0.9 is masked out
    matrix, _ = utils.evaluate_pixels(labels, probabilities, np.ones(4), threshold=0.1)
    np.testing.assert_array_equal(matrix, [[0, 2], [0, 2]])
    assert scores['AUC_ROC'] == pytest.approx(0.5)  # positives 0.5, 0.2 vs negative 0.49


def test_best_f1_threshold_on_hand_worked_ranking():
    # At 0.9: TP 1, FP 0 -> F1 2/4; 0.8: 2, 0 -> 4/5; 0.7: 2, 1 -> 4/6; 0.6: 3, 1 -> 6/7;
    # 0.2: 3, 2 -> 6/8. Best: 0.6.
    labels, scores = np.array([1, 1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    assert utils.best_f1_threshold(labels, scores) == pytest.approx((0.6, 6 / 7))
    assert utils.evaluate_pixels(labels, scores, np.ones(5), 0.6)[1]['F1'] == pytest.approx(6 / 7)


def test_best_f1_threshold_never_splits_tied_scores():
    # Half the tie at 0.5 would give F1 1 (TP 2, FP 0), but no threshold selects only that half:
    # 0.5 gives TP 2, FP 1 -> 4/5, and 0.9 gives TP 1 -> 2/3.
    labels, scores = np.array([1, 1, 0]), np.array([0.9, 0.5, 0.5])
    assert utils.best_f1_threshold(labels, scores) == pytest.approx((0.5, 0.8))
    assert utils.best_f1_threshold(labels[::-1], scores[::-1]) == pytest.approx((0.5, 0.8))


def test_overlay_colours():
    image = np.full((1, 4, 3), 100, np.uint8)
    out = utils.overlay(image, label=[[1, 1, 0, 0]], prediction=[[1, 0, 1, 0]])
    np.testing.assert_array_equal(out[0], [[0, 255, 0], [0, 0, 255], [255, 0, 0], [100, 100, 100]])


def test_read_binary_accepts_binary_palettes_and_rejects_grey(tmp_path):
    path = str(tmp_path / 'label.png')
    utils.write_png(path, np.array([[0, 255], [255, 0]], np.uint8))
    np.testing.assert_array_equal(utils.read_binary(path), [[0, 1], [1, 0]])
    utils.write_png(path, np.array([[2, 254], [252, 4]], np.uint8))  # DRIVE 2nd_manual style
    np.testing.assert_array_equal(utils.read_binary(path), [[0, 1], [1, 0]])
    utils.write_png(path, np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(utils.UserError, match=r'label\.png: not a binary image \(values 0, 128'):
        utils.read_binary(path)


@pytest.mark.parametrize('content, message', [(b'', 'file is empty'),
                                               (b'\x89PNG\r\n\x1a\n\x00\x00', 'not a readable')])
def test_read_image_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / 'broken.png'
    path.write_bytes(content)
    with pytest.raises(utils.UserError, match=f'broken.png: {message}'):
        utils.read_image(str(path))


def test_truncated_png_is_an_error(tmp_path):
    path = str(tmp_path / 'full.png')
    utils.write_png(path, np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = open(path, 'rb').read()
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
    with pytest.raises(utils.UserError, match='cut.png: not a readable image'):
        utils.read_image(str(tmp_path / 'cut.png'))


def test_write_atomic_leaves_no_temporary_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / 'out.txt'
    utils.write_atomic(str(path), 'old')

    class Boom(Exception):
        pass

    class Exploding(str):
        def encode(self):
            raise Boom()

    with pytest.raises(Boom):
        utils.write_atomic(str(path), Exploding('new'))
    assert path.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.txt']


@pytest.mark.parametrize('orientation, corner', [(1, (0, 0)), (3, (-1, -1)), (6, (0, -1)),
                                                 (8, (-1, 0))])
def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path, orientation, corner):
    from PIL import Image
    photo = np.zeros((40, 60, 3), np.uint8)
    photo[:10, :10] = 255  # the top left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = orientation  # 3: turned 180 degrees, 6: 90 clockwise, 8: 90 anticlockwise
    Image.fromarray(photo).save(tmp_path / 'photo.jpg', exif=exif, quality=95)
    shown = utils.read_image(str(tmp_path / 'photo.jpg'))
    assert shown.shape == ((40, 60, 3) if orientation in (1, 3) else (60, 40, 3))
    rows = slice(0, 10) if corner[0] == 0 else slice(-10, None)
    columns = slice(0, 10) if corner[1] == 0 else slice(-10, None)
    assert shown[rows, columns].mean() > 250 and shown.mean() < 255 * 0.1


def test_only_stale_temporaries_are_removed(tmp_path):
    import os
    import time
    for name in ('.tmp.old.png', '.tmp.fresh.png', 'keep.png'):
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / '.tmp.folder').mkdir()
    (tmp_path / '.tmp.folder' / 'inside').write_bytes(b'x')
    an_hour_ago = time.time() - 3600
    for name in ('.tmp.old.png', '.tmp.folder'):
        os.utime(tmp_path / name, (an_hour_ago, an_hour_ago))
    utils.remove_temporaries(str(tmp_path), older_than=60)
    assert sorted(os.listdir(tmp_path)) == ['.tmp.fresh.png', 'keep.png']
    utils.remove_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['keep.png']


def test_a_fifo_or_a_link_loop_in_place_of_an_image_is_named_not_read(tmp_path):
    import os
    os.mkfifo(tmp_path / 'fifo.png')  # reading it would block forever
    with pytest.raises(utils.UserError, match=r'fifo.png: not a regular file$'):
        utils.read_image(str(tmp_path / 'fifo.png'))
    os.symlink(tmp_path / 'loop.png', tmp_path / 'loop.png')
    with pytest.raises(utils.UserError, match=r'loop.png: cannot be read \(Too many levels of '
                       r'symbolic links\)$'):
        utils.read_image(str(tmp_path / 'loop.png'))
    os.symlink(tmp_path / 'gone.png', tmp_path / 'dangling.png')
    with pytest.raises(utils.UserError, match=r'dangling.png: a link to a file that does not '
                       'exist$'):
        utils.read_image(str(tmp_path / 'dangling.png'))
