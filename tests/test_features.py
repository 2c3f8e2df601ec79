"""Vascular features on shapes whose answers are worked out by hand."""

import math

import cv2
import numpy as np
import pytest

import features

SIZE = 400


def measure(vessels):
    """The features at native pixels, the whole image as the FOV."""
    return features.measure(vessels, np.ones_like(vessels), reference=None)


def canvas():
    return np.zeros((SIZE, SIZE), np.uint8)


def test_a_straight_line_is_one_segment_of_its_length():
    line = canvas()
    line[200, 50:351] = 1  # 301 pixels: 300 px from the first pixel's centre to the last's
    result = measure(line)
    assert result['segments'] == 1
    assert result['end_points'] == 2
    assert result['branch_points'] == 0
    assert result['tortuosity_distance'] == pytest.approx(1.0)
    assert result['length_density'] == pytest.approx(300 / SIZE**2)
    assert result['vessel_density'] == pytest.approx(301 / SIZE**2)


def test_a_slanted_line_is_straight_too():
    line = canvas()
    cv2.line(line, (40, 100), (360, 233), 1)  # 22.6 degrees: a staircase of pixels
    result = measure(line)
    assert result['tortuosity_distance'] == pytest.approx(1.0, abs=0.01)
    assert result['length_density'] * SIZE**2 == pytest.approx(math.hypot(320, 133), rel=0.01)


def test_a_circular_arc_has_the_arc_to_chord_ratio_of_its_angle():
    arc = canvas()
    radius, degrees = 150, 180
    cv2.ellipse(arc, (200, 200), (radius, radius), 0, 0, degrees, 1)
    result = measure(arc)
    angle = math.radians(degrees)
    assert result['segments'] == 1
    assert result['tortuosity_distance'] == pytest.approx(
        angle / (2 * math.sin(angle / 2)), rel=0.01
    )
    assert result['length_density'] * SIZE**2 == pytest.approx(radius * angle, rel=0.01)


@pytest.mark.parametrize('width', [5, 8, 9, 14])
def test_the_calibre_of_a_bar_is_its_width(width):
    bar = canvas()
    bar[100 : 100 + width, 50:350] = 1
    result = measure(bar)
    assert abs(result['calibre_median_px'] - width) <= 1
    assert abs(result['calibre_mean_px'] - width) <= 1


def test_a_y_junction_has_one_branch_point_three_ends_and_three_segments():
    y = canvas()
    centre = (200, 200)
    for angle in (90, 210, 330):
        tip = (
            round(200 + 150 * math.cos(math.radians(angle))),
            round(200 - 150 * math.sin(math.radians(angle))),
        )
        cv2.line(y, centre, tip, 1, thickness=5)
    result = measure(y)
    assert result['branch_points'] == 1
    assert result['end_points'] == 3
    assert result['segments'] == 3
    assert result['tortuosity_distance'] == pytest.approx(1.0, abs=0.02)


def sierpinski_triangle(order):
    """Pascal's triangle mod 2: pixel (i, j) is set where i AND j is 0 (2 ** order square)."""
    i, j = np.indices((2**order, 2**order))
    return ((i & j) == 0).astype(np.uint8)


def sierpinski_carpet(order):
    """The carpet of side 3 ** order: a pixel is removed where a base-3 digit of both of its
    coordinates is 1."""
    i, j = np.indices((3**order, 3**order))
    keep = np.ones(i.shape, bool)
    for _ in range(order):
        keep &= ~((i % 3 == 1) & (j % 3 == 1))
        i, j = i // 3, j // 3
    return keep.astype(np.uint8)


@pytest.mark.parametrize(
    'shape, dimension',
    [
        (np.ones((512, 512), np.uint8), 2.0),
        (np.pad(np.ones((1, 512), np.uint8), [(255, 256), (0, 0)]), 1.0),
        (sierpinski_triangle(10), math.log(3) / math.log(2)),
        (sierpinski_carpet(6), math.log(8) / math.log(3)),
    ],
    ids=['square', 'line', 'sierpinski-triangle', 'sierpinski-carpet'],
)
def test_fractal_dimension_of_known_shapes(shape, dimension):
    assert features.fractal_dimension(shape.astype(bool)) == pytest.approx(dimension, abs=0.03)


def test_an_empty_map_has_zero_density_and_undefined_shape_features():
    result = measure(canvas())
    assert result['vessel_density'] == 0
    assert result['length_density'] == 0
    assert result['segments'] == result['branch_points'] == result['end_points'] == 0
    for key in ('fractal_dimension', 'calibre_mean_px', 'calibre_median_px', 'tortuosity_distance'):
        assert result[key] is None


def disc(size, radius):
    yy, xx = np.indices((size, size))
    return ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2).astype(np.uint8)


def test_one_map_at_two_resolutions_measures_alike_at_the_reference_scale():
    small = canvas()
    cv2.line(small, (60, 120), (340, 260), 1, thickness=4)
    cv2.line(small, (200, 190), (120, 330), 1, thickness=3)
    fov = disc(SIZE, 190)
    large = (cv2.resize(small.astype(np.float32), None, fx=2, fy=2) >= 0.5).astype(np.uint8)
    at_native = features.measure(small, fov)
    doubled = features.measure(
        large, cv2.resize(fov, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    )
    for result in (at_native, doubled):
        assert result['reference_fov_px'] == features.REFERENCE_FOV_PX
    assert doubled['fov_diameter_px'] == pytest.approx(2 * at_native['fov_diameter_px'], rel=0.01)
    for key in ('vessel_density', 'calibre_median_px', 'length_density', 'tortuosity_distance'):
        assert doubled[key] == pytest.approx(at_native[key], rel=0.05), key
    assert doubled['branch_points'] == at_native['branch_points'] == 1


def test_millimetre_columns_from_the_field_angle():
    bar = canvas()
    bar[100:110, 50:350] = 1
    fov = disc(SIZE, 190)
    diameter = 2 * 190
    per_px = features.mm_per_native_px(diameter, field_degrees=45)
    assert per_px == pytest.approx(45 * features.RETINA_MM_PER_DEGREE / diameter, rel=0.01)
    result = features.measure(bar, fov, mm_per_native_px=per_px)
    # 45 degrees are 13 mm of retina across the FOV: a 10 px bar of a 380 px FOV is ~34 um
    assert result['calibre_median_um'] == pytest.approx(10 * 12.96 / 380 * 1000, rel=0.1)
    assert features.mm_per_native_px(diameter, pixel_um=6.5) == pytest.approx(0.0065)
    assert features.mm_per_native_px(diameter) is None
    assert features.mm_per_native_px(None, field_degrees=45) is None  # a FOV that shows no disc


def test_a_map_of_many_pieces_is_measured():
    """Noise brought to the reference scale from a small FOV diameter: about 19,000 skeleton
    pieces of 379,000 pixels, whose piece-and-step bins overflow 32-bit integers."""
    rng = np.random.default_rng(0)
    noise = (rng.random((300, 300)) < 0.5).astype(np.uint8)
    measured = features.measure(noise, np.ones_like(noise), fov_diameter=96)
    assert measured['segments'] > 10000 and measured['tortuosity_distance'] >= 1
