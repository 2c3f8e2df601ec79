"""A new user's journey: a fresh virtual environment, `pip install -r requirements.txt`, then the
README's main command (make demo) in a copy of the repository with nothing generated in it."""

import glob
import json
import os
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_readme_main_job_on_a_fresh_copy(tmp_path):
    files = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    copy = tmp_path / 'retina-unet'
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(copy / os.path.dirname(name), exist_ok=True)
            subprocess.run(['cp', os.path.join(ROOT, name), str(copy / name)], check=True)
    environment = {
        key: value for key, value in os.environ.items() if key not in ('VIRTUAL_ENV', 'PYTHONPATH')
    }
    environment['CUDA_VISIBLE_DEVICES'] = ''
    readme = open(copy / 'README.md').read()
    command = 'python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && make demo'
    assert command in readme
    result = subprocess.run(
        command, shell=True, cwd=copy, env=environment, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    evaluation = 'log/demo/evaluations/SYNTH-test_step300_calibrated-on-SYNTH-training'
    assert f'overlays, probability maps and ROC/PR curves: {evaluation}/overlays/' in result.stdout
    overlays = glob.glob(str(copy / evaluation / 'overlays' / '*_test.png'))
    assert len(overlays) == 4
    for run in ('log/demo/train_logs', 'log/demo/validation_logs', evaluation):  # TensorBoard's
        assert glob.glob(str(copy / run / 'events.out.tfevents.*')), run  # runs under log/demo
    metrics = json.load(open(copy / evaluation / 'metrics.json'))
    assert metrics['scores']['F1'] > 0.8  # chance (all vessel) is about 0.14 here
