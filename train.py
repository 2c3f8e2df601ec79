"""Trains the U-Net; the one training loop that train_distribute.py runs under another strategy.

  python train.py --logdir=log/retina --label_file_path=data/CHASEDB/training.txt \
      --batch_size=4 --max_iters=2000 --preprocess=True --transpose_conv=True
  tensorboard --logdir log/retina/train_logs

A rerun with the same --logdir resumes from its last checkpoint and stops at --max_iters.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import signal  # noqa: E402
import socket  # noqa: E402
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
    """Claims `logdir` for this process; refuses while another live process holds it."""
    path = os.path.join(logdir, LOCK_FILE)
    owner = f'{socket.gethostname()} {os.getpid()}'
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with open(path) as stream:
                host, _, pid = stream.read().strip().partition(' ')
            if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
                os.remove(path)  # left by a process that is gone
                continue
            message = (f'--logdir={logdir}: another train.py (host {host}, pid {pid}) is writing '
                       f'it; remove {path} if that process is gone')
            raise utils.UserError(message) from None
        with os.fdopen(descriptor, 'w') as stream:
            stream.write(owner)
        return path
    raise utils.UserError(f'--logdir={logdir}: could not take {path}')


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    """Writes the buffered scalars and an image summary, then flushes: event files only ever
    hold steps up to the checkpoint just saved, so a resumed run never writes a step twice."""
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


def save(manager, unet, logdir, chief, step):
    """Saves a checkpoint and the Keras weights evaluate.py loads, each atomically."""
    manager.save(checkpoint_number=step)
    if not chief:  # every worker must save; only the chief's copy is kept
        tf.io.gfile.rmtree(manager.directory)
        return
    path = os.path.join(logdir, model.WEIGHTS_FILE)
    temporary = utils.temporary_path(path)
    unet.save_weights(temporary)
    os.replace(temporary, path)


def _format_seconds(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f'{minutes // 60}h{minutes % 60:02d}m' if minutes >= 60 else f'{minutes}m{seconds:02d}s'


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
    """Creates the logdir, takes its lock and records (or checks) the architecture."""
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
            os.remove(lock)


def build_and_restore(strategy, chief):
    """Model, schedule, optimizer and checkpoint manager, built under the strategy's scope and
    restored from the logdir's last checkpoint where there is one."""
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
    latest = tf.train.latest_checkpoint(directory)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    if not chief:  # other workers must save too, but somewhere private
        directory = os.path.join(directory, f'.worker{strategy.cluster_resolver.task_id}')
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    return unet, schedule, optimizer, manager, bool(latest)


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
            save(manager, unet, logdir, chief, step)
            write_summaries(writer, pending, preview, unet, step)
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
