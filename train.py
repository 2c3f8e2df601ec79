"""Trains the U-Net; the one training loop that train_distribute.py runs under another strategy.

  python train.py --logdir=log/retina --label_file_path=data/CHASEDB/training.txt \
      --batch_size=4 --max_iters=2000 --preprocess=True --transpose_conv=True
  tensorboard --logdir log/retina

Every setting is saved with the run ({logdir}/config.json). A rerun with the same --logdir
resumes from its last checkpoint with the saved settings (flags given again must agree, except
those in RESUMABLE) and stops at --max_iters.
"""

import os

import utils

utils.quiet_tensorflow()

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import errno  # noqa: E402
import fcntl  # noqa: E402
import functools  # noqa: E402
import glob  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import dataset  # noqa: E402
import metrics  # noqa: E402
import model  # noqa: E402
import scale  # noqa: E402

SUMMARY_DIR = 'train_logs'
VALIDATION_DIR = 'validation_logs'
CONFIG_FILE = 'config.json'
LOCK_FILE = 'train.lock'
GRADIENT_CLIP_NORM = 10.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting that shapes a run, as Model Garden's params: the flags build it, the run
    folder keeps it (config.json), and train() reads nothing else."""

    logdir: str
    label_file_path: str
    # the model (also written to architecture.json, which evaluate.py reads)
    num_classes: int = 2
    base_channels: int = 32
    transpose_conv: bool = False
    preprocess: bool = False
    # the data
    batch_size: int = 4
    patch_size: int = 0
    image_size: int = 1024
    augmentation: bool = False
    seed: int = 0
    fov_diameter: float = 0.0  # 0: every image at its native size
    # the optimisation
    initial_lr: float = 3e-4
    max_iters: int = 2000
    fov_loss: bool = True
    dice_weight: float = 0.0
    mixed_precision: bool = False
    # validation and the best checkpoint
    validation_label_file: str | None = None
    validation_interval: int = 0
    best_metric: str = 'F1'
    # bookkeeping
    save_interval: int = 100
    log_interval: int = 20

    @property
    def architecture(self):
        return {key: getattr(self, key) for key in model.ARCHITECTURE_KEYS}


# Settings a resumed run may change: where the run lives, how long it trains (the learning rate
# then decays linearly from its current value to 0 at the new end), and how often it reports.
RESUMABLE = ('logdir', 'max_iters', 'save_interval', 'log_interval', 'validation_interval')

FLAGS = flags.FLAGS
utils.define_flags(
    'logdir',
    'label_file_path',
    'seed',
    'batch_size',
    'preprocess',
    'transpose_conv',
    'base_channels',
    'num_classes',
)
flags.DEFINE_float(
    'initial_lr',
    TrainConfig.initial_lr,
    'Adam learning rate at step 0, decayed linearly to 0 at --max_iters.',
    lower_bound=0.0,
)
flags.DEFINE_integer(
    'max_iters',
    TrainConfig.max_iters,
    'Training steps in all; raise it to '
    'extend an interrupted run (the rate then decays from its current value).',
    lower_bound=1,
)
flags.DEFINE_integer(
    'save_interval',
    TrainConfig.save_interval,
    'Steps between checkpoints, weights exports, image summaries and summary flushes.',
    lower_bound=1,
)
flags.DEFINE_bool(
    'augmentation',
    TrainConfig.augmentation,
    'Random flips, 90-degree rotations, brightness and contrast jitter.',
)
flags.DEFINE_integer(
    'image_size',
    TrainConfig.image_size,
    'Side of the whole-image training crops (a multiple of 16); images are zero-padded up to it.',
)
flags.DEFINE_integer(
    'patch_size',
    TrainConfig.patch_size,
    'Train on square patches of this side '
    '(a multiple of 16) centred in the FOV; 0 trains on whole images.',
    lower_bound=0,
)
flags.DEFINE_float(
    'fov_diameter',
    TrainConfig.fov_diameter,
    'Resize each training image so '
    'its FOV is this many pixels across (e.g. 538, DRIVE\'s), to mix datasets '
    'from several cameras at one scale; 0: native sizes. The run records the '
    'scale it learned in scale.json, and evaluate.py brings images to it.',
    lower_bound=0.0,
)
flags.DEFINE_bool(
    'fov_loss',
    TrainConfig.fov_loss,
    'Average the loss over pixels inside the FOV '
    'mask only (the pixels that metrics count); False averages over every pixel, '
    'as the original.',
)
flags.DEFINE_float(
    'dice_weight',
    TrainConfig.dice_weight,
    'Add this times the soft Dice loss of '
    'the vessel probability (over the same pixels) to the cross-entropy; 0: none.',
    lower_bound=0.0,
)
flags.DEFINE_integer(
    'log_interval', TrainConfig.log_interval, 'Steps between progress lines.', lower_bound=1
)
flags.DEFINE_bool(
    'mixed_precision',
    TrainConfig.mixed_precision,
    "Compute in bfloat16 (Keras policy 'mixed_bfloat16'), keeping float32 weights and logits.",
)
flags.DEFINE_string(
    'validation_label_file',
    TrainConfig.validation_label_file,
    'A label file of '
    'images held out from training, e.g. data/DRIVE/test.txt for a curve only, or '
    'a split of the training set: scored inside the FOV during training.',
)
flags.DEFINE_integer(
    'validation_interval',
    TrainConfig.validation_interval,
    'Steps between validations; 0: at every --save_interval.',
    lower_bound=0,
)
flags.DEFINE_enum(
    'best_metric',
    TrainConfig.best_metric,
    model.BEST_METRICS,
    'Validation metric that picks the best checkpoint, kept in {logdir}/best/.',
)
flags.register_validator(
    'image_size',
    lambda size: size > 0 and size % model.MULTIPLE == 0,
    message=f'--image_size must be a positive multiple of {model.MULTIPLE}',
)
flags.register_validator(
    'patch_size',
    lambda size: size % model.MULTIPLE == 0,
    message=f'--patch_size must be 0 or a multiple of {model.MULTIPLE}',
)


# ----------------------------------------------------------------------------- the settings


def has_trained(logdir):
    """Whether `logdir` holds a trained step: a checkpoint or exported weights. The settings of a
    run that failed before its first checkpoint bind nothing."""
    return bool(
        model.checkpoint_steps(os.path.join(logdir, model.CHECKPOINT_DIR))
    ) or os.path.exists(os.path.join(logdir, model.WEIGHTS_FILE))


def binding_settings(logdir):
    """load_saved(logdir) where the run trained a step; (None, None) otherwise."""
    return load_saved(logdir) if has_trained(logdir) else (None, None)


def load_saved(logdir):
    """(TrainConfig, learning-rate knots) saved in `logdir`, or (None, None) where there is no
    config.json (a new run, or one trained before settings were saved). Every setting is checked
    as its flag would check it; a UserError names the file and the setting."""
    path = os.path.join(logdir, CONFIG_FILE)
    saved = utils.read_json(
        path,
        {
            'settings': (utils.is_object, 'an object'),
            'learning_rate_knots': (_valid_knots, 'a list of [step, rate]'),
        },
        missing_ok=True,
    )
    if saved is None:
        return None, None
    fields = {
        field.name: (functools.partial(_valid_setting, field), SETTING_TYPES[field.type][1])
        for field in dataclasses.fields(TrainConfig)
    }
    settings = utils.check_fields(path, saved['settings'], fields, prefix='settings.')
    return (
        TrainConfig(**{name: settings[name] for name in fields}),
        [list(knot) for knot in saved['learning_rate_knots']],
    )


SETTING_TYPES = {
    int: ((int,), 'an integer'),
    float: ((int, float), 'a number'),
    bool: ((bool,), 'true or false'),
    str: ((str,), 'a string'),
    str | None: ((str, type(None)), 'a string or null'),
}


def _valid_setting(field, value):
    """Whether a saved setting has its field's type and passes its flag's own checks."""
    if type(value) not in SETTING_TYPES[field.type][0] or (
        type(value) is float and not math.isfinite(value)
    ):
        return False
    try:
        return all(validator.checker(value) for validator in FLAGS[field.name].validators)
    except flags.ValidationError:
        return False


def _valid_knots(knots):
    number = utils.is_number(0)
    return (
        isinstance(knots, list)
        and len(knots) >= 2
        and all(
            isinstance(knot, list) and len(knot) == 2 and all(map(number, knot)) for knot in knots
        )
    )


def save_settings(config, knots):
    utils.write_json(
        os.path.join(config.logdir, CONFIG_FILE),
        {
            'settings': dataclasses.asdict(config),
            'learning_rate_knots': knots,
            'versions': {'tensorflow': tf.__version__, 'keras': keras.__version__},
        },
    )


def config_from_flags():
    """The run's settings: each flag given on the command line, else the value saved with the
    run (when resuming), else the flag's default."""
    if not FLAGS.logdir:
        raise utils.UserError('--logdir is required')
    saved, _ = binding_settings(FLAGS.logdir)
    values = {
        field.name: FLAGS[field.name].value
        if FLAGS[field.name].present or saved is None
        else getattr(saved, field.name)
        for field in dataclasses.fields(TrainConfig)
    }
    return TrainConfig(**values)


def check_resume(config, saved):
    """Refuses, in one line naming the flags, settings that contradict the saved run."""
    if saved is None:
        architecture = has_trained(config.logdir) and model.load_architecture(config.logdir)
        if architecture:  # a run from before config.json
            model.check_architecture(architecture, config.architecture, f'--logdir={config.logdir}')
        return
    conflicts = [
        f'--{field.name}={getattr(config, field.name)} (saved: {getattr(saved, field.name)})'
        for field in dataclasses.fields(TrainConfig)
        if field.name not in RESUMABLE and getattr(config, field.name) != getattr(saved, field.name)
    ]
    if conflicts:
        raise utils.UserError(
            f'--logdir={config.logdir} was trained with other settings: '
            + ', '.join(conflicts)
            + f'; only {", ".join(RESUMABLE)} may '
            'change on resume (or train into a new --logdir)'
        )


# ----------------------------------------------------------------------------- the learning rate


class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate interpolated linearly between knots [step, rate] (constant outside)."""

    def __init__(self, knots):
        self.knots = [list(knot) for knot in knots]

    def __call__(self, step):
        steps = tf.constant([float(s) for s, _ in self.knots])
        rates = tf.constant([float(r) for _, r in self.knots])
        step = tf.cast(step, tf.float32)
        upper = tf.clip_by_value(
            tf.searchsorted(steps, [step], side='right')[0], 1, len(self.knots) - 1
        )
        start, end = steps[upper - 1], steps[upper]
        fraction = tf.clip_by_value((step - start) / tf.maximum(end - start, 1.0), 0.0, 1.0)
        return rates[upper - 1] + fraction * (rates[upper] - rates[upper - 1])

    def get_config(self):
        return {'knots': self.knots}


def learning_rate_knots(config, saved_knots, step):
    """A new run decays linearly from --initial_lr to 0 at --max_iters. A resumed run whose
    --max_iters changed continues linearly from its current rate to 0 at the new end, so the rate
    never jumps up."""
    if saved_knots is None:
        return [[0, config.initial_lr], [config.max_iters, 0.0]]
    if saved_knots[-1][0] == config.max_iters or step >= config.max_iters:
        return saved_knots
    steps, rates = zip(*saved_knots, strict=True)
    rate = float(np.interp(step, steps, rates))
    if step and rate == 0:
        raise utils.UserError(
            f'--max_iters={config.max_iters}: the run ended at step {step} with '
            'learning rate 0, so more steps would not learn; train a new run '
            'with more steps'
        )
    return [knot for knot in saved_knots if knot[0] < step] + [
        [step, rate],
        [config.max_iters, 0.0],
    ]


# ----------------------------------------------------------------------------- the logdir lock


def acquire_lock(logdir):
    """Claims `logdir` with an OS lock (fcntl.flock), which the system releases when the process
    ends, however it ends; refuses while another process holds it. Returns the open lock file."""
    path = os.path.join(logdir, LOCK_FILE)
    try:  # never through a link, never anything but a regular file: the lock is truncated
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise utils.UserError(
                f'{path}: a symbolic link, not the lock train.py writes; remove it'
            ) from None
        raise utils.UserError(f'--logdir={logdir}: cannot write there ({error.strerror})') from None
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise utils.UserError(
            f'{path}: not a regular file, not the lock train.py writes; remove it'
        )
    stream = os.fdopen(handle, 'a+')
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        owner = stream.read().strip() or 'owner unknown'
        stream.close()
        raise utils.UserError(
            f'--logdir={logdir}: another train.py ({owner}) is writing it'
        ) from None
    stream.truncate(0)
    stream.write(f'host {socket.gethostname()}, pid {os.getpid()}\n')
    stream.flush()
    return stream


class StopSignal:
    """Turns SIGINT/SIGTERM into a request to stop after the current step and save; the previous
    handlers come back on exit."""

    def __init__(self):
        self.received = None

    def __enter__(self):
        self.previous = {
            number: signal.signal(number, self._handle)
            for number in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc_info):
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame):
        del frame
        self.received = number


# ----------------------------------------------------------------------------- the loop's parts


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


def make_train_loop(strategy, unet, optimizer, global_batch, fov_loss, dice_weight=0.0):
    """A @tf.function running `steps` steps (a tensor: one trace serves every count) on every
    replica, as SimCLR's steps_per_loop: the host waits once per call, not once per step.
    Returns each step's global mean loss and the learning rate of its update."""

    def replica_step(images, labels, masks):
        with tf.GradientTape() as tape:
            logits = unet(images, training=True)
            loss = tf.nn.compute_average_loss(
                pixel_loss(labels, logits, masks, fov_loss, dice_weight),
                global_batch_size=global_batch,
            )
        gradients = tape.gradient(loss, unet.trainable_variables)
        # Clip the global gradient, not each replica's share: sum it here, and hand the
        # optimizer (which sums across replicas again) each replica's equal part of the result.
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients, _ = tf.clip_by_global_norm(gradients, GRADIENT_CLIP_NORM)
        optimizer.apply(
            [g / context.num_replicas_in_sync for g in gradients], unet.trainable_variables
        )
        return loss

    @tf.function
    def train_steps(iterator, steps):
        losses = tf.TensorArray(tf.float32, size=steps)
        rates = tf.TensorArray(tf.float32, size=steps)
        for index in tf.range(steps):
            rates = rates.write(index, tf.cast(optimizer.learning_rate, tf.float32))
            loss = strategy.run(replica_step, args=next(iterator))
            losses = losses.write(
                index,
                tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None), tf.float32),
            )
        return losses.stack(), rates.stack()

    return train_steps


def steps_to_boundary(step, config):
    """The steps from `step` to the next log line, validation, save or the end: one call's."""
    intervals = (
        config.log_interval,
        config.save_interval,
        config.validation_interval or config.save_interval,
    )
    return min([config.max_iters - step] + [every - step % every for every in intervals])


def is_chief(strategy):
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type == 'chief' or (
        resolver.task_type == 'worker'
        and resolver.task_id == 0
        and 'chief' not in resolver.cluster_spec().as_dict()
    )


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
        tf.summary.image(
            'train/label', tf.cast(labels[..., None], tf.float32), step=step, max_outputs=3
        )
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
            reason = (
                'no space left on device'
                if getattr(error, 'errno', None) == errno.ENOSPC or 'No space left' in text
                else utils.first_line(error)
            )
    if reason is None:
        sys.stderr.write(captured.getvalue())
        return
    remove_leftovers(logdir)
    # HDF5 does not recover from a failed write (it crashes at exit): report and leave at once.
    utils.exit_at_once(
        f'--logdir={logdir}: could not save step {step} ({reason}); the last good '
        f'checkpoint is {manager.latest_checkpoint}'
    )


def check_free_space(logdir, unet, manager, step):
    """Stops before a save that cannot fit: a checkpoint (weights and Adam's two moments) and a
    weights file, with a margin for summaries."""
    weights = sum(int(np.prod(w.shape)) for w in unet.weights) * 4
    trainable = sum(int(np.prod(w.shape)) for w in unet.trainable_weights) * 4
    needed = int(1.1 * (weights + 2 * trainable + weights)) + 2**21
    free = shutil.disk_usage(logdir).free
    if free < needed:
        raise utils.UserError(
            f'--logdir={logdir}: the disk is full ({free / 2**20:.1f} MiB '
            f'free, saving needs about {needed / 2**20:.0f} MiB); stopped '
            f'before saving step {step}; the last good checkpoint is '
            f'{manager.latest_checkpoint}'
        )


def _format_seconds(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f'{minutes // 60}h{minutes % 60:02d}m' if minutes >= 60 else f'{minutes}m{seconds:02d}s'


# ----------------------------------------------------------------------------- the run folder


def restore_newest(checkpoint, directory):
    """Restores the newest checkpoint that reads back whole and returns its step (0: there is
    none). The `checkpoint` state file is not trusted: a corrupt one must not restart the run.
    Unreadable checkpoints are skipped with a warning; if none can be read, a UserError."""
    skipped = []
    for step in model.checkpoint_steps(directory):
        try:
            checkpoint.restore(
                os.path.join(directory, f'ckpt-{step}')
            ).assert_existing_objects_matched()
        except Exception as error:  # noqa: BLE001 - TensorFlow's reader raises many kinds
            skipped.append(f'ckpt-{step}: {utils.first_line(error)}')
            continue
        if skipped:
            logging.warning(
                'unreadable checkpoints skipped (%s); resuming from ckpt-%d',
                '; '.join(skipped),
                step,
            )
        return step
    if skipped:
        raise utils.UserError(
            f'{directory}: no checkpoint can be read ({"; ".join(skipped)}); nothing was changed'
        )
    return 0


def repair_checkpoint_state(directory, restored):
    """Rewrites the `checkpoint` state file to name the restored checkpoint and the older ones,
    and removes the unreadable newer ones, so that CheckpointManager starts from a sound state."""
    steps = model.checkpoint_steps(directory)
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
    """Removes what a killed save leaves: temporary files (.tmp.*) in every folder train.py
    writes, and TensorFlow's checkpoints/*_temp folders."""
    for folder in ('', SUMMARY_DIR, VALIDATION_DIR, model.BEST_DIR):
        utils.remove_temporaries(os.path.join(logdir, folder))
    for path in glob.glob(os.path.join(glob.escape(logdir), model.CHECKPOINT_DIR, '*_temp')):
        shutil.rmtree(path, ignore_errors=True)


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


# ----------------------------------------------------------------------------- validation


class Validator:
    """Scores the model on held-out images inside their FOV: the loss (cross-entropy) and the
    metrics evaluate.py reports at threshold 0.5 (metrics.scores, the same code), each
    image predicted at the run's scale as evaluate.py does. Writes them to TensorBoard
    ({logdir}/validation_logs) and keeps the weights of the best step in {logdir}/best/."""

    def __init__(self, config, unet, examples, model_scale):
        self.examples = examples
        self.inputs = [
            scale.at_model_scale(
                example.image,
                scale.disc_factor(example.mask, model_scale.fov_diameter, example.name),
                config.preprocess,
            )
            for example in examples
        ]  # once a run
        self.predict = image_predictor(unet, config.preprocess)
        self.unet, self.metric, self.logdir = unet, config.best_metric, config.logdir
        self.writer = tf.summary.create_file_writer(os.path.join(config.logdir, VALIDATION_DIR))
        self.best = model.read_best(config.logdir)

    def score(self):
        counts, losses = metrics.no_pixels(), []
        for example, image in zip(self.examples, self.inputs, strict=True):
            probability = scale.to_native(self.predict(image), example.mask.shape)
            fov = example.mask.astype(bool)
            truth = np.take_along_axis(probability, example.label[..., None].astype(int), -1)
            losses.append(float(-np.log(np.maximum(truth[..., 0][fov], 1e-7)).mean()))
            counts += metrics.count_pixels(example.label, probability[..., 1], fov)
        return {'loss': float(np.mean(losses)), **metrics.scores(counts)}

    def __call__(self, step):
        """Scores step `step`, writes the scalars, and keeps the weights if they are the best."""
        scores = self.score()
        with self.writer.as_default():
            for name, value in scores.items():
                if np.isfinite(value):
                    tf.summary.scalar(f'validation/{name}', value, step=step)
        value = scores[self.metric]
        logging.info(
            'validation at step %d: loss %.4f  F1 %.4f  AUC_ROC %.4f',
            step,
            scores['loss'],
            scores['F1'],
            scores['AUC_ROC'],
        )
        sign = -1 if self.metric == 'loss' else 1
        if np.isfinite(value) and (self.best is None or sign * value > sign * self.best['value']):
            folder = os.path.join(self.logdir, model.BEST_DIR)
            export_weights(self.unet, folder)
            self.best = {'step': step, 'metric': self.metric, 'value': value, 'scores': scores}
            utils.write_json(os.path.join(folder, model.BEST_FILE), self.best)

    def flush(self):
        self.writer.flush()


# ----------------------------------------------------------------------------- the loop


def check_settings(config, examples, replicas):
    if config.batch_size % replicas:
        raise utils.UserError(
            f'--batch_size={config.batch_size} is not divisible by the {replicas} replicas'
        )
    smallest = min(min(e.label.shape) for e in examples)
    if config.patch_size > smallest:
        raise utils.UserError(
            f'--patch_size={config.patch_size} is larger than the smallest '
            f'image side ({smallest}) in {config.label_file_path}'
        )


def prepare_logdir(config, chief):
    """Creates the logdir, takes its lock and clears leftovers of killed saves. Returns the lock
    (None on other workers)."""
    try:
        os.makedirs(config.logdir, exist_ok=True)
    except OSError as error:
        raise utils.UserError(
            f'--logdir={config.logdir}: cannot create it ({error.strerror})'
        ) from None
    lock = acquire_lock(config.logdir) if chief else None
    if chief:
        remove_leftovers(config.logdir)
    return lock


def train(strategy: tf.distribute.Strategy, config: TrainConfig) -> None:
    """Trains under `strategy` with the settings `config` until config.max_iters, resuming from
    the logdir's newest readable checkpoint. Reads no flags: scripts, benchmarks and tests call
    it alike."""
    chief = is_chief(strategy)
    if not config.logdir:
        raise utils.UserError('--logdir is required')
    if not config.label_file_path:
        raise utils.UserError('--label_file_path is required')
    saved, saved_knots = binding_settings(config.logdir)
    check_resume(config, saved)
    examples = dataset.load_label_files(
        config.label_file_path, config.preprocess, config.fov_diameter
    )
    check_settings(config, examples, strategy.num_replicas_in_sync)
    validation = (
        dataset.load_label_files(config.validation_label_file, flag='--validation_label_file')
        if config.validation_label_file
        else None
    )
    model_scale = scale.ModelScale(
        float(np.median([scale.disc_diameter(example.mask, example.name) for example in examples]))
    )
    lock = prepare_logdir(config, chief)
    try:
        with StopSignal() as stop:
            _train(strategy, config, examples, validation, model_scale, chief, saved_knots, stop)
    finally:
        keras.mixed_precision.set_global_policy('float32')
        if lock:
            lock.close()


def build_and_restore(strategy, config, model_scale, chief, saved_knots):
    """Model, optimizer (with its schedule) and checkpoint manager, built under the strategy's
    scope and restored from the logdir's newest readable checkpoint where there is one. The
    chief then writes what the run folder describes: architecture, scale and settings."""
    keras.utils.set_random_seed(config.seed)  # the initial weights too, not only the data
    keras.mixed_precision.set_global_policy(
        'mixed_bfloat16' if config.mixed_precision else 'float32'
    )
    with strategy.scope():
        unet = model.build_from_architecture(config.architecture)
        optimizer = keras.optimizers.Adam(PiecewiseLinear([[0, 0.0], [1, 0.0]]))
        optimizer.build(unet.trainable_variables)  # before the first step, under the scope
        checkpoint = tf.train.Checkpoint(model=unet, optimizer=optimizer)
    directory = os.path.join(config.logdir, model.CHECKPOINT_DIR)
    restored = restore_newest(checkpoint, directory)
    weights = os.path.join(config.logdir, model.WEIGHTS_FILE)
    if not restored and os.path.exists(weights):
        raise utils.UserError(
            f'--logdir={config.logdir} holds trained weights ({weights}) but '
            f'no checkpoint to resume from ({directory} is missing or empty); '
            'train into a new --logdir, or remove the weights to start over'
        )
    knots = learning_rate_knots(config, saved_knots, restored)
    optimizer.learning_rate = PiecewiseLinear(knots)  # the step is known only now
    if chief:
        repair_checkpoint_state(directory, restored)
        for folder in (SUMMARY_DIR, VALIDATION_DIR):
            trim_events(os.path.join(config.logdir, folder), restored)
        model.save_architecture(config.logdir, config.architecture)
        model.save_scale(config.logdir, model_scale)
        save_settings(config, knots)
    else:  # other workers must save too, but somewhere private
        directory = os.path.join(directory, f'.worker{strategy.cluster_resolver.task_id}')
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    return unet, optimizer, manager, restored


def _train(strategy, config, examples, validation, model_scale, chief, saved_knots, stop):
    logdir, global_batch = config.logdir, config.batch_size
    unet, optimizer, manager, resumed = build_and_restore(
        strategy, config, model_scale, chief, saved_knots
    )
    start = int(optimizer.iterations.numpy())
    replicas = strategy.num_replicas_in_sync
    logging.info(
        '%s at step %d of %d: global batch %d = %d replicas x %d, %d training images, '
        '%s parameters',
        'resuming' if resumed else 'starting',
        start,
        config.max_iters,
        global_batch,
        replicas,
        global_batch // replicas,
        len(examples),
        f'{unet.count_params():,}',
    )
    if start >= config.max_iters:
        if chief:  # a run killed between its last checkpoint and weights export
            export_weights(unet, logdir)
        logging.info('already trained to --max_iters=%d', config.max_iters)
        return

    def make_dataset(context):
        return dataset.training_dataset(
            examples,
            context.get_per_replica_batch_size(global_batch),
            config.patch_size,
            config.image_size,
            config.augmentation,
            config.seed,
            start,
            context,
        )

    iterator = iter(strategy.distribute_datasets_from_function(make_dataset))
    preview = next(
        iter(
            dataset.training_dataset(
                examples,
                min(global_batch, 3),
                config.patch_size,
                config.image_size,
                seed=config.seed + 1,
            )
        )
    )
    train_steps = make_train_loop(
        strategy, unet, optimizer, global_batch, config.fov_loss, config.dice_weight
    )
    writer = (
        tf.summary.create_file_writer(os.path.join(logdir, SUMMARY_DIR))
        if chief
        else tf.summary.create_noop_writer()
    )
    validate = Validator(config, unet, validation, model_scale) if chief and validation else None
    validation_interval = config.validation_interval or config.save_interval
    pending, step = [], start
    started = time.time()
    while step < config.max_iters:
        pending += run_steps(train_steps, iterator, step, steps_to_boundary(step, config), manager)
        step = pending[-1]['step']
        if step % config.log_interval == 0 or step == config.max_iters:
            rate = (step - start) / (time.time() - started)
            logging.info(
                'step %d/%d  loss %.4f  lr %.3g  %.2f steps/s  ETA %s',
                step,
                config.max_iters,
                pending[-1]['loss'],
                pending[-1]['learning_rate'],
                rate,
                _format_seconds((config.max_iters - step) / rate),
            )
        if validate and (step % validation_interval == 0 or step == config.max_iters):
            validate(step)
        if step % config.save_interval == 0 or step == config.max_iters or stop.received:
            if chief:
                check_free_space(logdir, unet, manager, step)
            write_summaries(writer, pending, preview, unet, step)
            if validate:
                validate.flush()
            save(manager, unet, logdir, chief, step)
        if stop.received:
            logging.info(
                'signal %d: stopped at step %d after saving; rerun to resume', stop.received, step
            )
            raise SystemExit(128 + stop.received)
    if chief:
        record_calibre(unet, config, examples, model_scale)
    checksum = sum(float(tf.reduce_sum(tf.cast(w, tf.float64))) for w in unet.weights)
    logging.info(
        'done: %d steps in %s; weights in %s (checksum %.12g)',
        config.max_iters - start,
        _format_seconds(time.time() - started),
        os.path.join(logdir, model.WEIGHTS_FILE),
        checksum,
    )


def run_steps(train_steps, iterator, step, count, manager):
    """Runs steps step+1 .. step+count in one call; returns their scalars for TensorBoard."""
    began = time.time()
    losses, rates = (values.numpy() for values in train_steps(iterator, tf.constant(count)))
    rate = count / max(time.time() - began, 1e-9)
    for offset, loss in enumerate(losses):
        if not np.isfinite(loss):
            raise utils.UserError(
                f'the loss became {loss} at step {step + offset + 1}; stopped without saving '
                f'(the last good checkpoint is {manager.latest_checkpoint}); try a lower '
                '--initial_lr'
            )
    return [
        {
            'step': step + offset + 1,
            'loss': float(loss),
            'learning_rate': float(lr),
            'global_steps_per_sec': rate,
        }
        for offset, (loss, lr) in enumerate(zip(losses, rates, strict=True))
    ]


def image_predictor(unet, preprocess):
    """One whole image (float HxWxC in [0, 1]) -> its probabilities (HxWxK numpy), traced once."""
    traced = model.make_predictor(unet, model.in_channels(preprocess))
    return lambda image: traced(image[None])[0].numpy()


def record_calibre(unet, config, examples, model_scale):
    """Adds to scale.json the main-vessel calibre the trained model predicts on its training
    images: what scale's calibre rule matches a photo without a FOV disc to."""
    calibre = scale.reference_calibre(image_predictor(unet, config.preprocess), examples)
    model.save_scale(config.logdir, dataclasses.replace(model_scale, vessel_calibre=calibre))


def main(argv):
    del argv
    train(tf.distribute.get_strategy(), config_from_flags())


if __name__ == '__main__':
    app.run(utils.run_main(main))
