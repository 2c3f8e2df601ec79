"""Cross-dataset accuracy of the shipped models, with and without rescaling to the model's scale.

  python bench/cross_dataset.py --folds=0,1,2,3,4   # trains the combined model of each CHASE fold
                                                    # (about 25 min of 2 cores each), then
                                                    # evaluates every model on every test set
  python bench/cross_dataset.py --folds=0,1,2,3,4 --evaluate_only   # reuses the fold models

Rows: the models in models/ (trained on DRIVE, on CHASE_DB1, on both). Columns: DRIVE's test set,
and CHASE_DB1 images the model did not train on: all 20 for the DRIVE model; for the CHASE and
combined models, the held-out images of the subject-wise folds of bench/accuracy.py (the
CHASE-only folds from bench/results/accuracy_chase.json; the combined model is retrained here on
DRIVE's training set plus each fold's CHASE training images, at its recipe). Scores inside the
FOV at threshold 0.5. Writes bench/results/cross_dataset.json and prints a Markdown table.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402

cli.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

import train  # noqa: E402
from bench.accuracy import CPU_RECIPE, chase_fold_files, prepare_data, recipe_config  # noqa: E402
from bench.common import RESULTS, ROOT, WORK, evaluation_metrics  # noqa: E402
from bench.report import combined_folds_table, cross_dataset_table  # noqa: E402

MODELS = {'DRIVE': 'drive', 'CHASE_DB1': 'chase', 'DRIVE + CHASE_DB1': 'drive_chase'}
COMBINED_FLAGS = ['--fov_diameter=919']  # beyond CPU_RECIPE: CHASE_DB1's scale
COMBINED_STEPS = 6000
FOLDS = 5  # bench/accuracy.py's CHASE split
METRICS = ('F1', 'AUC_ROC', 'IoU')


def scores_of(logdir, label_file, rescale, name):
    """evaluate.py's scores on `label_file` at threshold 0.5, from the metrics.json it writes to
    a fresh folder of its own."""
    metrics = evaluation_metrics(
        os.path.join(WORK, 'cross', f'{name}_{"rescaled" if rescale else "native"}'),
        f'--logdir={logdir}',
        f'--label_file_path={label_file}',
        f'--rescale={rescale}',
    )
    return {'images': metrics['images'], **{key: metrics['scores'][key] for key in METRICS}}


def both_ways(logdir, label_file, name):
    return {
        'rescaled': scores_of(logdir, label_file, True, name),
        'native': scores_of(logdir, label_file, False, name),
    }


def mean_over(folds, scores):
    """The mean over folds of each of their `scores` ('rescaled', 'native' or 'chase_only')."""
    return {key: float(np.mean([fold[scores][key] for fold in folds])) for key in METRICS}


def combined_folds(data, folds, chase_only_folds, evaluate_only):
    """The combined recipe retrained without each fold's held-out CHASE images, scored on them,
    beside the CHASE-only model of the same fold (from bench/results/accuracy_chase.json)."""
    chase_only = {fold['fold']: fold for fold in chase_only_folds}
    files = chase_fold_files(data, FOLDS)
    results = []
    for fold in folds:
        held_out, chase_training, test = files[fold]
        logdir = os.path.join(WORK, f'log_combined_fold{fold}')
        if not evaluate_only:
            shutil.rmtree(logdir, ignore_errors=True)
            training = f"{os.path.join(data, 'DRIVE', 'training.txt')},{chase_training}"
            config = recipe_config(logdir, training, COMBINED_STEPS, [*CPU_RECIPE, *COMBINED_FLAGS])
            train.train(tf.distribute.get_strategy(), config)
        chase_scores = chase_only[fold]['evaluations']['threshold 0.5']['scores']
        results.append(
            {
                'fold': fold,
                'test_images': held_out,
                **both_ways(logdir, test, f'combined_fold{fold}'),
                'chase_only': {key: chase_scores[key] for key in METRICS},
            }
        )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--folds',
        default='0,1,2,3,4',
        help='comma-separated CHASE folds (0-4) for which to retrain the combined model',
    )
    parser.add_argument('--evaluate_only', action='store_true')
    args = parser.parse_args()
    logging.set_verbosity(logging.INFO)
    data = prepare_data('DRIVE', 'CHASEDB1')
    drive_test = os.path.join(data, 'DRIVE', 'test.txt')
    chase_all = os.path.join(data, 'CHASEDB', 'training.txt')
    models = {label: os.path.join(ROOT, 'models', name) for label, name in MODELS.items()}
    drive_scores = both_ways(models['DRIVE'], chase_all, 'drive_chase-all')
    with open(os.path.join(RESULTS, 'accuracy_chase.json')) as stream:
        chase_only = json.load(stream)
    folds = combined_folds(
        data, [int(fold) for fold in args.folds.split(',')], chase_only['folds'], args.evaluate_only
    )
    chase_cv = chase_only['evaluations']['threshold 0.5']['scores']
    chase_cv = {key: chase_cv[key] for key in METRICS}
    which = f"fold{'s' * (len(folds) > 1)} {args.folds}"
    held_out = f"{which} held out, {sum(len(fold['test_images']) for fold in folds)} images"
    record = {
        'date': time.strftime('%Y-%m-%d'),
        'threshold': 0.5,
        'metrics': list(METRICS),
        'DRIVE test': {
            label: both_ways(models[label], drive_test, f'{name}_drive-test')
            for label, name in MODELS.items()
        },
        'CHASE_DB1': {
            'DRIVE': {'images': 'all 20', **drive_scores},
            'CHASE_DB1': {
                'images': f'{FOLDS}-fold CV, mean (bench/results/accuracy_chase.json)',
                'rescaled': chase_cv,
                'native': chase_cv,
            },
            'DRIVE + CHASE_DB1': {
                'images': held_out,
                'rescaled': mean_over(folds, 'rescaled'),
                'native': mean_over(folds, 'native'),
            },
        },
        'combined_folds': folds,
    }
    if len(folds) < FOLDS:  # a subset: the CHASE-only models of the same folds beside it
        record['CHASE_DB1'][f'CHASE_DB1, {which} only'] = {
            'images': f'{held_out} (accuracy_chase.json)',
            **dict.fromkeys(('rescaled', 'native'), mean_over(folds, 'chase_only')),
        }
    path = os.path.join(RESULTS, 'cross_dataset.json')
    with open(path, 'w') as stream:
        json.dump(record, stream, indent=2)
    print('\n'.join([*cross_dataset_table(record), '', *combined_folds_table(record)]))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
