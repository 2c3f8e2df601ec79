"""What several scripts share: image I/O with clear errors, atomic writes, label files, overlays.

Nothing here imports TensorFlow, so preprocessing tests stay fast.
"""

import errno
import glob
import gzip
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from absl import flags

# TensorFlow's start-up lines on a CPU machine: oneDNN, missing CUDA, CPU features, absl's warning.
_STARTUP_NOISE = re.compile(
    r'^(WARNING: All log messages before absl::InitializeLog|[IWE]0000 |'
    r'To enable the following instructions:)'
)


def quiet_tensorflow():
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


class UserError(Exception):
    """A problem with the user's input: reported as one line, never as a traceback."""


class DiskFullError(UserError):
    """No space left where an output is written: every later output would fail too."""


def run_main(main):
    """Wraps an absl `main`: refuses leftover positional arguments and contradictory aliases, and
    ends the program with one line and exit code 2 on a UserError."""

    def wrapped(argv):
        try:
            if len(argv) > 1:
                raise UserError(
                    f'unexpected argument {argv[1]!r}: flags are written '
                    '--name=value (a space before the value leaves it unused)'
                )
            check_aliases(sys.argv[1:])
            return main(argv)
        except UserError as error:
            print(f'error: {error}', file=sys.stderr)
            sys.exit(2)

    return wrapped


def exit_at_once(message):
    """Prints the one-line error and ends the process with exit code 2 without the interpreter's
    clean-up, for a library left in a state that would crash it there (HDF5 after a failed
    write)."""
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def check_aliases(args):
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


def define_flags(*names):
    """Defines the named shared flags (once per process, whichever script asks first)."""
    for name in names:
        if name in flags.FLAGS:
            continue
        define, default, help_text, *bounds = _SHARED_FLAGS[name]
        define(name, default, help_text, **(bounds[0] if bounds else {}))
        if name in _ALIASES:
            flags.DEFINE_alias(_ALIASES[name], name)


# ----------------------------------------------------------------------------- image I/O


def read_image(path, gray=False):
    """Reads PNG/JPEG/TIFF/GIF/BMP/PPM (gzipped too: STARE's .ppm.gz) as uint8: HxWx3 RGB, or
    HxW when `gray` (a label or mask stored as RGB, as DRIVE's GIFs, must have nearly equal
    channels: its 2nd_manual palette is (4, 2, 4) and (252, 254, 252))."""
    is_regular_file(path)
    with open(path, 'rb') as stream:
        data = stream.read()
    if not data:
        raise UserError(f'{path}: file is empty')
    if path.lower().endswith('.gz'):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f'{path}: not a readable gzip file ({first_line(error)})') from None
    # Any depth and colour, and turned as a JPEG's or TIFF's EXIF orientation says (which
    # IMREAD_UNCHANGED would ignore); an alpha channel is dropped.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    # OpenCV fills a truncated JPEG with grey instead of failing: require the end marker.
    if image is None or (data[:2] == b'\xff\xd8' and data.rstrip(b'\0')[-2:] != b'\xff\xd9'):
        raise UserError(f'{path}: not a readable image (corrupt or unsupported format)')
    image = _to_8_bits(image, path)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy
    elif image.ndim == 3:
        image = image[:, :, 2::-1]  # OpenCV's BGRA to RGB
    if not gray:
        return np.ascontiguousarray(image if image.ndim == 3 else np.stack([image] * 3, axis=-1))
    if image.ndim == 3 and np.ptp(image.astype(np.int16), axis=-1).max() > 8:
        raise UserError(f'{path}: a colour image where a gray one is expected')
    return np.ascontiguousarray(image if image.ndim == 2 else image[..., 0])


def _to_8_bits(image, path):
    """uint8 as is; 16-bit scaled by 255/65535 (rounded), except an image of only 0s and 1s (a
    0/1 label), which stays 0/1; any other depth is an error naming the file."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise UserError(f'{path}: expected 8- or 16-bit integer pixels, found {image.dtype}')
    if image.max(initial=0) <= 1:
        return image.astype(np.uint8)
    return np.rint(image / 257.0).astype(np.uint8)


def read_binary(path):
    """Reads a label or mask file as uint8 {0, 1}. Accepts 0/1, 0/255 and near-binary palettes
    (all values within 15 of 0 or 255, as DRIVE's 2nd_manual GIFs: 2, 4, 252, 254); any grey level
    in between is an error."""
    image = read_image(path, gray=True)
    values = np.unique(image)
    if set(values.tolist()) <= {0, 1}:
        return image.copy()
    if np.all((values <= 15) | (values >= 240)):
        return (image >= 128).astype(np.uint8)
    shown = ', '.join(str(v) for v in values[:6]) + (', ...' if len(values) > 6 else '')
    raise UserError(f'{path}: not a binary image (values {shown}; expected 0/255 or 0/1)')


def read_binary_for(path, image, image_path):
    """read_binary(path), checked to be the size of `image` (read from image_path)."""
    binary = read_binary(path)
    if binary.shape != image.shape[:2]:
        raise UserError(
            f'{path}: size {binary.shape[1]}x{binary.shape[0]} differs from its image '
            f'{image_path} ({image.shape[1]}x{image.shape[0]})'
        )
    return binary


def writable_dir(path, flag):
    """Creates folder `path` if needed and checks that a file can be written there; a UserError
    names the flag otherwise. Returns the path."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f'{flag}={path}: cannot write there ({error.strerror})') from None
    return path


def refuse_input_folder(folder, inputs, flag):
    """Refuses an output folder that holds one of the input files: outputs never replace input."""
    if not folder or not os.path.isdir(folder):
        return
    for path in inputs:
        if os.path.samefile(os.path.dirname(path) or '.', folder):
            raise UserError(
                f'{flag}={folder}: the folder of the input images ({path}); choose another folder'
            )


def first_line(error, limit=200):
    """The first line of an exception's message, for one-line errors."""
    return (str(error).strip().splitlines() or [''])[0][:limit]


def temporary_path(path):
    """A fresh hidden name beside `path` that keeps its whole ending ('.weights.h5' stays)."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix='.tmp.', suffix=f'.{name}', dir=directory)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    return temporary


def remove_temporaries(folder, older_than=0.0):
    """Removes the temporary files and folders (.tmp.*) that killed writers left in `folder`,
    those last changed over `older_than` seconds ago (a live writer's are seconds old)."""
    limit = time.time() - older_than
    for path in glob.glob(os.path.join(glob.escape(folder), '.tmp.*')):
        if os.lstat(path).st_mtime <= limit:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def write_atomic(path, data):
    """Writes bytes or text to `path` through a temporary file and a rename: a killed process
    leaves either the old file or the new one, never half of one."""
    temporary = None
    try:
        temporary = temporary_path(path)
        with open(temporary, 'wb') as stream:
            stream.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f'{os.path.dirname(os.path.abspath(path))}: the disk is full '
                f'(writing {os.path.basename(path)}); nothing of it was '
                'kept'
            ) from None
        raise


def write_png(path, image):
    """Writes a uint8 HxW or HxWx3 RGB image as PNG, atomically."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[:, :, ::-1]  # RGB to OpenCV's BGR
    ok, encoded = cv2.imencode('.png', image)
    if not ok:
        raise UserError(f'{path}: could not encode image of shape {image.shape}')
    write_atomic(path, encoded.tobytes())


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported on first use (it is slow)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi=100):
    """Lays out a matplotlib figure, saves it as PNG atomically, and closes it."""
    figure.tight_layout()
    temporary = temporary_path(path)
    figure.savefig(temporary, dpi=dpi, format='png')
    pyplot().close(figure)
    os.replace(temporary, path)


def write_json(path, value):
    """Writes strict JSON atomically: NaN (an undefined metric) becomes null."""
    write_atomic(
        path, json.dumps(_nan_to_none(value), indent=2, sort_keys=True, allow_nan=False) + '\n'
    )


def is_regular_file(path, missing_ok=False):
    """True for a regular file (through links); False for a missing one where missing_ok; a
    UserError naming the file for anything else: missing, a link to nothing, a link loop, a
    FIFO, a folder or a device (reading those would fail or block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if missing_ok and not os.path.lexists(path):
            return False
        raise UserError(
            f'{path}: '
            + (
                'a link to a file that does not exist'
                if os.path.lexists(path)
                else 'file not found'
            )
        ) from None
    except OSError as error:
        raise UserError(f'{path}: cannot be read ({error.strerror})') from None
    if not stat.S_ISREG(mode):
        raise UserError(f'{path}: not a regular file')
    return True


def read_json(path, fields, missing_ok=False):
    """The JSON object in the regular file `path`, each of `fields` ({name: (check, what it must
    be)}) present and passing its check; a UserError names the file and the field. A missing
    file gives None where missing_ok; a link to nothing, a FIFO or a folder is refused."""
    if not is_regular_file(path, missing_ok):
        return None
    try:
        with open(path, encoding='utf-8') as stream:
            value = json.load(stream, parse_constant=_refuse_constant)
    except (OSError, ValueError) as error:
        raise UserError(f'{path}: not valid JSON ({first_line(error)})') from None
    return check_fields(path, value, fields)


def check_fields(path, value, fields, prefix=''):
    """`value` if it is an object whose `fields` pass their checks, else a UserError naming the
    file and the field (prefix: where a nested object stands, e.g. 'settings.')."""
    if not is_object(value):
        raise UserError(
            f'{path}: expected a JSON object{" at " + prefix[:-1] if prefix else ""}'
            f', found {json.dumps(value)[:60]}'
        )
    for name, (check, expected) in fields.items():
        if name not in value:
            raise UserError(f'{path}: "{prefix}{name}" is missing')
        if not check(value[name]):
            raise UserError(
                f'{path}: "{prefix}{name}" must be {expected}, found {json.dumps(value[name])[:60]}'
            )
    return value


def _refuse_constant(name):
    raise ValueError(f'{name} is not a number JSON allows')


def is_integer(low, high=math.inf):
    """A check for read_json: an integer (not a boolean, not 3.0) from low to high."""
    return lambda value: type(value) is int and low <= value <= high


def is_number(low, high=math.inf):
    """A check for read_json: a finite number from low to high."""
    return lambda value: (
        type(value) in (int, float) and math.isfinite(value) and low <= value <= high
    )


def is_bool(value):
    return type(value) is bool


def is_object(value):
    return isinstance(value, dict)


def _nan_to_none(value):
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- label files
# A label file's first line names the image, label and mask folders relative to the file; every
# other line is `image,label,mask` file names. preprocess.py also writes the preprocessed images
# to the image folder + '_pre' for viewing; a second observer's labels, where there are some, lie
# in the label folder + '_2nd'.

PREPROCESSED_SUFFIX = '_pre'
SECOND_OBSERVER_SUFFIX = '_2nd'


def check_listable(name, source):
    """Refuses a file name that a label file cannot hold (its separators: comma, line break)."""
    if any(character in name for character in ',\n\r'):
        raise UserError(
            f'{source}: a comma or line break in a file name cannot be listed in a '
            'label file; rename the file'
        )


def label_file_text(folders, rows):
    """The text of a label file: `folders` (image, label, mask) and one row of names per image."""
    for row in rows:
        for name in row:
            check_listable(name, name)
    return '\n'.join(','.join(fields) for fields in [folders, *rows]) + '\n'


@dataclass(frozen=True)
class Sample:
    name: str
    image: str
    label: str
    mask: str


def parse_label_file(path, flag='--label_file_path'):
    """The samples a label file lists, with absolute paths; a UserError names file and line (or
    the flag that named a missing file)."""
    if not os.path.isfile(path):
        raise UserError(f'{flag}={path}: file not found')
    with open(path, encoding='utf-8-sig', errors='replace') as stream:  # -sig: a BOM is dropped
        lines = [(number, line.strip()) for number, line in enumerate(stream, 1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise UserError(f'{path}: empty label file')
    root = os.path.dirname(os.path.abspath(path))
    folders = [field.strip() for field in lines[0][1].split(',')]
    if len(folders) != 3 or not all(folders):
        raise UserError(
            f'{path}:{lines[0][0]}: expected the folders "images,labels,masks",'
            f' found "{lines[0][1]}"'
        )
    folders = [os.path.join(root, folder) for folder in folders]
    samples = []
    for number, line in lines[1:]:
        names = [field.strip() for field in line.split(',')]
        if len(names) != 3 or not all(names):
            raise UserError(f'{path}:{number}: expected "image,label,mask", found "{line}"')
        paths = [os.path.join(folder, name) for folder, name in zip(folders, names, strict=True)]
        for file in paths:
            if not os.path.isfile(file):
                raise UserError(f'{path}:{number}: listed file {file} not found')
        samples.append(paths)
    if not samples:
        raise UserError(f'{path}: lists no images')
    stems = output_stems([paths[0] for paths in samples], path)
    return [Sample(stems[paths[0]], *paths) for paths in samples]


def file_stem(path):
    """A file's name without its extension, a gzipped one's too: im0001.ppm.gz -> im0001."""
    return os.path.splitext(os.path.basename(path).removesuffix('.gz'))[0]


def output_stems(paths, source):
    """{path: the stem its outputs are named from}: the file's own stem, never a folder, or its
    whole name where two inputs share a stem (eye.png and eye.jpg); inputs whose outputs would
    still collide (the same name in two folders, a file listed twice) are refused."""
    stems = [file_stem(path) for path in paths]
    names = [
        os.path.basename(path) if stems.count(stem) > 1 else stem
        for path, stem in zip(paths, stems, strict=True)
    ]
    for name in set(names):
        same = [path for path, other in zip(paths, names, strict=True) if other == name]
        if len(same) > 1:
            raise UserError(
                f'{source}: {same[0]} and {same[1]} would write the same outputs; '
                'list each image once, under names of their own'
            )
    return dict(zip(paths, names, strict=True))


def second_observer_path(sample):
    """labels/X.png -> labels_2nd/X.png, where preprocess.py puts the second observer's labels;
    None where there is no such file."""
    folder, name = os.path.split(sample.label)
    path = os.path.join(folder + SECOND_OBSERVER_SUFFIX, name)
    return path if os.path.exists(path) else None


# ------------------------------------------------------------------- the four steps and the FOV


def rgb_to_gray(image):
    """ITU-R 601 luma of an RGB uint8 image, as float64."""
    return image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def standardize(gray):
    """Per-image zero mean and unit variance, then rescaled to 0-255 (uint8)."""
    gray = np.asarray(gray, np.float64)
    std = gray.std()
    normalized = (gray - gray.mean()) / std if std > 0 else np.zeros_like(gray)
    span = normalized.max() - normalized.min()
    if span == 0:
        return np.zeros(gray.shape, np.uint8)
    return np.rint(255 * (normalized - normalized.min()) / span).astype(np.uint8)


def clahe(gray, clip_limit=2.0, tiles=8):
    """Contrast-limited adaptive histogram equalisation on a uint8 image."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(gray)


def adjust_gamma(gray, gamma=1.2):
    """out = 255 * (in / 255) ** (1 / gamma): gamma > 1 brightens dark vessels' surroundings, as in
    the original (and orobix/retina-unet)."""
    table = np.rint(255 * (np.arange(256) / 255.0) ** (1.0 / gamma)).astype(np.uint8)
    return table[gray]


def preprocess_image(image):
    """The four steps in order: RGB to gray, standardise, CLAHE, gamma. Returns every stage."""
    gray = np.clip(np.rint(rgb_to_gray(image)), 0, 255).astype(np.uint8)
    standardized = standardize(gray)
    equalized = clahe(standardized)
    return {
        'gray': gray,
        'standardized': standardized,
        'clahe': equalized,
        'gamma': adjust_gamma(equalized),
    }


def model_input(rgb, preprocess):
    """What the model sees of an RGB uint8 image: the preprocessed gray image (HxWx1) or the
    RGB image itself."""
    return preprocess_image(rgb)['gamma'][..., None] if preprocess else rgb


# ----------------------------------------------------------------------------- resizing


def scaled_size(shape, factor):
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resize(array, size):
    """An image or float map resized to size (height, width): pixel-area averaging when it
    shrinks, bilinear when it grows."""
    height, width = size
    shrinks = height * width < array.shape[0] * array.shape[1]
    return cv2.resize(
        array, (width, height), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR
    )


def resize_binary(binary, size):
    """A {0, 1} label or mask resized: the resized fraction, at or above one half."""
    return (resize(binary.astype(np.float32), size) >= 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- drawing

OVERLAY_COLOURS = {'hit': (0, 255, 0), 'false_alarm': (255, 0, 0), 'miss': (0, 0, 255)}


def overlay(image, label, prediction):
    """Colours an RGB uint8 copy of `image`: green where vessel is predicted and labelled, red
    where predicted but not labelled, blue where labelled but missed."""
    image = np.asarray(image, np.uint8)
    out = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image.copy()
    label, prediction = np.asarray(label).astype(bool), np.asarray(prediction).astype(bool)
    out[label & prediction] = OVERLAY_COLOURS['hit']  # one mask at a time: photos are large
    out[prediction & ~label] = OVERLAY_COLOURS['false_alarm']
    out[label & ~prediction] = OVERLAY_COLOURS['miss']
    return out
