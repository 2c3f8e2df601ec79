"""The run folder (--logdir): every file a training run keeps is named, written and read here.

  config.json          every setting and the learning-rate knots (train_config.TrainConfig)
  architecture.json    the model evaluate.py builds (model.ARCHITECTURE_KEYS)
  scale.json           the FOV diameter and main-vessel calibre the model learned at
  model.weights.h5     the weights of the newest step
  checkpoints/ckpt-N.* model and optimizer, for exact resumes (the newest three)
  best/                the best validation step's weights and best.json
  train_logs/, validation_logs/   TensorBoard events
  train.lock           held (fcntl.flock) while a train.py writes the folder

Every JSON file goes through fileio.read_json with its fields checked, so a damaged or crafted
file gives one line naming the file and the field. Errors are raised, never exits.
"""

import contextlib
import errno
import fcntl
import glob
import io
import math
import os
import re
import shutil
import socket
import stat
import sys
from typing import TextIO

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import errors
import fileio
import scale
from metrics import BEST_METRICS
from model import ARCHITECTURE_KEYS, DEPTH, MAX_BASE_CHANNELS, MAX_DEPTH

ARCHITECTURE_FILE = 'architecture.json'
SCALE_FILE = 'scale.json'  # the FOV diameter of the training images, which evaluate.py matches
WEIGHTS_FILE = 'model.weights.h5'
CHECKPOINT_DIR = 'checkpoints'
BEST_DIR, BEST_FILE = 'best', 'best.json'  # the best validation step's weights and scores
SUMMARY_DIR = 'train_logs'  # TensorBoard: training
VALIDATION_DIR = 'validation_logs'  # TensorBoard: validation
CONFIG_FILE = 'config.json'
LOCK_FILE = 'train.lock'


ARCHITECTURE_FIELDS = {
    'num_classes': (fileio.is_integer(2, 256), 'an integer from 2 to 256'),
    'base_channels': (
        fileio.is_integer(1, MAX_BASE_CHANNELS),
        f'an integer from 1 to {MAX_BASE_CHANNELS}',
    ),
    'transpose_conv': (fileio.is_bool, 'true or false'),
    'preprocess': (fileio.is_bool, 'true or false'),
    'depth': (fileio.is_integer(1, MAX_DEPTH), f'an integer from 1 to {MAX_DEPTH}'),
}
# Settings newer than some run folders, with the value those runs were trained with.
ADDED_SETTINGS = {'depth': DEPTH, 'vessel_weight': 1.0}
SCALE_FIELDS = {
    'fov_diameter': (
        fileio.is_number(scale.MIN_FOV_DIAMETER, scale.MAX_FOV_DIAMETER),
        f'a FOV diameter from {scale.MIN_FOV_DIAMETER} to {scale.MAX_FOV_DIAMETER} pixels',
    )
}
CALIBRE_FIELDS = {
    'vessel_calibre': (fileio.is_number(0.5, 1000), 'a calibre from 0.5 to 1000 pixels')
}
BEST_FIELDS = {
    'step': (fileio.is_integer(1), 'a step number (an integer >= 1)'),
    'metric': (
        lambda value: value in BEST_METRICS,
        ' or '.join(f'"{name}"' for name in BEST_METRICS),
    ),
    'value': (fileio.is_number(-math.inf), 'a finite number'),
    'scores': (fileio.is_object, 'an object of scores'),
}


# ----------------------------------------------------------------------------- paths


def weights_path(logdir: str) -> str:
    return os.path.join(logdir, WEIGHTS_FILE)


def best_weights_path(logdir: str) -> str:
    return os.path.join(logdir, BEST_DIR, WEIGHTS_FILE)


def checkpoint_dir(logdir: str) -> str:
    return os.path.join(logdir, CHECKPOINT_DIR)


def checkpoint_prefix(logdir: str, step: int) -> str:
    return os.path.join(logdir, CHECKPOINT_DIR, f'ckpt-{step}')


# ----------------------------------------------------------------------------- settings


def has_trained(logdir: str) -> bool:
    """Whether `logdir` holds a trained step: a checkpoint or exported weights. The settings of a
    run that failed before its first checkpoint bind nothing."""
    return bool(checkpoint_steps(os.path.join(logdir, CHECKPOINT_DIR))) or os.path.exists(
        os.path.join(logdir, WEIGHTS_FILE)
    )


def read_config(logdir: str, setting_fields: fileio.Fields) -> tuple[dict, list] | None:
    """(settings, learning-rate knots) of config.json, every setting checked by
    `setting_fields` (fileio.check_fields' form); None where there is no config.json."""
    path = os.path.join(logdir, CONFIG_FILE)
    saved = fileio.read_json(
        path,
        {
            'settings': (fileio.is_object, 'an object'),
            'learning_rate_knots': (_valid_knots, 'a list of [step, rate]'),
        },
        missing_ok=True,
    )
    if saved is None:
        return None
    settings = {**ADDED_SETTINGS, **saved['settings']}
    settings = fileio.check_fields(path, settings, setting_fields, prefix='settings.')
    return settings, [list(knot) for knot in saved['learning_rate_knots']]


def _valid_knots(knots):
    number = fileio.is_number(0)
    return (
        isinstance(knots, list)
        and len(knots) >= 2
        and all(
            isinstance(knot, list) and len(knot) == 2 and all(map(number, knot)) for knot in knots
        )
    )


def write_config(logdir: str, settings: dict, knots: list) -> None:
    fileio.write_json(
        os.path.join(logdir, CONFIG_FILE),
        {
            'settings': settings,
            'learning_rate_knots': knots,
            'versions': {'tensorflow': tf.__version__, 'keras': keras.__version__},
        },
    )


# ----------------------------------------------------------------------------- model and scale


def save_architecture(logdir: str, architecture: dict) -> None:
    fileio.write_json(
        os.path.join(logdir, ARCHITECTURE_FILE),
        {key: architecture[key] for key in ARCHITECTURE_KEYS},
    )


def load_architecture(logdir: str) -> dict | None:
    """The architecture saved by train.py in `logdir`, or None where there is none."""
    path = os.path.join(logdir, ARCHITECTURE_FILE)
    saved = fileio.read_json(path, {}, missing_ok=True)
    if saved is None:
        return None
    saved = fileio.check_fields(path, {**ADDED_SETTINGS, **saved}, ARCHITECTURE_FIELDS)
    return {key: saved[key] for key in ARCHITECTURE_KEYS}


def save_scale(logdir: str, model_scale: scale.ModelScale) -> None:
    """Writes scale.json: a scale.ModelScale."""
    value = {'fov_diameter': round(model_scale.fov_diameter, 2)}
    if model_scale.vessel_calibre is not None:
        value['vessel_calibre'] = round(model_scale.vessel_calibre, 2)
    fileio.write_json(os.path.join(logdir, SCALE_FILE), value)


def load_scale(logdir: str) -> scale.ModelScale | None:
    """The scale.ModelScale the run's model learned vessels at: its training images' median FOV
    diameter (after any train.py --fov_diameter resizing) and, where recorded, the main-vessel
    calibre it predicts there. None for runs from before scale.json."""
    saved = fileio.read_json(os.path.join(logdir, SCALE_FILE), SCALE_FIELDS, missing_ok=True)
    if not saved:
        return None
    calibre = saved.get('vessel_calibre')
    if calibre is not None:
        fileio.check_fields(os.path.join(logdir, SCALE_FILE), saved, CALIBRE_FIELDS)
    return scale.ModelScale(float(saved['fov_diameter']), calibre and float(calibre))


def checkpoint_steps(directory: str) -> list[int]:
    """The steps of the checkpoints in `directory` whose index file exists, newest first."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(
        (int(match.group(1)) for match in map(_CHECKPOINT_INDEX.fullmatch, names) if match),
        reverse=True,
    )


_CHECKPOINT_INDEX = re.compile(r'ckpt-(\d+)\.index')


def read_best(logdir: str) -> dict | None:
    """{step, metric, value, scores} of the run's best validation step, or None."""
    return fileio.read_json(os.path.join(logdir, BEST_DIR, BEST_FILE), BEST_FIELDS, missing_ok=True)


def write_best(logdir: str, unet: keras.Model, best: dict) -> None:
    """Keeps `unet`'s weights as the run's best, with best.json ({step, metric, value, scores})."""
    folder = os.path.join(logdir, BEST_DIR)
    export_weights(unet, folder)
    fileio.write_json(os.path.join(folder, BEST_FILE), best)


# ----------------------------------------------------------------------------- the lock


def create(logdir: str, chief: bool) -> TextIO | None:
    """Creates the logdir, takes its lock and clears leftovers of killed saves. Returns the lock
    (None on other workers)."""
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as error:
        raise errors.UserError(f'--logdir={logdir}: cannot create it ({error.strerror})') from None
    lock = acquire_lock(logdir) if chief else None
    if chief:
        remove_leftovers(logdir)
    return lock


def acquire_lock(logdir: str) -> TextIO:
    """Claims `logdir` with an OS lock (fcntl.flock), which the system releases when the process
    ends, however it ends; refuses while another process holds it. Returns the open lock file."""
    path = os.path.join(logdir, LOCK_FILE)
    try:  # never through a link, never anything but a regular file: the lock is truncated
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise errors.UserError(
                f'{path}: a symbolic link, not the lock train.py writes; remove it'
            ) from None
        raise errors.UserError(
            f'--logdir={logdir}: cannot write there ({error.strerror})'
        ) from None
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise errors.UserError(
            f'{path}: not a regular file, not the lock train.py writes; remove it'
        )
    stream = os.fdopen(handle, 'a+')
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        owner = stream.read().strip() or 'owner unknown'
        stream.close()
        raise errors.UserError(
            f'--logdir={logdir}: another train.py ({owner}) is writing it'
        ) from None
    stream.truncate(0)
    stream.write(f'host {socket.gethostname()}, pid {os.getpid()}\n')
    stream.flush()
    return stream


# ----------------------------------------------------------------------------- saving


def export_weights(unet: keras.Model, logdir: str) -> None:
    """The Keras weights evaluate.py loads, written atomically."""
    path = os.path.join(logdir, WEIGHTS_FILE)
    temporary = fileio.temporary_path(path)
    try:
        unet.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save(
    manager: tf.train.CheckpointManager, unet: keras.Model, logdir: str, chief: bool, step: int
) -> None:
    """Saves a checkpoint, then the weights evaluate.py loads; a full disk or another write
    error ends the run with one line, leaving the last good checkpoint and no partial files."""
    captured, reason = io.StringIO(), None  # h5py prints a failed write again as it frees
    with contextlib.redirect_stderr(captured):
        try:
            manager.save(checkpoint_number=step)
            if chief:
                export_weights(unet, logdir)
            else:  # every worker must save; only the chief's copy is kept
                tf.io.gfile.rmtree(manager.directory)
        except (OSError, tf.errors.OpError) as error:
            text = str(error)
            reason = (
                'no space left on device'
                if getattr(error, 'errno', None) == errno.ENOSPC or 'No space left' in text
                else errors.first_line(error)
            )
    if reason is None:
        sys.stderr.write(captured.getvalue())
        return
    remove_leftovers(logdir)
    raise errors.UnrecoverableError(
        f'--logdir={logdir}: could not save step {step} ({reason}); the last good '
        f'checkpoint is {manager.latest_checkpoint}'
    )


def check_free_space(
    logdir: str, unet: keras.Model, manager: tf.train.CheckpointManager, step: int
) -> None:
    """Stops before a save that cannot fit: a checkpoint (weights and Adam's two moments) and a
    weights file, with a margin for summaries."""
    weights = sum(int(np.prod(w.shape)) for w in unet.weights) * 4
    trainable = sum(int(np.prod(w.shape)) for w in unet.trainable_weights) * 4
    needed = int(1.1 * (weights + 2 * trainable + weights)) + 2**21
    free = shutil.disk_usage(logdir).free
    if free < needed:
        raise errors.UserError(
            f'--logdir={logdir}: the disk is full ({free / 2**20:.1f} MiB '
            f'free, saving needs about {needed / 2**20:.0f} MiB); stopped '
            f'before saving step {step}; the last good checkpoint is '
            f'{manager.latest_checkpoint}'
        )


def remove_leftovers(logdir: str) -> None:
    """Removes what a killed save leaves: temporary files (.tmp.*) in every folder train.py
    writes, and TensorFlow's checkpoints/*_temp folders."""
    for folder in ('', SUMMARY_DIR, VALIDATION_DIR, BEST_DIR):
        fileio.remove_temporaries(os.path.join(logdir, folder))
    for path in glob.glob(os.path.join(glob.escape(logdir), CHECKPOINT_DIR, '*_temp')):
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- resuming


def restore_newest(checkpoint: tf.train.Checkpoint, logdir: str) -> int:
    """Restores into `checkpoint` (a tf.train.Checkpoint of the model, and of the optimizer when
    training) the newest checkpoint that reads back whole and returns its step (0: there is
    none). The `checkpoint` state file is not trusted: a corrupt one must not restart the run.
    Unreadable checkpoints are skipped with a warning; if none can be read, a UserError."""
    skipped = []
    for step in checkpoint_steps(checkpoint_dir(logdir)):
        try:
            read_checkpoint(checkpoint, logdir, step)
        except errors.UserError as error:
            skipped.append(str(error))
            continue
        if skipped:
            logging.warning(
                'unreadable checkpoints skipped (%s); restored ckpt-%d', '; '.join(skipped), step
            )
        return step
    if skipped:
        raise errors.UserError(
            f'{checkpoint_dir(logdir)}: no checkpoint can be read ({"; ".join(skipped)}); '
            'nothing was changed'
        )
    return 0


def read_checkpoint(checkpoint: tf.train.Checkpoint, logdir: str, step: int) -> None:
    """Restores the checkpoint of `step` into `checkpoint`; a UserError naming it where it does
    not read back whole."""
    prefix = checkpoint_prefix(logdir, step)
    for path in glob.glob(glob.escape(prefix) + '.*'):  # a FIFO would hang the reader
        fileio.is_regular_file(path)
    try:
        status = checkpoint.restore(prefix).expect_partial()
        status.assert_existing_objects_matched()
    except Exception as error:  # noqa: BLE001 - TensorFlow's reader raises many kinds
        raise errors.UserError(f'ckpt-{step}: {errors.first_line(error)}') from None


def repair_checkpoint_state(directory: str, restored: int) -> None:
    """Rewrites the `checkpoint` state file to name the restored checkpoint and the older ones,
    and removes the unreadable newer ones, so that CheckpointManager starts from a sound state."""
    steps = checkpoint_steps(directory)
    for step in steps:
        if step > restored:
            for path in glob.glob(os.path.join(glob.escape(directory), f'ckpt-{step}.*')):
                os.remove(path)
    state = os.path.join(directory, 'checkpoint')
    kept = sorted(step for step in steps if step <= restored)
    if not kept:
        if os.path.exists(state):
            os.remove(state)
        return
    # The manager prunes (max_to_keep) only checkpoints newer than last_preserved_timestamp.
    times = [os.path.getmtime(os.path.join(directory, f'ckpt-{step}.index')) for step in kept]
    lines = [f'model_checkpoint_path: "ckpt-{restored}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{step}"' for step in kept]
    lines += [f'all_model_checkpoint_timestamps: {time_!r}' for time_ in times]
    lines += [f'last_preserved_timestamp: {min(times) - 1!r}']
    fileio.write_atomic(state, '\n'.join(lines) + '\n')


def trim_events(directory: str, last_step: int) -> None:
    """Drops from the event files in `directory` the summaries of steps after `last_step` (written
    before a crash, past the checkpoint the run resumes from) and any record torn by a kill, so
    that the resumed run writes every step exactly once."""
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), 'events.out.tfevents.*'))):
        fileio.is_regular_file(path)
        kept, changed = [], False
        try:
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                event = tf.compat.v1.Event.FromString(record)
                if event.HasField('summary') and event.step > last_step:
                    changed = True
                else:
                    kept.append(record)
        except tf.errors.DataLossError:
            changed = True
        if changed:
            temporary = fileio.temporary_path(path)
            with tf.io.TFRecordWriter(temporary) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(temporary, path)
