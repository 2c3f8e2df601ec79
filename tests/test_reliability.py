"""Bad files in every format, a bad image reached through train.py, and preprocess killed
mid-run: one-line errors, and nothing half-written."""

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import cli
import dataset
import errors
import fileio
import label_files
import preprocess
import utils
from conftest import ROOT, TINY_TRAINING, last_line, run_here, run_script


@pytest.mark.parametrize('extension', ['.png', '.jpg', '.tif'])
def test_truncated_files_of_every_format(tmp_path, extension):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    path = str(tmp_path / f'full{extension}')
    cv2.imwrite(path, image)
    data = open(path, 'rb').read()
    cut = tmp_path / f'cut{extension}'
    cut.write_bytes(data[: len(data) // 4])
    with pytest.raises(errors.UserError, match=f'cut{extension}: not a readable image'):
        utils.read_image(str(cut))


def test_colour_label_is_refused_but_rgb_stored_gray_is_fine(tmp_path):
    path = str(tmp_path / 'label.png')
    gray = np.zeros((8, 8), np.uint8)
    gray[2:4] = 255
    fileio.write_png(
        path, np.stack([gray] * 3, axis=-1)
    )  # RGB with equal channels, as DRIVE's GIFs
    np.testing.assert_array_equal(utils.read_binary(path), gray // 255)
    coloured = np.stack([gray, gray, np.zeros_like(gray)], axis=-1)
    fileio.write_png(path, coloured)
    with pytest.raises(
        errors.UserError, match='label.png: a colour image where a gray one is expected'
    ):
        utils.read_binary(path)


def test_train_names_a_broken_image_in_the_label_file(tmp_path, synthetic):
    root = os.path.dirname(synthetic['training'])
    broken = tmp_path / 'data'
    subprocess.run(['cp', '-r', root, str(broken)], check=True)
    image = broken / 'training' / 'images' / '02_training.png'
    image.write_bytes(image.read_bytes()[:100])
    result = run_here(
        'train.py',
        f'--logdir={tmp_path / "log"}',
        f'--label_file_path={broken / "training.txt"}',
        *TINY_TRAINING,
    )
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert (
        last_line(result.stderr)
        == f'error: {image}: not a readable image (corrupt or unsupported format)'
    )
    assert not os.path.exists(tmp_path / 'log')


def test_preprocess_killed_mid_run_leaves_no_half_file_and_reruns(tmp_path):
    preprocess.generate_synthetic(str(tmp_path / 'raw' / 'SYNTH'), 16, 4, 384, seed=1)
    command = [
        sys.executable,
        os.path.join(ROOT, 'preprocess.py'),
        f'--data_dir={tmp_path / "raw"}',
        f'--output_dir={tmp_path / "out"}',
    ]
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.time() + 60
    while not list((tmp_path / 'out').rglob('*.png')) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for path in (tmp_path / 'out').rglob('*'):
        if path.is_file() and not path.name.startswith(fileio.TEMPORARY_PREFIX):
            assert path.suffix == '.png', path  # label files come last: none yet
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    lines = open(tmp_path / 'out' / 'SYNTH' / 'training.txt').read().splitlines()
    assert len(lines) == 17


# ----------------------------------------------------------------------------- round 2


def test_leftover_positional_arguments_are_refused(tmp_path):
    # '--preprocess False' (a space, not '=') used to train with preprocess on, silently.
    result = run_script('preprocess.py', f'--data_dir={tmp_path}', '--visulize', 'False')
    assert result.returncode == 2
    assert last_line(result.stderr) == (
        "error: unexpected argument 'False': flags are written "
        '--name=value (a space before the value leaves it unused)'
    )


@pytest.mark.parametrize(
    'args', [['--visulize=True', '--visualize=False'], ['--visualize', '--novisulize']]
)
def test_contradictory_aliases_are_refused(tmp_path, args):
    result = run_script('preprocess.py', f'--data_dir={tmp_path}', *args)
    assert result.returncode == 2
    assert last_line(result.stderr).endswith(
        'contradict each other (--visualize is another spelling of --visulize)'
    )
    cli.check_aliases(['--visulize', '--visualize=true', '--seed=1'])  # agreeing: accepted


@pytest.mark.parametrize('extension', ['.png', '.tif'])
def test_16_bit_images_are_scaled_to_8_bits_and_0_1_labels_kept(tmp_path, extension):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    path = str(tmp_path / f'deep{extension}')
    assert cv2.imwrite(path, image[..., ::-1])
    np.testing.assert_array_equal(utils.read_image(path), np.rint(image / 257).astype(np.uint8))
    label = (rng.random((8, 8)) < 0.3).astype(np.uint16)
    for scale in (1, 65535):
        cv2.imwrite(str(tmp_path / f'label{extension}'), label * scale)
        np.testing.assert_array_equal(utils.read_binary(str(tmp_path / f'label{extension}')), label)


def test_a_label_file_with_a_byte_order_mark_is_read(tmp_path, synthetic):
    text = open(synthetic['training'], encoding='utf-8').read()
    path = os.path.join(os.path.dirname(synthetic['training']), 'bom.txt')
    with open(path, 'w', encoding='utf-8-sig') as stream:  # as Windows Notepad saves it
        stream.write(text)
    assert label_files.parse_label_file(path) == label_files.parse_label_file(synthetic['training'])


def synthetic_raw(tmp_path, folder='raw', count=2):
    root = tmp_path / folder
    preprocess.generate_synthetic(str(root / 'SYNTH'), count, 1, 64, seed=0)
    return root


def test_a_comma_in_an_image_name_is_refused_before_anything_is_written(tmp_path):
    raw = synthetic_raw(tmp_path)
    images = raw / 'SYNTH' / 'training' / 'images'
    (images / '01_training.png').rename(images / '01_training,v2.png')
    (raw / 'SYNTH' / 'training' / 'mask' / '01_training_mask.png').rename(
        raw / 'SYNTH' / 'training' / 'mask' / '01_training,v2_mask.png'
    )
    with pytest.raises(
        errors.UserError,
        match=r'01_training,v2.png: a comma or line break in a '
        r'file name cannot be listed in a label file',
    ):
        preprocess.process(str(raw), str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


def test_folders_with_glob_characters_are_found(tmp_path):
    raw = synthetic_raw(tmp_path, folder='br [v2]')
    result = run_script('preprocess.py', f'--data_dir={raw}', f'--output_dir={tmp_path / "o [1]"}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'SYNTH: 2 training, 1 test' in result.stdout


def test_empty_fov_masks_are_refused_where_they_come_in(tmp_path, synthetic):
    raw = synthetic_raw(tmp_path)
    mask = raw / 'SYNTH' / 'training' / 'mask' / '01_training_mask.png'
    cv2.imwrite(str(mask), np.zeros((64, 64), np.uint8))
    with pytest.raises(errors.UserError, match=f'^{mask}: the FOV mask is empty \\(all zero\\)$'):
        preprocess.process(str(raw), str(tmp_path / 'out'))
    black = tmp_path / 'black.png'
    cv2.imwrite(str(black), np.zeros((64, 64, 3), np.uint8))
    sample = preprocess.RawSample('black', str(black), str(black))
    with pytest.raises(errors.UserError, match='black.png: no field of view found'):
        preprocess.load_sample(sample)
    # An evaluation label file whose mask is empty: named, before any prediction.
    samples = label_files.parse_label_file(synthetic['test'])
    empty = tmp_path / 'empty_mask.png'
    cv2.imwrite(str(empty), np.zeros((96, 96), np.uint8))
    with pytest.raises(errors.UserError, match=f'^{empty}: the FOV mask is empty'):
        dataset.load_examples(
            [label_files.Sample('x', samples[0].image, samples[0].label, str(empty))]
        )
