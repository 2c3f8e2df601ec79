"""Agreement of the features of predicted and manual vessel maps, and the cost of measuring.

  python -m bench.agreement            # about 3 minutes on 2 cores

For each set: evaluate.py with a shipped model (threshold 0.5) writes features.csv for the
predicted and the manual map of every image; for every feature this reports the mean difference
(predicted - manual), Pearson's r and ICC(2,1) (two-way random effects, absolute agreement, one
rater; Shrout and Fleiss 1979) over the images, and the same for the second human observer
against the first where a set has one: the agreement that manual maps themselves reach. Sets:
DRIVE test with the drive model (trained on DRIVE's training images), and photos from cameras a
model never trained on: CHASE_DB1's 20 with drive, the 10 STARE and 15 HRF training images with
drive_chase (their FOV masks: HRF's own, STARE's derived). Also times features.measure on an
HRF map (3504x2336) on one core. Writes bench/results/agreement.json.
"""

import csv
import glob
import json
import os
import statistics
import time

import numpy as np  # noqa: E402

import features  # noqa: E402
import fileio  # noqa: E402
import fov  # noqa: E402
import label_files  # noqa: E402
import report  # noqa: E402
import utils  # noqa: E402
from bench.common import RESULTS, ROOT, SHARED, WORK, evaluation_result  # noqa: E402

COMPARED = features.COLUMNS[features.COLUMNS.index('vessel_density') :]  # every measured one


def agreement_sets():
    """{set: (model, label file)}, writing the label files of the sets preprocess.py does not
    prepare into bench/work/agreement."""
    folder = os.path.join(WORK, 'agreement')
    os.makedirs(folder, exist_ok=True)
    sets = {
        'DRIVE test': ('drive', os.path.join(ROOT, 'data', 'DRIVE', 'test.txt')),
        'CHASE_DB1 (unseen camera)': (
            'drive',
            os.path.join(ROOT, 'data', 'CHASEDB', 'training.txt'),
        ),
    }
    sets['HRF (unseen camera)'] = ('drive_chase', hrf_label_file(folder))
    sets['STARE (unseen camera)'] = ('drive_chase', stare_label_file(folder))
    return sets


def hrf_label_file(folder):
    """HRF's training half as downloaded: its images, manual1 labels and mask FOVs."""
    hrf = os.path.join(SHARED, 'HRF')
    names = sorted(os.path.basename(path) for path in glob.glob(os.path.join(hrf, 'images', '*')))
    rows = [
        (name, f'{stem}.tif', f'{stem}_mask.tif')
        for name in names
        for stem in [os.path.splitext(name)[0]]
    ]
    return write_label_file(
        folder, 'hrf.txt', [os.path.join(hrf, part) for part in ('images', 'manual1', 'mask')], rows
    )


def stare_label_file(folder):
    """STARE's training half: its images and ah labels, with FOV masks derived from the images
    (STARE ships none)."""
    stare = os.path.join(SHARED, 'STARE')
    masks = os.path.join(folder, 'stare_masks')
    os.makedirs(masks, exist_ok=True)
    rows = []
    for path in sorted(glob.glob(os.path.join(stare, 'stare-images', '*.ppm'))):
        stem = os.path.basename(path)[: -len('.ppm')]
        fileio.write_png(
            os.path.join(masks, f'{stem}.png'), 255 * fov.derive(utils.read_image(path))
        )
        rows.append((f'{stem}.ppm', f'{stem}.ah.ppm', f'{stem}.png'))
    return write_label_file(
        folder,
        'stare.txt',
        [os.path.join(stare, 'stare-images'), os.path.join(stare, 'labels-ah'), masks],
        rows,
    )


def write_label_file(folder, name, folders, rows):
    path = os.path.join(folder, name)
    with open(path, 'w') as stream:
        stream.write(label_files.label_file_text(folders, rows))
    return path


def measured(name, model, label_file):
    """{source: [rows]} of the features.csv that evaluate.py writes for one set."""
    result = evaluation_result(
        f'--logdir={os.path.join(ROOT, "models", model)}',
        f'--label_file_path={label_file}',
        f'--output_dir={os.path.join(WORK, "agreement", name.split()[0])}',
    )
    with open(os.path.join(result['out_dir'], report.FEATURES_CSV)) as stream:
        rows = list(csv.DictReader(stream))
    return {
        source: [row for row in rows if row['source'] == source]
        for source in ('predicted', 'manual')
    }


def icc_2_1(x, y):
    """ICC(2,1) of two raters' values on the same subjects."""
    table = np.column_stack([x, y])
    n, k = table.shape
    grand = table.mean()
    rows = k * ((table.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    raters = n * ((table.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    residual = (
        (table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + grand) ** 2
    ).sum() / ((n - 1) * (k - 1))
    return float((rows - residual) / (rows + (k - 1) * residual + k * (raters - residual) / n))


def second_observer(label_file):
    """{source: [features]} of the first ('manual') and the second observer's maps of every
    image, or None where the set has no second observer."""
    rows = {'second': [], 'manual': []}
    for sample in label_files.parse_label_file(label_file):
        second = label_files.second_observer_path(sample) or stare_second(sample.label)
        if not second or not os.path.exists(second):
            return None
        fov = utils.read_binary(sample.mask)
        rows['manual'].append(features.measure(utils.read_binary(sample.label), fov))
        rows['second'].append(features.measure(utils.read_binary(second), fov))
    return rows


def stare_second(label):
    """STARE's second observer (Kouznetsova) for a label of the first (Hoover), or None."""
    folder, name = os.path.split(label)
    if os.path.basename(folder) != 'labels-ah':
        return None
    return os.path.join(os.path.dirname(folder), 'labels-vk', name.replace('.ah.', '.vk.'))


def number(value):
    return None if value in ('', None) else float(value)


def agreement(pairs):
    """Per feature: the means, mean difference, Pearson's r and ICC(2,1) over the images where
    both maps define the feature."""
    out = {}
    for key in COMPARED:
        both = [
            (number(p[key]), number(m[key]))
            for p, m in zip(*pairs, strict=True)
            if number(p[key]) is not None and number(m[key]) is not None
        ]
        if len(both) < 3:
            continue
        predicted, manual = map(np.array, zip(*both, strict=True))
        out[key] = {
            'images': len(both),
            'predicted_mean': float(predicted.mean()),
            'manual_mean': float(manual.mean()),
            'mean_difference': float((predicted - manual).mean()),
            'pearson_r': float(np.corrcoef(predicted, manual)[0, 1]),
            'icc_2_1': icc_2_1(predicted, manual),
        }
    return out


def measure_seconds():
    """features.measure on HRF 01_h's manual map, the median of three runs."""
    label = utils.read_binary(os.path.join(SHARED, 'HRF', 'manual1', '01_h.tif'))
    fov = utils.read_binary(os.path.join(SHARED, 'HRF', 'mask', '01_h_mask.tif'))
    seconds = []
    for _ in range(3):
        started = time.process_time()
        features.measure(label, fov)
        seconds.append(time.process_time() - started)
    return {'shape': list(label.shape), 'cpu_seconds': statistics.median(seconds)}


def main():
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    record = {'reference_fov_px': features.REFERENCE_FOV_PX, 'threshold': 0.5, 'sets': {}}
    for name, (model, label_file) in agreement_sets().items():
        started = time.time()
        pairs = measured(name, model, label_file)
        record['sets'][name] = {
            'model': model,
            'images': len(pairs['manual']),
            'seconds': round(time.time() - started, 1),
            'features': agreement((pairs['predicted'], pairs['manual'])),
        }
        observers = second_observer(label_file)
        if observers:
            record['sets'][name]['second_observer'] = agreement(
                (observers['second'], observers['manual'])
            )
        print(name, json.dumps(record['sets'][name]['features'].get('vessel_density')))
    record['measure_hrf'] = measure_seconds()
    with open(os.path.join(RESULTS, 'agreement.json'), 'w') as stream:
        json.dump(record, stream, indent=1)
    print(f"wrote {os.path.join(RESULTS, 'agreement.json')}")


if __name__ == '__main__':
    main()
