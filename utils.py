"""Images: reading any photo with clear errors, the original's four preprocessing steps,
resizing, and overlays. Nothing here imports TensorFlow, so preprocessing tests stay fast.
"""

import collections
import gzip
import io
import os
import warnings
import zlib

import cv2
import numpy as np
import PIL.Image
from absl import logging

import errors
import fileio

# ----------------------------------------------------------------------------- image I/O


IMAGE_EXTENSIONS = (
    '.png',
    '.jpg',
    '.jpeg',
    '.tif',
    '.tiff',
    '.gif',
    '.bmp',
    '.webp',
    '.ppm',
    '.ppm.gz',
)
MAX_MEGAPIXELS = 50.0  # the largest photo read by default (HRF's are 8.2; a bomb declares 400)
PIL.Image.MAX_IMAGE_PIXELS = None  # Pillow only reads headers here; read_image sets the bound
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # read_image's line says it


def read_image(path: str, gray: bool = False, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """Reads PNG/JPEG/TIFF/GIF/BMP/WebP/PPM (gzipped too: STARE's .ppm.gz) as uint8: HxWx3 RGB,
    or HxW when `gray` (a label or mask stored as RGB, as DRIVE's GIFs, must have nearly equal
    channels: its 2nd_manual palette is (4, 2, 4) and (252, 254, 252)). An image declaring more
    than max_megapixels is refused before it is decoded; a transparent one is laid on black."""
    data = _read_bytes(path)
    pages, transparent = _check_header(data, path, max_megapixels)
    # Any depth and colour, turned as a JPEG's or TIFF's EXIF orientation says (which
    # IMREAD_UNCHANGED ignores); that keeps the alpha of a transparent image, to lay it on black.
    mode = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_UNCHANGED if transparent else cv2.IMREAD_ANYCOLOR)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), mode) if _is_whole(data) else None
    if image is None:
        raise errors.UserError(f'{path}: not a readable image (corrupt or unsupported format)')
    if pages > 1 and not image.any():
        raise errors.UserError(f'{path}: the first of its {pages} pages is black (only it is read)')
    image = _to_8_bits(image, path)
    if image.ndim == 3 and image.shape[2] in (2, 4):
        image = _on_black(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy
    if not gray:
        return np.ascontiguousarray(image if image.ndim == 3 else np.stack([image] * 3, axis=-1))
    if image.ndim == 3 and np.ptp(image.astype(np.int16), axis=-1).max() > 8:
        raise errors.UserError(f'{path}: a colour image where a gray one is expected')
    return np.ascontiguousarray(image if image.ndim == 2 else image[..., 0])


def is_image_name(name: str) -> bool:
    """Whether a file's name ends as the images read_image reads do."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def log_skipped(folder: str, names: list[str]) -> None:
    """Logs how many files of `folder` were skipped as not images, and of which kinds."""
    if names:
        kinds = collections.Counter(os.path.splitext(name)[1].lower() or name for name in names)
        logging.warning(
            '%s: skipped %d files that are not images (%s)',
            folder,
            len(names),
            ', '.join(f'{kind} {count}' for kind, count in kinds.most_common()),
        )


def _read_bytes(path):
    """The file's bytes (a gzipped file's content), refused where empty or not a regular file."""
    fileio.is_regular_file(path)
    with open(path, 'rb') as stream:
        data = stream.read()
    if not data:
        raise errors.UserError(f'{path}: file is empty')
    if path.lower().endswith('.gz'):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise errors.UserError(
                f'{path}: not a readable gzip file ({errors.first_line(error)})'
            ) from None
    return data


def _check_header(data, path, max_megapixels):
    """Refuses an image whose header declares more than max_megapixels, before it is decoded (a
    1 MB PNG can declare 20000x20000). Returns its page count and whether it has transparency
    (1 and False where Pillow does not know the format: OpenCV decides)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # Pillow's words on a damaged file: OpenCV decides
            with PIL.Image.open(io.BytesIO(data)) as image:
                (width, height), pages = image.size, getattr(image, 'n_frames', 1)
                transparent = 'A' in image.mode or 'transparency' in image.info
    except (OSError, ValueError, SyntaxError):
        return 1, False
    if width * height > max_megapixels * 1e6:
        raise errors.UserError(
            f'{path}: declares {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), '
            f'over the bound of {max_megapixels:g} (--max_megapixels raises it)'
        )
    return pages, transparent


def _is_whole(data):
    """False for a JPEG or PNG cut short (OpenCV fills a truncated JPEG with grey, and libpng
    prints its own warning): a JPEG must reach its end marker after its first scan, a PNG its
    IEND chunk. Bytes after the end (a trailing newline, a Motion Photo's video) are allowed."""
    if data[:2] == b'\xff\xd8':
        position = 2
        while position + 4 <= len(data) and data[position] == 0xFF:
            if data[position + 1] == 0xDA:  # start of scan: FFD9 alone ends the image
                return data.find(b'\xff\xd9', position) > 0
            position += 2 + int.from_bytes(data[position + 2 : position + 4], 'big')
        return False
    if data[:8] == b'\x89PNG\r\n\x1a\n':
        position = 8
        while position + 8 <= len(data):
            if data[position + 4 : position + 8] == b'IEND':
                return True
            position += 12 + int.from_bytes(data[position : position + 4], 'big')
        return False
    return True


def _on_black(image):
    """A BGRA (or gray and alpha) image laid on black: what a transparent background hides
    does not count."""
    alpha = image[..., -1:].astype(np.float32) / 255
    colour = np.rint(image[..., :-1] * alpha).astype(np.uint8)
    return colour[..., 0] if colour.shape[2] == 1 else colour


def _to_8_bits(image, path):
    """uint8 as is; 16-bit scaled by 255/65535 (rounded), except an image of only 0s and 1s (a
    0/1 label), which stays 0/1; any other depth is an error naming the file."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise errors.UserError(f'{path}: expected 8- or 16-bit integer pixels, found {image.dtype}')
    if image.max(initial=0) <= 1:
        return image.astype(np.uint8)
    return np.rint(image / 257.0).astype(np.uint8)


def read_binary(path: str) -> np.ndarray:
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
    raise errors.UserError(f'{path}: not a binary image (values {shown}; expected 0/255 or 0/1)')


def read_binary_for(path: str, image: np.ndarray, image_path: str) -> np.ndarray:
    """read_binary(path), checked to be the size of `image` (read from image_path)."""
    binary = read_binary(path)
    if binary.shape != image.shape[:2]:
        raise errors.UserError(
            f'{path}: size {binary.shape[1]}x{binary.shape[0]} differs from its image '
            f'{image_path} ({image.shape[1]}x{image.shape[0]})'
        )
    return binary


# ----------------------------------------------------------------------------- the four steps


def rgb_to_gray(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an RGB uint8 image, as float64."""
    return image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def standardize(gray: np.ndarray) -> np.ndarray:
    """Per-image zero mean and unit variance, then rescaled to 0-255 (uint8)."""
    gray = np.asarray(gray, np.float64)
    std = gray.std()
    normalized = (gray - gray.mean()) / std if std > 0 else np.zeros_like(gray)
    span = normalized.max() - normalized.min()
    if span == 0:
        return np.zeros(gray.shape, np.uint8)
    return np.rint(255 * (normalized - normalized.min()) / span).astype(np.uint8)


def clahe(gray: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on a uint8 image."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(gray)


def adjust_gamma(gray: np.ndarray, gamma: float = 1.2) -> np.ndarray:
    """out = 255 * (in / 255) ** (1 / gamma): gamma > 1 brightens dark vessels' surroundings, as in
    the original (and orobix/retina-unet)."""
    table = np.rint(255 * (np.arange(256) / 255.0) ** (1.0 / gamma)).astype(np.uint8)
    return table[gray]


def preprocess_image(image: np.ndarray) -> dict[str, np.ndarray]:
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


def model_input(rgb: np.ndarray, preprocess: bool) -> np.ndarray:
    """What the model sees of an RGB uint8 image: the preprocessed gray image (HxWx1) or the
    RGB image itself."""
    return preprocess_image(rgb)['gamma'][..., None] if preprocess else rgb


# ----------------------------------------------------------------------------- resizing


def scaled_size(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image or float map resized to size (height, width): pixel-area averaging when it
    shrinks, bilinear when it grows."""
    height, width = size
    shrinks = height * width < array.shape[0] * array.shape[1]
    return cv2.resize(
        array, (width, height), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR
    )


def resize_binary(binary: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A {0, 1} label or mask resized: the resized fraction, at or above one half."""
    return (resize(binary.astype(np.float32), size) >= 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- drawing

OVERLAY_COLOURS = {'hit': (0, 255, 0), 'false_alarm': (255, 0, 0), 'miss': (0, 0, 255)}


def overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Colours an RGB uint8 copy of `image`: green where vessel is predicted and labelled, red
    where predicted but not labelled, blue where labelled but missed."""
    image = np.asarray(image, np.uint8)
    out = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image.copy()
    label, prediction = np.asarray(label).astype(bool), np.asarray(prediction).astype(bool)
    out[label & prediction] = OVERLAY_COLOURS['hit']  # one mask at a time: photos are large
    out[prediction & ~label] = OVERLAY_COLOURS['false_alarm']
    out[label & ~prediction] = OVERLAY_COLOURS['miss']
    return out


def in_green(image: np.ndarray, vessels: np.ndarray) -> np.ndarray:
    """An RGB uint8 copy of `image`, green where `vessels` (0/1 uint8) is 1: overlay()'s hits
    without its temporaries, for photos of any size."""
    out = np.array(image, np.uint8)
    out[vessels.view(bool)] = OVERLAY_COLOURS['hit']
    return out
