"""Turns DRIVE / CHASE_DB1 / STARE / HRF downloads (or a generated synthetic set) into PNG folders
and label files.

  python preprocess.py --data_dir=downloads           # DRIVE/ CHASEDB1/ STARE/ HRF/ as unpacked
  python preprocess.py --synthetic --data_dir=data/raw  # generate the synthetic set, then process

Writes `{output_dir}/{DRIVE,CHASEDB,STARE,HRF,SYNTH}/{split}/{images,images_pre,labels,masks}/*.png`
and the label files `{output_dir}/{DATASET}/{split}.txt`, with each dataset's standard split
(either split may be absent). The download itself is never modified.
"""

import glob
import os
import re
from dataclasses import dataclass

import cv2
import numpy as np
from absl import app, flags

import cli
import errors
import fileio
import fov
import label_files
import utils

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'data_dir',
    None,
    'Folder holding DRIVE/, CHASEDB1/, STARE/ and/or HRF/ as '
    'downloaded (and SYNTH/ once generated).',
)
flags.DEFINE_bool(
    'synthetic', False, 'Generate the synthetic retina set under {data_dir}/SYNTH first.'
)
flags.DEFINE_integer('synthetic_train', 8, 'Synthetic training images.', lower_bound=1)
flags.DEFINE_integer('synthetic_test', 4, 'Synthetic test images.', lower_bound=1)
flags.DEFINE_integer(
    'synthetic_size', 512, 'Side of the synthetic images in pixels.', lower_bound=32
)
flags.DEFINE_string(
    'figure_dir',
    'images',
    'Where --visualize writes the preprocessing-steps and '
    'dataset-sample figures of the first image.',
)
cli.define_flags('seed', 'visulize', 'output_dir')
DEFAULT_OUTPUT_DIR = 'data'

SPLITS = ('training', 'test')
INPUT_FOLDERS = {
    'DRIVE': 'DRIVE',
    'CHASEDB1': 'CHASEDB',
    'STARE': 'STARE',
    'HRF': 'HRF',
    'SYNTH': 'SYNTH',
}  # download: output
# STARE's 20 labelled images split 10/10 (Maninis et al. 2016, bob.ip.binseg): these 10 train.
STARE_TRAINING = (
    'im0001',
    'im0002',
    'im0003',
    'im0004',
    'im0005',
    'im0044',
    'im0077',
    'im0081',
    'im0082',
    'im0139',
)
HRF_TRAINING = range(1, 6)  # 01-05 of each group (h, g, dr) train, 06-15 test


# ----------------------------------------------------------------------------- finding the data


@dataclass
class RawSample:
    name: str
    image: str
    label: str
    mask: str | None = None  # None: derive it from the image
    second_label: str | None = None


def _files(folder, pattern):
    """Sorted files in `folder` matching the glob `pattern` (the folder's own name may hold glob
    characters such as '[v2]')."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))


def _image_files(folder):
    """The image files of `folder`, sorted; other files (Thumbs.db, .DS_Store) are skipped and
    counted in a log line."""
    files = [path for path in _files(folder, '*') if os.path.isfile(path)]
    utils.log_skipped(
        folder, [os.path.basename(path) for path in files if not utils.is_image_name(path)]
    )
    return [path for path in files if utils.is_image_name(path)]


def refuse_duplicate_names(samples: list[RawSample]) -> None:
    """Refuses two images of one split with the same name (21_training.tif and .png): both would
    be written to one PNG."""
    seen = {}
    for sample in samples:
        if sample.name in seen:
            raise errors.UserError(
                f'{sample.image} and {seen[sample.name]} would both be written as '
                f'{sample.name}.png; keep one of them'
            )
        seen[sample.name] = sample.image


def _first_match(folder, pattern):
    matches = _files(folder, pattern)
    return matches[0] if matches else None


def find_drive_layout(split_dir):
    """Samples of one split laid out as DRIVE: images/NN_split.*, 1st_manual/NN_manual1.*,
    mask/NN_split_mask.*, 2nd_manual/NN_manual2.*."""
    samples = []
    for image in _image_files(os.path.join(split_dir, 'images')):
        stem = label_files.file_stem(image)
        label_files.check_listable(stem, image)
        number = glob.escape(stem.split('_')[0])
        label = _first_match(os.path.join(split_dir, '1st_manual'), f'{number}_manual1.*')
        if label is None:
            raise errors.UserError(
                f'{image}: no label {number}_manual1.* in {os.path.join(split_dir, "1st_manual")}'
            )
        mask = _first_match(os.path.join(split_dir, 'mask'), f'{glob.escape(stem)}_mask.*')
        second = _first_match(os.path.join(split_dir, '2nd_manual'), f'{number}_manual2.*')
        samples.append(RawSample(stem, image, label, mask, second))
    return samples


def find_chase(chase_dir):
    """CHASE_DB1's flat folder: Image_NNX.jpg with Image_NNX_1stHO.png (and _2ndHO.png).
    Images 01-10 are the standard training split, 11-14 the test split."""
    splits = {split: [] for split in SPLITS}
    for image in _files(chase_dir, 'Image_*.jpg'):
        stem = label_files.file_stem(image)
        match = re.fullmatch(r'Image_(\d+)[LR]', stem)
        if not match:
            continue
        label = os.path.join(chase_dir, f'{stem}_1stHO.png')
        if not os.path.exists(label):
            raise errors.UserError(f'{image}: no label {os.path.basename(label)} beside it')
        second = os.path.join(chase_dir, f'{stem}_2ndHO.png')
        split = 'training' if int(match.group(1)) <= 10 else 'test'
        splits[split].append(
            RawSample(stem, image, label, None, second if os.path.exists(second) else None)
        )
    return splits


def find_stare(stare_dir):
    """STARE as downloaded: stare-images/imNNNN.ppm (or .ppm.gz), labels-ah/imNNNN.ah.ppm (the
    ground truth), labels-vk/imNNNN.vk.ppm (the second observer), each possibly gzipped."""
    splits = {split: [] for split in SPLITS}
    for image in _files(os.path.join(stare_dir, 'stare-images'), 'im*.ppm*'):
        stem = label_files.file_stem(image)
        label_files.check_listable(stem, image)
        label = _first_match(os.path.join(stare_dir, 'labels-ah'), f'{stem}.ah.ppm*')
        if label is None:
            raise errors.UserError(
                f'{image}: no label {stem}.ah.ppm in {os.path.join(stare_dir, "labels-ah")}'
            )
        second = _first_match(os.path.join(stare_dir, 'labels-vk'), f'{stem}.vk.ppm*')
        split = 'training' if stem in STARE_TRAINING else 'test'
        splits[split].append(RawSample(stem, image, label, None, second))
    return splits


def find_hrf(hrf_dir):
    """HRF as downloaded: images/NN_{h,g,dr}.jpg (or .JPG), manual1/<name>.tif,
    mask/<name>_mask.tif."""
    splits = {split: [] for split in SPLITS}
    for image in _files(os.path.join(hrf_dir, 'images'), '*'):
        stem = label_files.file_stem(image)
        match = re.fullmatch(r'(\d+)_(h|g|dr)', stem)
        if not match:
            continue
        found = {
            folder: _first_match(os.path.join(hrf_dir, folder), f'{pattern}.*')
            for folder, pattern in (('manual1', stem), ('mask', f'{stem}_mask'))
        }
        for folder, path in found.items():
            if path is None:
                raise errors.UserError(
                    f'{image}: no {folder} file in {os.path.join(hrf_dir, folder)}'
                )
        split = 'training' if int(match.group(1)) in HRF_TRAINING else 'test'
        splits[split].append(RawSample(stem, image, found['manual1'], found['mask']))
    return splits


FINDERS = {'CHASEDB1': find_chase, 'STARE': find_stare, 'HRF': find_hrf}  # others: DRIVE's layout


def find_datasets(data_dir: str) -> dict[str, dict[str, list]]:
    """{output name: {split: [RawSample]}} for every dataset found under `data_dir`."""
    found = {}
    for folder, name in INPUT_FOLDERS.items():
        root = os.path.join(data_dir, folder)
        if os.path.isdir(root):
            found[name] = (
                FINDERS[folder](root)
                if folder in FINDERS
                else {split: find_drive_layout(os.path.join(root, split)) for split in SPLITS}
            )
    return {
        name: splits for name, splits in found.items() if any(splits[split] for split in SPLITS)
    }


# ----------------------------------------------------------------------------- processing


def load_sample(sample):
    """Reads and checks one sample; returns the arrays to write (all uint8)."""
    image = utils.read_image(sample.image)

    def binary(path):
        return utils.read_binary_for(path, image, sample.image)

    label = binary(sample.label)
    mask = fov.read(image, sample.image, sample.mask)
    arrays = {
        'images': image,
        'images' + label_files.PREPROCESSED_SUFFIX: utils.preprocess_image(image)['gamma'],
        'labels': label * 255,
        'masks': mask * 255,
    }
    if sample.second_label:
        arrays['labels' + label_files.SECOND_OBSERVER_SUFFIX] = binary(sample.second_label) * 255
    return arrays


def write_split(split_dir, loaded):
    """Writes the PNG folders of one split, then its label file (last, so it never names a file
    that is not there yet)."""
    split = os.path.basename(split_dir)
    folders = [f'{split}/images', f'{split}/labels', f'{split}/masks']
    text = label_files.label_file_text(folders, [[f'{name}.png'] * 3 for name, _ in loaded])
    for name, arrays in loaded:
        for kind, array in arrays.items():
            fileio.write_png(os.path.join(split_dir, kind, f'{name}.png'), array)
    fileio.write_atomic(f'{split_dir}.txt', text)


def refuse_overlap(data_dir, output_dir, datasets):
    """Refuses an --output_dir whose dataset folders would lie in (or hold) a downloaded one:
    the next run would find its own PNGs beside the download's images."""
    for name in datasets:
        written = os.path.join(output_dir, name)
        for folder in INPUT_FOLDERS:
            if fileio.overlaps(written, os.path.join(data_dir, folder)):
                raise errors.UserError(
                    f'--output_dir={output_dir}: would write {os.path.realpath(written)} into '
                    f'the downloads of --data_dir={data_dir}; choose another '
                    'folder'
                )


def process(data_dir: str, output_dir: str) -> dict[str, dict[str, int]]:
    """Reads and checks everything found under `data_dir` first, then writes: bad input leaves
    nothing written. Returns {dataset: {split: count}}."""
    if not os.path.isdir(data_dir):
        raise errors.UserError(f'--data_dir={data_dir}: no such folder')
    datasets = find_datasets(data_dir)
    if not datasets:
        raise errors.UserError(
            f'--data_dir={data_dir}: found no images in DRIVE/, CHASEDB1/, '
            'STARE/, HRF/ or SYNTH/ (unpack the downloads there, or pass '
            '--synthetic)'
        )
    refuse_overlap(data_dir, output_dir, datasets)
    for splits in datasets.values():
        for samples in splits.values():
            refuse_duplicate_names(samples)
    loaded = {
        (name, split): [(s.name, load_sample(s)) for s in samples]
        for name, splits in datasets.items()
        for split, samples in splits.items()
        if samples
    }
    for (name, split), samples in loaded.items():
        write_split(os.path.join(output_dir, name, split), samples)
    return {
        name: {split: len(samples) for split, samples in splits.items()}
        for name, splits in datasets.items()
    }


# ----------------------------------------------------------------------------- synthetic retinas


def _grow_vessel(rng, segments, point, angle, width, depth, radius, centre):
    """Adds a vessel and its branches as (p0, p1, width) line segments, tapering as it goes."""
    step = max(2.0, radius / 60)
    while width >= 1.0:
        angle += rng.normal(0, 0.12)
        nxt = point + step * np.array([np.cos(angle), np.sin(angle)])
        if np.hypot(*(nxt - centre)) > radius * 0.98:
            return
        segments.append((point, nxt, width))
        point = nxt
        width *= 0.985
        if depth < 5 and rng.random() < 0.06:
            branch_width = width * rng.uniform(0.55, 0.8)
            side = rng.choice([-1.0, 1.0])
            _grow_vessel(
                rng,
                segments,
                point,
                angle + side * rng.uniform(0.4, 0.9),
                branch_width,
                depth + 1,
                radius,
                centre,
            )
            width *= 0.9
            angle -= side * 0.15


def synthetic_retina(
    size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus image (RGB uint8) with its exact vessel label and FOV mask ({0,1})."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = np.array([size / 2, size / 2]) + rng.normal(0, size * 0.01, 2)
    radius = size * rng.uniform(0.44, 0.47)
    distance = np.hypot(xx - centre[0], yy - centre[1]) / radius
    fov = distance <= 1.0

    side = rng.choice([-1.0, 1.0])
    disc = centre + np.array([side * 0.55 * radius, rng.normal(0, 0.05) * radius])
    fovea = centre + np.array([-side * 0.1 * radius, rng.normal(0, 0.03) * radius])
    disc_radius = radius * rng.uniform(0.13, 0.16)
    image = _fundus_background(rng, xx, yy, distance, radius, disc, fovea, disc_radius)
    max_width = max(3.0, 8.0 * size / 584)
    segments = _vessel_segments(rng, disc, side, max_width, radius, centre)
    label = np.zeros((size, size), np.uint8)
    contrast = np.zeros((size, size), np.float32)
    for p0, p1, width in segments:
        a, b = tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1)
        thickness = max(1, int(round(width)))
        cv2.line(label, a, b, 1, thickness)
        cv2.line(contrast, a, b, float(0.25 + 0.35 * min(width / max_width, 1.0)), thickness)
    contrast = cv2.GaussianBlur(contrast, (0, 0), 0.7)
    image *= 1 - contrast[..., None] * np.array([0.35, 1.0, 0.6])

    image += rng.normal(0, 4, image.shape)
    image = cv2.GaussianBlur(image, (0, 0), 0.6)
    image[~fov] = rng.normal(0, 1.5, (int((~fov).sum()), 3)).clip(0)
    label &= fov.astype(np.uint8)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, fov.astype(np.uint8)


def _fundus_background(rng, xx, yy, distance, radius, disc, fovea, disc_radius):
    """The fundus without vessels (float RGB): uneven illumination, vignetting, the darker
    fovea and the bright optic disc."""
    illumination = cv2.GaussianBlur(rng.normal(0, 1, xx.shape), (0, 0), xx.shape[0] / 10)
    illumination = 1 + 0.08 * illumination / (np.abs(illumination).max() + 1e-9)
    vignette = (1 - 0.45 * distance**2) * illumination
    base = np.array([205, 95, 45]) * rng.uniform(0.85, 1.1)
    image = vignette[..., None] * base
    fovea_shade = 1 - 0.3 * np.exp(
        -((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (2 * (0.12 * radius) ** 2)
    )
    image *= fovea_shade[..., None]
    disc_glow = np.exp(-((((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2) / disc_radius**2) ** 2))
    return image + disc_glow[..., None] * np.array([50, 110, 90])


def _vessel_segments(rng, disc, side, max_width, radius, centre):
    """The vessel tree from the disc, as (start, end, width) segments: four temporal arcades and
    three nasal vessels pointing away from the fovea."""
    segments = []
    for trunk_angle in (-1.1, -0.7, 0.7, 1.1):
        start_angle = (np.pi if side > 0 else 0.0) + side * trunk_angle + rng.normal(0, 0.1)
        _grow_vessel(
            rng,
            segments,
            disc.copy(),
            start_angle,
            max_width * rng.uniform(0.8, 1),
            0,
            radius,
            centre,
        )
    for _ in range(3):  # nasal vessels, pointing away from the fovea
        start_angle = (0.0 if side > 0 else np.pi) + rng.uniform(-1.2, 1.2)
        _grow_vessel(rng, segments, disc.copy(), start_angle, max_width * 0.6, 1, radius, centre)
    return segments


def generate_synthetic(root: str, num_train: int, num_test: int, size: int, seed: int) -> None:
    """Writes the synthetic set in DRIVE's layout under `root` (PNG instead of TIFF/GIF)."""
    rng = np.random.default_rng(seed)
    numbers = {
        'training': range(1, num_train + 1),
        'test': range(num_train + 1, num_train + num_test + 1),
    }
    for split, split_numbers in numbers.items():
        for number in split_numbers:
            image, label, mask = synthetic_retina(size, rng)
            stem = f'{number:02d}_{split}'
            fileio.write_png(os.path.join(root, split, 'images', f'{stem}.png'), image)
            fileio.write_png(
                os.path.join(root, split, '1st_manual', f'{number:02d}_manual1.png'), label * 255
            )
            fileio.write_png(os.path.join(root, split, 'mask', f'{stem}_mask.png'), mask * 255)


# ----------------------------------------------------------------------------- figures


def draw_figures(sample, figure_dir):
    """The four preprocessing steps side by side, and an image / label / mask sample figure."""
    plt = fileio.pyplot()
    image = utils.read_image(sample.image)
    stages = utils.preprocess_image(image)
    label = utils.read_binary(sample.label)
    mask = utils.read_binary(sample.mask) if sample.mask else fov.derive(image)
    figures = {
        'preprocess.png': [
            ('input', image),
            ('1. gray', stages['gray']),
            ('2. standardised', stages['standardized']),
            ('3. CLAHE', stages['clahe']),
            ('4. gamma 1.2', stages['gamma']),
        ],
        'dataset_sample.png': [
            ('image', image),
            ('vessel label', label * 255),
            ('FOV mask', mask * 255),
        ],
    }
    os.makedirs(figure_dir, exist_ok=True)
    for filename, panels in figures.items():
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
        for axis, (title, panel) in zip(axes, panels, strict=True):
            axis.imshow(panel, cmap='gray', vmin=0, vmax=255)
            axis.set_title(title)
            axis.axis('off')
        fig.suptitle(os.path.basename(sample.image))
        path = os.path.join(figure_dir, filename)
        fileio.save_figure(fig, path)
        print(f'wrote {path}')


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.synthetic:
        root = os.path.join(FLAGS.data_dir, 'SYNTH')
        generate_synthetic(
            root, FLAGS.synthetic_train, FLAGS.synthetic_test, FLAGS.synthetic_size, FLAGS.seed
        )
        print(
            f'generated {FLAGS.synthetic_train} training + {FLAGS.synthetic_test} test '
            f'synthetic images in {root}'
        )
    output_dir = FLAGS.output_dir or DEFAULT_OUTPUT_DIR
    counts = process(FLAGS.data_dir, output_dir)
    for name, splits in counts.items():
        found = ', '.join(f'{count} {split}' for split, count in splits.items())
        written = ', '.join(
            os.path.join(output_dir, name, f'{split}.txt')
            for split, count in splits.items()
            if count
        )
        print(f'{name}: {found} -> {written}')
    if FLAGS.visulize:
        first = next(iter(find_datasets(FLAGS.data_dir).values()))
        draw_figures(
            first['training'][0] if first['training'] else first['test'][0], FLAGS.figure_dir
        )


if __name__ == '__main__':
    flags.mark_flag_as_required('data_dir')
    app.run(cli.run_main(main))
