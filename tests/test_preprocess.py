"""The four steps on known arrays, FOV masks on real data, the label-file layout, bad input."""

import glob
import os
import re

import numpy as np
import pytest
from scipy import stats

import errors
import fileio
import preprocess
import utils
from conftest import SHARED_DATA, last_line, require_shared, run_script


def test_rgb_to_gray_uses_luma_weights():
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    np.testing.assert_allclose(
        utils.rgb_to_gray(image), [[76.245, 149.685, 29.07, 0.299 * 10 + 0.587 * 20 + 0.114 * 30]]
    )


def test_standardize_rescales_to_full_range():
    np.testing.assert_array_equal(
        utils.standardize(np.array([[0, 50], [100, 150]])), [[0, 85], [170, 255]]
    )
    assert not utils.standardize(np.full((4, 4), 7)).any()  # constant: no division by zero


def test_clahe_stretches_low_contrast_and_keeps_order():
    image = np.random.default_rng(0).integers(100, 113, (128, 128)).astype(np.uint8)
    out = utils.clahe(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out.std() > 2 * image.std()  # a 13-level texture is stretched (2.9x at clip 2.0)
    assert stats.spearmanr(image.ravel(), out.ravel())[0] > 0.9  # darker stays darker


def test_gamma_follows_the_formula():
    values = np.array([0, 64, 128, 255], np.uint8)
    expected = [round(255 * (v / 255) ** (1 / 1.2)) for v in values.tolist()]
    np.testing.assert_array_equal(utils.adjust_gamma(values), expected)
    assert expected[1] > 64  # gamma 1.2 brightens


def test_preprocess_image_runs_the_steps_in_order():
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    stages = utils.preprocess_image(image)
    assert list(stages) == ['gray', 'standardized', 'clahe', 'gamma']
    np.testing.assert_array_equal(
        stages['gamma'], utils.adjust_gamma(utils.clahe(stages['standardized']))
    )


def test_real_drive_becomes_png_triples_and_label_files(drive):
    assert drive['counts'] == {'DRIVE': {'training': 20, 'test': 20}}
    lines = open(drive['test']).read().splitlines()
    assert lines[0] == 'test/images,test/labels,test/masks' and len(lines) == 21
    assert lines[1] == '01_test.png,01_test.png,01_test.png'
    root = os.path.dirname(drive['test'])
    for folder in ('images', 'images_pre', 'labels', 'masks', 'labels_2nd'):
        assert len(os.listdir(os.path.join(root, 'test', folder))) == 20, folder
    # The PNG label equals the shipped GIF, pixel for pixel.
    shipped = utils.read_binary(os.path.join(SHARED_DATA, 'DRIVE/test/1st_manual/01_manual1.gif'))
    np.testing.assert_array_equal(
        utils.read_binary(os.path.join(root, 'test/labels/01_test.png')), shipped
    )
    pre = utils.read_image(os.path.join(root, 'test/images_pre/01_test.png'), gray=True)
    assert pre.shape == (584, 565)


def test_chase_split_and_counts(tmp_path):
    require_shared('CHASEDB1')
    os.symlink(os.path.join(SHARED_DATA, 'CHASEDB1'), tmp_path / 'CHASEDB1')
    splits = preprocess.find_datasets(str(tmp_path))['CHASEDB']
    assert [s.name for s in splits['training']][:3] == ['Image_01L', 'Image_01R', 'Image_02L']
    assert len(splits['training']) == 20 and splits['test'] == []
    assert all(s.second_label and s.mask is None for s in splits['training'])


def test_synthetic_set_is_deterministic_and_labels_exact(tmp_path):
    for run in ('a', 'b'):
        preprocess.generate_synthetic(str(tmp_path / run), 1, 1, 128, seed=3)
    first = utils.read_image(str(tmp_path / 'a/training/images/01_training.png'))
    np.testing.assert_array_equal(
        first, utils.read_image(str(tmp_path / 'b/training/images/01_training.png'))
    )
    label = utils.read_binary(str(tmp_path / 'a/training/1st_manual/01_manual1.png')).astype(bool)
    mask = utils.read_binary(str(tmp_path / 'a/training/mask/01_training_mask.png')).astype(bool)
    assert 0.03 < label.sum() / mask.sum() < 0.2  # DRIVE: about 12% of the FOV is vessel
    assert not (label & ~mask).any()
    green = first[..., 1].astype(float)
    assert green[label].mean() < green[mask & ~label].mean() - 10  # vessels are darker


def test_rerun_is_idempotent(tmp_path):
    preprocess.generate_synthetic(str(tmp_path / 'raw/SYNTH'), 2, 1, 64, seed=0)
    preprocess.process(str(tmp_path / 'raw'), str(tmp_path / 'out'))
    files = sorted(glob.glob(str(tmp_path / 'out/**/*.*'), recursive=True))
    before = {f: open(f, 'rb').read() for f in files}
    preprocess.process(str(tmp_path / 'raw'), str(tmp_path / 'out'))
    assert sorted(glob.glob(str(tmp_path / 'out/**/*.*'), recursive=True)) == files
    assert all(open(f, 'rb').read() == data for f, data in before.items())


# ----------------------------------------------------------------------------- the command line


@pytest.fixture
def raw(tmp_path):
    preprocess.generate_synthetic(str(tmp_path / 'raw/SYNTH'), 2, 1, 64, seed=0)
    return tmp_path / 'raw' / 'SYNTH' / 'training'


def _run(tmp_path, data_dir=None):
    data_dir = data_dir or tmp_path / 'raw'
    return run_script('preprocess.py', f'--data_dir={data_dir}', f'--output_dir={tmp_path / "out"}')


def test_cli_processes_and_reports_counts(tmp_path, raw):
    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'SYNTH: 2 training, 1 test' in result.stdout
    assert os.path.exists(tmp_path / 'out/SYNTH/training.txt')


def test_cli_synthetic_and_figures(tmp_path):
    result = run_script(
        'preprocess.py',
        '--synthetic',
        f'--data_dir={tmp_path / "raw"}',
        f'--output_dir={tmp_path / "out"}',
        '--synthetic_size=64',
        '--visualize',
        f'--figure_dir={tmp_path / "fig"}',
    )
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / 'fig')) == ['dataset_sample.png', 'preprocess.png']
    assert len(open(tmp_path / 'out/SYNTH/test.txt').read().splitlines()) == 5


def _break_label_size(raw):
    fileio.write_png(str(raw / '1st_manual/01_manual1.png'), np.zeros((10, 10), np.uint8))


def _grey_label(raw):
    fileio.write_png(str(raw / '1st_manual/01_manual1.png'), np.full((64, 64), 128, np.uint8))


def _truncate_image(raw):
    data = open(raw / 'images/02_training.png', 'rb').read()
    open(raw / 'images/02_training.png', 'wb').write(data[: len(data) // 3])


@pytest.mark.parametrize(
    'damage, message',
    [
        (
            lambda raw: os.remove(raw / '1st_manual/02_manual1.png'),
            r'02_training.png: no label 02_manual1\.\* in .*1st_manual',
        ),
        (_break_label_size, r'01_manual1.png: size 10x10 differs from its image .*01_training.png'),
        (_grey_label, r'01_manual1.png: not a binary image \(values 128'),
        (_truncate_image, r'02_training.png: not a readable image'),
        (
            lambda raw: open(raw / 'images/02_training.png', 'wb').close(),
            r'02_training.png: file is empty',
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, raw, damage, message):
    damage(raw)
    result = _run(tmp_path)
    assert result.returncode == 2
    assert last_line(result.stderr).startswith('error: ')
    assert 'Traceback' not in result.stderr
    assert re.search(message, last_line(result.stderr)), last_line(result.stderr)
    assert not os.path.exists(tmp_path / 'out')


def test_cli_missing_or_empty_data_dir(tmp_path):
    result = _run(tmp_path, tmp_path / 'nowhere')
    assert result.returncode == 2 and 'nowhere: no such folder' in last_line(result.stderr)
    (tmp_path / 'empty').mkdir()
    result = _run(tmp_path, tmp_path / 'empty')
    assert result.returncode == 2 and 'found no images' in last_line(result.stderr)
    result = run_script('preprocess.py')
    assert (
        result.returncode == 1
        and '--data_dir' in result.stderr
        and 'Traceback' not in result.stderr
    )


def test_an_output_folder_inside_the_downloads_is_refused(tmp_path, raw):
    files = sorted(glob.glob(str(tmp_path / 'raw/**/*.*'), recursive=True))
    for output in (tmp_path / 'raw', tmp_path / 'raw' / 'SYNTH' / 'training'):
        with pytest.raises(
            errors.UserError,
            match=f'--output_dir={output}: would write .* into the downloads of --data_dir=',
        ):
            preprocess.process(str(tmp_path / 'raw'), str(output))
    assert sorted(glob.glob(str(tmp_path / 'raw/**/*.*'), recursive=True)) == files
    preprocess.process(str(tmp_path / 'raw'), str(tmp_path))  # the downloads beside the output
    assert os.path.exists(tmp_path / 'SYNTH' / 'training.txt')
