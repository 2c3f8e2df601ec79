"""What a hostile but ordinary user can hand the scripts: folders an export would delete, file
names that are script, formulas or not UTF-8, decompression bombs, FIFOs, broken weights,
Ctrl-C. Each test failed on the code before it."""

import csv
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib

import cv2
import h5py
import numpy as np
import pytest

import errors
import evaluate
import fileio
import fov
import inference
import photos
import preprocess
import report
import run_folder
import utils
from conftest import ROOT, last_line, run_here, run_script


def a_photo(height=64, width=80):
    """A tiny fundus-like photo: a bright disc with three dark vessels."""
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(height, width) // 2 - 4, (40, 90, 200), -1)
    for end in ((20, 10), (62, 20), (30, 56)):
        cv2.line(image, (width // 2, height // 2), end, (20, 40, 110), 2)
    return image


def png_declaring(width, height):
    """A small PNG whose header declares width x height pixels (a decompression bomb's)."""

    def chunk(kind, data):
        return (
            struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
        )

    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b'\0' * (1 + 3 * width) * 64)  # the first rows only
    return (
        b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', rows) + chunk(b'IEND', b'')
    )


# ----------------------------------------------------------------------------- --export_dir


def export_config(trained, tmp_path, export_dir, **changes):
    photo = tmp_path / 'photos' / 'eye.png'
    photo.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(photo), a_photo())
    return evaluate.EvalConfig(
        logdir=trained,
        predict=str(photo),
        predict_dir=str(tmp_path / 'out'),
        export_dir=str(export_dir),
        **changes,
    )


def test_an_export_never_replaces_the_run_its_inputs_or_a_users_folder(trained, tmp_path):
    user = tmp_path / 'mine'
    user.mkdir()
    (user / 'notes.txt').write_text('keep me')
    for export_dir, reason in (
        (trained, 'is, holds or lies inside'),  # the run folder itself
        (os.path.dirname(trained), 'is, holds or lies inside'),  # a folder that holds it
        (tmp_path / 'photos', 'is, holds or lies inside'),  # the photos' folder
        (tmp_path / 'out', 'is, holds or lies inside'),  # the output folder
        (user, 'holds files that are not a SavedModel evaluate.py wrote'),
        (user / 'notes.txt', 'a file, not a folder'),
    ):
        with pytest.raises(errors.UserError, match=reason):
            evaluate.check_outputs(export_config(trained, tmp_path, export_dir))
    assert (user / 'notes.txt').read_text() == 'keep me'
    assert os.path.isfile(os.path.join(trained, run_folder.WEIGHTS_FILE))


def test_an_export_replaces_only_its_own_folder_with_normal_modes(trained, tmp_path):
    export_dir = tmp_path / 'export'
    config = export_config(trained, tmp_path, export_dir, features=False)
    evaluate.run(config)
    names = sorted(os.listdir(export_dir))
    assert 'saved_model.pb' in names and evaluate.EXPORT_MARKER in names
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(export_dir).st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    (export_dir / 'stale.txt').write_text('from this export')
    evaluate.run(config)  # an export of the project's is replaced whole
    assert sorted(os.listdir(export_dir)) == names
    assert not [name for name in os.listdir(tmp_path) if name.startswith(fileio.TEMPORARY_PREFIX)]


# ----------------------------------------------------------------------------- report and CSV


def test_a_photo_name_is_a_relative_link_never_a_script(tmp_path):
    names = ["javascript:top.document.title='PWNED';x", 'a#b', 'c?d', 'e%41f', 'g\nh']
    rows = []
    for name in names:
        fileio.write_png(str(tmp_path / f'{name}_overlay.png'), a_photo())
        rows.append({'image': f'{name}.png', 'flags': [], 'thumbnail': f'{name}_overlay.png'})
    report.write(str(tmp_path), rows, 'names')
    page = (tmp_path / report.REPORT_HTML).read_text()
    assert 'href="javascript' not in page and 'src="javascript' not in page
    assert 'href="./javascript%3Atop.document.title%3D%27PWNED%27%3Bx_overlay.png"' in page
    from test_report import rendered, summary

    dom = rendered(tmp_path / report.REPORT_HTML)
    assert summary(dom) == f'{len(names)} rows, {len(names)} images shown'


def test_a_name_that_is_not_utf8_is_written_and_shown(tmp_path):
    name = os.fsdecode(b'M\xfcller')  # Latin-1, as unzipped from a Windows archive
    fileio.write_png(str(tmp_path / f'{name}_overlay.png'), a_photo())
    rows = [{'image': f'{name}.png', 'flags': [], 'thumbnail': f'{name}_overlay.png'}]
    report.write(str(tmp_path), rows, f'Vessel maps of {tmp_path}/{name}*')
    [written] = list(csv.DictReader(open(tmp_path / report.FEATURES_CSV, encoding='utf-8')))
    assert written['image'] == 'M\ufffdller.png'
    assert 'src="./M%FCller_overlay.png"' in (tmp_path / report.REPORT_HTML).read_text()


def test_every_csv_the_project_writes_neutralises_formulas(tmp_path):
    names = ['=HYPERLINK("evil","y").png', '+cmd.png', '-2+3.png', '@SUM(1).png']
    report.write(str(tmp_path), [{'image': name, 'flags': []} for name in names], 'formulas')
    evaluate.write_results(
        str(tmp_path),
        [{'image': name, 'F1': -0.5} for name in names],
        {'scores': dict.fromkeys(evaluate.REPORTED, 0.5), 'confusion_matrix': [[1, 0], [0, 1]]},
        step=1,
    )
    for path in (tmp_path / report.FEATURES_CSV, tmp_path / evaluate.METRICS_CSV):
        rows = list(csv.DictReader(open(path)))
        assert [row['image'] for row in rows][:4] == [f"'{name}" for name in names], path
    assert [row['F1'] for row in csv.DictReader(open(tmp_path / evaluate.METRICS_CSV))][0] == '-0.5'


# ----------------------------------------------------------------------------- reading photos


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(png_declaring(20000, 20000))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(errors.UserError) as error:
        utils.read_image(str(bomb))
    assert str(error.value) == (
        f'{bomb}: declares 20000x20000 pixels (400 megapixels), over the bound of 50 '
        '(--max_megapixels raises it)'
    )
    small = tmp_path / 'small.png'
    small.write_bytes(png_declaring(300, 200))
    with pytest.raises(errors.UserError, match='over the bound of 0.05'):
        utils.read_image(str(small), max_megapixels=0.05)


def test_a_jpeg_with_bytes_after_its_end_is_read_and_a_cut_one_is_not(tmp_path):
    ok, encoded = cv2.imencode('.jpg', a_photo())
    whole = encoded.tobytes()
    (tmp_path / 'newline.jpg').write_bytes(whole + b'\n')
    (tmp_path / 'motion.jpg').write_bytes(whole + b'ftypmp42' + os.urandom(5000))
    for name in ('newline.jpg', 'motion.jpg'):
        np.testing.assert_array_equal(
            utils.read_image(str(tmp_path / name)), utils.read_image(str(tmp_path / 'newline.jpg'))
        )
    (tmp_path / 'cut.jpg').write_bytes(whole[: len(whole) - 40])
    with pytest.raises(errors.UserError, match='not a readable image'):
        utils.read_image(str(tmp_path / 'cut.jpg'))


@pytest.mark.parametrize('extension', ['.png', '.tif'])
def test_a_cut_file_gets_the_projects_line_only(tmp_path, capfd, extension):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)
    ok, encoded = cv2.imencode(extension, noise)
    data = encoded.tobytes()
    (tmp_path / f'cut{extension}').write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.UserError, match='not a readable image'):
        utils.read_image(str(tmp_path / f'cut{extension}'))
    assert capfd.readouterr().err == ''  # no libpng or libtiff line beside it


def test_a_transparent_background_is_laid_on_black(tmp_path):
    photo = a_photo()  # BGR, as OpenCV writes it
    inside = photo.any(axis=-1)
    rgba = np.dstack([np.where(inside[..., None], photo, 255), inside * np.uint8(255)])
    cv2.imwrite(str(tmp_path / 'clear.png'), rgba)  # white where it is transparent
    read = utils.read_image(str(tmp_path / 'clear.png'))
    np.testing.assert_array_equal(read, photo[..., ::-1])
    assert fov.read(read, 'clear.png').mean() < 0.9  # the disc, not the whole frame


def test_a_multi_page_tiff_with_a_black_first_page_says_so(tmp_path):
    path = str(tmp_path / 'pages.tif')
    assert cv2.imwritemulti(path, [np.zeros((64, 80, 3), np.uint8), a_photo()])
    with pytest.raises(errors.UserError, match='the first of its 2 pages is black'):
        utils.read_image(path)


@pytest.mark.parametrize(
    ('image', 'message'),
    [
        (np.zeros((64, 80, 3), np.uint8), 'no field of view found (the image is black)'),
        (np.full((64, 80, 3), 128, np.uint8), 'the image is one flat colour (values 128 to 128)'),
        (np.full((10, 10000, 3), 200, np.uint8), 'the image is only 10000x10 px'),
    ],
)
def test_an_image_without_a_retina_says_why(image, message):
    with pytest.raises(errors.UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
        fov.read(image, 'x.png')


# ----------------------------------------------------------------------------- run folders


def copy_without_checkpoints(trained, tmp_path):
    logdir = tmp_path / 'run'
    shutil.copytree(trained, logdir, ignore=shutil.ignore_patterns('checkpoints'))
    return logdir


@pytest.mark.parametrize('value', [np.nan, 1e38])
def test_broken_weights_are_refused_on_loading(trained, tmp_path, value):
    logdir = copy_without_checkpoints(trained, tmp_path)
    weights = logdir / run_folder.WEIGHTS_FILE
    with h5py.File(weights, 'r+') as stream:
        stream.visititems(
            lambda _, item: item.__setitem__(..., value) if isinstance(item, h5py.Dataset) else None
        )
    with pytest.raises(errors.UserError, match='these weights are broken') as error:
        inference.load_model(str(logdir))
    assert str(error.value).startswith(str(weights))


def test_a_weights_file_with_a_stray_dataset_is_named(trained, tmp_path):
    logdir = copy_without_checkpoints(trained, tmp_path)
    with h5py.File(logdir / run_folder.WEIGHTS_FILE, 'r+') as stream:
        stream['extra'] = np.zeros((3, 3000), np.float32)
    with pytest.raises(errors.UserError, match="holds 'extra', which is no layer's weights"):
        inference.load_model(str(logdir))


def test_a_fifo_in_a_run_folder_is_refused_not_read(trained, tmp_path):
    photo = tmp_path / 'eye.png'
    cv2.imwrite(str(photo), a_photo())
    logdir = copy_without_checkpoints(trained, tmp_path)
    os.remove(logdir / run_folder.WEIGHTS_FILE)
    os.mkfifo(logdir / run_folder.WEIGHTS_FILE)
    result = run_script('evaluate.py', f'--logdir={logdir}', f'--predict={photo}', timeout=120)
    assert result.returncode == 2
    assert (
        last_line(result.stderr) == f'error: {logdir}/{run_folder.WEIGHTS_FILE}: not a regular file'
    )
    logdir = tmp_path / 'checkpointed'  # every checkpoint's index a FIFO
    shutil.copytree(trained, logdir)
    for index in (logdir / 'checkpoints').glob('*.index'):
        os.remove(index)
        os.mkfifo(index)
    result = run_script('evaluate.py', f'--logdir={logdir}', f'--predict={photo}', timeout=120)
    assert result.returncode == 2
    assert 'no checkpoint can be read' in last_line(result.stderr)
    assert 'not a regular file' in last_line(result.stderr)


# ----------------------------------------------------------------------------- flags and preprocess


@pytest.mark.parametrize(
    ('script', 'flag'),
    [
        ('evaluate.py', '--photo_fov_diameter=nan'),
        ('evaluate.py', '--pixel_size_um=nan'),
        ('train.py', '--initial_lr=nan'),
        ('train.py', '--fov_diameter=inf'),
    ],
)
def test_a_float_flag_must_be_finite(script, flag, tmp_path):
    result = run_here(script, f'--logdir={tmp_path}/log', flag)
    assert result.returncode == 2
    assert last_line(result.stderr) == f'error: {flag}: must be a finite number'
    assert not os.path.exists(tmp_path / 'log')


def drive_layout(root, names):
    images, labels = (
        root / 'DRIVE' / 'training' / 'images',
        root / 'DRIVE' / 'training' / '1st_manual',
    )
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in names:
        cv2.imwrite(str(images / name), a_photo())
    cv2.imwrite(str(labels / '21_manual1.png'), (a_photo()[..., 0] < 30).astype(np.uint8) * 255)
    return images


def test_preprocess_refuses_two_images_of_one_name_before_writing(tmp_path):
    images = drive_layout(tmp_path / 'raw', ['21_training.tif', '21_training.png'])
    with pytest.raises(errors.UserError) as error:
        preprocess.process(str(tmp_path / 'raw'), str(tmp_path / 'out'))
    assert str(error.value) == (
        f'{images}/21_training.tif and {images}/21_training.png would both be written as '
        '21_training.png; keep one of them'
    )
    assert not (tmp_path / 'out').exists()


def test_preprocess_skips_and_counts_files_that_are_not_images(tmp_path, logs):
    images = drive_layout(tmp_path / 'raw', ['21_training.tif'])
    (images / 'Thumbs.db').write_bytes(b'\0' * 100)
    (images / 'desktop.ini').write_bytes(b'[.ShellClassInfo]')
    counts = preprocess.process(str(tmp_path / 'raw'), str(tmp_path / 'out'))
    assert counts['DRIVE']['training'] == 1
    assert f'{images}: skipped 2 files that are not images (.db 1, .ini 1)' in logs()


# ----------------------------------------------------------------------------- --predict


@pytest.fixture(scope='module')
def hostile_folder(tmp_path_factory):
    """A folder of photos a user might have: every kind of awkward name and file."""
    folder = tmp_path_factory.mktemp('hostile') / 'photos'
    folder.mkdir()
    photo = a_photo()
    names = [
        "javascript:top.document.title='PWNED';x.png",
        '=HYPERLINK("evil","y").png',
        'x' * 236 + '.png',  # 240 characters: a legal name
    ]
    for name in names:
        cv2.imwrite(str(folder / name), photo)
    cv2.imwrite(str(folder / 'tmp.png'), photo)
    os.rename(folder / 'tmp.png', os.fsencode(folder) + b'/M\xfcller.png')
    ok, encoded = cv2.imencode('.jpg', photo)
    (folder / 'motion.jpg').write_bytes(encoded.tobytes() + b'\n')
    (folder / 'bomb.png').write_bytes(png_declaring(20000, 20000))
    (folder / 'scan.dcm').write_bytes(b'DICM')
    return folder


def test_predict_survives_a_folder_of_awkward_files(trained, hostile_folder, tmp_path):
    out = tmp_path / 'out'
    result = run_here(
        'evaluate.py', f'--logdir={trained}', f'--predict={hostile_folder}', f'--predict_dir={out}'
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert errors == [
        f'error: {hostile_folder}/bomb.png: declares 20000x20000 pixels (400 megapixels), over '
        'the bound of 50 (--max_megapixels raises it)',
        'error: 1 of 6 images could not be predicted (named above)',
    ]
    assert f'{hostile_folder}: skipped 1 files that are not images (.dcm 1)' in result.stderr
    rows = list(csv.DictReader(open(out / report.FEATURES_CSV, encoding='utf-8')))
    assert len(rows) == 6 and sum(row['vessel_density'] != '' for row in rows) == 5
    assert "'=HYPERLINK(\"evil\",\"y\").png" in [row['image'] for row in rows]
    assert os.path.exists(os.fsencode(out) + b'/M\xfcller_overlay.png')
    assert os.path.exists(out / ('x' * 236 + '_overlay.png'))
    manifest = {row['image']: row for row in csv.DictReader(open(out / photos.MANIFEST_CSV))}
    assert len(manifest) == 6 and all(float(row['seconds']) >= 0 for row in manifest.values())
    assert (
        manifest['bomb.png']['outcome'] == 'refused' and manifest['bomb.png']['scale_factor'] == ''
    )
    assert 'declares 20000x20000 pixels' in manifest['bomb.png']['reason']
    assert manifest['motion.jpg']['outcome'] in ('done', 'flagged')
    assert (
        float(manifest['motion.jpg']['scale_factor']) > 0 and manifest['motion.jpg']['scale_rule']
    )


def test_a_terminal_gets_a_progress_bar_instead_of_a_line_a_photo(trained, tmp_path):
    import fcntl
    import pty
    import termios

    folder = tmp_path / 'photos'
    folder.mkdir()
    for index in range(2):
        cv2.imwrite(str(folder / f'{index}.png'), a_photo())
    command = [sys.executable, 'evaluate.py', f'--logdir={trained}', f'--predict={folder}']
    pid, terminal = pty.fork()
    if pid == 0:  # the child, on a pseudo-terminal of 24 rows and 120 columns
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 120, 0, 0))
        os.chdir(ROOT)
        os.execve(sys.executable, [*command, f'--predict_dir={tmp_path / "out"}'], os.environ)
    shown = b''
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the child has ended
            break
        if not chunk:
            break
        shown += chunk
    os.waitpid(pid, 0)
    text = shown.decode(errors='replace')
    assert '2/2' in text and 'photo/s' in text, text[-2000:]
    assert '[1/2]' not in text


def test_ctrl_c_during_predict_ends_with_one_line_and_the_report_of_what_was_done(
    trained, tmp_path
):
    photos = tmp_path / 'photos'
    photos.mkdir()
    for index in range(60):
        cv2.imwrite(str(photos / f'{index:02d}.png'), a_photo(480, 600))
    out = tmp_path / 'out'
    process = subprocess.Popen(
        [
            sys.executable,
            'evaluate.py',
            f'--logdir={trained}',
            f'--predict={photos}',
            f'--predict_dir={out}',
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''},
    )
    deadline = time.time() + 120
    while not list(out.glob('*_overlay.png')) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert 'Traceback' not in stderr
    done = int(last_line(stderr).split()[3])
    assert last_line(stderr) == f'error: interrupted after {done} of 60 photos'
    assert 0 < done < 60, stderr[-3000:]
    rows = list(csv.DictReader(open(out / report.FEATURES_CSV)))
    assert len(rows) == done
    assert (out / report.REPORT_HTML).exists()
