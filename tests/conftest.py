"""Shared fixtures: a tiny synthetic set, a briefly trained run, the real data when present."""
import contextlib
import glob
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
sys.path.insert(0, ROOT)

import preprocess  # noqa: E402

# Small enough for 2 CPU cores: 96px synthetic retinas, 32px patches, a base-8 U-Net (base 4
# is too fragile: F1 0.45-0.81 across seeds after 200 steps; base 8: 0.86-0.87).
TINY_TRAINING = ['--preprocess=True', '--patch_size=32', '--batch_size=8', '--base_channels=8',
                 '--initial_lr=3e-3', '--log_interval=10']


def run_script(script, *args, env=None, timeout=600):
    """Runs one of the project's scripts as a user would; returns the CompletedProcess."""
    environment = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=timeout)


def last_line(text):
    return text.strip().splitlines()[-1] if text.strip() else ''


def read_events(logdir):
    """{tag: [(step, value)]} over every event file in {logdir}/train_logs, oldest file first."""
    import tensorflow as tf
    events = {}
    for path in sorted(glob.glob(os.path.join(logdir, 'train_logs', 'events.out.tfevents.*'))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                events.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return events


def steps_of(events, tag):
    return [step for step, _ in events[tag]]


def train(logdir, label_file, *args, script='train.py', env=None):
    return run_script(script, f'--logdir={logdir}', f'--label_file_path={label_file}',
                      *TINY_TRAINING, *args, env=env)


def checkpoint_step(logdir):
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(os.path.join(logdir, 'checkpoints'))
    return int(latest.rsplit('-', 1)[1]) if latest else 0


def start_training(logdir, label_file, *args):
    """train.py in the background, its stderr in stderr.txt beside the logdir."""
    stderr = open(os.path.join(os.path.dirname(logdir), 'stderr.txt'), 'w')
    command = [sys.executable, os.path.join(ROOT, 'train.py'), f'--logdir={logdir}',
               f'--label_file_path={label_file}', *TINY_TRAINING, *args]
    return subprocess.Popen(command, cwd=ROOT, stderr=stderr, stdout=subprocess.DEVNULL)


def wait_for(condition, timeout=180):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, 'timed out'
        time.sleep(0.05)


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]



@contextlib.contextmanager
def tmpfs(path, size, read_only_after=None):
    """A tmpfs of `size` mounted at `path` (skips where mounting is not permitted); with
    read_only_after, that function fills it first and it is then remounted read-only."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f'cannot mount a tmpfs here ({mounted.stderr.decode().strip()})')
    try:
        if read_only_after:
            read_only_after(path)
            subprocess.run(['mount', '-o', 'remount,ro', str(path)], check=True)
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=True)

def require_shared(*parts):
    """The path under ../shared/data, or a clean skip where it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f'{path} is not here (real data lives beside the checkout)')
    return path


@pytest.fixture(scope='session')
def synthetic(tmp_path_factory):
    """{'training': label file, 'test': label file} of a tiny preprocessed synthetic set."""
    root = tmp_path_factory.mktemp('synthetic')
    preprocess.generate_synthetic(str(root / 'raw' / 'SYNTH'), num_train=4, num_test=2, size=96,
                                  seed=0)
    preprocess.process(str(root / 'raw'), str(root / 'data'))
    return {split: str(root / 'data' / 'SYNTH' / f'{split}.txt') for split in ('training', 'test')}


@pytest.fixture(scope='session')
def drive(tmp_path_factory):
    """Label files of real DRIVE processed by preprocess.py (skips where DRIVE is absent)."""
    require_shared('DRIVE')
    root = tmp_path_factory.mktemp('real')
    os.symlink(os.path.join(SHARED_DATA, 'DRIVE'), root / 'DRIVE')
    counts = preprocess.process(str(root), str(root / 'data'))
    return {'counts': counts,
            **{split: str(root / 'data' / 'DRIVE' / f'{split}.txt') for split in ('training', 'test')}}


@pytest.fixture(scope='session')
def trained(tmp_path_factory, synthetic):
    """The logdir of a tiny model trained 200 steps on the synthetic set."""
    logdir = str(tmp_path_factory.mktemp('run') / 'log')
    result = run_script('train.py', f'--logdir={logdir}',
                        f'--label_file_path={synthetic["training"]}', '--max_iters=200',
                        '--save_interval=100', *TINY_TRAINING)
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir
