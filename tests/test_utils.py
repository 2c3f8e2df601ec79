"""Image I/O errors, atomic writes, overlays, label files and temporaries."""

import os

import numpy as np
import pytest

import errors
import fileio
import utils


def test_overlay_colours():
    image = np.full((1, 4, 3), 100, np.uint8)
    out = utils.overlay(image, label=[[1, 1, 0, 0]], prediction=[[1, 0, 1, 0]])
    np.testing.assert_array_equal(out[0], [[0, 255, 0], [0, 0, 255], [255, 0, 0], [100, 100, 100]])


def test_a_photo_overlay_is_the_overlay_of_its_own_vessels_and_writes_either_way(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (16, 24, 3), np.uint8)
    vessels = (rng.random((16, 24)) < 0.3).astype(np.uint8)
    green = utils.in_green(rgb, vessels)
    np.testing.assert_array_equal(green, utils.overlay(rgb, vessels, vessels))
    assert green[vessels == 1].tolist() == [[0, 255, 0]] * int(vessels.sum())
    fileio.write_png(str(tmp_path / 'copy.png'), green)
    np.testing.assert_array_equal(utils.in_green(rgb, vessels), green)  # left as it was
    fileio.write_png(str(tmp_path / 'scratch.png'), green, scratch=True)
    for name in ('copy.png', 'scratch.png'):
        np.testing.assert_array_equal(
            utils.read_image(str(tmp_path / name)), utils.in_green(rgb, vessels)
        )


def test_read_binary_accepts_binary_palettes_and_rejects_grey(tmp_path):
    path = str(tmp_path / 'label.png')
    fileio.write_png(path, np.array([[0, 255], [255, 0]], np.uint8))
    np.testing.assert_array_equal(utils.read_binary(path), [[0, 1], [1, 0]])
    fileio.write_png(path, np.array([[2, 254], [252, 4]], np.uint8))  # DRIVE 2nd_manual style
    np.testing.assert_array_equal(utils.read_binary(path), [[0, 1], [1, 0]])
    fileio.write_png(path, np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(errors.UserError, match=r'label\.png: not a binary image \(values 0, 128'):
        utils.read_binary(path)


@pytest.mark.parametrize(
    'content, message', [(b'', 'file is empty'), (b'\x89PNG\r\n\x1a\n\x00\x00', 'not a readable')]
)
def test_read_image_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / 'broken.png'
    path.write_bytes(content)
    with pytest.raises(errors.UserError, match=f'broken.png: {message}'):
        utils.read_image(str(path))


def test_truncated_png_is_an_error(tmp_path):
    path = str(tmp_path / 'full.png')
    fileio.write_png(path, np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = open(path, 'rb').read()
    (tmp_path / 'cut.png').write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.UserError, match='cut.png: not a readable image'):
        utils.read_image(str(tmp_path / 'cut.png'))


def test_write_atomic_leaves_no_temporary_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / 'out.txt'
    fileio.write_atomic(str(path), 'old')

    class Boom(Exception):
        pass

    class Exploding(str):
        def encode(self):
            raise Boom()

    with pytest.raises(Boom):
        fileio.write_atomic(str(path), Exploding('new'))
    assert path.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.txt']


@pytest.mark.parametrize(
    'orientation, corner', [(1, (0, 0)), (3, (-1, -1)), (6, (0, -1)), (8, (-1, 0))]
)
def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path, orientation, corner):
    from PIL import Image

    photo = np.zeros((40, 60, 3), np.uint8)
    photo[:10, :10] = 255  # the top left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = orientation  # 3: turned 180 degrees, 6: 90 clockwise, 8: 90 anticlockwise
    Image.fromarray(photo).save(tmp_path / 'photo.jpg', exif=exif, quality=95)
    shown = utils.read_image(str(tmp_path / 'photo.jpg'))
    assert shown.shape == ((40, 60, 3) if orientation in (1, 3) else (60, 40, 3))
    rows = slice(0, 10) if corner[0] == 0 else slice(-10, None)
    columns = slice(0, 10) if corner[1] == 0 else slice(-10, None)
    assert shown[rows, columns].mean() > 250 and shown.mean() < 255 * 0.1


def test_only_stale_temporaries_of_this_project_are_removed(tmp_path):
    import os
    import time

    ours = fileio.TEMPORARY_PREFIX
    for name in (f'{ours}old.png', f'{ours}fresh.png', 'keep.png', '.tmp.users.png'):
        (tmp_path / name).write_bytes(b'x')
    for name in (f'{ours}folder', '.tmp.users-folder'):  # a sync client's names stay
        (tmp_path / name).mkdir()
        (tmp_path / name / 'inside').write_bytes(b'x')
    an_hour_ago = time.time() - 3600
    for name in (f'{ours}old.png', f'{ours}folder', '.tmp.users.png', '.tmp.users-folder'):
        os.utime(tmp_path / name, (an_hour_ago, an_hour_ago))
    fileio.remove_temporaries(str(tmp_path), older_than=60)
    users = ['.tmp.users-folder', '.tmp.users.png']
    assert sorted(os.listdir(tmp_path)) == [f'{ours}fresh.png', *users, 'keep.png']
    fileio.remove_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [*users, 'keep.png']
    assert os.listdir(tmp_path / '.tmp.users-folder') == ['inside']


def test_a_temporary_name_keeps_the_extensions_not_the_stem(tmp_path):
    long_stem = 'x' * 240  # a legal name; with a prefix and the whole name it would not be
    temporary = fileio.temporary_path(str(tmp_path / f'{long_stem}_overlay.png'))
    name = os.path.basename(temporary)
    assert name.startswith(fileio.TEMPORARY_PREFIX) and name.endswith('.png') and len(name) < 64
    assert os.path.basename(fileio.temporary_path(str(tmp_path / 'model.weights.h5'))).endswith(
        '.weights.h5'
    )
    fileio.write_atomic(str(tmp_path / f'{long_stem}_overlay.png'), b'data')
    assert (tmp_path / f'{long_stem}_overlay.png').read_bytes() == b'data'


@pytest.mark.parametrize(
    ('cell', 'safe'),
    [
        ('=HYPERLINK("http://x","y").png', '\'=HYPERLINK("http://x","y").png'),
        ('+cmd.png', "'+cmd.png"),
        ('-2+3.png', "'-2+3.png"),
        ('@SUM(1).png', "'@SUM(1).png"),
        ('\tx.png', "'\tx.png"),
        ('\rx.png', "'\rx.png"),
        ('-0.25', '-0.25'),  # a negative number stays a number
        ('eye.png', 'eye.png'),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(cell, safe):
    assert fileio.spreadsheet_safe(cell) == safe


def test_a_fifo_or_a_link_loop_in_place_of_an_image_is_named_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / 'fifo.png')  # reading it would block forever
    with pytest.raises(errors.UserError, match=r'fifo.png: not a regular file$'):
        utils.read_image(str(tmp_path / 'fifo.png'))
    os.symlink(tmp_path / 'loop.png', tmp_path / 'loop.png')
    with pytest.raises(
        errors.UserError,
        match=r'loop.png: cannot be read \(Too many levels of '
        r'symbolic links\)$',
    ):
        utils.read_image(str(tmp_path / 'loop.png'))
    os.symlink(tmp_path / 'gone.png', tmp_path / 'dangling.png')
    with pytest.raises(
        errors.UserError,
        match=r'dangling.png: a link to a file that does not '
        'exist$',
    ):
        utils.read_image(str(tmp_path / 'dangling.png'))
