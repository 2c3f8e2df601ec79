"""Shared fixtures: a tiny synthetic set, a briefly trained run, the real data when present."""

import contextlib
import glob
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

# The suite runs on two workers (make test: pytest -n 2), one per core: each TensorFlow process
# of theirs (and every script they start) computes on one thread instead of competing for both.
os.environ.setdefault('TF_NUM_INTRAOP_THREADS', '1')
os.environ.setdefault('OMP_NUM_THREADS', '1')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')

import preprocess  # noqa: E402

# Small enough for 2 CPU cores: 96px synthetic retinas, 32px patches, a base-8 U-Net (base 4
# is too fragile: F1 0.45-0.81 across seeds after 200 steps; base 8: 0.86-0.87) of depth 2:
# tracing its training step takes 40% less time than at the original's depth 4, which `trained`
# keeps (a depth-2 net's vessel map changes more when a photo is resized: test_scale).
TINY = {
    'preprocess': True,
    'patch_size': 32,
    'batch_size': 8,
    'base_channels': 8,
    'depth': 2,
    'initial_lr': 3e-3,
    'log_interval': 10,
}
TINY_TRAINING = [f'--{name}={value}' for name, value in TINY.items()]
TRAINED_DEPTH = 4  # the `trained` run's: the original's U-Net


def run_script(script, *args, env=None, timeout=600):
    """Runs one of the project's scripts as a user would; returns the CompletedProcess."""
    environment = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_here(script, *args):
    """Runs a script's absl main in this process, as `run_script` runs it in a new one (the same
    flag parsing and one-line errors, no TensorFlow start-up): returns a CompletedProcess with
    the exit code, stdout, and stderr holding the errors and log lines."""
    import importlib

    from absl import flags
    from absl import logging as absl_logging

    import cli

    module = importlib.import_module(script.removesuffix('.py'))
    argv = [script, *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger('absl').addHandler(handler)
    absl_logging.set_verbosity(absl_logging.INFO)
    saved_argv, sys.argv = sys.argv, argv
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                remaining = flags.FLAGS(argv)
                cli.run_main(module.main)(remaining)
            except flags.Error as error:
                print(f'FATAL Flags parsing error: {error}', file=sys.stderr)
                code = 1
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved_argv
        flags.FLAGS.unparse_flags()
        logging.getLogger('absl').removeHandler(handler)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def last_line(text):
    return text.strip().splitlines()[-1] if text.strip() else ''


def read_events(logdir, folder='train_logs'):
    """{tag: [(step, value)]} over every event file in {logdir}/{folder}, oldest file first."""
    import tensorflow as tf

    events = {}
    for path in sorted(glob.glob(os.path.join(logdir, folder, 'events.out.tfevents.*'))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                events.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return events


def read_weights(path):
    """{name: array} of a Keras .weights.h5 file, read with h5py (Keras' own dependency)."""
    import h5py
    import numpy as np

    arrays = {}
    with h5py.File(path) as stream:
        stream.visititems(
            lambda name, item: (
                arrays.__setitem__(name, np.array(item)) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


def steps_of(events, tag):
    return [step for step, _ in events[tag]]


def train(logdir, label_file, *args, script='train.py', env=None):
    return run_script(
        script,
        f'--logdir={logdir}',
        f'--label_file_path={label_file}',
        *TINY_TRAINING,
        *args,
        env=env,
    )


def train_here(logdir, label_file, **changes):
    """train.train in this process with the tiny settings (as `train` runs the script); returns
    its TrainResult. The loop reads no flags, so most tests need no TensorFlow start-up of their
    own."""
    import tensorflow as tf

    import train as train_module
    import train_config

    config = train_config.TrainConfig(
        logdir=str(logdir), label_file_path=str(label_file), **{**TINY, **changes}
    )
    return train_module.train(tf.distribute.get_strategy(), config)


@contextlib.contextmanager
def signal_at(text, number):
    """Sends this process signal `number` when absl logs a line holding `text`: a Ctrl-C or a
    scheduler's pre-emption arriving mid-run, at a known step, without a process of its own."""
    from absl import logging as absl_logging

    class Trigger(logging.Handler):
        def emit(self, record):
            if text in record.getMessage():
                os.kill(os.getpid(), number)

    absl_logging.set_verbosity(absl_logging.INFO)
    trigger = Trigger()
    logging.getLogger('absl').addHandler(trigger)
    try:
        yield
    finally:
        logging.getLogger('absl').removeHandler(trigger)


def checkpoint_step(logdir):
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(logdir, 'checkpoints'))
    return int(latest.rsplit('-', 1)[1]) if latest else 0


def start_training(logdir, label_file, *args):
    """train.py in the background, its stderr in stderr.txt beside the logdir."""
    stderr = open(os.path.join(os.path.dirname(logdir), 'stderr.txt'), 'w')
    command = [
        sys.executable,
        os.path.join(ROOT, 'train.py'),
        f'--logdir={logdir}',
        f'--label_file_path={label_file}',
        *TINY_TRAINING,
        *args,
    ]
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
    mounted = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f'cannot mount a tmpfs here ({mounted.stderr.decode().strip()})')
    try:
        if read_only_after:
            read_only_after(path)
            subprocess.run(['mount', '-o', 'remount,ro', str(path)], check=True)
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=True)


def interrupt(logdir, max_iters):
    """Makes a finished run look interrupted at its last step by a planned length of max_iters
    (the learning rate of a finished run has reached 0, so it cannot be extended)."""
    path = os.path.join(str(logdir), 'config.json')
    saved = json.load(open(path))
    saved['settings']['max_iters'] = max_iters
    saved['learning_rate_knots'] = [saved['learning_rate_knots'][0], [max_iters, 0.0]]
    with open(path, 'w') as stream:
        json.dump(saved, stream)


def evaluation_dir(logdir, name):
    """An evaluation's folder, e.g. evaluation_dir(logdir, 'SYNTH-test_step200_threshold0.5')."""
    return os.path.join(str(logdir), 'evaluations', name)


def require_shared(*parts):
    """The path under ../shared/data, or a clean skip where it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f'{path} is not here (real data lives beside the checkout)')
    return path


@pytest.fixture
def logs(caplog):
    """The text that absl logged in this process so far (INFO and up)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    caplog.set_level(logging.INFO, logger='absl')
    return lambda: caplog.text


@pytest.fixture(scope='session')
def synthetic(tmp_path_factory):
    """{'training': label file, 'test': label file} of a tiny preprocessed synthetic set."""
    root = tmp_path_factory.mktemp('synthetic')
    preprocess.generate_synthetic(
        str(root / 'raw' / 'SYNTH'), num_train=4, num_test=2, size=96, seed=0
    )
    preprocess.process(str(root / 'raw'), str(root / 'data'))
    return {split: str(root / 'data' / 'SYNTH' / f'{split}.txt') for split in ('training', 'test')}


@pytest.fixture(scope='session')
def drive(tmp_path_factory):
    """Label files of real DRIVE processed by preprocess.py (skips where DRIVE is absent)."""
    require_shared('DRIVE')
    root = tmp_path_factory.mktemp('real')
    os.symlink(os.path.join(SHARED_DATA, 'DRIVE'), root / 'DRIVE')
    counts = preprocess.process(str(root), str(root / 'data'))
    return {
        'counts': counts,
        **{split: str(root / 'data' / 'DRIVE' / f'{split}.txt') for split in ('training', 'test')},
    }


@pytest.fixture(scope='session')
def trained(tmp_path_factory, synthetic):
    """The logdir of a tiny model of the original's depth trained 200 steps on the synthetic
    set."""
    logdir = str(tmp_path_factory.mktemp('run') / 'log')
    result = run_here(
        'train.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["training"]}',
        '--max_iters=200',
        '--save_interval=100',
        *TINY_TRAINING,
        f'--depth={TRAINED_DEPTH}',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir
