"""Ultra-widefield photos (AV-WIDE, Optos): models/all's F1 over the whole frame at the scale
each rule chooses against forced factors, and what one such photo costs.

  python -m bench.wide_field            # about 4 minutes on 2 cores
  python -m bench.wide_field cost       # one section; the other's figures are kept

Accuracy: for each of the 10 given photos (../shared/data/AV-WIDE), F1 at threshold 0.5 over all
pixels at the default rule's factor and at forced factors; the best forced factor per photo
beside the rule's. Cost: `evaluate.py --predict` of a 1600x1000 photo (AV-WIDE's 03 resized)
and of an HRF photo (3504x2336): seconds beyond start-up and peak memory. Writes
bench/results/wide_field.json and prints its tables.
"""

import glob
import json
import os
import shutil
import sys

import cv2
import numpy as np

from bench.common import RESULTS, ROOT, SHARED, WORK
from bench.photo_cost import run_measured

MODEL = os.path.join(ROOT, 'models', 'all')
FORCED = (0.75, 1.0, 1.25, 1.5, 2.0)
COST_PHOTOS = {
    '1600x1000 (AV-WIDE 03 resized)': None,
    '3504x2336 (HRF 01_h)': 'HRF/images/01_h.jpg',
}


def f1(prediction, label):
    return 2 * np.sum(prediction & label) / max(prediction.sum() + label.sum(), 1)


def accuracy():
    """{photo: {'rule': (factor, F1, rule text, doubt), 'forced': {factor: F1}}}."""
    import cli

    cli.quiet_tensorflow()
    import fov
    import inference
    import scale
    import utils

    predictor = inference.Predictor.from_run(MODEL)
    rows = {}
    for path in sorted(glob.glob(os.path.join(SHARED, 'AV-WIDE', 'images', '*.png'))):
        name = os.path.basename(path).removesuffix('.png')
        rgb = utils.read_image(path)
        label = utils.read_binary(
            os.path.join(SHARED, 'AV-WIDE', 'manual', f'{name}_vessels.png')
        ).astype(bool)
        inside = fov.read(rgb, path)
        probability, decision = predictor(rgb, inside, path)
        forced = {}
        for factor in FORCED:
            view = scale.at_model_scale(rgb, factor, True)
            forced[factor] = scale.to_native(predictor.at_model_scale(view), label.shape)
        rows[name] = {
            'rule': {
                'factor': round(decision.factor, 3),
                'F1': round(float(f1(probability >= 0.5, label)), 4),
                'rule': decision.rule,
                'doubt': decision.doubt,
            },
            'forced': {
                str(factor): round(float(f1(forced[factor] >= 0.5, label)), 4) for factor in FORCED
            },
        }
        print(name, rows[name]['rule'], rows[name]['forced'], flush=True)
    return rows


def cost():
    """{photo: {'seconds', 'peak_rss_mib'}} of `evaluate.py --predict` of that one photo: its
    seconds beyond those of a 300x300 photo (start-up, model loading), and the run's peak."""
    folder = os.path.join(WORK, 'wide_field')
    shutil.rmtree(folder, ignore_errors=True)
    photos = {'start-up (300x300)': np.zeros((300, 300, 3), np.uint8)}
    cv2.circle(photos['start-up (300x300)'], (150, 150), 140, (200, 90, 40), -1)
    for name, relative in COST_PHOTOS.items():
        if relative:
            photos[name] = cv2.imread(os.path.join(SHARED, relative))
        else:
            wide = cv2.imread(os.path.join(SHARED, 'AV-WIDE', 'images', 'wide_image_03.png'))
            photos[name] = cv2.resize(wide, (1600, 1000), interpolation=cv2.INTER_LINEAR)
    figures = {}
    for index, (name, image) in enumerate(photos.items()):
        path = os.path.join(folder, str(index), 'photo.png')
        os.makedirs(os.path.dirname(path))
        cv2.imwrite(path, image)
        seconds, peak, _ = run_measured(
            f'--logdir={MODEL}', f'--predict={path}', f'--predict_dir={folder}/out{index}'
        )
        start = figures.get('start-up (300x300)', {}).get('seconds', 0)
        figures[name] = {'seconds': round(seconds - start, 2), 'peak_rss_mib': round(peak)}
        print(name, figures[name], flush=True)
    return figures


def table(record):
    photos = record['accuracy']
    lines = [
        '| photo | rule: factor | rule: F1 | ' + ' | '.join(f'x{f}' for f in FORCED) + ' | best |',
        '| --- ' * (4 + len(FORCED)) + '|',
    ]
    for name, row in photos.items():
        best = max(row['forced'], key=row['forced'].get)
        lines.append(
            f"| {name} | x{row['rule']['factor']:.2f} | {row['rule']['F1']:.3f} | "
            + ' | '.join(f'{row["forced"][str(f)]:.3f}' for f in FORCED)
            + f' | x{best} |'
        )
    means = [np.mean([row['forced'][str(f)] for row in photos.values()]) for f in FORCED]
    rule_mean = np.mean([row['rule']['F1'] for row in photos.values()])
    lines.append(f'| mean | | {rule_mean:.3f} | ' + ' | '.join(f'{m:.3f}' for m in means) + ' | |')
    return '\n'.join(lines)


def main():
    """Measures the sections named on the command line (accuracy, cost; both by default) and
    keeps the other's figures from the last record."""
    if not os.path.isdir(os.path.join(SHARED, 'AV-WIDE')):
        sys.exit(f'{SHARED}/AV-WIDE is absent: nothing to measure')
    path = os.path.join(RESULTS, 'wide_field.json')
    record = json.load(open(path)) if os.path.exists(path) else {'model': 'models/all'}
    for section in sys.argv[1:] or ('cost', 'accuracy'):  # cost first: a child's peak
        # memory (ru_maxrss) starts from its parent's, which accuracy() raises
        record[section] = {'accuracy': accuracy, 'cost': cost}[section]()
    with open(path, 'w') as stream:
        json.dump(record, stream, indent=2)
        stream.write('\n')
    print(table(record))


if __name__ == '__main__':
    main()
