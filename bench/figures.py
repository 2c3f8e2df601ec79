"""Regenerates the README's figures in images/ with the project's own code and real data.

  python -m bench.figures      # after bench/accuracy.py drive (for the curves and overlays)

preprocess.png, dataset_sample.png (DRIVE), dataset_sample_chase.png: preprocess.py's figures.
training_curve.png: train/loss and train/learning_rate read from the DRIVE run's event files.
overlay_drive.png, roc_drive.png, pr_drive.png: evaluate.py --visulize's outputs for DRIVE test;
overlay_chase.png: the same for a held-out image of the first CHASE_DB1 cross-validation fold.
scale.png: the shipped DRIVE model (models/drive) on a photo 2.6x DRIVE's scale, predicted as it is
and at the model's scale (evaluate.py --predict with and without --norescale).
fov_stare.png: the FOV fov.derive finds on the 10 STARE training photos (dark, noisy film-scan
borders), with the circle its diameter comes from.

  python -m bench.figures fov  # that figure alone
"""

import glob
import os
import shutil
import sys
import tempfile

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import fileio  # noqa: E402
import fov  # noqa: E402
import preprocess  # noqa: E402
import utils  # noqa: E402
from bench.common import ROOT, SHARED, WORK, read_scalars, run  # noqa: E402

IMAGES = os.path.join(ROOT, 'images')
DRIVE_RUN = os.path.join(WORK, 'log_drive_seed0')
CHASE_RUN = os.path.join(WORK, 'log_chase_fold0_seed0')


def dataset_figures():
    found = preprocess.find_datasets(SHARED)
    with tempfile.TemporaryDirectory() as scratch:
        if 'DRIVE' in found:
            preprocess.draw_figures(found['DRIVE']['training'][0], scratch)
            for name in ('preprocess.png', 'dataset_sample.png'):
                shutil.copy(os.path.join(scratch, name), os.path.join(IMAGES, name))
        if 'CHASEDB' in found:
            preprocess.draw_figures(found['CHASEDB']['training'][0], scratch)
            shutil.copy(
                os.path.join(scratch, 'dataset_sample.png'),
                os.path.join(IMAGES, 'dataset_sample_chase.png'),
            )


def training_curve():
    scalars = read_scalars(DRIVE_RUN, ['train/loss', 'train/learning_rate'])
    steps, loss = scalars['train/loss']
    smooth = np.convolve(loss, np.ones(50) / 50, mode='valid')
    fig, (left, right) = fileio.pyplot().subplots(1, 2, figsize=(10, 3.4))
    left.plot(steps, loss, color='tab:blue', alpha=0.25, label='train/loss')
    left.plot(steps[49:], smooth, color='tab:blue', label='mean of 50 steps')
    left.set(xlabel='step', ylabel='cross-entropy (FOV pixels)', yscale='log')
    left.legend()
    right.plot(*scalars['train/learning_rate'], color='tab:orange')
    right.set(xlabel='step', ylabel='train/learning_rate')
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle('DRIVE, CPU recipe (64px patches, batch 32, base 16)')
    fileio.save_figure(fig, os.path.join(IMAGES, 'training_curve.png'), dpi=90)


def calibrated_overlays(run):
    """The overlay folder of the run's evaluation calibrated on its training images."""
    folders = glob.glob(os.path.join(glob.escape(run), 'evaluations', '*_calibrated-on-*'))
    return os.path.join(min((f for f in folders if not f.endswith('_tta')), key=len), 'overlays')


def evaluation_figures():
    folder = calibrated_overlays(DRIVE_RUN)
    for source, target in (
        ('01_test.png', 'overlay_drive.png'),
        ('roc.png', 'roc_drive.png'),
        ('pr.png', 'pr_drive.png'),
    ):
        shutil.copy(os.path.join(folder, source), os.path.join(IMAGES, target))
    if os.path.isdir(CHASE_RUN):
        chase = calibrated_overlays(CHASE_RUN)
        first = sorted(n for n in os.listdir(chase) if n.startswith('Image_') and 'prob' not in n)
        shutil.copy(os.path.join(chase, first[0]), os.path.join(IMAGES, 'overlay_chase.png'))


def scale_figure(model='drive', photo='Image_01L.jpg', zoom=1.5):
    """A CHASE_DB1 photo enlarged 1.5x (its FOV 1,380 px across, 2.6x DRIVE's 538, as a
    higher-resolution camera gives): the photo, and the model's vessel probabilities predicted
    as it is and at the model's scale, over a crop where vessels of every width run."""
    source = os.path.join(SHARED, 'CHASEDB1', photo)
    if not os.path.exists(source):
        return
    with tempfile.TemporaryDirectory() as scratch:
        rgb = utils.read_image(source)
        large = utils.resize(rgb, utils.scaled_size(rgb.shape, zoom))
        fileio.write_png(os.path.join(scratch, 'photo.png'), large)
        maps = {}
        for how in ('--rescale', '--norescale'):
            out = os.path.join(scratch, how.strip('-'))
            run(
                'evaluate.py',
                f'--logdir={os.path.join(ROOT, "models", model)}',
                f"--predict={os.path.join(scratch, 'photo.png')}",
                f'--predict_dir={out}',
                how,
            )
            maps[how] = utils.read_image(os.path.join(out, 'photo_prob.png'))
    top, left, side = int(0.25 * large.shape[0]), int(0.45 * large.shape[1]), 560
    crop = (slice(top, top + side), slice(left, left + side))
    fig, axes = fileio.pyplot().subplots(1, 3, figsize=(13, 4.6))
    panels = [
        (large, f'photo ({large.shape[1]}x{large.shape[0]}, FOV 2.6x DRIVE), crop'),
        (maps['--norescale'], 'DRIVE model, as it is: hollow, missed'),
        (maps['--rescale'], "DRIVE model at its scale (the default)"),
    ]
    for axis, (image, title) in zip(axes, panels, strict=True):
        axis.imshow(image[crop])
        axis.set_title(title, fontsize=10)
        axis.axis('off')
    fileio.save_figure(fig, os.path.join(IMAGES, 'scale.png'), dpi=80)


def fov_figure():
    """The derived FOV's outline (green) and its fitted circle (red) on each STARE photo."""
    found = preprocess.find_datasets(SHARED).get('STARE')
    if not found:
        return
    fig, axes = fileio.pyplot().subplots(2, 5, figsize=(15, 6.6))
    for axis, sample in zip(axes.ravel(), found['training'], strict=False):
        rgb = utils.read_image(sample.image)
        mask = fov.derive(rgb)
        drawn = rgb.copy()
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(drawn, contours, -1, (0, 255, 0), 3)
        circle = fov.fit_circle(mask)
        if circle:
            cv2.circle(
                drawn, (round(circle.x), round(circle.y)), round(circle.radius), (255, 0, 0), 2
            )
        axis.imshow(drawn)
        diameter = fov.diameter(mask)
        axis.set_title(
            f'{os.path.basename(sample.image).split(".")[0]}: FOV {diameter:.0f} px'
            if diameter
            else 'no disc',
            fontsize=10,
        )
        axis.axis('off')
    fig.suptitle('fov.derive on STARE (film scans): outline green, fitted circle red')
    fileio.save_figure(fig, os.path.join(IMAGES, 'fov_stare.png'), dpi=70)


def main():
    os.makedirs(IMAGES, exist_ok=True)
    if sys.argv[1:] == ['fov']:
        fov_figure()
        return
    dataset_figures()
    fov_figure()
    scale_figure()
    if os.path.isdir(DRIVE_RUN):
        training_curve()
        evaluation_figures()
    else:
        print(f'{DRIVE_RUN} is missing: run bench/accuracy.py drive for the curves and overlays')
    print(f'figures in {IMAGES}: ' + ', '.join(sorted(os.listdir(IMAGES))))


if __name__ == '__main__':
    main()
