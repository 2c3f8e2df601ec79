"""Vascular features of a binary vessel map: the measurements clinical studies report.

Every feature is computed on the map brought to one reference scale (the FOV diameter
REFERENCE_FOV_PX), so photos from different cameras and resolutions compare. docs/features.md
gives each formula and its source.
"""

import math

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skimage import morphology

import utils
from fov import diameter_or_area

REFERENCE_FOV_PX = 1000  # FOV diameter the maps are brought to before measuring
MIN_OBJECT_PX = 10  # vessel fragments smaller than this (at the reference scale) are noise
MIN_SEGMENT_PX = 20  # shorter segments (arc length) are left out of the tortuosity
SPUR_PX = 10  # skeleton side branches shorter than this (at the reference scale) are pruned
CENTROID_STEP_PX = 4  # a segment's path is smoothed by the centroids of this many pixels
RETINA_MM_PER_DEGREE = 0.288  # Gullstrand's schematic eye, the usual conversion of field angles
COLUMNS = (
    'image',
    'source',
    'fov_diameter_px',
    'reference_fov_px',
    'vessel_density',
    'length_density',
    'fractal_dimension',
    'calibre_mean_px',
    'calibre_median_px',
    'tortuosity_distance',
    'segments',
    'branch_points',
    'end_points',
)
MM_COLUMNS = ('mm_per_px', 'calibre_mean_um', 'calibre_median_um', 'length_density_per_mm')

_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # clockwise


def at_reference_scale(
    vessels: np.ndarray,
    fov: np.ndarray,
    reference: float | None = REFERENCE_FOV_PX,
    diameter: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The map (any float or {0, 1} array) and FOV mask cut to the FOV's bounding box and resized
    so the FOV diameter (`diameter` where the user gave it, else the mask's) is `reference`
    (None: as they are); returns binary (vessels, fov) and the native FOV diameter."""
    diameter = diameter or diameter_or_area(fov)
    box = ndimage.find_objects(np.asarray(fov, np.uint8))[0]  # the FOV's bounding box
    vessels, fov = np.asarray(vessels)[box], np.asarray(fov)[box]
    size = utils.scaled_size(fov.shape, reference / diameter) if reference else fov.shape
    vessels = utils.resize(np.asarray(vessels, np.float32), size) >= 0.5
    fov = utils.resize_binary(fov, size).astype(bool)
    return vessels & fov, fov, diameter


def measure(
    vessels: np.ndarray,
    fov: np.ndarray,
    reference: float | None = REFERENCE_FOV_PX,
    mm_per_native_px: float | None = None,
    fov_diameter: float | None = None,
) -> dict[str, float | int | None]:
    """The features of one vessel map (HxW, vessel where >= 0.5) inside its FOV mask, at the
    reference scale (None: in the map's own pixels), its FOV `fov_diameter` across where the
    user gave it. Undefined features (no vessel: fractal dimension, calibre, tortuosity) are
    None."""
    vessels, fov, diameter = at_reference_scale(vessels, fov, reference, fov_diameter)
    vessels = morphology.remove_small_objects(vessels, max_size=MIN_OBJECT_PX - 1, connectivity=2)
    fov_area = int(fov.sum())
    skeleton = prune(morphology.skeletonize(vessels).astype(bool))
    graph = skeleton_graph(skeleton)
    length = float(graph['lengths'].sum()) + graph['junction_pixels']
    calibres = 2 * ndimage.distance_transform_edt(vessels)[graph['segment_pixels']]
    features = {
        'fov_diameter_px': round(diameter, 1),
        'reference_fov_px': reference,
        'vessel_density': float(vessels.sum() / fov_area),
        'length_density': length / fov_area,
        'fractal_dimension': fractal_dimension(vessels),
        'calibre_mean_px': float(calibres.mean()) if calibres.size else None,
        'calibre_median_px': float(np.median(calibres)) if calibres.size else None,
        'tortuosity_distance': tortuosity(graph['lengths'], graph['chords']),
        'segments': len(graph['lengths']),
        'branch_points': graph['branch_points'],
        'end_points': graph['end_points'],
    }
    if mm_per_native_px:
        per_px = mm_per_native_px * diameter / (reference or diameter)
        features.update(millimetres(features, per_px))
    return features


def millimetres(features: dict, mm_per_px: float) -> dict[str, float | None]:
    """The pixel features in physical units, given the size of one reference-scale pixel."""

    def scaled(value, factor):
        return None if value is None else value * factor

    return {
        'mm_per_px': mm_per_px,
        'calibre_mean_um': scaled(features['calibre_mean_px'], 1000 * mm_per_px),
        'calibre_median_um': scaled(features['calibre_median_px'], 1000 * mm_per_px),
        'length_density_per_mm': features['length_density'] / mm_per_px,
    }


def mm_per_native_px(
    fov_diameter: float | None, field_degrees: float | None = None, pixel_um: float | None = None
) -> float | None:
    """Millimetres on the retina per pixel of the photo: from the pixel size, or from the
    camera's field angle across the FOV diameter (None: the FOV shows no disc); None when
    neither is known."""
    if pixel_um:
        return pixel_um / 1000
    if field_degrees and fov_diameter:
        return field_degrees * RETINA_MM_PER_DEGREE / fov_diameter
    return None


# ----------------------------------------------------------------------------- the skeleton


def crossing_number(skeleton: np.ndarray) -> np.ndarray:
    """For each pixel, the number of separate runs of skeleton pixels around it (1: an end,
    2: on a line, >= 3: a junction); unlike a neighbour count, a staircase corner is no
    junction."""
    padded = np.pad(skeleton, 1).astype(np.int8)
    height, width = skeleton.shape
    ring = [padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy, dx in _RING]
    changes = sum(np.abs(ring[i] - ring[(i + 1) % 8]) for i in range(8))
    return (changes // 2) * skeleton


def ends_of(skeleton: np.ndarray) -> np.ndarray:
    return skeleton & (crossing_number(skeleton) == 1)


def junction_zone(skeleton: np.ndarray) -> tuple[np.ndarray, int]:
    """Junction pixels (crossing number >= 3) and the skeleton pixels next to them, where the
    arms of a junction may touch each other; and the number of junctions (8-connected
    clusters of junction pixels)."""
    junctions = skeleton & (crossing_number(skeleton) >= 3)
    _, count = ndimage.label(junctions, structure=np.ones((3, 3)))
    return skeleton & ndimage.binary_dilation(junctions, np.ones((3, 3), bool)), count


def prune(skeleton: np.ndarray, length: int = SPUR_PX) -> np.ndarray:
    """The skeleton without spurs: the segments between an end and a junction of fewer than
    `length` pixels (the side branches an uneven vessel edge leaves, the forks at a blunt
    vessel end), and the junction pixels they leave dangling."""
    zone, _ = junction_zone(skeleton)
    labels, count = ndimage.label(skeleton & ~zone, structure=np.ones((3, 3)))
    short = np.bincount(labels.ravel(), minlength=count + 1) < length
    ending = np.bincount(labels[ends_of(skeleton)], minlength=count + 1) > 0
    touching = (
        np.bincount(
            labels[ndimage.binary_dilation(zone, np.ones((3, 3), bool))], minlength=count + 1
        )
        > 0
    )
    spurs = short & ending & touching
    spurs[0] = False
    pruned = skeleton & ~spurs[labels]
    for _ in range(2):  # a zone is at most two pixels deep
        pruned &= ~(ends_of(pruned) & zone)
    return pruned


def skeleton_graph(skeleton: np.ndarray) -> dict:
    """Segments between junctions and ends of a one-pixel skeleton: each segment's arc length
    and chord (a segment stops one pixel short of a junction's pixels); the number of branch
    points (clusters of junction pixels), of end points and of skeleton pixels at junctions."""
    skeleton = skeleton.astype(bool)
    near_junctions, branch_points = junction_zone(skeleton)
    pieces = skeleton & ~near_junctions
    lengths, chords = path_measures(pieces)
    return {
        'lengths': lengths,
        'chords': chords,
        'end_points': int(ends_of(skeleton).sum()),
        'branch_points': branch_points,
        'junction_pixels': int(near_junctions.sum()),
        'segment_pixels': pieces,
    }


def path_measures(pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length and chord of each 8-connected component of a binary map of path-like pieces
    (segments of more than one pixel). The pixels of a piece are ordered by 8-connected steps
    from one end (the pixel farthest from another, found by two sweeps); the arc is the length
    of the polyline from that end through the centroids of every CENTROID_STEP_PX pixels to the
    other end, the chord the distance between the two ends; 0 for a piece that is no path (a
    loop, or a branching piece where junction pixels form a triangle, which the crossing number
    does not see), which tortuosity leaves out."""
    labels, count = ndimage.label(pieces, structure=np.ones((3, 3)))
    if not count:
        return np.zeros(0), np.zeros(0)
    pixels = np.argwhere(labels)  # row-major, as ravel() orders them
    piece = labels[pixels[:, 0], pixels[:, 1]].astype(np.int64) - 1  # int32 overflows in bins
    graph = pixel_graph(pieces, len(pixels))
    steps = np.zeros(len(pixels))
    for _ in range(2):  # from any pixel to the farthest one, then from that end
        ends = farthest(piece, steps)
        steps = csgraph.dijkstra(graph, unweighted=True, indices=ends, min_only=True)
    start, end = ends, farthest(piece, steps)
    order = np.lexsort((steps, piece))
    bins = piece[order] * len(pixels) + (steps[order] // CENTROID_STEP_PX).astype(int)
    groups, first = np.unique(bins, return_index=True)
    points = (
        np.add.reduceat(pixels[order].astype(float), first)
        / np.diff(np.append(first, len(order)))[:, None]
    )
    owner = groups // len(pixels)
    changes = owner[1:] != owner[:-1]
    points[np.r_[True, changes]] = pixels[start]
    points[np.r_[changes, True]] = pixels[end]
    inside = ~changes  # consecutive points of one piece
    arcs = np.bincount(
        owner[1:][inside],
        np.linalg.norm(np.diff(points, axis=0)[inside], axis=1),
        minlength=len(start),
    )
    chords = np.linalg.norm(pixels[end] - pixels[start], axis=1).astype(float)
    single = np.bincount(owner) == 1  # a piece of at most CENTROID_STEP_PX pixels
    arcs[single] = chords[single]
    ends = np.bincount(labels[ends_of(pieces)], minlength=len(start) + 1)[1:]
    chords[ends != 2] = 0  # a loop, or a junction the crossing number missed: no tortuosity
    kept = np.bincount(piece) > 1
    return arcs[kept], chords[kept]


def pixel_graph(binary: np.ndarray, count: int) -> sparse.csr_matrix:
    """The sparse graph joining each set pixel of `binary` (numbered row-major) to its set
    8-neighbours."""
    index = np.full(binary.shape, -1)
    index[binary] = np.arange(count)
    padded = np.pad(index, 1, constant_values=-1)
    height, width = binary.shape
    rows, columns = [], []
    for dy, dx in _RING:
        other = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        joined = binary & (other >= 0)
        rows.append(index[joined])
        columns.append(other[joined])
    rows, columns = np.concatenate(rows), np.concatenate(columns)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(count, count))


def farthest(piece: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """For each piece (0, 1, ...), the index of its pixel with the most steps."""
    order = np.lexsort((-steps, piece))
    return order[np.r_[True, piece[order][1:] != piece[order][:-1]]]


def tortuosity(
    lengths: np.ndarray, chords: np.ndarray, minimum: float = MIN_SEGMENT_PX
) -> float | None:
    """Distance metric: arc / chord of the segments at least `minimum` long, their mean weighted
    by arc length; None without such a segment."""
    kept = (lengths >= minimum) & (chords > 0)
    if not kept.any():
        return None
    return float((lengths[kept] / chords[kept] * lengths[kept]).sum() / lengths[kept].sum())


# ----------------------------------------------------------------------------- fractal dimension


def fractal_dimension(binary: np.ndarray) -> float | None:
    """Box-counting dimension D0: boxes of side 2, 4, 8, ... up to 1/8 of the shorter side, the
    least-squares slope of log(count) against log(1 / side); None for an empty map or one too
    small for two box sizes."""
    if not binary.any():
        return None
    largest = min(binary.shape) / 8
    sides = [2**k for k in range(1, int(math.log2(largest)) + 1)] if largest >= 2 else []
    if len(sides) < 2:
        return None
    counts = [box_count(binary, side) for side in sides]
    slope = np.polyfit(np.log(1 / np.array(sides)), np.log(counts), 1)[0]
    return float(slope)


def box_count(binary: np.ndarray, side: int) -> int:
    """How many boxes of a grid of side x side boxes (from the top left) hold any pixel."""
    height, width = binary.shape
    padded = np.pad(binary, [(0, -height % side), (0, -width % side)])
    boxes = padded.reshape(padded.shape[0] // side, side, padded.shape[1] // side, side)
    return int(boxes.any(axis=(1, 3)).sum())
