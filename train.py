"""Trains the U-Net; the one training loop that train_distribute.py runs under another strategy.

  python train.py --logdir=log/retina --label_file_path=data/CHASEDB/training.txt \
      --batch_size=4 --max_iters=2000 --preprocess=True --transpose_conv=True
  tensorboard --logdir log/retina

Every setting is saved with the run ({logdir}/config.json). A rerun with the same --logdir
resumes from its last checkpoint with the saved settings (flags given again must agree, except
those in train_config.RESUMABLE) and stops at --max_iters.
"""

import os

import cli
import errors

cli.quiet_tensorflow()

import dataclasses  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, logging  # noqa: E402

import dataset  # noqa: E402
import inference  # noqa: E402
import model  # noqa: E402
import optimization  # noqa: E402
import run_folder  # noqa: E402
import scale  # noqa: E402
import train_config  # noqa: E402
import validation  # noqa: E402

GRADIENT_CLIP_NORM = 10.0


# ----------------------------------------------------------------------------- the loop's parts


def pixel_loss(
    labels: tf.Tensor,
    logits: tf.Tensor,
    masks: tf.Tensor,
    fov_loss: bool,
    dice_weight: float = 0.0,
    vessel_weight: float = 1.0,
) -> tf.Tensor:
    """Per-example loss over the pixels that count (the FOV, or all): mean cross-entropy, vessel
    pixels weighing vessel_weight and the others 1, plus dice_weight times the soft Dice loss
    1 - 2|P.Y| / (|P| + |Y|) of the vessel probability P."""
    weights = masks if fov_loss else tf.ones_like(masks)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    if vessel_weight != 1:
        losses *= tf.where(labels > 0, vessel_weight, 1.0)
    loss = tf.reduce_sum(losses * weights, [1, 2]) / tf.maximum(tf.reduce_sum(weights, [1, 2]), 1)
    if dice_weight:
        vessel = tf.nn.softmax(logits)[..., 1] * weights
        truth = tf.cast(labels, tf.float32) * weights
        overlap = 2 * tf.reduce_sum(vessel * truth, [1, 2]) + 1
        loss += dice_weight * (1 - overlap / (tf.reduce_sum(vessel + truth, [1, 2]) + 1))
    return loss


def config_loss(config: train_config.TrainConfig) -> Callable:
    """pixel_loss(labels, logits, masks) with the run's loss settings."""
    return functools.partial(
        pixel_loss,
        fov_loss=config.fov_loss,
        dice_weight=config.dice_weight,
        vessel_weight=config.vessel_weight,
    )


def make_train_loop(
    strategy: tf.distribute.Strategy,
    unet: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    global_batch: int,
    example_loss: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor],
) -> Callable[[Iterator, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A @tf.function running `steps` steps (a tensor: one trace serves every count) on every
    replica, as SimCLR's steps_per_loop: the host waits once per call, not once per step.
    `example_loss` gives each example's loss (pixel_loss's form). Returns each step's global
    mean loss and the learning rate of its update. The optimizer must take gradients already
    summed across replicas, as FusedAdam does."""

    def replica_step(images, labels, masks):
        with tf.GradientTape() as tape:
            logits = unet(images, training=True)
            loss = tf.nn.compute_average_loss(
                example_loss(labels, logits, masks), global_batch_size=global_batch
            )
        gradients = tape.gradient(loss, unet.trainable_variables)
        # Clip the global gradient, not each replica's share: summed once here (FusedAdam
        # takes it as it is).
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients, _ = tf.clip_by_global_norm(gradients, GRADIENT_CLIP_NORM)
        optimizer.apply(gradients, unet.trainable_variables)
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


def steps_to_boundary(step: int, config: train_config.TrainConfig) -> int:
    """The steps from `step` to the next log line, validation, save or the end: one call's."""
    intervals = (config.log_interval, config.save_interval, config.validation_every)
    return min([config.max_iters - step] + [every - step % every for every in intervals])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
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


def _format_seconds(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return f'{minutes // 60}h{minutes % 60:02d}m' if minutes >= 60 else f'{minutes}m{seconds:02d}s'


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a train() call did: the step it reached, the steps it ran and in how long, the final
    weights' checksum, and the signal that stopped it early (None: it ran to the end)."""

    step: int
    steps_run: int
    seconds: float
    checksum: float
    signal: int | None = None


def check_settings(
    config: train_config.TrainConfig, examples: list[dataset.Example], replicas: int
) -> None:
    if config.batch_size % replicas:
        raise errors.UserError(
            f'--batch_size={config.batch_size} is not divisible by the {replicas} replicas'
        )
    smallest = min(min(e.label.shape) for e in examples)
    if config.patch_size > smallest:
        raise errors.UserError(
            f'--patch_size={config.patch_size} is larger than the smallest '
            f'image side ({smallest}) in {config.label_file_path}'
        )


def train(strategy: tf.distribute.Strategy, config: train_config.TrainConfig) -> TrainResult:
    """Trains under `strategy` with the settings `config` until config.max_iters, or until a
    SIGINT or SIGTERM (after saving), resuming from the logdir's newest readable checkpoint.
    Reads no flags and never exits: scripts, benchmarks and tests call it alike."""
    chief = is_chief(strategy)
    if not config.logdir:
        raise errors.UserError('--logdir is required')
    if not config.label_file_path:
        raise errors.UserError('--label_file_path is required')
    saved, saved_knots = train_config.binding_settings(config.logdir)
    train_config.check_resume(config, saved)
    examples = dataset.load_label_files(
        config.label_file_path, config.preprocess, config.fov_diameter
    )
    check_settings(config, examples, strategy.num_replicas_in_sync)
    held_out = (
        dataset.load_label_files(config.validation_label_file, flag='--validation_label_file')
        if config.validation_label_file
        else None
    )
    model_scale = scale.ModelScale(
        float(np.median([scale.disc_diameter(example.mask, example.name) for example in examples]))
    )
    lock = run_folder.create(config.logdir, chief)
    try:
        with cli.StopSignal() as stop:
            trainer = Trainer(strategy, config, examples, held_out, model_scale, chief, saved_knots)
            return trainer.run(stop)
    finally:
        keras.mixed_precision.set_global_policy('float32')
        if lock:
            lock.close()


class Trainer:
    """One run's model, optimizer, checkpoints, input streams and outputs, built and restored
    once; run() steps them to config.max_iters."""

    def __init__(self, strategy, config, examples, held_out, model_scale, chief, saved_knots):
        self.config, self.chief, self.examples = config, chief, examples
        self.unet, optimizer, self.manager, resumed = build_and_restore(
            strategy, config, model_scale, chief, saved_knots
        )
        self.model_scale, self.start = model_scale, int(optimizer.iterations.numpy())
        log_start(config, strategy, len(examples), self.unet, self.start, resumed)
        self.iterator, self.preview = input_streams(strategy, config, examples, self.start)
        self.train_steps = make_train_loop(
            strategy, self.unet, optimizer, config.batch_size, config_loss(config)
        )
        self.writer = (
            tf.summary.create_file_writer(os.path.join(config.logdir, run_folder.SUMMARY_DIR))
            if chief
            else tf.summary.create_noop_writer()
        )
        self.validate = (
            validation.Validator(config, self.unet, held_out, model_scale)
            if chief and held_out
            else None
        )

    def run(self, stop):
        """Steps to the end, one call per stretch between log lines, validations and saves."""
        config, step, pending, started = self.config, self.start, [], time.time()
        if step >= config.max_iters:
            if self.chief:  # a run killed between its last checkpoint and weights export
                run_folder.export_weights(self.unet, config.logdir)
            logging.info('already trained to --max_iters=%d', config.max_iters)
        while step < config.max_iters and not stop.received:
            count = steps_to_boundary(step, config)
            pending += run_steps(self.train_steps, self.iterator, step, count, self.manager)
            step = pending[-1]['step']
            if config.is_boundary(step, config.log_interval):
                log_progress(config, pending[-1], (step - self.start) / (time.time() - started))
            if self.validate and config.is_boundary(step, config.validation_every):
                self.validate(step)
            if config.is_boundary(step, config.save_interval) or stop.received:
                self.save(step, pending)
        if stop.received:
            logging.info(
                'signal %d: stopped at step %d after saving; rerun to resume', stop.received, step
            )
        elif self.chief:  # a rerun at the end too: the start rewrote scale.json without it
            record_calibre(self.unet, config, self.examples, self.model_scale)
        return finished(self.unet, config.logdir, step, step - self.start, started, stop.received)

    def save(self, step, pending):
        """Summaries up to `step`, then its checkpoint and weights."""
        if self.chief:
            run_folder.check_free_space(self.config.logdir, self.unet, self.manager, step)
        write_summaries(self.writer, pending, self.preview, self.unet, step)
        if self.validate:
            self.validate.flush()
        run_folder.save(self.manager, self.unet, self.config.logdir, self.chief, step)


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
        optimizer = optimization.FusedAdam(optimization.PiecewiseLinear([[0, 0.0], [1, 0.0]]))
        optimizer.build(unet.trainable_variables)  # before the first step, under the scope
        checkpoint = tf.train.Checkpoint(model=unet, optimizer=optimizer)
    directory = run_folder.checkpoint_dir(config.logdir)
    restored = run_folder.restore_newest(checkpoint, config.logdir)
    weights = run_folder.weights_path(config.logdir)
    if not restored and os.path.exists(weights):
        raise errors.UserError(
            f'--logdir={config.logdir} holds trained weights ({weights}) but '
            f'no checkpoint to resume from ({directory} is missing or empty); '
            'train into a new --logdir, or remove the weights to start over'
        )
    knots = train_config.learning_rate_knots(config, saved_knots, restored)
    optimizer.learning_rate = optimization.PiecewiseLinear(knots)  # the step is known only now
    if chief:
        run_folder.repair_checkpoint_state(directory, restored)
        for folder in (run_folder.SUMMARY_DIR, run_folder.VALIDATION_DIR):
            run_folder.trim_events(os.path.join(config.logdir, folder), restored)
        run_folder.save_architecture(config.logdir, config.architecture)
        run_folder.save_scale(config.logdir, model_scale)
        train_config.save_settings(config, knots)
    else:  # other workers must save too, but somewhere private
        directory = os.path.join(directory, f'.worker{strategy.cluster_resolver.task_id}')
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    return unet, optimizer, manager, restored


def log_start(config, strategy, images, unet, start, resumed):
    replicas = strategy.num_replicas_in_sync
    logging.info(
        '%s at step %d of %d: global batch %d = %d replicas x %d, %d training images, '
        '%s parameters',
        'resuming' if resumed else 'starting',
        start,
        config.max_iters,
        config.batch_size,
        replicas,
        config.batch_size // replicas,
        images,
        f'{unet.count_params():,}',
    )


def input_streams(strategy, config, examples, start):
    """The training stream from step `start` on (split over the replicas), and the fixed batch
    of up to 3 whose predictions the image summaries show."""

    def make_dataset(context):
        return dataset.training_dataset(
            examples,
            context.get_per_replica_batch_size(config.batch_size),
            config.patch_size,
            config.image_size,
            config.augmentation,
            config.seed,
            start,
            context,
        )

    preview = dataset.training_dataset(
        examples,
        min(config.batch_size, 3),
        config.patch_size,
        config.image_size,
        seed=config.seed + 1,
    )
    return iter(strategy.distribute_datasets_from_function(make_dataset)), next(iter(preview))


def log_progress(config, last, rate):
    logging.info(
        'step %d/%d  loss %.4f  lr %.3g  %.2f steps/s  ETA %s',
        last['step'],
        config.max_iters,
        last['loss'],
        last['learning_rate'],
        rate,
        _format_seconds((config.max_iters - last['step']) / rate),
    )


def finished(unet, logdir, step, steps_run, started, signal_number):
    """The TrainResult, logged (with the weights' checksum) where the run reached its end."""
    seconds = time.time() - started
    checksum = sum(float(tf.reduce_sum(tf.cast(w, tf.float64))) for w in unet.weights)
    if not signal_number:
        logging.info(
            'done: %d steps in %s; weights in %s (checksum %.12g)',
            steps_run,
            _format_seconds(seconds),
            run_folder.weights_path(logdir),
            checksum,
        )
    return TrainResult(step, steps_run, seconds, checksum, signal_number or None)


def run_steps(train_steps, iterator, step, count, manager):
    """Runs steps step+1 .. step+count in one call; returns their scalars for TensorBoard."""
    began = time.time()
    losses, rates = (values.numpy() for values in train_steps(iterator, tf.constant(count)))
    rate = count / max(time.time() - began, 1e-9)
    for offset, loss in enumerate(losses):
        if not np.isfinite(loss):
            raise errors.UserError(
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


def record_calibre(unet, config, examples, model_scale):
    """Adds to scale.json the main-vessel calibre the trained model predicts on its training
    images: what scale's calibre rule matches a photo without a FOV disc to."""
    predictor = inference.Predictor(unet, config.preprocess, model_scale)
    calibre = scale.reference_calibre(predictor.probabilities, examples)
    run_folder.save_scale(config.logdir, dataclasses.replace(model_scale, vessel_calibre=calibre))


def exit_on_signal(result: TrainResult) -> None:
    """Ends the program as the signal that stopped the run would (status 128 + its number)."""
    if result.signal:
        raise SystemExit(128 + result.signal)


def main(argv: list[str]) -> None:
    del argv
    exit_on_signal(train(tf.distribute.get_strategy(), train_config.config_from_flags()))


if __name__ == '__main__':
    app.run(cli.run_main(main))
