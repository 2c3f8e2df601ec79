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

import preprocess
import utils
from conftest import ROOT, TINY_TRAINING, last_line, run_script


@pytest.mark.parametrize('extension', ['.png', '.jpg', '.tif'])
def test_truncated_files_of_every_format(tmp_path, extension):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    path = str(tmp_path / f'full{extension}')
    cv2.imwrite(path, image)
    data = open(path, 'rb').read()
    cut = tmp_path / f'cut{extension}'
    cut.write_bytes(data[:len(data) // 4])
    with pytest.raises(utils.UserError, match=f'cut{extension}: not a readable image'):
        utils.read_image(str(cut))


def test_colour_label_is_refused_but_rgb_stored_gray_is_fine(tmp_path):
    path = str(tmp_path / 'label.png')
    gray = np.zeros((8, 8), np.uint8)
    gray[2:4] = 255
    utils.write_png(path, np.stack([gray] * 3, axis=-1))  # RGB with equal channels, as DRIVE's GIFs
    np.testing.assert_array_equal(utils.read_binary(path), gray // 255)
    coloured = np.stack([gray, gray, np.zeros_like(gray)], axis=-1)
    utils.write_png(path, coloured)
    with pytest.raises(utils.UserError, match='label.png: a colour image where a gray one is expected'):
        utils.read_binary(path)


def test_train_names_a_broken_image_in_the_label_file(tmp_path, synthetic):
    root = os.path.dirname(synthetic['training'])
    broken = tmp_path / 'data'
    subprocess.run(['cp', '-r', root, str(broken)], check=True)
    image = broken / 'training' / 'images_pre' / '02_training.png'
    image.write_bytes(image.read_bytes()[:100])
    result = run_script('train.py', f'--logdir={tmp_path / "log"}',
                        f'--label_file_path={broken / "training.txt"}', *TINY_TRAINING)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert last_line(result.stderr) == f'error: {image}: not a readable image (corrupt or unsupported format)'
    assert not os.path.exists(tmp_path / 'log')


def test_preprocess_killed_mid_run_leaves_no_half_file_and_reruns(tmp_path):
    preprocess.generate_synthetic(str(tmp_path / 'raw' / 'SYNTH'), 16, 4, 384, seed=1)
    command = [sys.executable, os.path.join(ROOT, 'preprocess.py'),
               f'--data_dir={tmp_path / "raw"}', f'--output_dir={tmp_path / "out"}']
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.time() + 60
    while not list((tmp_path / 'out').rglob('*.png')) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for path in (tmp_path / 'out').rglob('*'):
        if path.is_file() and not path.name.startswith('.tmp.'):
            assert path.suffix == '.png', path  # label files come last: none yet
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    lines = open(tmp_path / 'out' / 'SYNTH' / 'training.txt').read().splitlines()
    assert len(lines) == 17
