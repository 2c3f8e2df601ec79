"""Makes a shipped model: copies what evaluate.py needs from a finished run into models/NAME,
measures it, and writes its model card (MODEL.md, from card.json, which the tests reproduce).

  python -m bench.ship --name=drive --run=log/drive --command="python train.py ..." \
      --training=DRIVE/training --tests=DRIVE/test,CHASEDB/training

Data names are label files under data/ as `python preprocess.py --data_dir=../shared/data`
writes them (DRIVE/test is data/DRIVE/test.txt). The threshold is calibrated on the training
images (evaluate.py --calibrate_on); every test set is scored at 0.5 and at that threshold.
"""

import argparse
import json
import os
import platform
import shutil
import time

import cli  # noqa: E402
import run_folder  # noqa: E402

cli.quiet_tensorflow()

from bench.accuracy import trained_steps_and_seconds  # noqa: E402
from bench.common import ROOT, WORK, evaluation_metrics  # noqa: E402

SHIPPED = (
    run_folder.ARCHITECTURE_FILE,
    run_folder.SCALE_FILE,
    run_folder.CONFIG_FILE,
    run_folder.WEIGHTS_FILE,
)
CARD_JSON, CARD = 'card.json', 'MODEL.md'
METRICS = ('F1', 'AUC_ROC', 'IoU', 'Se', 'Sp', 'Acc')


def label_file(name):
    return os.path.join(ROOT, 'data', f'{name}.txt')


def evaluate(folder, data, threshold=None, calibrate_on=None):
    """evaluate.py's metrics.json for one evaluation of the shipped model."""
    how = [f'--calibrate_on={calibrate_on}'] if calibrate_on else [f'--threshold={threshold!r}']
    return evaluation_metrics(
        os.path.join(WORK, 'ship', os.path.basename(folder)),
        f'--logdir={folder}',
        f'--label_file_path={label_file(data)}',
        *how,
    )


def card_row(data, metrics):
    """One evaluation of the card: the set's scores, and each image's confusion matrix and
    AUC-ROC (they let a test check the set's figures and re-predict only some of its images)."""
    per_image = [
        {key: row[key] for key in ('image', 'confusion_matrix', 'AUC_ROC')}
        for row in metrics['per_image']
    ]
    return {
        'data': data,
        'threshold': metrics['threshold'],
        'images': metrics['images'],
        'scores': metrics['scores'],
        'per_image': per_image,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--name', required=True)
    parser.add_argument('--run', required=True, help='the finished run folder')
    parser.add_argument('--command', required=True, help='the training command, for the card')
    parser.add_argument('--training', required=True, help='comma-separated training data names')
    parser.add_argument('--tests', required=True, help='comma-separated test data names')
    parser.add_argument('--commit', required=True, help='the commit whose code trained it')
    parser.add_argument('--notes', default='', help='a paragraph for the card')
    args = parser.parse_args()
    folder = os.path.join(ROOT, 'models', args.name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for name in SHIPPED:
        shutil.copy(os.path.join(args.run, name), folder)
    steps, seconds = trained_steps_and_seconds(args.run)
    training = ','.join(label_file(name) for name in args.training.split(','))
    calibrated = evaluate(folder, args.tests.split(',')[0], calibrate_on=training)['threshold']
    evaluations = []
    for data in args.tests.split(','):
        for threshold in (0.5, calibrated):
            evaluations.append(card_row(data, evaluate(folder, data, threshold)))
    with open(os.path.join(folder, run_folder.CONFIG_FILE)) as stream:
        versions = json.load(stream)['versions']
    card = {
        'name': args.name,
        'command': args.command,
        'commit': args.commit,
        'training_data': args.training,
        'steps': steps,
        'training_loop_seconds': round(seconds),
        'machine': f'{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})',
        'versions': versions,
        'fov_diameter': run_folder.load_scale(folder).fov_diameter,
        'calibrated_threshold': calibrated,
        'evaluations': evaluations,
        'notes': args.notes,
        'date': time.strftime('%Y-%m-%d'),
    }
    with open(os.path.join(folder, CARD_JSON), 'w') as stream:
        json.dump(card, stream, indent=2)
    with open(os.path.join(folder, CARD), 'w') as stream:
        stream.write(render(card))
    print(render(card))


def render(card):
    """MODEL.md from card.json."""
    return '\n'.join(
        [
            f"# Model card: {card['name']}",
            '',
            'A U-Net (`model.py`) for retinal vessel segmentation, trained on '
            f"{card['training_data']} by this repository's own scripts. Use it as a run folder:",
            '',
            '```bash',
            f"python evaluate.py --logdir=models/{card['name']} --predict='photos/*.jpg'",
            '```',
            '',
            *_training_section(card),
            *_metrics_section(card),
            *([card['notes'], ''] if card['notes'] else []),
            f"Measured {card['date']}.",
            '',
        ]
    )


def _training_section(card):
    weights = run_folder.weights_path(os.path.join('models', card['name']))
    return [
        '## Training',
        '',
        '```bash',
        'python preprocess.py --data_dir=../shared/data   # DRIVE, CHASEDB1, STARE, HRF',
        card['command'],
        '```',
        '',
        f"- Code: commit {card['commit']} of this repository.",
        f"- Data: {card['training_data']} (label files written by preprocess.py).",
        f"- Steps: {card['steps']}; training loop "
        f"{card['training_loop_seconds'] / 60:.1f} minutes "
        f"on {card['machine']}, TensorFlow {card['versions']['tensorflow']}, Keras "
        f"{card['versions']['keras']}.",
        f"- Scale: the training images' median FOV diameter is {card['fov_diameter']} px "
        '(scale.json); evaluate.py resizes every image to it before predicting and maps the '
        'probabilities back.',
        f"- Calibrated threshold: {card['calibrated_threshold']:.4f} (the best F1 on the "
        'training images, `evaluate.py --calibrate_on`).',
        f"- Files: architecture.json, scale.json, config.json (every setting), {weights}.",
        '',
    ]


def _metrics_section(card):
    rows = [
        f"| {e['data']} | {e['images']} | {e['threshold']:.4f} | "
        + ' | '.join(f"{e['scores'][key]:.4f}" for key in METRICS)
        + ' |'
        for e in card['evaluations']
    ]
    return [
        '## Metrics',
        '',
        'Inside the FOV, at native resolution, with rescaling (the default). '
        'Reproduce one with `python evaluate.py --logdir=models/'
        f"{card['name']} --label_file_path=data/DATA.txt --threshold=T`; "
        '`tests/test_shipped_models.py` does, to 1e-4.',
        '',
        '| data | images | threshold | ' + ' | '.join(METRICS) + ' |',
        '| --- | --- | --- |' + ' --- |' * len(METRICS),
        *rows,
        '',
        'Each figure is of this one trained model (one run). Between training runs of the CPU '
        'recipe with other seeds, DRIVE test F1 varies by a standard deviation of about 0.001 '
        '(README, Results): a difference smaller than that is a tie.',
        '',
    ]


if __name__ == '__main__':
    main()
