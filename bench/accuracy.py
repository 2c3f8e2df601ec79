"""Accuracy within a CPU budget, with the project's own scripts on real data (../shared/data).

  python -m bench.accuracy drive           # DRIVE: train on training, evaluate on test, 3 seeds
  python -m bench.accuracy chase --folds=5 # CHASE_DB1: subject-wise 5-fold CV on its 20 images

Each run trains from scratch in bench/work/log_{name}_seed{seed} (--evaluate_only reuses it)
and is evaluated three ways: at threshold 0.5; at the threshold with the best F1 on its own
training images (evaluate.py --calibrate_on); and the same with test-time flips (--tta). DRIVE
repeats the recipe with --seeds (default 0,1,2), CHASE_DB1 with each fold (seed 0 unless
--seeds says more): every figure is the mean over those runs, with its standard deviation, min,
max and count. Writes bench/results/accuracy_{name}.json and prints a Markdown table.
"""

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time

import cli  # noqa: E402
import fileio  # noqa: E402
import label_files  # noqa: E402

cli.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

import train  # noqa: E402
import train_config  # noqa: E402
from bench.common import (  # noqa: E402
    RESULTS,
    ROOT,
    SHARED,
    WORK,
    evaluation_result,
    read_scalars,
    run,
)

with open(os.path.join(ROOT, 'recipes', 'cpu.flags')) as _recipe:  # its flags, for the records
    CPU_RECIPE = [line.strip() for line in _recipe if line.startswith('--')]
CPU_RECIPE.append('--save_interval=500')
EVALUATIONS = {  # each writes its own folder under {logdir}/evaluations
    'threshold 0.5': lambda training: [],
    'calibrated + flips': lambda training: [f'--calibrate_on={training}', '--tta'],
    'calibrated': lambda training: [f'--calibrate_on={training}'],
}
MAIN_EVALUATION = 'calibrated'
REFERENCES = {
    'orobix/retina-unet (about 20 GPU-hours)': {'F1': 0.816, 'AUC_ROC': 0.979},
    'second human observer (DRIVE test)': {'F1': 0.79},
    'in-FOV U-Nets, 1000+ GPU epochs': {'F1': '0.825-0.828'},
}


def with_flags(recipe, *flags):
    """The recipe's flags with each of `flags` in place of the recipe's flag of that name (new
    names appended), so that a record lists every setting once, as the run used it."""
    names = {setting_name(flag) for flag in flags}
    kept = [flag for flag in recipe if setting_name(flag) not in names]
    return [*kept, *flags]


def setting_name(flag):
    """The train.py flag that `flag` sets: `--noaugmentation` sets augmentation."""
    name = flag.split('=')[0].removeprefix('--')
    if name.startswith('no') and name not in train_config.FLAGS and name[2:] in train_config.FLAGS:
        return name[2:]
    return name


def recipe_config(logdir, training, steps, flags):
    """The run's settings from the recipe's flags, parsed by train.py's own flag definitions."""
    try:
        train_config.FLAGS(
            [
                'train.py',
                f'--logdir={logdir}',
                f'--label_file_path={training}',
                f'--max_iters={steps}',
                *flags,
            ]
        )
        return train_config.config_from_flags()
    finally:
        train_config.FLAGS.unparse_flags()


def trained_steps_and_seconds(logdir):
    """The run's last step and the wall-clock of the training loop: the sum of its per-step
    times (start-up and saves not counted), from its event files."""
    rate = 'train/global_steps_per_sec'
    steps, rates = read_scalars(logdir, [rate])[rate]
    return int(steps.max()), float(np.sum(1.0 / rates))


def train_and_evaluate(name, training, test, steps, extra_flags=(), evaluate_only=False, seed=0):
    logdir = os.path.join(WORK, f'log_{name}_seed{seed}')
    if not evaluate_only:
        shutil.rmtree(logdir, ignore_errors=True)
        config = recipe_config(
            logdir, training, steps, with_flags(CPU_RECIPE, *extra_flags, f'--seed={seed}')
        )
        train.train(tf.distribute.get_strategy(), config)
    steps, seconds = trained_steps_and_seconds(logdir)
    record = {
        'seed': seed,
        'steps': steps,
        'train_seconds': round(seconds, 1),
        'logdir': logdir,
        'evaluations': {},
    }
    for evaluation, flags in EVALUATIONS.items():  # each into {logdir}/evaluations, overlays too
        started = time.time()
        metrics = evaluation_result(
            f'--logdir={logdir}', f'--label_file_path={test}', '--visulize=True', *flags(training)
        )
        record['evaluations'][evaluation] = {
            'threshold': metrics['threshold'],
            'seconds': round(time.time() - started, 1),
            'scores': metrics['scores'],
        }
    record['second_observer'] = metrics.get('second_observer')
    return record


def write_label_file(path, folder, names):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fileio.write_atomic(
        path,
        label_files.label_file_text(
            [f'{folder}/images', f'{folder}/labels', f'{folder}/masks'],
            [[f'{n}.png'] * 3 for n in names],
        ),
    )


SUBJECT_OF = {  # the subject of an image name: a fold holds all of a subject's images
    'CHASEDB': lambda name: re.match(r'Image_(\d+)', name).group(1),  # a child's two eyes
    'HRF': lambda name: name[:2],  # one patient per image: a number's three groups stay together
    'STARE': lambda name: name,  # one image per patient
}


def subject_folds(data, folder, folds):
    """Subject-wise folds of the images of data/{folder}/training: one (held-out names,
    training label file, test label file) per fold, the label files written beside its
    training.txt. A fold holds every `folds`-th subject (in name order)."""
    names = sorted(
        os.path.splitext(n)[0] for n in os.listdir(os.path.join(data, folder, 'training', 'images'))
    )
    subject = SUBJECT_OF[folder]
    subjects = sorted({subject(n) for n in names})
    files = []
    for fold in range(folds):
        held_out = set(subjects[fold::folds])
        test = [n for n in names if subject(n) in held_out]
        prefix = os.path.join(data, folder, f'fold{fold}of{folds}')
        write_label_file(f'{prefix}_training.txt', 'training', [n for n in names if n not in test])
        write_label_file(f'{prefix}_test.txt', 'training', test)
        files.append((test, f'{prefix}_training.txt', f'{prefix}_test.txt'))
    return files


def chase_folds(data, folds, steps, extra_flags, evaluate_only, seeds):
    results = []
    for fold, (test, training_file, test_file) in enumerate(subject_folds(data, 'CHASEDB', folds)):
        for seed in seeds:
            result = train_and_evaluate(
                f'chase_fold{fold}',
                training_file,
                test_file,
                steps,
                extra_flags,
                evaluate_only,
                seed,
            )
            results.append({'fold': fold, 'test_images': test, **result})
            scores = result['evaluations'][MAIN_EVALUATION]['scores']
            print(
                f'fold {fold}, seed {seed}: {scores["F1"]:.4f} F1 ({MAIN_EVALUATION})', flush=True
            )
    return results


def drive_seeds(data, steps, extra_flags, evaluate_only, seeds, name):
    results = []
    for seed in seeds:
        results.append(
            train_and_evaluate(
                name,
                os.path.join(data, 'DRIVE', 'training.txt'),
                os.path.join(data, 'DRIVE', 'test.txt'),
                steps,
                extra_flags,
                evaluate_only,
                seed,
            )
        )
        scores = results[-1]['evaluations']['threshold 0.5']['scores']
        print(f'seed {seed}: {scores["F1"]:.4f} F1 (threshold 0.5)', flush=True)
    return results


def prepare_data(*folders):
    """Runs preprocess.py on the named folders of ../shared/data; returns its output folder."""
    raw, data = os.path.join(WORK, 'raw'), os.path.join(WORK, 'data')
    os.makedirs(raw, exist_ok=True)
    for folder in folders:
        link = os.path.join(raw, folder)
        if not os.path.exists(link):
            os.symlink(os.path.join(SHARED, folder), link)
    run('preprocess.py', f'--data_dir={raw}', f'--output_dir={data}')
    return data


def spread(runs, evaluation):
    """Each score's mean over the runs, with its standard deviation (ddof=1; 0 for one run),
    min, max and the number of runs."""
    per_run = [run['evaluations'][evaluation]['scores'] for run in runs]
    values = {key: np.array([scores[key] for scores in per_run]) for key in per_run[0]}
    return {
        'runs': len(runs),
        'scores': {key: float(v.mean()) for key, v in values.items()},
        'std': {key: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for key, v in values.items()},
        'min': {key: float(v.min()) for key, v in values.items()},
        'max': {key: float(v.max()) for key, v in values.items()},
    }


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('dataset', choices=['drive', 'chase'])
    parser.add_argument(
        '--steps',
        type=int,
        default=4000,
        help='training steps (the CPU recipe: about 20 minutes on 2 cores)',
    )
    parser.add_argument('--folds', type=int, default=5)
    parser.add_argument(
        '--seeds',
        default=None,
        help='comma-separated --seed values to repeat '
        'the recipe with (default: 0,1,2 for drive, 0 for chase)',
    )
    parser.add_argument('--tag', default='', help='suffix of the run and result names')
    parser.add_argument(
        '--train_flags', default='', help='extra train.py flags, e.g. "--dice_weight=1"'
    )
    parser.add_argument(
        '--evaluate_only',
        action='store_true',
        help='evaluate the models an earlier run trained, without training',
    )
    return parser.parse_args()


def main():
    args = parse_arguments()
    logging.set_verbosity(logging.INFO)
    extra_flags = args.train_flags.split()
    name = args.dataset + (f'_{args.tag}' if args.tag else '')
    folder = {'drive': 'DRIVE', 'chase': 'CHASEDB1'}[args.dataset]
    if not os.path.isdir(os.path.join(SHARED, folder)):
        sys.exit(f'{os.path.join(SHARED, folder)} is not here: nothing to measure')
    seeds = [
        int(seed)
        for seed in (args.seeds or {'drive': '0,1,2', 'chase': '0'}[args.dataset]).split(',')
    ]
    data = prepare_data(folder)
    record = {
        'dataset': folder,
        'recipe': with_flags(CPU_RECIPE, *extra_flags),
        'machine': platform.processor() or platform.machine(),
        'cpus': os.cpu_count(),
        'date': time.strftime('%Y-%m-%d'),
    }
    if args.dataset == 'drive':
        runs = record['runs'] = drive_seeds(
            data, args.steps, extra_flags, args.evaluate_only, seeds, name
        )
        record['references'] = REFERENCES
        record['second_observer'] = runs[0]['second_observer']
    else:
        runs = record['folds'] = chase_folds(
            data, args.folds, args.steps, extra_flags, args.evaluate_only, seeds
        )
    record['evaluations'] = {evaluation: spread(runs, evaluation) for evaluation in EVALUATIONS}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f'accuracy_{name}.json')
    with open(path, 'w') as stream:
        json.dump(record, stream, indent=2)
    print_table(record, runs)
    print(f'wrote {path}')


def print_table(record, runs):
    """The record's mean +- standard deviation per evaluation, as a markdown table."""
    print(
        f'| {record["dataset"]}, {runs[0]["steps"]} steps, mean +- std of {len(runs)} runs | F1 '
        '| AUC-ROC | IoU | Se | Sp | Acc |'
    )
    for evaluation, entry in record['evaluations'].items():
        print(
            f'| {evaluation} | '
            + ' | '.join(
                f"{entry['scores'][k]:.4f} +- {entry['std'][k]:.4f}"
                for k in ('F1', 'AUC_ROC', 'IoU', 'Se', 'Sp', 'Acc')
            )
            + ' |'
        )


if __name__ == '__main__':
    main()
