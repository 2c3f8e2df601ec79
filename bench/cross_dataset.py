"""Cross-dataset accuracy of the shipped models, with and without rescaling to the model's scale.

  python -m bench.cross_dataset --folds=0,1,2,3,4   # trains the combined model of each CHASE fold
                                                    # (about 25 min of 2 cores each), then
                                                    # evaluates every model on every test set
  python -m bench.cross_dataset --folds=0,1,2,3,4 --evaluate_only   # reuses the fold models
  python -m bench.cross_dataset --cameras   # the four cameras: six trainings of 17-35 min
  python -m bench.cross_dataset --cameras --shipped=all   # re-scores models/all in that record
  python -m bench.cross_dataset --cameras --sections=leave_one_camera_out --steps=20000
  python -m bench.cross_dataset --cameras --sections=in_domain --steps=20000
      # redo one trained section at models/all's length (about an hour a run)

Rows: the models in models/ (trained on DRIVE, on CHASE_DB1, on both). Columns: DRIVE's test set,
and CHASE_DB1 images the model did not train on: all 20 for the DRIVE model; for the CHASE and
combined models, the held-out images of the subject-wise folds of bench/accuracy.py (the
CHASE-only folds from bench/results/accuracy_chase.json; the combined model is retrained here on
DRIVE's training set plus each fold's CHASE training images, at its recipe). Scores inside the
FOV at threshold 0.5. Writes bench/results/cross_dataset.json and prints a Markdown table.

--cameras: the four cameras (DRIVE, CHASE_DB1, STARE, HRF; each camera's held-out images are
DRIVE's test set and the others' whole training halves). Every shipped model on every camera; the
all-four recipe (models/all's, for --steps) trained on three cameras and tested on the fourth
(leave one camera out); and the same recipe in-domain, by subject-wise CV_FOLDS-fold
cross-validation of CHASE_DB1, STARE and HRF at once (each fold trains on DRIVE's training set and
the other folds of the three). Runs resume where they stopped. Writes
bench/results/cross_camera.json; --shipped and --sections update it in place, each trained section
keeping the recipe, steps and date of its own trainings.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import cli  # noqa: E402

cli.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

import train  # noqa: E402
from bench.accuracy import (  # noqa: E402
    CPU_RECIPE,
    prepare_data,
    recipe_config,
    subject_folds,
    with_flags,
)
from bench.common import RESULTS, ROOT, WORK, evaluation_metrics  # noqa: E402
from bench.report import (  # noqa: E402
    combined_folds_table,
    cross_camera_table,
    cross_dataset_table,
    read_record,
)

MODELS = {'DRIVE': 'drive', 'CHASE_DB1': 'chase', 'DRIVE + CHASE_DB1': 'drive_chase'}
COMBINED_RECIPE = with_flags(CPU_RECIPE, '--fov_diameter=919')  # at CHASE_DB1's scale
CAMERA_RECIPE = with_flags(  # models/all's (its card); the record keeps each section's own
    COMBINED_RECIPE, '--vessel_weight=1.65', '--mixed_precision'
)
COMBINED_STEPS = 6000
FOLDS = 5  # bench/accuracy.py's CHASE split
METRICS = ('F1', 'AUC_ROC', 'IoU')
CAMERAS = {'DRIVE': 'DRIVE', 'CHASE_DB1': 'CHASEDB', 'STARE': 'STARE', 'HRF': 'HRF'}  # data/
SHIPPED = ('drive', 'chase', 'drive_chase', 'all')
CAMERA_STEPS = 3000  # six trainings of 3,000 take 3-6 hours of 2 cores
SCALE_RULES = ('fov', 'vessels')  # evaluate.py --scale_by
CV_FOLDS = 2
LOCO_ANCHORS = {  # bob.ip.binseg's U-Net trained on the four other sets, F1 on this one
    'DRIVE': 0.775,
    'CHASE_DB1': 0.779,
    'STARE': 0.806,
    'HRF': 0.746,
}


def scores_of(logdir, label_file, rescale, name, scale_by='fov'):
    """evaluate.py's scores on `label_file` at threshold 0.5, from the metrics.json it writes to
    a fresh folder of its own."""
    metrics = evaluation_metrics(
        os.path.join(WORK, 'cross', f'{name}_{"rescaled" if rescale else "native"}_{scale_by}'),
        f'--logdir={logdir}',
        f'--label_file_path={label_file}',
        f'--rescale={rescale}',
        f'--scale_by={scale_by}',
    )
    return {'images': metrics['images'], **{key: metrics['scores'][key] for key in METRICS}}


def by_rule(logdir, label_file, name):
    """{'images': N, rule: scores} for each of evaluate.py's scale rules (SCALE_RULES)."""
    scores = {rule: scores_of(logdir, label_file, True, name, rule) for rule in SCALE_RULES}
    return {
        'images': scores[SCALE_RULES[0]]['images'],
        **{rule: {key: values[key] for key in METRICS} for rule, values in scores.items()},
    }


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
    files = subject_folds(data, 'CHASEDB', FOLDS)
    results = []
    for fold in folds:
        held_out, chase_training, test = files[fold]
        logdir = os.path.join(WORK, f'log_combined_fold{fold}')
        if not evaluate_only:
            shutil.rmtree(logdir, ignore_errors=True)
            training = f"{os.path.join(data, 'DRIVE', 'training.txt')},{chase_training}"
            config = recipe_config(logdir, training, COMBINED_STEPS, COMBINED_RECIPE)
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


def held_out_set(data, camera):
    """The label file of a camera's images that no model trained without them saw."""
    name = 'test.txt' if camera == 'DRIVE' else 'training.txt'
    return os.path.join(data, CAMERAS[camera], name)


@dataclasses.dataclass(frozen=True)
class Trainings:
    """How the --cameras sections get their models: trained for `steps` (resumed where they
    stopped), or, with evaluate_only, as they are."""

    evaluate_only: bool = False
    steps: int = CAMERA_STEPS


def trained_run(name, training_files, trainings):
    """bench/work/log_{name} (log_{name}_{steps}steps at other than CAMERA_STEPS), trained on
    the label files at models/all's recipe for trainings.steps: resumed where it stopped, at once
    returned where it is done."""
    suffix = '' if trainings.steps == CAMERA_STEPS else f'_{trainings.steps}steps'
    logdir = os.path.join(WORK, f'log_{name}{suffix}')
    if not trainings.evaluate_only:
        config = recipe_config(logdir, ','.join(training_files), trainings.steps, CAMERA_RECIPE)
        train.train(tf.distribute.get_strategy(), config)
    return logdir


def shipped_on_cameras(data, models=SHIPPED):
    """{model: {camera: scores on the camera's held-out set, and whether the model saw it}}."""
    table = {}
    for model in models:
        folder = os.path.join(ROOT, 'models', model)
        with open(os.path.join(folder, 'config.json')) as stream:
            training = json.load(stream)['settings']['label_file_path']
        table[model] = {}
        for camera, images in CAMERAS.items():
            test = held_out_set(data, camera)
            table[model][camera] = {
                'saw_these_images': f'{images}/{os.path.basename(test)}' in training,
                **by_rule(folder, test, f'{model}_{camera}'),
            }
    return table


def leave_one_camera_out(data, trainings):
    """{camera: the recipe trained on the other three cameras' training sets, on it}."""
    rows = {}
    for camera, folder in CAMERAS.items():
        others = [c for c in CAMERAS if c != camera]
        logdir = trained_run(
            f'loco_{folder}',
            [os.path.join(data, CAMERAS[c], 'training.txt') for c in others],
            trainings,
        )
        rows[camera] = {
            'trained_on': others,
            **by_rule(logdir, held_out_set(data, camera), f'loco_{folder}'),
        }
    return rows


def in_domain_folds(data, trainings):
    """{camera: mean over folds, and each fold}: the recipe on each fold's held-out images of
    CHASE_DB1, STARE and HRF, trained on DRIVE's training set and the rest of the three."""
    cameras = [c for c in CAMERAS if c != 'DRIVE']
    folds = {c: subject_folds(data, CAMERAS[c], CV_FOLDS) for c in cameras}
    per_fold = {c: [] for c in cameras}
    for fold in range(CV_FOLDS):
        training = [os.path.join(data, 'DRIVE', 'training.txt')]
        training += [folds[c][fold][1] for c in cameras]
        logdir = trained_run(f'all_fold{fold}of{CV_FOLDS}', training, trainings)
        for camera in cameras:
            held_out, _, test = folds[camera][fold]
            scores = by_rule(logdir, test, f'all_fold{fold}_{CAMERAS[camera]}')
            per_fold[camera].append({'fold': fold, 'test_images': held_out, **scores})
    return {
        camera: {
            'images': sum(len(f['test_images']) for f in runs),
            **{
                rule: {key: float(np.mean([f[rule][key] for f in runs])) for key in METRICS}
                for rule in SCALE_RULES
            },
            'folds': runs,
        }
        for camera, runs in per_fold.items()
    }


def cameras(trainings, shipped, sections):
    path = os.path.join(RESULTS, 'cross_camera.json')
    update = bool(shipped or sections)
    record = read_record('cross_camera.json') if update else None
    if update and record is None:
        sys.exit(f'--shipped, --sections: no {path} to update; run --cameras first')
    data = os.path.relpath(prepare_data('DRIVE', 'CHASEDB1', 'STARE', 'HRF'), ROOT)
    if not update:
        record = trained_on_cameras(data, trainings)
    for section in sections:  # the record's other trained section stands
        run_section(record, section, data, trainings)
    if shipped:  # the record's trainings stand; these shipped models are scored again
        models = shipped.split(',')
        record['shipped'].update(shipped_on_cameras(data, models))
        record.setdefault('shipped_rescored', {}).update(
            dict.fromkeys(models, time.strftime('%Y-%m-%d'))
        )
    with open(path, 'w') as stream:
        json.dump(record, stream, indent=2)
    print('\n'.join(cross_camera_table(record)))
    print(f'wrote {path}')


def run_section(record, section, data, trainings):
    """Trains and scores one of TRAINED_SECTIONS into the record, with the recipe, steps and
    date of its trainings under record['trainings']."""
    record[section] = TRAINED_SECTIONS[section](data, trainings)
    record.setdefault('trainings', {})[section] = {
        'date': time.strftime('%Y-%m-%d'),
        'steps': trainings.steps,
        'recipe': CAMERA_RECIPE,
    }


def trained_on_cameras(data, trainings):
    """The whole four-camera record: its trainings (resumed where they stopped) and evaluations."""
    record = {
        'date': time.strftime('%Y-%m-%d'),
        'threshold': 0.5,
        'metrics': list(METRICS),
        'scale_rules': list(SCALE_RULES),
        'held_out_sets': {c: held_out_set(data, c) for c in CAMERAS},
        'loco_anchors': LOCO_ANCHORS,
    }
    for section in TRAINED_SECTIONS:
        run_section(record, section, data, trainings)
    record['shipped'] = shipped_on_cameras(data)
    return record


TRAINED_SECTIONS = {
    'leave_one_camera_out': leave_one_camera_out,
    'in_domain': in_domain_folds,
}


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--folds',
        default='0,1,2,3,4',
        help='comma-separated CHASE folds (0-4) for which to retrain the combined model',
    )
    parser.add_argument('--evaluate_only', action='store_true')
    parser.add_argument(
        '--steps',
        type=int,
        default=CAMERA_STEPS,
        help='with --cameras: training steps of each trained section\'s runs (the record: 10000)',
    )
    parser.add_argument('--cameras', action='store_true', help='the four-camera benchmark')
    parser.add_argument(
        '--shipped',
        default='',
        help='with --cameras: comma-separated shipped models to score again in its record',
    )
    parser.add_argument(
        '--sections',
        default='',
        help='with --cameras: comma-separated trained sections to run again in its record ('
        + ', '.join(TRAINED_SECTIONS)
        + ')',
    )
    args = parser.parse_args()
    args.sections = [section for section in args.sections.split(',') if section]
    if args.steps < 1:
        parser.error(f'--steps={args.steps}: give a positive number of training steps')
    unknown = sorted(set(args.sections) - set(TRAINED_SECTIONS))
    if unknown:
        parser.error(f"--sections: no section {', '.join(unknown)}")
    return args


def main():
    args = parse_arguments()
    logging.set_verbosity(logging.INFO)
    os.chdir(ROOT)  # the runs' label files are relative to it
    if args.cameras:
        return cameras(Trainings(args.evaluate_only, args.steps), args.shipped, args.sections)
    two_cameras(args)


def chase_rows(drive_scores, chase_only, folds, fold_names):
    """The CHASE_DB1 rows: the DRIVE model on all 20 images, CHASE_DB1's own cross-validation,
    the combined model on its held-out folds (and, for a subset of folds, the CHASE-only models
    of the same folds beside it)."""
    chase_cv = chase_only['evaluations']['threshold 0.5']['scores']
    chase_cv = {key: chase_cv[key] for key in METRICS}
    which = f"fold{'s' * (len(folds) > 1)} {fold_names}"
    held_out = f"{which} held out, {sum(len(fold['test_images']) for fold in folds)} images"
    rows = {
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
    }
    if len(folds) < FOLDS:
        rows[f'CHASE_DB1, {which} only'] = {
            'images': f'{held_out} (accuracy_chase.json)',
            **dict.fromkeys(('rescaled', 'native'), mean_over(folds, 'chase_only')),
        }
    return rows


def two_cameras(args):
    """The DRIVE and CHASE_DB1 tables: each shipped model on DRIVE test and CHASE_DB1, and the
    combined model's CHASE_DB1 folds."""
    data = prepare_data('DRIVE', 'CHASEDB1')
    drive_test = os.path.join(data, 'DRIVE', 'test.txt')
    chase_all = os.path.join(data, 'CHASEDB', 'training.txt')
    models = {label: os.path.join(ROOT, 'models', name) for label, name in MODELS.items()}
    with open(os.path.join(RESULTS, 'accuracy_chase.json')) as stream:
        chase_only = json.load(stream)
    folds = combined_folds(
        data, [int(fold) for fold in args.folds.split(',')], chase_only['folds'], args.evaluate_only
    )
    record = {
        'date': time.strftime('%Y-%m-%d'),
        'threshold': 0.5,
        'metrics': list(METRICS),
        'DRIVE test': {
            label: both_ways(models[label], drive_test, f'{name}_drive-test')
            for label, name in MODELS.items()
        },
        'CHASE_DB1': chase_rows(
            both_ways(models['DRIVE'], chase_all, 'drive_chase-all'), chase_only, folds, args.folds
        ),
        'combined_folds': folds,
    }
    path = os.path.join(RESULTS, 'cross_dataset.json')
    with open(path, 'w') as stream:
        json.dump(record, stream, indent=2)
    print('\n'.join([*cross_dataset_table(record), '', *combined_folds_table(record)]))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
