"""FOV masks, diameters and cut sides: shipped masks reproduced, and synthetic photos whose
disc is known (noisy grey borders, notches, discs cut by the frame, frames filled)."""

import glob
import os

import numpy as np
import pytest
from scipy import ndimage

import errors
import fov
import utils
from conftest import require_shared

SIZE = 400
RADIUS = 170.0


def photo(
    background=0, noise=0.0, seed=0, centre=(SIZE / 2, SIZE / 2), radius=RADIUS, shape=(SIZE, SIZE)
):
    """A fundus-like photo: a vignetted reddish disc with a few dark vessels, on a background
    of level `background` with Gaussian noise; returns (image, disc mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    distance = np.hypot(xx - centre[0], yy - centre[1]) / radius
    disc = distance <= 1
    shade = (1 - 0.5 * distance**2)[..., None] * np.array([200.0, 90.0, 40.0])
    for angle in (0.3, 1.9, 3.5, 5.0):  # vessels: darker lines from the centre outwards
        along = (xx - centre[0]) * np.cos(angle) + (yy - centre[1]) * np.sin(angle)
        across = -(xx - centre[0]) * np.sin(angle) + (yy - centre[1]) * np.cos(angle)
        shade[(np.abs(across) < 3) & (along > 0)] *= 0.6
    image = np.where(disc[..., None], shade, background) + rng.normal(0, noise, disc.shape + (3,))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), disc


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / (a | b).sum()


def test_a_black_background_gives_the_disc_and_its_diameter():
    image, disc = photo()
    mask = fov.derive(image)
    assert iou(mask, disc) >= 0.98
    assert fov.diameter(mask) == pytest.approx(2 * RADIUS, rel=0.03)
    assert fov.sides_touched(mask) == ()


def test_a_noisy_grey_border_is_not_taken_for_retina():
    image, disc = photo(background=30, noise=8)  # film scan: dark, not black, grainy
    mask = fov.derive(image)
    assert iou(mask, disc) >= 0.98
    assert fov.diameter(mask) == pytest.approx(2 * RADIUS, rel=0.03)


def test_a_dark_rim_and_a_dark_hole_inside_stay_in_the_fov():
    image, disc = photo(background=5, noise=2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    dark = (np.hypot(xx - 330, yy - 200) < 40) | (np.hypot(xx - 200, yy - 200) < 20)
    image[dark & disc] = 8  # a dark lesion at the rim, a dark spot at the centre
    mask = fov.derive(image)
    assert iou(mask, disc) >= 0.98
    assert fov.diameter(mask) == pytest.approx(2 * RADIUS, rel=0.03)


def test_a_notch_and_a_marker_tab_do_not_change_the_diameter():
    image, disc = photo(background=20, noise=5)
    image[20:45, 300:325] = (200, 90, 40)  # a bright marker tab outside the disc (as STARE's)
    image[185:215, 358:371] = 20  # a notch cut into the disc's edge
    mask = fov.derive(image)
    assert fov.diameter(mask) == pytest.approx(2 * RADIUS, rel=0.03)
    assert not mask[25:40, 305:320].any()  # the tab is not retina
    assert iou(mask, disc) >= 0.98


def test_a_disc_cut_at_top_and_bottom_keeps_its_diameter():
    image, disc = photo(shape=(240, SIZE), centre=(SIZE / 2, 120))  # 90 px cut off each side
    mask = fov.derive(image)
    assert fov.sides_touched(mask) == ('top', 'bottom')
    assert fov.diameter(mask) == pytest.approx(2 * RADIUS, rel=0.03)
    area_diameter = np.sqrt(4 * disc.sum() / np.pi)
    assert area_diameter < 0.92 * 2 * RADIUS  # the area alone would have said 8% less
    assert iou(mask, disc) >= 0.98


def test_a_fov_that_fills_the_frame_has_no_diameter():
    image, _ = photo(radius=400)  # a 400 px crop well inside an 800 px disc
    mask = fov.derive(image)
    assert mask.mean() > 0.98
    assert fov.sides_touched(mask) == fov.SIDES
    assert fov.diameter(mask) is None


def test_the_scale_of_a_photo_does_not_change_its_diameter_in_disc_units():
    image, _ = photo(background=25, noise=6)
    big = utils.resize(image, (2 * SIZE, 2 * SIZE))
    assert fov.diameter(fov.derive(big)) == pytest.approx(
        2 * fov.diameter(fov.derive(image)), rel=0.01
    )


def test_derived_fov_fills_holes_and_drops_specks():
    yy, xx = np.mgrid[:101, :101]
    disc = np.hypot(yy - 50, xx - 50) <= 40
    image = np.zeros((101, 101, 3), np.uint8)
    image[disc] = (180, 80, 40)
    image[45:55, 45:55] = 0  # a dark spot inside the retina: a hole to fill
    image[2:5, 2:5] = 200  # a bright speck outside: not the largest component
    expected = ndimage.binary_erosion(disc, np.ones((3, 3)))
    assert iou(fov.derive(image), expected) >= 0.98


def test_a_black_image_is_an_error_naming_the_file():
    with pytest.raises(errors.UserError, match='dark.png: no field of view found'):
        fov.read(np.zeros((50, 50, 3), np.uint8), 'dark.png')


def _shipped_masks(dataset, pattern, mask_of):
    images = sorted(glob.glob(os.path.join(require_shared(dataset), pattern)))
    return [(path, utils.read_binary(mask_of(path))) for path in images]


@pytest.mark.parametrize(
    'dataset, pattern, mask_of, count',
    [
        (
            'DRIVE',
            '*/images/*.tif',
            lambda p: p.replace('/images/', '/mask/').replace('.tif', '_mask.gif'),
            40,
        ),
        (
            'HRF',
            'images/*',
            lambda p: os.path.splitext(p.replace('/images/', '/mask/'))[0] + '_mask.tif',
            15,
        ),
    ],
)
def test_derived_fov_matches_the_shipped_masks(dataset, pattern, mask_of, count):
    pairs = _shipped_masks(dataset, pattern, mask_of)
    assert len(pairs) == count
    for path, shipped in pairs:
        derived = fov.derive(utils.read_image(path))
        assert iou(shipped, derived) >= 0.98, path
        assert fov.diameter(derived) == pytest.approx(fov.diameter(shipped), rel=0.01), path


def test_stare_fov_excludes_its_grey_film_border():
    images = sorted(glob.glob(os.path.join(require_shared('STARE'), 'stare-images', '*.ppm*')))
    assert len(images) == 10
    for path in images:
        image = utils.read_image(path)
        mask = fov.derive(image).astype(bool)
        # What is left outside is the dark border (the marker tab is a small share of it).
        assert np.percentile(image.max(axis=-1)[~mask], 95) < 60, path
        vessels = utils.read_binary(
            path.replace('stare-images', 'labels-ah').replace('.ppm', '.ah.ppm')
        ).astype(bool)
        assert (vessels & mask).sum() >= 0.99 * vessels.sum(), path
        assert 600 < fov.diameter(mask) < 720, path


def test_chase_masks_are_one_solid_region_covering_the_vessels():
    images = sorted(glob.glob(os.path.join(require_shared('CHASEDB1'), 'Image_??[LR].jpg')))
    assert len(images) == 20
    for path in images:
        mask = fov.derive(utils.read_image(path)).astype(bool)
        assert ndimage.label(mask)[1] == 1, path
        assert (ndimage.binary_fill_holes(mask) == mask).all(), path
        assert 0.55 < mask.mean() < 0.8, path
        vessels = utils.read_binary(path.replace('.jpg', '_1stHO.png')).astype(bool)
        assert (vessels & mask).sum() >= 0.99 * vessels.sum(), path
