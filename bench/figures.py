"""Regenerates the README's figures in images/ with the project's own code and real data.

  python bench/figures.py      # after bench/accuracy.py drive (for the curves and overlays)

preprocess.png, dataset_sample.png (DRIVE), dataset_sample_chase.png: preprocess.py's figures.
training_curve.png: train/loss and train/learning_rate read from the DRIVE run's event files.
overlay_drive.png, roc_drive.png, pr_drive.png: evaluate.py --visulize's outputs for DRIVE test;
overlay_chase.png: the same for a held-out image of the first CHASE_DB1 cross-validation fold.
"""
import glob
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import preprocess  # noqa: E402
import utils  # noqa: E402
from bench.common import ROOT, SHARED, WORK, read_scalars  # noqa: E402

IMAGES = os.path.join(ROOT, 'images')
DRIVE_RUN = os.path.join(WORK, 'log_drive')
CHASE_RUN = os.path.join(WORK, 'log_chase_fold0')


def dataset_figures():
    found = preprocess.find_datasets(SHARED)
    with tempfile.TemporaryDirectory() as scratch:
        if 'DRIVE' in found:
            preprocess.draw_figures(found['DRIVE']['training'][0], scratch)
            for name in ('preprocess.png', 'dataset_sample.png'):
                shutil.copy(os.path.join(scratch, name), os.path.join(IMAGES, name))
        if 'CHASEDB' in found:
            preprocess.draw_figures(found['CHASEDB']['training'][0], scratch)
            shutil.copy(os.path.join(scratch, 'dataset_sample.png'),
                        os.path.join(IMAGES, 'dataset_sample_chase.png'))


def training_curve():
    scalars = read_scalars(DRIVE_RUN, ['train/loss', 'train/learning_rate'])
    steps, loss = scalars['train/loss']
    smooth = np.convolve(loss, np.ones(50) / 50, mode='valid')
    fig, (left, right) = utils.pyplot().subplots(1, 2, figsize=(10, 3.4))
    left.plot(steps, loss, color='tab:blue', alpha=0.25, label='train/loss')
    left.plot(steps[49:], smooth, color='tab:blue', label='mean of 50 steps')
    left.set(xlabel='step', ylabel='cross-entropy (FOV pixels)', yscale='log')
    left.legend()
    right.plot(*scalars['train/learning_rate'], color='tab:orange')
    right.set(xlabel='step', ylabel='train/learning_rate')
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle('DRIVE, CPU recipe (64px patches, batch 32, base 16)')
    utils.save_figure(fig, os.path.join(IMAGES, 'training_curve.png'), dpi=90)


def calibrated_overlays(run):
    """The overlay folder of the run's evaluation calibrated on its training images."""
    folders = glob.glob(os.path.join(glob.escape(run), 'evaluations', '*_calibrated-on-*'))
    return os.path.join(min((f for f in folders if not f.endswith('_tta')), key=len), 'visulize')


def evaluation_figures():
    folder = calibrated_overlays(DRIVE_RUN)
    for source, target in (('01_test.png', 'overlay_drive.png'), ('roc.png', 'roc_drive.png'),
                           ('pr.png', 'pr_drive.png')):
        shutil.copy(os.path.join(folder, source), os.path.join(IMAGES, target))
    if os.path.isdir(CHASE_RUN):
        chase = calibrated_overlays(CHASE_RUN)
        first = sorted(n for n in os.listdir(chase) if n.startswith('Image_') and 'prob' not in n)
        shutil.copy(os.path.join(chase, first[0]), os.path.join(IMAGES, 'overlay_chase.png'))


def main():
    os.makedirs(IMAGES, exist_ok=True)
    dataset_figures()
    if os.path.isdir(DRIVE_RUN):
        training_curve()
        evaluation_figures()
    else:
        print(f'{DRIVE_RUN} is missing: run bench/accuracy.py drive for the curves and overlays')
    print(f'figures in {IMAGES}: ' + ', '.join(sorted(os.listdir(IMAGES))))


if __name__ == '__main__':
    main()
