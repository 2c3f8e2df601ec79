"""STARE and HRF as downloaded: small generated copies of each layout, the real training halves
in ../shared/data, and bad input (one line naming the file, nothing written)."""

import gzip
import os
import re

import cv2
import numpy as np
import pytest

import label_files
import preprocess
import utils
from conftest import last_line, require_shared, run_script

STARE_NAMES = ('im0001', 'im0044', 'im0162', 'im0324')  # two of the training 10, two of the test


def _retinas(count, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [preprocess.synthetic_retina(size, rng) for _ in range(count)]


def _encoded(extension, array):
    ok, data = cv2.imencode(extension, array[..., ::-1] if array.ndim == 3 else array)
    assert ok
    return data.tobytes()


def _write(path, data, gzipped=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as stream:
        stream.write(gzip.compress(data) if gzipped else data)


@pytest.fixture
def stare(tmp_path):
    """STARE's layout: images and labels as binary PPM/PGM, half of them gzipped, as the
    official archives hold them."""
    root = tmp_path / 'raw' / 'STARE'
    retinas = dict(zip(STARE_NAMES, _retinas(len(STARE_NAMES)), strict=True))
    for index, (name, (image, label, _)) in enumerate(retinas.items()):
        ending = '.gz' if index % 2 else ''
        _write(
            str(root / 'stare-images' / f'{name}.ppm{ending}'),
            _encoded('.ppm', image),
            bool(ending),
        )
        _write(
            str(root / 'labels-ah' / f'{name}.ah.ppm{ending}'),
            _encoded('.pgm', label * 255),
            bool(ending),
        )
        _write(str(root / 'labels-vk' / f'{name}.vk.ppm'), _encoded('.pgm', label * 255))
    return root, retinas


@pytest.fixture
def hrf(tmp_path):
    """HRF's layout: NN_{h,g,dr} JPEGs (dr's as .JPG), manual1/*.tif, mask/*_mask.tif (RGB)."""
    root = tmp_path / 'raw' / 'HRF'
    names = ['01_h', '06_g', '05_dr', '15_dr']
    retinas = dict(zip(names, _retinas(len(names), seed=1), strict=True))
    for name, (image, label, mask) in retinas.items():
        extension = '.JPG' if name.endswith('dr') else '.jpg'
        _write(str(root / 'images' / f'{name}{extension}'), _encoded('.jpg', image))
        _write(str(root / 'manual1' / f'{name}.tif'), _encoded('.tif', label * 255))
        _write(
            str(root / 'mask' / f'{name}_mask.tif'),
            _encoded('.tif', np.stack([mask * 255] * 3, axis=-1)),
        )
    return root, retinas


def test_stare_layout_gives_its_standard_split_and_both_observers(tmp_path, stare):
    root, retinas = stare
    counts = preprocess.process(str(tmp_path / 'raw'), str(tmp_path / 'out'))
    assert counts == {'STARE': {'training': 2, 'test': 2}}
    out = tmp_path / 'out' / 'STARE'
    assert open(out / 'training.txt').read().splitlines()[1:] == [
        'im0001.png,im0001.png,im0001.png',
        'im0044.png,im0044.png,im0044.png',
    ]
    for name, (image, label, _) in retinas.items():
        split = 'training' if name in preprocess.STARE_TRAINING else 'test'
        np.testing.assert_array_equal(
            utils.read_image(str(out / split / 'images' / f'{name}.png')), image
        )  # PPM is lossless, gzipped or not
        for folder in ('labels', 'labels' + label_files.SECOND_OBSERVER_SUFFIX):
            np.testing.assert_array_equal(
                utils.read_binary(str(out / split / folder / f'{name}.png')), label
            )


def test_hrf_layout_gives_its_standard_split_with_its_masks(tmp_path, hrf):
    root, retinas = hrf
    splits = preprocess.find_datasets(str(tmp_path / 'raw'))['HRF']
    assert [s.name for s in splits['training']] == ['01_h', '05_dr']
    assert [s.name for s in splits['test']] == ['06_g', '15_dr']
    assert splits['training'][1].image.endswith('05_dr.JPG')
    preprocess.process(str(tmp_path / 'raw'), str(tmp_path / 'out'))
    for name, (_, label, mask) in retinas.items():
        split = 'training' if int(name[:2]) <= 5 else 'test'
        folder = tmp_path / 'out' / 'HRF' / split
        np.testing.assert_array_equal(
            utils.read_binary(str(folder / 'masks' / f'{name}.png')), mask
        )  # the shipped mask, not a derived one
        np.testing.assert_array_equal(
            utils.read_binary(str(folder / 'labels' / f'{name}.png')), label
        )


def _corrupt_gzip(stare_root, hrf_root):
    path = stare_root / 'stare-images' / 'im0044.ppm.gz'
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[: len(data) // 2])


@pytest.mark.parametrize(
    'damage, message',
    [
        (_corrupt_gzip, r'im0044.ppm.gz: not a readable gzip file'),
        (
            lambda stare_root, hrf_root: os.remove(stare_root / 'labels-ah' / 'im0162.ah.ppm'),
            r'im0162.ppm: no label im0162.ah.ppm in .*labels-ah',
        ),
        (
            lambda stare_root, hrf_root: os.remove(hrf_root / 'mask' / '06_g_mask.tif'),
            r'06_g.jpg: no mask file in .*HRF/mask',
        ),
    ],
)
def test_bad_downloads_are_one_line_and_write_nothing(tmp_path, stare, hrf, damage, message):
    damage(stare[0], hrf[0])
    result = run_script(
        'preprocess.py', f'--data_dir={tmp_path / "raw"}', f'--output_dir={tmp_path / "out"}'
    )
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert re.search(message, last_line(result.stderr)), last_line(result.stderr)
    assert not os.path.exists(tmp_path / 'out')


def test_real_stare_and_hrf_training_halves(tmp_path):
    for name in ('STARE', 'HRF'):
        os.symlink(require_shared(name), tmp_path / name)
    found = preprocess.find_datasets(str(tmp_path))
    stare, hrf = found['STARE'], found['HRF']
    assert [s.name for s in stare['training']] == list(preprocess.STARE_TRAINING)
    assert stare['test'] == [] and all(s.second_label for s in stare['training'])
    assert len(hrf['training']) == 15 and hrf['test'] == []
    assert {s.name.split('_')[1] for s in hrf['training']} == {'h', 'g', 'dr'}
    sample = next(s for s in hrf['training'] if s.name == '01_dr')
    assert sample.image.endswith('01_dr.JPG') and sample.mask.endswith('01_dr_mask.tif')
    arrays = preprocess.load_sample(stare['training'][0])
    assert arrays['images'].shape == (605, 700, 3)
    assert set(np.unique(arrays['labels'])) == {0, 255}
