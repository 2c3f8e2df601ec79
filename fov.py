"""The field of view (FOV) of a fundus photo: its mask, the diameter of its disc, and the sides of
the frame that cut it.

A FOV is the bright disc of the camera's aperture, often cut by the frame at the top and bottom,
on a background that is black, or dark but not black (film scans, sensor noise). `derive` finds
it on a reduced copy of the photo: the brightest channel, median-filtered, above a threshold set
between the background's level and Otsu's split of the photo; holes filled, the largest piece,
its convex hull (apertures are convex: a dark rim inside the FOV is no notch), clipped to the
circle fitted to its curved boundary (a marker tab outside the disc is no retina). `diameter`
takes the disc's diameter from that circle, so a disc cut by the frame keeps its true size; a
FOV with too little curved boundary (one that fills the frame) has no diameter.
"""

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

import errors
import utils

REDUCED_SIDE = 640  # px; the longer side of the copy a FOV is found on
THRESHOLD_SHARE = 0.3  # of the way from the background's level up to Otsu's threshold
MIN_STEP = 4  # grey levels; the least a FOV stands above its background
MAX_BACKGROUND_SHARE = 0.5  # of Otsu's threshold: a brighter darker half is retina, not background
FIT_TOLERANCES = (0.08, 0.04, 0.02, 0.01)  # of the radius: boundary points kept, fit by fit
MIN_ARC_DEGREES = 90  # a circle fitted to less of a boundary does not tell the diameter
ARC_BIN_DEGREES = 10
CLIP_MARGIN = 0.01  # of the radius: how far beyond the fitted circle the mask may reach
SIDES = ('top', 'bottom', 'left', 'right')
FRAME_MARGIN = 3  # px; a FOV this close to a side of the frame is cut by it
MIN_SIDE = 32  # px; the shortest side of a photo that can hold a FOV


@dataclass(frozen=True)
class Circle:
    x: float
    y: float
    radius: float


def read(image: np.ndarray, image_path: str, mask_path: str | None = None) -> np.ndarray:
    """The FOV mask (uint8 {0, 1}) of an image: read from mask_path (checked to be the image's
    size) or, without one, derived from the image. An empty mask is an error naming the file."""
    if mask_path:
        mask = utils.read_binary_for(mask_path, image, image_path)
        if not mask.any():
            raise errors.UserError(f'{mask_path}: the FOV mask is empty (all zero)')
    else:
        refuse_featureless(image, image_path)
        mask = derive(image)
        if not mask.any():
            raise errors.UserError(
                f'{image_path}: no field of view found (no region stands out from the dark '
                'background)'
            )
    return mask


def refuse_featureless(image: np.ndarray, path: str) -> None:
    """Refuses an image in which no retina can be: black, one flat level, or too thin."""
    height, width = image.shape[:2]
    if image.max() <= MIN_STEP:
        raise errors.UserError(f'{path}: no field of view found (the image is black)')
    if min(height, width) < MIN_SIDE:
        raise errors.UserError(
            f'{path}: the image is only {width}x{height} px (a photo that holds a FOV is '
            f'{MIN_SIDE} px or more on each side)'
        )
    if np.ptp(image) <= MIN_STEP:
        raise errors.UserError(
            f'{path}: the image is one flat colour (values {image.min()} to {image.max()})'
        )


def derive(image: np.ndarray) -> np.ndarray:
    """The FOV mask (uint8 {0, 1}, the image's size) of a fundus image (HxWx3 or HxW uint8)."""
    small = _reduced(image)
    mask = _mask_of(_brightness(small))
    height, width = image.shape[:2]
    mask = mask.astype(np.uint8)
    if mask.shape != (height, width):
        mask = (cv2.resize(mask * 255, (width, height)) >= 128).astype(np.uint8)
    # Shipped masks (DRIVE's) end a pixel inside the aperture's edge.
    return cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _reduced(image):
    factor = REDUCED_SIDE / max(image.shape[:2])
    return image if factor >= 1 else utils.resize(image, utils.scaled_size(image.shape, factor))


def _brightness(image):
    """The brightest channel, median-filtered against sensor, film and JPEG noise."""
    brightest = image.max(axis=-1) if image.ndim == 3 else image
    return cv2.medianBlur(np.ascontiguousarray(brightest, np.uint8), 5)


def threshold(brightness: np.ndarray) -> float | None:
    """The grey level above which a pixel is FOV: THRESHOLD_SHARE of the way from the
    background's level (the median of the pixels below Otsu's threshold) to that threshold;
    None where that darker half is too bright to be background (the FOV fills the frame)."""
    otsu, _ = cv2.threshold(brightness, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    darker = brightness[brightness <= otsu]
    background = float(np.median(darker)) if darker.size else 0.0
    if background > MAX_BACKGROUND_SHARE * otsu:
        return None
    return background + max(THRESHOLD_SHARE * (otsu - background), MIN_STEP)


def _mask_of(brightness):
    level = threshold(brightness)
    if level is None:
        return np.ones(brightness.shape, bool)
    foreground = ndimage.binary_fill_holes(brightness > level)
    foreground = _largest_component(ndimage.binary_opening(foreground, np.ones((3, 3), bool)))
    if not foreground.any():
        return foreground
    hull = _convex_hull(foreground)
    circle = fit_circle(hull)
    if circle is None:
        return hull
    yy, xx = np.ogrid[: hull.shape[0], : hull.shape[1]]
    reach = circle.radius * (1 + CLIP_MARGIN) + 1
    return hull & ((xx - circle.x) ** 2 + (yy - circle.y) ** 2 <= reach**2)


def _convex_hull(binary):
    contours, _ = cv2.findContours(
        np.asarray(binary, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    hull = np.zeros(binary.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    return hull.astype(bool)


def _largest_component(binary):
    components, count = ndimage.label(binary)
    if count == 0:
        return binary
    return components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))


def fit_circle(mask: np.ndarray) -> Circle | None:
    """The circle fitted to the mask's boundary away from the frame (an algebraic least-squares
    fit, refitted to the points within FIT_TOLERANCES of it, so straight cuts and tabs drop
    out); None where the points it keeps span less than MIN_ARC_DEGREES around its centre."""
    points = _curved_boundary(mask)
    if len(points) < 3:
        return None
    circle = _least_squares_circle(points)
    for tolerance in FIT_TOLERANCES:
        if circle is None:
            return None
        distance = np.abs(
            np.hypot(points[:, 0] - circle.x, points[:, 1] - circle.y) - circle.radius
        )
        kept = points[distance <= max(1.5, tolerance * circle.radius)]
        circle = _least_squares_circle(kept) if len(kept) >= 3 else None
    if circle is None or _arc_degrees(kept, circle) < MIN_ARC_DEGREES:
        return None
    return circle


def _curved_boundary(mask):
    """(x, y) of the outer boundary pixels of the mask's largest piece, less those on the frame."""
    contours, _ = cv2.findContours(
        np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    if not contours:
        return np.zeros((0, 2))
    points = max(contours, key=len)[:, 0, :].astype(np.float64)
    height, width = mask.shape
    inside = (
        (points[:, 0] >= FRAME_MARGIN)
        & (points[:, 0] < width - FRAME_MARGIN)
        & (points[:, 1] >= FRAME_MARGIN)
        & (points[:, 1] < height - FRAME_MARGIN)
    )
    return points[inside]


def _least_squares_circle(points):
    """Kasa's fit: x^2 + y^2 = a x + b y + c in least squares."""
    x, y = points[:, 0], points[:, 1]
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, x * x + y * y, rcond=None)
    squared = c + (a / 2) ** 2 + (b / 2) ** 2
    return Circle(a / 2, b / 2, float(np.sqrt(squared))) if squared > 0 else None


def _arc_degrees(points, circle):
    angles = np.degrees(np.arctan2(points[:, 1] - circle.y, points[:, 0] - circle.x)) % 360
    return ARC_BIN_DEGREES * len(np.unique(angles // ARC_BIN_DEGREES))


def diameter(mask: np.ndarray) -> float | None:
    """The diameter in pixels of the FOV's disc: twice the radius of the circle fitted to its
    curved boundary; None where the boundary does not show a disc (the FOV fills the frame)."""
    circle = fit_circle(mask)
    # The boundary pixels' centres lie half a pixel inside the disc's edge.
    return None if circle is None else 2 * circle.radius + 1


def sides_touched(mask: np.ndarray) -> tuple[str, ...]:
    """The sides of the frame ('top', 'bottom', 'left', 'right') the FOV reaches (within
    FRAME_MARGIN)."""
    margin = FRAME_MARGIN
    edges = (mask[:margin], mask[-margin:], mask[:, :margin], mask[:, -margin:])
    return tuple(side for side, edge in zip(SIDES, edges, strict=True) if np.any(edge))


def diameter_or_area(mask: np.ndarray) -> float:
    """fov.diameter, or where the FOV shows no disc, the diameter of the disc of its area (the
    size features are normalised by)."""
    return diameter(mask) or float(np.sqrt(4 * np.count_nonzero(mask) / np.pi))
