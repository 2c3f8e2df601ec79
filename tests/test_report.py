"""features.csv and report.html as a user gets them, the report checked in a real browser."""

import csv
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

import label_files
import report
import scale
import utils
from conftest import evaluation_dir, run_here

BROWSER = shutil.which('chromium') or shutil.which('chromium-browser')


def rendered(page):
    """The DOM of a page from disk after headless Chromium loaded it and ran its script."""
    if not BROWSER:
        pytest.skip('no chromium (apt-get install chromium; .ci/run installs it)')
    return subprocess.run(
        [BROWSER, '--headless', '--no-sandbox', '--disable-gpu', '--dump-dom', f'file://{page}'],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def summary(dom):
    return dom.split('id="summary">', 1)[1].split('<', 1)[0]


def test_flags_name_what_a_user_should_see():
    fov = np.zeros((100, 100), np.uint8)
    cv2.circle(fov, (50, 50), 40, 1, -1)
    assert report.photo_flags(fov, {'vessel_density': 0.1}) == []
    cut = fov[20:80]  # a camera crop: the disc cut at the top and the bottom
    [touching] = report.photo_flags(cut, None)
    assert touching == 'the FOV touches the frame (top, bottom)'
    by_calibre = scale.Decision(1.4, 'main-vessel calibre')
    filling = report.photo_flags(np.ones((100, 100), np.uint8), None, by_calibre)
    assert filling == [
        'the FOV touches the frame on every side',
        'the FOV shows no disc: scale from main-vessel calibre',
    ]
    assert report.photo_flags(fov, None, scale.Decision(1.9, 'FOV diameter')) == []
    [far] = report.photo_flags(fov, None, scale.Decision(2.5, 'FOV diameter'))
    assert far.startswith("resized x2.50 to the model's scale")
    [few] = report.photo_flags(fov, {'vessel_density': 0.012})
    assert few == 'few vessels found (1.2% of the FOV)'


def test_the_csv_leaves_undefined_cells_empty_and_keeps_every_photo(tmp_path):
    rows = [
        {
            'image': 'a.png',
            'source': 'predicted',
            'vessel_density': 0.0,
            'fractal_dimension': None,
            'segments': 0,
            'flags': ['one', 'two'],
            'thumbnail': None,
        },
        report.unreadable('b.png', 'not an image'),
    ]
    report.write(str(tmp_path), rows, 'title')
    written = list(csv.DictReader(open(tmp_path / report.FEATURES_CSV)))
    assert [row['image'] for row in written] == ['a.png', 'b.png']
    assert written[0]['vessel_density'] == '0' and written[0]['segments'] == '0'
    assert written[0]['fractal_dimension'] == '' and written[0]['flags'] == 'one; two'
    assert written[1]['flags'] == 'could not be read or predicted: not an image'
    assert 'nan' not in open(tmp_path / report.FEATURES_CSV).read().lower()


@pytest.fixture(scope='module')
def evaluated(trained, synthetic, tmp_path_factory):
    logdir = tmp_path_factory.mktemp('report') / 'log'
    shutil.copytree(trained, logdir)
    result = run_here(
        'evaluate.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["test"]}',
        '--visulize=True',
        '--fov_degrees=45',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return evaluation_dir(logdir, 'SYNTH-test_step200_threshold0.5')


def test_evaluation_measures_the_predicted_and_the_manual_map_of_every_image(evaluated, synthetic):
    samples = label_files.parse_label_file(synthetic['test'])
    rows = list(csv.DictReader(open(os.path.join(evaluated, report.FEATURES_CSV))))
    assert [(row['image'], row['source']) for row in rows] == [
        (sample.name, source) for sample in samples for source in ('predicted', 'manual')
    ]
    for sample, manual in zip(samples, rows[1::2], strict=True):
        label, fov = utils.read_binary(sample.label), utils.read_binary(sample.mask).astype(bool)
        share = label[fov].mean()  # at native size; the reference scale keeps it within a few %
        assert float(manual['vessel_density']) == pytest.approx(share, rel=0.1)
        assert float(manual['fov_diameter_px']) == pytest.approx(
            np.sqrt(4 * fov.sum() / np.pi), abs=0.1
        )
        assert float(manual['mm_per_px']) > 0 and float(manual['calibre_mean_um']) > 0


def test_the_report_opens_from_disk_with_every_row_and_thumbnail(evaluated, tmp_path):
    page = os.path.join(evaluated, report.REPORT_HTML)
    rows = len(list(csv.DictReader(open(os.path.join(evaluated, report.FEATURES_CSV)))))
    assert summary(rendered(page)) == f'{rows} rows, {rows} images shown'
    moved = tmp_path / 'moved'  # a copy without one overlay: the page says which is missing
    shutil.copytree(evaluated, moved)
    missing = sorted(os.listdir(moved / 'overlays'))[0]  # an image's overlay, before its _prob
    assert not missing.endswith('_prob.png') and missing not in ('pr.png', 'roc.png')
    os.remove(moved / 'overlays' / missing)
    dom = rendered(moved / report.REPORT_HTML)
    assert summary(dom) == f'{rows} rows, {rows - 2} images shown'  # predicted and manual rows
    assert dom.count(f'image missing: overlays/{missing}') == 2


def test_the_reference_scale_takes_the_fov_diameter_the_user_gave():
    """A frame-filling photo (no disc) measured with --photo_fov_diameter=600: its features are
    at the scale that diameter sets (a 10 px vessel becomes 1000/600 as wide), not at the disc
    of its area."""
    vessels, inside = np.zeros((300, 400), np.uint8), np.ones((300, 400), np.uint8)
    vessels[145:155, 20:380] = 1
    given = report.row('x.png', 'predicted', vessels, inside, scale.NATIVE, report.Units(600))
    assert given['fov_diameter_px'] == 600
    assert given['calibre_median_px'] == pytest.approx(10 * 1000 / 600, rel=0.1)
    own = report.row('x.png', 'predicted', vessels, inside, scale.NATIVE, report.Units())
    assert own['fov_diameter_px'] == pytest.approx(np.sqrt(4 * 300 * 400 / np.pi), abs=0.1)
