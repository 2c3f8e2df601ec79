"""The command line shared by the scripts: TensorFlow's start-up quieted, the flags several
scripts take (each defined once), and bad input as one line and exit status 2."""

import logging
import math
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from absl import flags

from errors import UnrecoverableError, UserError

# TensorFlow's start-up lines on a CPU machine: oneDNN, missing CUDA, CPU features, absl's warning.
_STARTUP_NOISE = re.compile(
    r'^(WARNING: All log messages before absl::InitializeLog|[IWE]0000 |'
    r'To enable the following instructions:)'
)


def quiet_tensorflow() -> None:
    """Imports TensorFlow with its start-up noise hidden (and its C++ log at errors-only
    level 3, which hides the CUDA lines of a CPU machine); anything else it prints is replayed.
    RETINA_UNET_TF_LOGS=1 shows everything. Call before any module imports TensorFlow."""
    if os.environ.get('RETINA_UNET_TF_LOGS') or 'tensorflow' in sys.modules:
        return
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        lines = sink.read().decode(errors='replace').splitlines()
    for line in lines:
        if not _STARTUP_NOISE.match(line):
            print(line, file=sys.stderr)
    logging.getLogger('absl').addFilter(  # TensorFlow's own INFO lines (one at every save)
        lambda record: record.levelno >= logging.WARNING or 'tensorflow' not in record.pathname
    )


def run_main(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """Wraps an absl `main`: refuses leftover positional arguments and contradictory aliases, and
    ends the program with one line and exit code 2 on a UserError (at once, without the
    interpreter's clean-up, on an UnrecoverableError)."""

    def wrapped(argv):
        try:
            if len(argv) > 1:
                raise UserError(
                    f'unexpected argument {argv[1]!r}: flags are written '
                    '--name=value (a space before the value leaves it unused)'
                )
            check_aliases(sys.argv[1:])
            check_finite_floats()
            return main(argv)
        except UserError as error:
            print(f'error: {error}', file=sys.stderr, flush=True)
            if isinstance(error, UnrecoverableError):
                sys.stdout.flush()
                os._exit(2)
            sys.exit(getattr(error, 'exit_code', 2))

    return wrapped


def check_finite_floats() -> None:
    """Refuses NaN and infinity in every float flag (absl's bounds let NaN through)."""
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if isinstance(flag.parser, flags.FloatParser) and flag.value is not None:
            if not math.isfinite(flag.value):
                raise UserError(f'--{name}={flag.value}: must be a finite number')


def check_aliases(args: list[str]) -> None:
    """Raises when a boolean flag and its alias are both given with different values (absl would
    silently keep the last)."""
    for name, alias in _ALIASES.items():
        given = {}
        for arg in args:
            key, has_value, value = arg.lstrip('-').partition('=')
            negated = key.startswith('no') and key[2:] in (name, alias)
            if not arg.startswith('-') or (key not in (name, alias) and not negated):
                continue
            given[key[2:] if negated else key] = (
                not negated if not has_value else flags.BooleanParser().parse(value)
            )
        if len(given) == 2 and len(set(given.values())) == 2:
            raise UserError(
                f'--{name}={given[name]} and --{alias}={given[alias]} contradict each '
                f'other (--{alias} is another spelling of --{name})'
            )


# The flags several scripts share, each defined once here; a script declares the ones it takes
# with define_flags(...) at its top, and they count as that script's own (--helpshort lists them).
flags.disclaim_key_flags()
_POSITIVE = {'lower_bound': 1}
_SHARED_FLAGS = {  # name: (define, default, help[, bounds])
    'logdir': (
        flags.DEFINE_string,
        None,
        'Run folder: checkpoints, weights, architecture.json, train_logs/ and evaluation outputs.',
    ),
    'label_file_path': (
        flags.DEFINE_string,
        None,
        'Label file written by preprocess.py, e.g. data/DRIVE/training.txt.',
    ),
    'seed': (flags.DEFINE_integer, 0, 'Random seed.'),
    'batch_size': (
        flags.DEFINE_integer,
        4,
        'Global batch size of training, split across '
        "replicas (evaluate.py predicts one image at a time and accepts it for the "
        "original's commands).",
        _POSITIVE,
    ),
    'preprocess': (
        flags.DEFINE_bool,
        False,
        'Feed the model the preprocessed gray image (gray, '
        'standardised, CLAHE, gamma; computed in memory) instead of RGB.',
    ),
    'transpose_conv': (
        flags.DEFINE_bool,
        False,
        'Upsample with Conv2DTranspose instead of nearest-neighbour + 1x1 conv.',
    ),
    'base_channels': (
        flags.DEFINE_integer,
        32,
        'Channels of the first U-Net level (the original: 32); 16 is about 4x cheaper.',
        _POSITIVE,
    ),
    'depth': (
        flags.DEFINE_integer,
        4,
        'Poolings of the U-Net (the original: 4); fewer make a smaller, faster model that sees '
        'less context.',
        {'lower_bound': 1, 'upper_bound': 4},
    ),
    'num_classes': (
        flags.DEFINE_integer,
        2,
        'Output classes (background, vessel).',
        {'lower_bound': 2},
    ),
    'visulize': (flags.DEFINE_bool, False, 'Write figures (alias --visualize).'),
    'output_dir': (
        flags.DEFINE_string,
        None,
        'Where this script writes. preprocess.py: the PNG '
        'folders and label files (default: data). evaluate.py: the evaluations/ folder '
        '(default: the logdir; another folder when it is read-only).',
    ),
}


_ALIASES = {'visulize': 'visualize'}


def define_flags(*names: str) -> None:
    """Defines the named shared flags (once per process, whichever script asks first)."""
    for name in names:
        if name in flags.FLAGS:
            continue
        define, default, help_text, *bounds = _SHARED_FLAGS[name]
        define(name, default, help_text, **(bounds[0] if bounds else {}))
        if name in _ALIASES:
            flags.DEFINE_alias(_ALIASES[name], name)


class SignalHandler:
    """SIGINT and SIGTERM go to `handler` inside the with-block; the previous handlers come back
    on exit."""

    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        self.previous = {
            number: signal.signal(number, self.handler)
            for number in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc_info):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class StopSignal(SignalHandler):
    """Turns SIGINT/SIGTERM into a request to stop after the current step and save."""

    def __init__(self):
        super().__init__(self._handle)
        self.received = None

    def _handle(self, number, frame):
        del frame
        self.received = number
