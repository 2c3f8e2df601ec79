"""Trained work is never lost: corrupt checkpoint state, deleted checkpoints, repeated kill -9,
a full disk, a read-only logdir, and the logdir lock."""

import fcntl
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import errors
import fileio
import model
from conftest import (
    ROOT,
    TRAINED_DEPTH,
    checkpoint_step,
    evaluation_dir,
    interrupt,
    last_line,
    read_events,
    read_weights,
    run_here,
    start_training,
    steps_of,
    tmpfs,
    train_here,
    wait_for,
)


def copy_run(trained, tmp_path):
    """A copy of the 200-step run, as if it had been planned for 400 steps."""
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    interrupt(logdir, 400)
    return logdir


def leftovers(logdir):
    """Temporary files and TensorFlow's half-saved checkpoint folders anywhere in the logdir."""
    return sorted(
        str(path.relative_to(logdir))
        for path in logdir.rglob('*')
        if path.name.startswith(fileio.TEMPORARY_PREFIX) or path.name.endswith('_temp')
    )


def tree_digest(logdir):
    return {
        str(path.relative_to(logdir)): path.read_bytes()
        for path in sorted(logdir.rglob('*'))
        if path.is_file() and path.name != 'train.lock'
    }


@pytest.mark.parametrize('damage', ['missing quote', 'truncated', 'empty'])
def test_corrupt_checkpoint_state_resumes_from_the_intact_checkpoints(
    trained, synthetic, tmp_path, damage, logs
):
    logdir = copy_run(trained, tmp_path)
    state = logdir / 'checkpoints' / 'checkpoint'
    text = state.read_text()
    state.write_text(
        {
            'missing quote': text.replace('"ckpt-200"', 'ckpt-200"', 1),
            'truncated': text[: len(text) // 2],
            'empty': '',
        }[damage]
    )
    train_here(logdir, synthetic['training'], max_iters=205, save_interval=5, depth=TRAINED_DEPTH)
    assert 'resuming at step 200 of 205' in logs()
    assert steps_of(read_events(logdir), 'train/loss') == list(range(1, 206))
    assert sorted(p.name for p in (logdir / 'checkpoints').glob('*.index')) == [
        'ckpt-100.index',
        'ckpt-200.index',
        'ckpt-205.index',
    ]
    assert 'model_checkpoint_path: "ckpt-205"' in state.read_text()


def test_an_unreadable_newest_checkpoint_is_skipped_with_a_warning(
    trained, synthetic, tmp_path, logs
):
    logdir = copy_run(trained, tmp_path)
    data = logdir / 'checkpoints' / 'ckpt-200.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:1000])
    train_here(logdir, synthetic['training'], max_iters=110, save_interval=5, depth=TRAINED_DEPTH)
    assert 'unreadable checkpoints skipped (ckpt-200: ' in logs()
    assert 'resuming at step 100 of 110' in logs()
    # The steps 101-200 written by the first run were trimmed: each step appears once.
    assert steps_of(read_events(logdir), 'train/loss') == list(range(1, 111))
    assert steps_of(read_events(logdir), 'train/input') == [100, 105, 110]
    assert not (logdir / 'checkpoints' / 'ckpt-200.index').exists()


def test_no_readable_checkpoint_stops_and_changes_nothing(trained, synthetic, tmp_path):
    logdir = copy_run(trained, tmp_path)
    for data in (logdir / 'checkpoints').glob('*.data-*'):
        data.write_bytes(b'')
    before = tree_digest(logdir)
    with pytest.raises(errors.UserError) as error:
        train_here(logdir, synthetic['training'], max_iters=400, depth=TRAINED_DEPTH)
    assert str(error.value).startswith(
        f'{logdir}/checkpoints: no checkpoint can be read (ckpt-200: '
    )
    assert str(error.value).endswith('nothing was changed')
    assert tree_digest(logdir) == before


def test_weights_without_checkpoints_are_never_overwritten(trained, synthetic, tmp_path):
    logdir = copy_run(trained, tmp_path)
    shutil.rmtree(logdir / 'checkpoints')
    before = tree_digest(logdir)
    with pytest.raises(errors.UserError) as error:
        train_here(logdir, synthetic['training'], max_iters=400, depth=TRAINED_DEPTH)
    assert str(error.value) == (
        f'--logdir={logdir} holds trained weights ({logdir}/model.weights.h5) but no '
        f'checkpoint to resume from ({logdir}/checkpoints is missing or empty); train into a new '
        '--logdir, or remove the weights to start over'
    )
    assert tree_digest(logdir) == before


def test_repeated_kill_9_loses_and_repeats_no_step_and_leaves_nothing(tmp_path, synthetic, logs):
    """The kill loop at a small scale (bench/kill_loop.py runs it 30 times): SIGKILL at random
    moments, then a run to the end resumes from the last checkpoint, and TensorBoard holds every
    step once."""
    logdir = tmp_path / 'log'
    rng = random.Random(0)
    steps = 1000  # the kills, each within a second of a checkpoint, come near step 130 here
    for _ in range(2):  # a second kill resumes a run that was itself resumed
        saved = checkpoint_step(logdir)
        process = start_training(
            str(logdir), synthetic['training'], f'--max_iters={steps}', '--save_interval=10'
        )
        wait_for(lambda saved=saved: checkpoint_step(logdir) > saved)  # work to lose
        time.sleep(rng.uniform(0, 1.0))  # then at a random moment, in a step or a save
        process.kill()
        process.wait()
    killed_at = checkpoint_step(logdir)
    assert 0 < killed_at < steps  # the kills came after checkpoints, before the end
    train_here(logdir, synthetic['training'], max_iters=steps, save_interval=10)
    assert f'resuming at step {killed_at} of {steps}' in logs()
    events = read_events(logdir)
    assert steps_of(events, 'train/loss') == list(range(1, steps + 1))
    assert steps_of(events, 'train/input') == list(range(10, steps + 1, 10))
    assert leftovers(logdir) == []


def test_kill_during_a_save_leaves_leftovers_that_the_next_run_removes(
    trained, synthetic, tmp_path
):
    logdir = copy_run(trained, tmp_path)
    (logdir / f'{fileio.TEMPORARY_PREFIX}abc.model.weights.h5').write_bytes(b'half')
    for folder in ('best', 'validation_logs'):  # a best-weights export, an event-file trim
        (logdir / folder).mkdir(exist_ok=True)
        (logdir / folder / f'{fileio.TEMPORARY_PREFIX}xyz.part').write_bytes(b'half')
    (logdir / 'checkpoints' / 'ckpt-250_temp').mkdir()
    (logdir / 'checkpoints' / 'ckpt-250_temp' / 'part-00000-of-00001.index').write_bytes(b'x')
    train_here(logdir, synthetic['training'], max_iters=202, depth=TRAINED_DEPTH)
    assert leftovers(logdir) == []


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, synthetic, logs):
    with tmpfs(tmp_path / 'small', '14m') as disk:  # a save of the original's depth: ~4 MiB
        logdir = disk / 'log'
        with pytest.raises(errors.UserError) as error:
            train_here(
                logdir, synthetic['training'], max_iters=8, save_interval=2, depth=model.DEPTH
            )
        assert str(error.value).startswith(f'--logdir={logdir}: the disk is full (')
        assert str(error.value).endswith(f'the last good checkpoint is {logdir}/checkpoints/ckpt-2')
        assert leftovers(logdir) == []
        moved = tmp_path / 'moved'
        shutil.copytree(logdir, moved)
    # A moved logdir resumes.
    train_here(moved, synthetic['training'], max_iters=8, save_interval=2, depth=model.DEPTH)
    assert 'resuming at step 2 of 8' in logs()
    assert steps_of(read_events(moved), 'train/loss') == list(range(1, 9))


def test_read_only_logdir_is_one_line_and_evaluate_writes_elsewhere(trained, synthetic, tmp_path):
    def fill(path):
        shutil.copytree(trained, path / 'log')

    with tmpfs(tmp_path / 'ro', '64m', read_only_after=fill) as disk:
        logdir = disk / 'log'
        with pytest.raises(
            errors.UserError,
            match=f'^--logdir={logdir}: cannot write there '
            r'\(Read-only file system\)$',
        ):
            train_here(logdir, synthetic['training'], max_iters=210, depth=TRAINED_DEPTH)
        evaluate = ['evaluate.py', f'--logdir={logdir}', f'--label_file_path={synthetic["test"]}']
        result = run_here(*evaluate)
        assert result.returncode == 2
        assert last_line(result.stderr) == (
            f'error: --output_dir={logdir}: cannot write there (Read-only file system)'
        )
        assert 'confuse mat' not in result.stdout  # refused before any work
        result = run_here(*evaluate, f'--output_dir={tmp_path / "eval"}')
        assert result.returncode == 0, result.stderr[-2000:]
        written = os.listdir(evaluation_dir(tmp_path / 'eval', 'SYNTH-test_step200_threshold0.5'))
        assert {'metrics.json', 'metrics.csv'} <= set(written)
        images = os.path.join(os.path.dirname(synthetic['test']), 'test', 'images')
        result = run_here('evaluate.py', f'--logdir={logdir}', f'--predict={images}')
        assert last_line(result.stderr) == (
            f'error: --predict_dir={logdir}/predictions: cannot write there (Read-only file system)'
        )


def test_the_logdir_lock_is_held_by_the_os_for_the_life_of_the_process(tmp_path, synthetic):
    logdir = tmp_path / 'log'
    logdir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            '-c',
            'import fcntl, sys, time; f = open(sys.argv[1], "a+"); '
            'fcntl.flock(f, fcntl.LOCK_EX); f.write("host h, pid 1"); f.flush(); print(1, flush=True);'
            ' time.sleep(600)',
            str(logdir / 'train.lock'),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        holder.stdout.readline()
        with pytest.raises(errors.UserError) as error:
            train_here(logdir, synthetic['training'], max_iters=2)
        assert str(error.value) == (
            f'--logdir={logdir}: another train.py (host h, pid 1) is writing it'
        )
    finally:
        holder.kill()
        holder.wait()
    train_here(logdir, synthetic['training'], max_iters=2)
    with open(logdir / 'train.lock') as lock:  # released at exit
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_resume_after_a_finished_run_rewrites_weights_from_the_checkpoint(
    trained, synthetic, tmp_path, logs
):
    logdir = tmp_path / 'log'
    shutil.copytree(trained, logdir)
    weights = logdir / 'model.weights.h5'
    original = tmp_path / 'original.weights.h5'
    shutil.copy(weights, original)
    weights.write_bytes(b'stale')  # as if killed between the last checkpoint and the export
    train_here(logdir, synthetic['training'], max_iters=200, save_interval=100, depth=TRAINED_DEPTH)
    assert 'already trained to --max_iters=200' in logs()
    assert same_weights(weights, original)


def same_weights(a, b):
    """Whether two .weights.h5 files hold the same arrays under the same names."""
    first, second = read_weights(a), read_weights(b)
    return first.keys() == second.keys() and all(
        np.array_equal(array, second[name]) for name, array in first.items()
    )


def test_a_save_that_fails_midway_is_one_line_and_leaves_no_partial_file(tmp_path):
    """The disk filling during a save (another writer), which the free-space check cannot see:
    run_folder.save itself (as a script's main runs it), on a disk with room for the checkpoint but not for the weights."""
    script = '''
import os, shutil, sys
sys.path.insert(0, sys.argv[2])
import keras, tensorflow as tf
import cli, model, run_folder
logdir = sys.argv[1]
unet = model.build_unet(base_channels=8, in_channels=1)
optimizer = keras.optimizers.Adam()
optimizer.build(unet.trainable_variables)
manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=unet, optimizer=optimizer),
                                     os.path.join(logdir, 'checkpoints'), max_to_keep=3)
with open(os.path.join(logdir, 'filler'), 'wb') as stream:  # leaves 6.5 MiB free
    stream.write(bytes(shutil.disk_usage(logdir).free - 13 * 2 ** 19))
cli.run_main(lambda argv: run_folder.save(manager, unet, logdir, True, 7))(['-c'])
'''
    with tmpfs(tmp_path / 'small', '16m') as disk:
        result = subprocess.run(
            [sys.executable, '-c', script, str(disk), ROOT],
            capture_output=True,
            text=True,
            env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''},
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert 'Traceback' not in result.stderr and 'h5py' not in result.stderr
        assert last_line(result.stderr) == (
            f'error: --logdir={disk}: could not save step 7 (no space left on device); the last '
            f'good checkpoint is {disk}/checkpoints/ckpt-7'
        )
        assert leftovers(disk) == [] and not (disk / 'model.weights.h5').exists()
