"""Trains the U-Net; the one training loop that train_distribute.py runs under another strategy.

  python train.py --logdir=log/retina --label_file_path=data/CHASEDB/training.txt \
      --batch_size=4 --max_iters=2000 --preprocess=True --transpose_conv=True
  tensorboard --logdir log/retina/train_logs

A rerun with the same --logdir resumes from its last checkpoint and stops at --max_iters.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import contextlib  # noqa: E402
import errno  # noqa: E402
import fcntl  # noqa: E402
import glob  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import dataset  # noqa: E402
import model  # noqa: E402
import utils  # noqa: E402

FLAGS = flags.FLAGS
utils.define_flags('logdir', 'label_file_path', 'seed', 'batch_size', 'preprocess',
                   'transpose_conv', 'base_channels', 'num_classes')
flags.DEFINE_float('initial_lr', 3e-4, 'Adam learning rate at step 0, decayed linearly to 0 at '
                   '--max_iters.', lower_bound=0.0)
flags.DEFINE_integer('max_iters', 2000, 'Training steps in all (a resumed run stops here too).',
                     lower_bound=1)
flags.DEFINE_integer('save_interval', 100, 'Steps between checkpoints, weights exports, image '
                     'summaries and summary flushes.', lower_bound=1)
flags.DEFINE_bool('augmentation', False, 'Random flips, 90-degree rotations, brightness and '
                  'contrast jitter.')
flags.DEFINE_integer('image_size', 1024, 'Side of the whole-image training crops (a multiple of '
                     '16); images are zero-padded up to it.')
flags.DEFINE_integer('patch_size', 0, 'Train on square patches of this side (a multiple of 16) '
                     'centred in the FOV; 0 trains on whole images.', lower_bound=0)
flags.DEFINE_bool('fov_loss', True, 'Average the loss over pixels inside the FOV mask only (the '
                  'pixels that metrics count); False averages over every pixel, as the original.')
flags.DEFINE_float('dice_weight', 0.0, 'Add this times the soft Dice loss of the vessel '
                   'probability (over the same pixels) to the cross-entropy; 0: none.',
                   lower_bound=0.0)
flags.DEFINE_integer('log_interval', 20, 'Steps between progress lines.', lower_bound=1)
flags.DEFINE_bool('mixed_precision', False, "Compute in bfloat16 (Keras policy "
                  "'mixed_bfloat16'), keeping float32 weights and logits.")
flags.register_validator('image_size', lambda size: size > 0 and size % model.MULTIPLE == 0,
                         message=f'--image_size must be a positive multiple of {model.MULTIPLE}')
flags.register_validator('patch_size', lambda size: size % model.MULTIPLE == 0,
                         message=f'--patch_size must be 0 or a multiple of {model.MULTIPLE}')

SUMMARY_DIR = 'train_logs'
LOCK_FILE = 'train.lock'
GRADIENT_CLIP_NORM = 10.0


# ----------------------------------------------------------------------------- the logdir lock

def acquire_lock(logdir):
    """Claims `logdir` with an OS lock (fcntl.flock), which the system releases when the process
    ends, however it ends; refuses while another process holds it. Returns the open lock file."""
    path = os.path.join(logdir, LOCK_FILE)
    try:
        stream = open(path, 'a+')
    except OSError as error:
        raise utils.UserError(f'--logdir={logdir}: cannot write there ({error.strerror})') from None
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        owner = stream.read().strip() or 'owner unknown'
        stream.close()
        raise utils.UserError(f'--logdir={logdir}: another train.py ({owner}) is writing it'
                              ) from None
    stream.truncate(0)
    stream.write(f'host {socket.gethostname()}, pid {os.getpid()}\n')
    stream.flush()
    return stream


class StopSignal:
    """Turns SIGINT/SIGTERM into a request to stop after the current step and save."""

    def __init__(self):
        self.received = None
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number, frame):
        del frame
        self.received = number


# ----------------------------------------------------------------------------- the loop's parts

def architecture_from_flags():
    return {'num_classes': FLAGS.num_classes, 'base_channels': FLAGS.base_channels,
            'transpose_conv': FLAGS.transpose_conv, 'preprocess': FLAGS.preprocess}


def pixel_loss(labels, logits, masks, fov_loss, dice_weight=0.0):
    """Per-example loss over the pixels that count (the FOV, or all): mean cross-entropy, plus
    dice_weight times the soft Dice loss 1 - 2|P.Y| / (|P| + |Y|) of the vessel probability P."""
    weights = masks if fov_loss else tf.ones_like(masks)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    loss = tf.reduce_sum(losses * weights, [1, 2]) / tf.maximum(tf.reduce_sum(weights, [1, 2]), 1)
    if dice_weight:
        vessel = tf.nn.softmax(logits)[..., 1] * weights
        truth = tf.cast(labels, tf.float32) * weights
        overlap = 2 * tf.reduce_sum(vessel * truth, [1, 2]) + 1
        loss += dice_weight * (1 - overlap / (tf.reduce_sum(vessel + truth, [1, 2]) + 1))
    return loss


def make_train_step(strategy, unet, optimizer, global_batch, fov_loss, dice_weight=0.0):
    """A @tf.function running one step on every replica; returns the global mean loss."""

    def replica_step(images, labels, masks):
        with tf.GradientTape() as tape:
            logits = unet(images, training=True)
            loss = tf.nn.compute_average_loss(
                pixel_loss(labels, logits, masks, fov_loss, dice_weight),
                global_batch_size=global_batch)
        gradients = tape.gradient(loss, unet.trainable_variables)
        # Clip the global gradient, not each replica's share: sum it here, and hand the
        # optimizer (which sums across replicas again) each replica's equal part of the result.
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients, _ = tf.clip_by_global_norm(gradients, GRADIENT_CLIP_NORM)
        optimizer.apply([g / context.num_replicas_in_sync for g in gradients],
                        unet.trainable_variables)
        return loss

    @tf.function
    def train_step(iterator):
        losses = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return train_step


def is_chief(strategy):
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type == 'chief' or (
        resolver.task_type == 'worker' and resolver.task_id == 0
        and 'chief' not in resolver.cluster_spec().as_dict())


def write_summaries(writer, pending, preview, unet, step):
    """Writes the buffered scalars and an image summary, then flushes. Called just before each
    checkpoint, so a kill loses no step that the checkpoint holds; steps written past the
    checkpoint a run resumes from are trimmed then (trim_events)."""
    with writer.as_default():
        for values in pending:
            for name, value in values.items():
                if name != 'step':
                    tf.summary.scalar(f'train/{name}', value, step=values['step'])
        images, labels, _ = preview
        probability = model.predict_probabilities(unet, images)[..., 1:2]
        tf.summary.image('train/input', images[..., :3], step=step, max_outputs=3)
        tf.summary.image('train/label', tf.cast(labels[..., None], tf.float32), step=step,
                         max_outputs=3)
        tf.summary.image('train/vessel_probability', probability, step=step, max_outputs=3)
    writer.flush()
    pending.clear()


def export_weights(unet, logdir):
    """The Keras weights evaluate.py loads, written atomically."""
    path = os.path.join(logdir, model.WEIGHTS_FILE)
    temporary = utils.temporary_path(path)
    try:
        unet.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save(manager, unet, logdir, chief, step):
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
            reason = ('no space left on device' if getattr(error, 'errno', None) == errno.ENOSPC
                      or 'No space left' in text else text.strip().splitlines()[0][:200])
    if reason is None:
        sys.stderr.write(captured.getvalue())
        return
    remove_leftovers(logdir)
    # HDF5 does not recover from a failed write (it crashes at exit): report and leave at once.
    utils.exit_at_once(f'--logdir={logdir}: could not save step {step} ({reason}); the last good '
                       f'checkpoint is {manager.latest_checkpoint}')


def check_free_space(logdir, unet, manager, step):
    """Stops before a save that cannot fit: a checkpoint (weights and Adam's two moments) and a
    weights file, with a margin for summaries."""
    weights = sum(int(np.prod(w.shape)) for w in unet.weights) * 4
    trainable = sum(int(np.prod(w.shape)) for w in unet.trainable_weights) * 4
    needed = int(1.1 * (weights + 2 * trainable + weights)) + 2 ** 21
    free = shutil.disk_usage(logdir).free
    if free < needed:
        raise utils.UserError(f'--logdir={logdir}: the disk is full ({free / 2 ** 20:.1f} MiB '
                              f'free, saving needs about {needed / 2 ** 20:.0f} MiB); stopped '
                              f'before saving step {step}; the last good checkpoint is '
                              f'{manager.latest_checkpoint}')


def _format_seconds(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f'{minutes // 60}h{minutes % 60:02d}m' if minutes >= 60 else f'{minutes}m{seconds:02d}s'


# ----------------------------------------------------------------------------- the run folder

CHECKPOINT_INDEX = re.compile(r'ckpt-(\d+)\.index')


def checkpoint_steps(directory):
    """The steps of the checkpoints in `directory` whose index file exists, newest first."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted((int(match.group(1)) for match in map(CHECKPOINT_INDEX.fullmatch, names)
                   if match), reverse=True)


def restore_newest(checkpoint, directory):
    """Restores the newest checkpoint that reads back whole and returns its step (0: there is
    none). The `checkpoint` state file is not trusted: a corrupt one must not restart the run.
    Unreadable checkpoints are skipped with a warning; if none can be read, a UserError."""
    skipped = []
    for step in checkpoint_steps(directory):
        try:
            checkpoint.restore(os.path.join(directory, f'ckpt-{step}')
                               ).assert_existing_objects_matched()
        except Exception as error:  # noqa: BLE001 - TensorFlow's reader raises many kinds
            skipped.append(f'ckpt-{step}: {str(error).strip().splitlines()[0][:200]}')
            continue
        if skipped:
            logging.warning('unreadable checkpoints skipped (%s); resuming from ckpt-%d',
                            '; '.join(skipped), step)
        return step
    if skipped:
        raise utils.UserError(f'{directory}: no checkpoint can be read ({"; ".join(skipped)}); '
                              'nothing was changed')
    return 0


def repair_checkpoint_state(directory, restored):
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
    utils.write_atomic(state, '\n'.join(lines) + '\n')


def remove_leftovers(logdir):
    """Removes what a killed save leaves: temporary files (.tmp.*) and TensorFlow's
    checkpoints/*_temp folders."""
    for pattern in ('.tmp.*', os.path.join(SUMMARY_DIR, '.tmp.*'),
                    os.path.join(model.CHECKPOINT_DIR, '*_temp')):
        for path in glob.glob(os.path.join(glob.escape(logdir), pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def trim_events(directory, last_step):
    """Drops from the event files in `directory` the summaries of steps after `last_step` (written
    before a crash, past the checkpoint the run resumes from) and any record torn by a kill, so
    that the resumed run writes every step exactly once."""
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), 'events.out.tfevents.*'))):
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
            temporary = utils.temporary_path(path)
            with tf.io.TFRecordWriter(temporary) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(temporary, path)


# ----------------------------------------------------------------------------- the loop

def check_settings(examples, replicas):
    if FLAGS.batch_size % replicas:
        raise utils.UserError(f'--batch_size={FLAGS.batch_size} is not divisible by the '
                              f'{replicas} replicas')
    smallest = min(min(e.label.shape) for e in examples)
    if FLAGS.patch_size > smallest:
        raise utils.UserError(f'--patch_size={FLAGS.patch_size} is larger than the smallest '
                              f'image side ({smallest}) in {FLAGS.label_file_path}')


def prepare_logdir(chief):
    """Creates the logdir, takes its lock, clears leftovers of killed saves and records (or
    checks) the architecture. Returns the lock (None on other workers)."""
    logdir = FLAGS.logdir
    if not logdir:
        raise utils.UserError('--logdir is required')
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as error:
        raise utils.UserError(f'--logdir={logdir}: cannot create it ({error.strerror})') from None
    lock = acquire_lock(logdir) if chief else None
    architecture = architecture_from_flags()
    saved = model.load_architecture(logdir)
    if saved:
        model.check_architecture(saved, architecture, f'--logdir={logdir}')
    elif chief:
        model.save_architecture(logdir, architecture)
    if chief:
        remove_leftovers(logdir)
    return lock


def train(strategy):
    """Trains under `strategy` until --max_iters; resumes from the logdir's last checkpoint."""
    chief = is_chief(strategy)
    if not FLAGS.label_file_path:
        raise utils.UserError('--label_file_path is required')
    examples = dataset.load_label_file(FLAGS.label_file_path, FLAGS.preprocess)
    check_settings(examples, strategy.num_replicas_in_sync)
    lock = prepare_logdir(chief)
    try:
        _train(strategy, examples, chief)
    finally:
        if lock:
            lock.close()


def build_and_restore(strategy, chief):
    """Model, schedule, optimizer and checkpoint manager, built under the strategy's scope and
    restored from the logdir's newest readable checkpoint where there is one."""
    keras.utils.set_random_seed(FLAGS.seed)  # the initial weights too, not only the data
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy('mixed_bfloat16')
    with strategy.scope():
        unet = model.build_from_architecture(architecture_from_flags())
        schedule = keras.optimizers.schedules.PolynomialDecay(FLAGS.initial_lr, FLAGS.max_iters,
                                                              end_learning_rate=0.0)
        optimizer = keras.optimizers.Adam(schedule)
        optimizer.build(unet.trainable_variables)  # before the first step, under the scope
        checkpoint = tf.train.Checkpoint(model=unet, optimizer=optimizer)
    directory = os.path.join(FLAGS.logdir, model.CHECKPOINT_DIR)
    restored = restore_newest(checkpoint, directory)
    weights = os.path.join(FLAGS.logdir, model.WEIGHTS_FILE)
    if not restored and os.path.exists(weights):
        raise utils.UserError(f'--logdir={FLAGS.logdir} holds trained weights ({weights}) but no '
                              f'checkpoint to resume from ({directory} is missing or empty); '
                              'train into a new --logdir, or remove the weights to start over')
    if chief:
        repair_checkpoint_state(directory, restored)
        trim_events(os.path.join(FLAGS.logdir, SUMMARY_DIR), restored)
    else:  # other workers must save too, but somewhere private
        directory = os.path.join(directory, f'.worker{strategy.cluster_resolver.task_id}')
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    return unet, schedule, optimizer, manager, restored


def _train(strategy, examples, chief):
    logdir, global_batch = FLAGS.logdir, FLAGS.batch_size
    unet, schedule, optimizer, manager, resumed = build_and_restore(strategy, chief)
    start = int(optimizer.iterations.numpy())
    replicas = strategy.num_replicas_in_sync
    logging.info('%s at step %d of %d: global batch %d = %d replicas x %d, %d training images, '
                 '%s parameters', 'resuming' if resumed else 'starting', start, FLAGS.max_iters,
                 global_batch, replicas, global_batch // replicas, len(examples),
                 f'{unet.count_params():,}')
    if start >= FLAGS.max_iters:
        if chief:  # a run killed between its last checkpoint and weights export
            export_weights(unet, logdir)
        logging.info('already trained to --max_iters=%d', FLAGS.max_iters)
        return

    def make_dataset(context):
        return dataset.training_dataset(
            examples, context.get_per_replica_batch_size(global_batch), FLAGS.patch_size,
            FLAGS.image_size, FLAGS.augmentation, FLAGS.seed, start, context)

    iterator = iter(strategy.distribute_datasets_from_function(make_dataset))
    preview = next(iter(dataset.training_dataset(examples, min(global_batch, 3), FLAGS.patch_size,
                                                 FLAGS.image_size, seed=FLAGS.seed + 1)))
    train_step = make_train_step(strategy, unet, optimizer, global_batch, FLAGS.fov_loss,
                                 FLAGS.dice_weight)
    writer = (tf.summary.create_file_writer(os.path.join(logdir, SUMMARY_DIR)) if chief
              else tf.summary.create_noop_writer())
    stop, pending = StopSignal(), []
    started = last_time = time.time()
    for step in range(start + 1, FLAGS.max_iters + 1):
        loss = float(train_step(iterator))
        if not np.isfinite(loss):
            raise utils.UserError(f'the loss became {loss} at step {step}; stopped without saving '
                                  f'(the last good checkpoint is {manager.latest_checkpoint}); '
                                  'try a lower --initial_lr')
        now = time.time()
        pending.append({'step': step, 'loss': loss, 'learning_rate': float(schedule(step - 1)),
                        'global_steps_per_sec': 1.0 / max(now - last_time, 1e-9)})
        last_time = now
        if step % FLAGS.log_interval == 0 or step == FLAGS.max_iters:
            rate = (step - start) / (now - started)
            logging.info('step %d/%d  loss %.4f  lr %.3g  %.2f steps/s  ETA %s', step,
                         FLAGS.max_iters, loss, pending[-1]['learning_rate'], rate,
                         _format_seconds((FLAGS.max_iters - step) / rate))
        if step % FLAGS.save_interval == 0 or step == FLAGS.max_iters or stop.received:
            if chief:
                check_free_space(logdir, unet, manager, step)
            write_summaries(writer, pending, preview, unet, step)
            save(manager, unet, logdir, chief, step)
        if stop.received:
            logging.info('signal %d: stopped at step %d after saving; rerun to resume',
                         stop.received, step)
            raise SystemExit(128 + stop.received)
    checksum = sum(float(tf.reduce_sum(tf.cast(w, tf.float64))) for w in unet.weights)
    logging.info('done: %d steps in %s; weights in %s (checksum %.12g)', FLAGS.max_iters - start,
                 _format_seconds(time.time() - started), os.path.join(logdir, model.WEIGHTS_FILE),
                 checksum)


def main(argv):
    del argv
    train(tf.distribute.get_strategy())


if __name__ == '__main__':
    app.run(utils.run_main(main))
