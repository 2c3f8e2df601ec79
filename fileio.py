"""Files written whole or not at all (atomic replaces), and JSON read back with every field
checked, so that a damaged or crafted file gives one line naming the file and the field."""

import csv
import errno
import glob
import io
import json
import math
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

import errors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Check = Callable[[Any], bool]  # a JSON field's test
Fields = Mapping[str, tuple[Check, str]]  # {field: (its test, what it must be)}
STALE_SECONDS = 60  # a temporary file this old in a shared output folder was left by a killed run
# Temporary names only this project makes: only these are ever cleaned (a user's own .tmp.* stays).
TEMPORARY_PREFIX = '.retina-unet-tmp.'
FORMULA_START = ('=', '+', '-', '@', '\t', '\r')  # a spreadsheet runs a cell starting so


def writable_dir(path: str, flag: str) -> str:
    """Creates folder `path` if needed and checks that a file can be written there; a UserError
    names the flag otherwise. Returns the path."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise errors.UserError(f'{flag}={path}: cannot write there ({error.strerror})') from None
    return path


def refuse_input_folder(folder: str | None, inputs: Iterable[str], flag: str) -> None:
    """Refuses an output folder that holds one of the input files: outputs never replace input."""
    if not folder or not os.path.isdir(folder):
        return
    for path in inputs:
        if os.path.samefile(os.path.dirname(path) or '.', folder):
            raise errors.UserError(
                f'{flag}={folder}: the folder of the input images ({path}); choose another folder'
            )


def overlaps(path: str, other: str) -> bool:
    """Whether one of two paths is the other or lies inside it (links resolved)."""
    path, other = os.path.realpath(path), os.path.realpath(other)
    return os.path.commonpath([path, other]) in (path, other)


def temporary_path(path: str) -> str:
    """A fresh hidden name beside `path` that keeps its extensions ('.weights.h5' stays, which
    Keras checks) but not its stem, so that it is never longer than a legal name."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=TEMPORARY_PREFIX, suffix=_extensions(name), dir=directory
    )
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
    return temporary


def temporary_dir(beside: str) -> str:
    """A fresh hidden folder beside folder `beside`, with the modes a new folder gets (not
    mkdtemp's 0700, which would outlive the rename)."""
    parent = os.path.dirname(os.path.abspath(beside))
    temporary = tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=parent)
    os.chmod(temporary, 0o777 & ~_umask())
    return temporary


def _extensions(name: str) -> str:
    """'.weights.h5' of 'model.weights.h5', '.png' of 'eye_overlay.png' (at most 24 characters)."""
    dot = name.find('.', 1)
    ending = name[dot:] if dot > 0 else ''
    return ending if len(ending) <= 24 else os.path.splitext(name)[1][:24]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def remove_temporaries(folder: str, older_than: float = 0.0) -> None:
    """Removes the temporary files and folders this project's killed writers left in `folder`
    (named TEMPORARY_PREFIX*, a name only it makes), those last changed over `older_than` seconds
    ago (a live writer's are seconds old)."""
    limit = time.time() - older_than
    for path in glob.glob(os.path.join(glob.escape(folder), glob.escape(TEMPORARY_PREFIX) + '*')):
        if os.lstat(path).st_mtime <= limit:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def write_atomic(path: str, data: str | bytes | np.ndarray) -> None:
    """Writes bytes (or any buffer) or text to `path` through a temporary file and a rename: a
    killed process leaves either the old file or the new one, never half of one."""
    temporary = None
    try:
        temporary = temporary_path(path)
        with open(temporary, 'wb') as stream:
            stream.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
            raise errors.UserError(
                f'{printable(path)}: the name is too long for this file system'
            ) from None
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.DiskFullError(
                f'{os.path.dirname(os.path.abspath(path))}: the disk is full '
                f'(writing {os.path.basename(path)}); nothing of it was '
                'kept'
            ) from None
        raise


def write_csv(path: str, header: list[str], rows: Iterable[list[str]]) -> None:
    """Writes a CSV atomically, each text cell made safe for spreadsheets (spreadsheet_safe)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    for row in [header, *rows]:
        writer.writerow([spreadsheet_safe(printable(str(cell))) for cell in row])
    write_atomic(path, text.getvalue())


def spreadsheet_safe(cell: str) -> str:
    """A cell that no spreadsheet runs as a formula (OWASP's rule for CSV injection): text that
    starts with = + - @, a tab or a carriage return gets a leading quote; numbers stay."""
    if not cell.startswith(FORMULA_START):
        return cell
    try:
        float(cell)
        return cell
    except ValueError:
        return "'" + cell


def printable(text: str) -> str:
    """`text` as valid UTF-8: the bytes of a file name that is not UTF-8 (which Python keeps as
    surrogates, e.g. Latin-1 'M\\xfcller.png') become U+FFFD."""
    return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')


def write_png(path: str, image: np.ndarray, scratch: bool = False) -> None:
    """Writes a uint8 HxW or HxWx3 RGB image as PNG, atomically. `scratch`: the image is the
    caller's to spoil, so its channels are swapped in place (no copy of a large photo)."""
    image = np.asarray(image)
    if image.ndim == 3:  # RGB to OpenCV's BGR
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR, dst=image) if scratch else image[..., ::-1]
    ok, encoded = cv2.imencode('.png', image)
    if not ok:
        raise errors.UserError(f'{path}: could not encode image of shape {image.shape}')
    write_atomic(path, encoded)  # its buffer: no copy


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend, imported on first use (it is slow)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: 'Figure', path: str, dpi: int = 100) -> None:
    """Lays out a matplotlib figure, saves it as PNG atomically, and closes it."""
    figure.tight_layout()
    temporary = temporary_path(path)
    figure.savefig(temporary, dpi=dpi, format='png')
    pyplot().close(figure)
    os.replace(temporary, path)


def write_json(path: str, value: Any) -> None:
    """Writes strict JSON atomically: NaN (an undefined metric) becomes null."""
    write_atomic(
        path, json.dumps(_nan_to_none(value), indent=2, sort_keys=True, allow_nan=False) + '\n'
    )


def is_regular_file(path: str, missing_ok: bool = False) -> bool:
    """True for a regular file (through links); False for a missing one where missing_ok; a
    UserError naming the file for anything else: missing, a link to nothing, a link loop, a
    FIFO, a folder or a device (reading those would fail or block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if missing_ok and not os.path.lexists(path):
            return False
        raise errors.UserError(
            f'{path}: '
            + (
                'a link to a file that does not exist'
                if os.path.lexists(path)
                else 'file not found'
            )
        ) from None
    except OSError as error:
        raise errors.UserError(f'{path}: cannot be read ({error.strerror})') from None
    if not stat.S_ISREG(mode):
        raise errors.UserError(f'{path}: not a regular file')
    return True


def read_json(path: str, fields: Fields, missing_ok: bool = False) -> dict | None:
    """The JSON object in the regular file `path`, each of `fields` ({name: (check, what it must
    be)}) present and passing its check; a UserError names the file and the field. A missing
    file gives None where missing_ok; a link to nothing, a FIFO or a folder is refused."""
    if not is_regular_file(path, missing_ok):
        return None
    try:
        with open(path, encoding='utf-8') as stream:
            value = json.load(stream, parse_constant=_refuse_constant)
    except (OSError, ValueError) as error:
        raise errors.UserError(f'{path}: not valid JSON ({errors.first_line(error)})') from None
    return check_fields(path, value, fields)


def check_fields(path: str, value: Any, fields: Fields, prefix: str = '') -> dict:
    """`value` if it is an object whose `fields` pass their checks, else a UserError naming the
    file and the field (prefix: where a nested object stands, e.g. 'settings.')."""
    if not is_object(value):
        raise errors.UserError(
            f'{path}: expected a JSON object{" at " + prefix[:-1] if prefix else ""}'
            f', found {json.dumps(value)[:60]}'
        )
    for name, (check, expected) in fields.items():
        if name not in value:
            raise errors.UserError(f'{path}: "{prefix}{name}" is missing')
        if not check(value[name]):
            raise errors.UserError(
                f'{path}: "{prefix}{name}" must be {expected}, found {json.dumps(value[name])[:60]}'
            )
    return value


def _refuse_constant(name):
    raise ValueError(f'{name} is not a number JSON allows')


def is_integer(low: int, high: float = math.inf) -> Check:
    """A check for read_json: an integer (not a boolean, not 3.0) from low to high."""
    return lambda value: type(value) is int and low <= value <= high


def is_number(low: float, high: float = math.inf) -> Check:
    """A check for read_json: a finite number from low to high."""
    return lambda value: (
        type(value) in (int, float) and math.isfinite(value) and low <= value <= high
    )


def is_bool(value: Any) -> bool:
    return type(value) is bool


def is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _nan_to_none(value):
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
