"""train.py's settings: TrainConfig, the flags that build it, and the rules for a resumed run.

As Model Garden's configs: the flags are read once, at the edge (config_from_flags), into one
frozen TrainConfig that the run folder keeps (config.json) and train.train reads; nothing else
reads a training flag. Importing this module defines the flags (train.py and
train_distribute.py share them).
"""

import dataclasses
import functools
import math
import os

import numpy as np
from absl import flags

import cli
import errors
import label_files
import metrics
import model
import run_folder


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting that shapes a run, as Model Garden's params: the flags build it, the run
    folder keeps it (config.json), and train() reads nothing else."""

    logdir: str
    label_file_path: str
    # the model (also written to architecture.json, which evaluate.py reads)
    num_classes: int = model.NUM_CLASSES
    base_channels: int = model.BASE_CHANNELS
    depth: int = model.DEPTH
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
    vessel_weight: float = 1.0
    mixed_precision: bool = False
    # validation and the best checkpoint
    validation_label_file: str | None = None
    validation_interval: int = 0
    best_metric: str = 'F1'
    # bookkeeping
    save_interval: int = 100
    log_interval: int = 20

    @property
    def architecture(self) -> dict:
        return {key: getattr(self, key) for key in model.ARCHITECTURE_KEYS}

    @property
    def validation_every(self) -> int:
        return self.validation_interval or self.save_interval

    def is_boundary(self, step: int, every: int) -> bool:
        """Whether `step` is one of every `every` steps, or the last."""
        return step % every == 0 or step == self.max_iters


# Settings a resumed run may change: where the run lives, how long it trains (the learning rate
# then decays linearly from its current value to 0 at the new end), and how often it reports.
RESUMABLE = ('logdir', 'max_iters', 'save_interval', 'log_interval', 'validation_interval')
# Settings that name files: a resumed run compares the files, not how they were spelt.
LABEL_FILES = ('label_file_path', 'validation_label_file')

FLAGS = flags.FLAGS
cli.define_flags(
    'logdir',
    'label_file_path',
    'seed',
    'batch_size',
    'preprocess',
    'transpose_conv',
    'base_channels',
    'depth',
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
flags.DEFINE_float(
    'vessel_weight',
    TrainConfig.vessel_weight,
    'Weight of vessel pixels in the cross-entropy (the others weigh 1). Above 1 moves the '
    'threshold with the best F1 up towards 0.5: a model whose best threshold is t at 1 has it '
    'near 0.5 at (1 - t) / t.',
    lower_bound=0.01,
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
    metrics.BEST_METRICS,
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


def binding_settings(logdir: str) -> tuple[TrainConfig | None, list | None]:
    """load_saved(logdir) where the run trained a step; (None, None) otherwise."""
    return load_saved(logdir) if run_folder.has_trained(logdir) else (None, None)


def load_saved(logdir: str) -> tuple[TrainConfig | None, list | None]:
    """(TrainConfig, learning-rate knots) saved in `logdir`, or (None, None) where there is no
    config.json (a new run, or one trained before settings were saved). Every setting is checked
    as its flag would check it; a UserError names the file and the setting."""
    fields = {
        field.name: (functools.partial(_valid_setting, field), SETTING_TYPES[field.type][1])
        for field in dataclasses.fields(TrainConfig)
    }
    saved = run_folder.read_config(logdir, fields)
    if saved is None:
        return None, None
    settings, knots = saved
    return TrainConfig(**{name: settings[name] for name in fields}), knots


def save_settings(config: TrainConfig, knots: list) -> None:
    run_folder.write_config(config.logdir, dataclasses.asdict(config), knots)


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


def config_from_flags() -> TrainConfig:
    """The run's settings: each flag given on the command line, else the value saved with the
    run (when resuming), else the flag's default."""
    if not FLAGS.logdir:
        raise errors.UserError('--logdir is required')
    saved, _ = binding_settings(FLAGS.logdir)
    values = {
        field.name: FLAGS[field.name].value
        if FLAGS[field.name].present or saved is None
        else getattr(saved, field.name)
        for field in dataclasses.fields(TrainConfig)
    }
    return TrainConfig(**values)


def check_resume(config: TrainConfig, saved: TrainConfig | None) -> None:
    """Refuses, in one line naming the flags, settings that contradict the saved run."""
    if saved is None:
        architecture = run_folder.has_trained(config.logdir) and run_folder.load_architecture(
            config.logdir
        )
        if architecture:  # a run from before config.json
            model.check_architecture(architecture, config.architecture, f'--logdir={config.logdir}')
        return
    conflicts = [
        f'--{field.name}={getattr(config, field.name)} (saved: {getattr(saved, field.name)})'
        for field in dataclasses.fields(TrainConfig)
        if field.name not in RESUMABLE
        and _as_compared(field.name, getattr(config, field.name))
        != _as_compared(field.name, getattr(saved, field.name))
    ]
    if conflicts:
        raise errors.UserError(
            f'--logdir={config.logdir} was trained with other settings: '
            + ', '.join(conflicts)
            + f'; only {", ".join(RESUMABLE)} may '
            'change on resume (or train into a new --logdir)'
        )


def _as_compared(name, value):
    """A setting as a resume compares it: label files by the files they resolve to, so that a
    run trained with relative paths resumes with absolute ones and the other way round."""
    if name in LABEL_FILES and value:
        return [os.path.realpath(path) for path in label_files.paths_of(value)]
    return value


def learning_rate_knots(config: TrainConfig, saved_knots: list | None, step: int) -> list:
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
        raise errors.UserError(
            f'--max_iters={config.max_iters}: the run ended at step {step} with '
            'learning rate 0, so more steps would not learn; train a new run '
            'with more steps'
        )
    return [knot for knot in saved_knots if knot[0] < step] + [
        [step, rate],
        [config.max_iters, 0.0],
    ]
