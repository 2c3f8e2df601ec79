"""The pretrained models in models/: they load as run folders, reproduce their model cards on the
real data, and segment a photo of any size offline."""

import glob
import json
import os

import numpy as np
import pytest

import fileio
import label_files
import metrics
import preprocess
import utils
from conftest import ROOT, SHARED_DATA, require_shared, run_here

CARDS = sorted(glob.glob(os.path.join(ROOT, 'models', '*', 'card.json')))
SETS = sorted(
    {(path, row['data']) for path in CARDS for row in json.load(open(path))['evaluations']}
)


def model_name(card_path):
    """The shipped model's name: its folder under models/."""
    return os.path.basename(os.path.dirname(card_path))


def test_four_models_ship_with_cards_and_small_weights():
    names = {model_name(path) for path in CARDS}
    assert names == {'drive', 'chase', 'drive_chase', 'all'}
    for path in CARDS:
        folder = os.path.dirname(path)
        assert os.path.getsize(os.path.join(folder, 'model.weights.h5')) < 8 * 2**20
        assert os.path.exists(os.path.join(folder, 'MODEL.md'))


@pytest.mark.parametrize('card_path', CARDS, ids=model_name)
def test_a_model_card_is_rendered_from_its_card_json(card_path):
    """MODEL.md is bench/ship.py's rendering of card.json, not edited apart from it."""
    from bench import ship

    with open(card_path) as stream:
        card = json.load(stream)
    with open(os.path.join(os.path.dirname(card_path), 'MODEL.md')) as stream:
        assert stream.read() == ship.render(card)


@pytest.fixture(scope='session')
def real_data(tmp_path_factory):
    """data/ as `preprocess.py --data_dir=../shared/data` writes it (skips without the data)."""
    require_shared('DRIVE')
    require_shared('CHASEDB1')
    root = tmp_path_factory.mktemp('shipped')
    for name in ('DRIVE', 'CHASEDB1'):
        os.symlink(os.path.join(SHARED_DATA, name), root / name)
    preprocess.process(str(root), str(root / 'data'))
    return root / 'data'


SET_IDS = [f'{model_name(p)}-{d}' for p, d in SETS]
THRESHOLD_METRICS = ('F1', 'IoU', 'Se', 'Sp', 'Acc')


def card_rows(card_path, data):
    """The card's evaluations of one set (one per threshold)."""
    return [row for row in json.load(open(card_path))['evaluations'] if row['data'] == data]


def card_predictor(card_path):
    """The shipped model's photo predictor, as evaluate.run builds it for its folder."""
    import inference

    return inference.Predictor.from_run(os.path.dirname(card_path))


def predicted_counts(card_path, data, real_data, rows, indices=None):
    """[(image name, [PixelCounts at each row's threshold])] of the set's images (those at
    `indices`, or all), each predicted once, as evaluate.py predicts them."""
    import dataset

    predict = card_predictor(card_path)
    samples = label_files.parse_label_file(str(real_data / f'{data}.txt'))
    assert len(samples) == rows[0]['images']
    if indices is not None:
        samples = [samples[index] for index in indices]
    counted = []
    for sample, example in zip(samples, dataset.iter_examples(samples), strict=True):
        probability, _ = predict(example.image, example.mask, sample.image)
        inside = example.mask.astype(bool)
        counts = [
            metrics.count_pixels(example.label, probability, inside, row['threshold'])
            for row in rows
        ]
        counted.append((example.name, counts))
    return counted


@pytest.mark.parametrize('card_path, data', SETS, ids=SET_IDS)
def test_a_card_s_set_figures_are_its_images_counts_summed(card_path, data):
    """Each row's per-image confusion matrices add up to its whole-set figures (the check that
    lets the test below re-predict only some of the images)."""
    for row in card_rows(card_path, data):
        assert len(row['per_image']) == row['images']
        total = sum(np.array(image['confusion_matrix']) for image in row['per_image'])
        scores = metrics.scores_from_confusion(total)
        for key in THRESHOLD_METRICS:
            assert scores[key] == pytest.approx(row['scores'][key], rel=1e-12), (row['data'], key)


@pytest.mark.parametrize('card_path, data', SETS, ids=SET_IDS)
def test_a_shipped_model_reproduces_its_card_on_the_first_and_last_image(
    card_path, data, real_data
):
    """The first and the last image of each set, predicted as evaluate.py does: each one's
    confusion matrix at every threshold of the card (to 1e-4 of its FOV pixels) and its AUC-ROC
    (to 1e-4). A change to the model, the reading, the scale or the prediction shows on any
    image; `make journey` re-predicts every image (the test after this one)."""
    rows = card_rows(card_path, data)
    last = rows[0]['images'] - 1
    for index, (name, counts) in zip(
        (0, last), predicted_counts(card_path, data, real_data, rows, (0, last)), strict=True
    ):
        for row, count in zip(rows, counts, strict=True):
            expected = row['per_image'][index]
            assert name == expected['image']
            pixels = count.matrix.sum()
            difference = np.abs(count.matrix - np.array(expected['confusion_matrix']))
            assert difference.max() <= 1e-4 * pixels, (name, row['threshold'], difference)
            assert metrics.roc_auc(count.histogram) == pytest.approx(
                expected['AUC_ROC'], abs=1e-4
            ), name


@pytest.mark.slow
@pytest.mark.parametrize('card_path, data', SETS, ids=SET_IDS)
def test_a_shipped_model_reproduces_its_model_card(card_path, data, real_data):
    """Each model predicts each set of its card once, as evaluate.py does (evaluate.run's own
    predictor and loader); every row of that set (threshold 0.5, calibrated) is scored from the
    same probabilities, to 1e-4."""
    rows = card_rows(card_path, data)
    counted = predicted_counts(card_path, data, real_data, rows)
    for index, row in enumerate(rows):
        names = [image['image'] for image in row['per_image']]
        assert names == [name for name, _ in counted]
        total = sum((counts[index] for _, counts in counted), metrics.no_pixels())
        scores = metrics.scores(total)
        for key in (*THRESHOLD_METRICS, 'AUC_ROC'):
            assert scores[key] == pytest.approx(row['scores'][key], abs=1e-4), (row, key)


@pytest.mark.parametrize('name', ['drive', 'drive_chase'])
def test_a_shipped_model_segments_a_large_generated_photo(name, tmp_path):
    """A synthetic retina at 1024 px (about twice DRIVE's FOV): predicted offline, at the model's
    scale, into a vessel map that finds most of the drawn vessels and little else."""
    rng = np.random.default_rng(5)
    image, label, mask = preprocess.synthetic_retina(1024, rng)
    fileio.write_png(str(tmp_path / 'eye.png'), image)
    result = run_here(
        'evaluate.py',
        f'--logdir={os.path.join(ROOT, "models", name)}',
        f'--predict={tmp_path / "eye.png"}',
        f'--predict_dir={tmp_path / "out"}',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = utils.read_binary(str(tmp_path / 'out' / 'eye_mask.png'))
    scores = metrics.scores_from_confusion(metrics.confusion_matrix(label, found, mask))
    assert scores['F1'] > 0.6, scores


def test_the_readme_results_table_is_written_from_the_cards():
    from bench import report

    readme = open(os.path.join(ROOT, 'README.md')).read()
    table = '\n'.join([report.README_BEGIN, *report.readme_table(), report.README_END])
    assert table in readme  # after a card changes: python -m bench.report
    assert readme.count('\n') < 200


def test_the_four_camera_table_shows_each_scale_rule_and_marks_seen_images():
    """A hand-made record of one camera: each cell is 'FOV rule / vessel rule', a * where the
    model trained on those images, an empty cell where no in-domain run exists."""
    from bench import report

    record = {
        'scale_rules': ['fov', 'vessels'],
        'shipped': {
            'a': {'X': {'saw_these_images': True, 'fov': {'F1': 0.81234}, 'vessels': {'F1': 0.8}}},
            'b': {'X': {'saw_these_images': False, 'fov': {'F1': 0.5}, 'vessels': {'F1': 0.6}}},
        },
        'leave_one_camera_out': {'X': {'images': 3, 'fov': {'F1': 0.7}, 'vessels': {'F1': 0.75}}},
        'in_domain': {},
        'loco_anchors': {'X': 0.7461},
    }
    header, rule, row = report.cross_camera_table(record)
    assert header.startswith('| test camera | images | `a` | `b` | ')
    assert rule.count('---') == 7
    assert row == '| X | 3 | 0.8123 / 0.8000* | 0.5000 / 0.6000 | 0.7000 / 0.7500 |  | 0.746 |'


def test_the_four_camera_table_in_the_docs_is_written_from_its_record():
    from bench import report

    results = open(os.path.join(ROOT, 'docs', 'results.md')).read()
    record = report.read_record('cross_camera.json')
    table = '\n'.join(
        [report.CAMERAS_BEGIN, *report.cross_camera_table(record), report.CAMERAS_END]
    )
    assert table in results  # after bench/cross_dataset.py --cameras: python -m bench.report


def test_the_spread_table_groups_seed_files_and_gives_mean_and_deviation():
    """Hand-made records: a two-seed file and a one-seed file of one recipe make one group of
    three runs (F1 0.80, 0.82, 0.84: mean 0.82, sample deviation 0.02); other files are not
    seeds."""
    from bench import report

    def run(f1):
        scores = dict.fromkeys(report.METRICS, 0.5) | {'F1': f1}
        return {'evaluations': {'threshold 0.5': {'scores': scores}}}

    records = {
        'accuracy_x_seeds12': {'runs': [run(0.80), run(0.82)]},
        'accuracy_x_seed3': run(0.84),
        'accuracy_x_4500': run(0.1),
    }
    groups = report.seed_groups(records)
    assert list(groups) == ['x'] and len(groups['x']) == 3
    header, _, row = report.spread_rows(groups)
    assert header.startswith('| group | seeds | evaluation | F1 |')
    assert row.startswith('| x | 3 | threshold 0.5 | 0.8200 ± 0.0200 | 0.5000 ± 0.0000 |')


def test_each_trained_section_of_the_camera_record_names_each_setting_once():
    """bench/report.py's trained_with prints a section's recipe as the record lists it."""
    from bench import report
    from bench.accuracy import setting_name

    record = report.read_record('cross_camera.json')
    for section, training in record['trainings'].items():
        names = [setting_name(flag) for flag in training['recipe']]
        assert len(names) == len(set(names)), (section, training['recipe'])
