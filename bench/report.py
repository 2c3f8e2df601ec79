"""Writes bench/results/summary.md, the tables the README quotes, from bench/results/*.json;
the README's results table (between its README_BEGIN and README_END lines) from the shipped
models' cards (models/*/card.json); and docs/results.md's four-camera table (between its
CAMERAS_BEGIN and CAMERAS_END lines) from bench/results/cross_camera.json.

  python -m bench.report
"""

import glob
import json
import os
import re
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'bench', 'results')
README_BEGIN = '<!-- the shipped models: written by bench/report.py from models/*/card.json -->'
README_END = '<!-- end of the table bench/report.py writes -->'
CAMERAS_BEGIN = '<!-- four cameras: written by bench/report.py from cross_camera.json -->'
CAMERAS_END = '<!-- end of the four-camera table -->'
METRICS = ('F1', 'AUC_ROC', 'IoU', 'Se', 'Sp', 'Acc')
LOSS_FLAGS = ('--dice_weight', '--vessel_weight')  # named in a run's recipe column


def read_record(name):
    """The JSON record bench/results/{name}, or None where that benchmark has not run."""
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as stream:
        return json.load(stream)


def accuracy_records():
    """{name: record} of every bench/results/accuracy_*.json, in name order."""
    names = sorted(map(os.path.basename, glob.glob(os.path.join(RESULTS, 'accuracy_*.json'))))
    return {name[: -len('.json')]: read_record(name) for name in names}


def accuracy_rows(records):
    rows = [
        '| run | recipe | steps | train minutes | evaluation | ' + ' | '.join(METRICS) + ' |',
        '| --- | --- | --- | --- | --- |' + ' --- |' * len(METRICS),
    ]
    observers = {}
    for name, record in records.items():
        extra = ' '.join(f for f in record['recipe'] if f.startswith(LOSS_FLAGS)) or 'CPU recipe'
        name = name[len('accuracy_') :]
        runs = record.get('folds') or record.get('runs') or [record]
        if 'folds' in record:
            name += f' ({len(runs)}-fold CV, mean)'
        elif 'runs' in record:
            name += f' (mean of {len(runs)} seeds)'
        minutes = sum(run['train_seconds'] for run in runs) / len(runs) / 60
        for evaluation, entry in record['evaluations'].items():
            rows.append(
                f"| {name} | {extra} | {runs[0]['steps']} | {minutes:.1f} | {evaluation} | "
                + ' | '.join(f"{entry['scores'][k]:.4f}" for k in METRICS)
                + ' |'
            )
        if all(run.get('second_observer') for run in runs):
            observers[record['dataset'] + (' (mean of folds)' if 'folds' in record else '')] = {
                k: sum(run['second_observer'][k] for run in runs) / len(runs)
                for k in runs[0]['second_observer']
            }
    for dataset, observer in observers.items():
        rows.append(
            f'| {dataset}: second observer vs first | | | | | '
            + ' | '.join(f'{observer[k]:.4f}' if k in observer else '' for k in METRICS)
            + ' |'
        )
    rows += [
        '',
        'Evaluation: at threshold 0.5; "calibrated" at the threshold with the best F1 on '
        "the run's own training images (`evaluate.py --calibrate_on`); \"+ flips\" also "
        'averages each prediction over the image and its three flips (`--tta`). Train '
        "minutes: the training loop's wall-clock, summed from train.py's step times "
        '(start-up not counted); longer where other jobs shared the 2 cores.',
    ]
    return rows


def seed_groups(records):
    """{group: [each run's evaluations]} for records named accuracy_{group}_seed{N} or
    _seeds{N...} ({name: record}): one group per recipe, one entry per seed it ran."""
    groups = {}
    for name, record in records.items():
        group = re.fullmatch(r'accuracy_(.+)_seeds?\d+', name)
        if group:
            for run in record.get('runs') or [record]:
                groups.setdefault(group[1], []).append(run['evaluations'])
    return groups


def spread_rows(groups):
    """Each group's mean ± standard deviation between its seeds, per evaluation and metric."""
    rows = [
        '| group | seeds | evaluation | ' + ' | '.join(METRICS) + ' |',
        '| --- | --- | --- |' + ' --- |' * len(METRICS),
    ]
    for group, runs in groups.items():
        for evaluation in runs[0]:
            cells = []
            for metric in METRICS:
                values = [run[evaluation]['scores'][metric] for run in runs]
                spread = statistics.stdev(values) if len(values) > 1 else float('nan')
                cells.append(f'{statistics.mean(values):.4f} ± {spread:.4f}')
            rows.append(f'| {group} | {len(runs)} | {evaluation} | ' + ' | '.join(cells) + ' |')
    return rows


def seed_spread_rows(records):
    groups = seed_groups(records)
    if not groups:
        return []
    return [
        '## The spread between seeds',
        '',
        'Runs of one recipe with different seeds (`bench/accuracy.py --seeds=N`, or one seed a '
        'file): mean ± standard deviation between them. A difference smaller than the spread '
        'is a tie.',
        '',
        *spread_rows(groups),
        '',
    ]


def throughput_rows(name):
    record = read_record(name)
    if not record:
        return []
    device = record['gpu'] or f"{record['cpus']} CPU cores ({record['machine']})"
    rows = [
        f"Training on {device}, TensorFlow {record['tensorflow']}, steps/s (megapixels/s):",
        '',
        '| setting | train script | pure compute | model.fit | model.fit, XLA '
        '| pipeline alone | script / pure |',
        '| --- | --- | --- | --- | --- | --- | --- |',
    ]
    for name, entry in record['training'].items():
        steps, pixels = entry['steps_per_sec'], entry['megapixels_per_sec']
        cells = [
            f"{steps[k]:.3f} ({pixels[k]:.3f})"
            for k in ('train_script', 'pure_compute', 'model_fit', 'model_fit_xla')
        ]
        ratio = entry['train_script_over_pure_compute']
        rows.append(
            f"| {name} | " + ' | '.join(cells) + f" | {steps['pipeline_only']:.0f} | {ratio:.3f} |"
        )
    if 'pipeline_per_core' in record:
        rows += [
            '',
            'Input pipeline alone, one CPU core, with augmentation (samples/s): '
            + ', '.join(
                f'{name} {rate:,.0f}' for name, rate in record['pipeline_per_core'].items()
            ),
        ]
    rows += [
        '',
        '| inference | 20 DRIVE test images (s) | per image (s) '
        '| peak RSS, one 1024x1024 image (MiB) |',
        '| --- | --- | --- | --- |',
    ]
    for net, entry in record['inference'].items():
        seconds = entry['drive_test_20_images_seconds']
        rows.append(
            f"| {net} | {seconds:.1f} | {seconds / 20:.2f} | {entry['rss_mib_1024x1024']['peak']} |"
        )
    return rows + [''] + loop_rows(record.get('steps_per_call')) + photo_rows(record.get('photos'))


def loop_rows(loops):
    """bench/throughput.py --loop_only: train.py's steps per tf.function call against one."""
    if not loops:
        return []
    rows = [
        'Training steps per second on one batch in memory, by steps per tf.function call, and '
        "train.py's per-step loop before 6529b99 (float(loss) and the schedule evaluated "
        'eagerly after each one-step call). Compare within a row: each row is one run, and the '
        'host may differ from the other tables\'.',
        '',
        '| setting | per-step loop before | one step per call | 20 steps per call | speed-up '
        'over one step per call | over the loop before |',
        '| --- | --- | --- | --- | --- | --- |',
    ]
    rows += [
        f"| {name} | {entry['per_step_loop_before']} | {entry['one_step_per_call']} | "
        f"{entry['20_steps_per_call']} | {entry['speed-up']:.2f}x | "
        f"{entry['speed-up_over_before']:.2f}x |"
        for name, entry in loops.items()
    ]
    return rows + ['']


def photo_rows(photos):
    """bench/photo_cost.py's figures: what one photo costs, by size."""
    if not photos:
        return []
    rows = [
        f"One photo with `{photos['model']}` (seconds after start-up; peak RSS in MiB):",
        '',
        '| photo | model input | model alone | --predict | peak | --predict --nofeatures | peak '
        '| --predict --scale_by=vessels | peak | evaluation per image | peak |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ]
    for size, entry in photos['sizes'].items():
        alone, full, bare = entry['model_alone'], entry['predict'], entry['predict_nofeatures']
        vessels = entry.get('predict_scale_by_vessels')
        evaluation = entry.get('evaluation')
        peak = evaluation and max(
            run['peak_mib'] for k, run in evaluation.items() if k != 'seconds_per_image'
        )
        rows.append(
            f"| {size} | {'x'.join(map(str, alone['input']))} | {alone['seconds']:.2f} "
            f"| {full['seconds_per_photo']:.2f} | {full['peak_mib']} "
            f"| {bare['seconds_per_photo']:.2f} | {bare['peak_mib']} "
            + (
                f"| {vessels['seconds_per_photo']:.2f} | {vessels['peak_mib']} "
                if vessels
                else '| | '
            )
            + (f"| {evaluation['seconds_per_image']:.2f} | {peak} |" if evaluation else '| | |')
        )
    evaluation = photos['evaluation_HRF']
    runs = '; '.join(
        f"{name.replace('_', ' ')}: {run['seconds']:.0f} s, {run['peak_mib']} MiB"
        for name, run in evaluation.items()
        if name.endswith('_images')
    )
    return rows + [
        '',
        f"Evaluation of HRF-sized images (features on, no overlays): {runs}; "
        f"{evaluation['seconds_per_image']:.2f} s per image. Start-up to the first "
        f"photo: about {photos['sizes']['HRF_3504x2336']['predict']['start_up_seconds']}"
        f" s, of which importing TensorFlow {photos['tensorflow_import_seconds']} s.",
        '',
    ]


def cross_dataset_table(record):
    """The Markdown table the README and bench/results/summary.md show."""
    rows = [
        '| trained on | test set | images | rescaled F1 | AUC-ROC | IoU | native F1 | AUC-ROC '
        '| IoU |',
        '| --- | --- | --- |' + ' --- |' * 6,
    ]
    for test in ('DRIVE test', 'CHASE_DB1'):
        for model_name, entry in record[test].items():
            images = entry.get('images') if test == 'CHASE_DB1' else entry['rescaled']['images']
            cells = [
                f"{entry[how][key]:.4f}"
                for how in ('rescaled', 'native')
                for key in record['metrics']
            ]
            rows.append(f'| {model_name} | {test} | {images} | ' + ' | '.join(cells) + ' |')
    return rows


def combined_folds_table(record):
    """F1 of the combined recipe on each CHASE fold's held-out images, beside the CHASE-only
    model of the same fold."""
    rows = [
        '| CHASE_DB1 fold | held-out images | DRIVE + CHASE_DB1 (rescaled) | CHASE_DB1 only '
        '| difference |',
        '| --- | --- | --- | --- | --- |',
    ]
    folds = record['combined_folds']
    for fold in folds:
        both, alone = fold['rescaled']['F1'], fold['chase_only']['F1']
        rows.append(
            f"| {fold['fold']} | {', '.join(fold['test_images'])} | {both:.4f} "
            f"| {alone:.4f} | {both - alone:+.4f} |"
        )
    both = statistics.mean(fold['rescaled']['F1'] for fold in folds)
    alone = statistics.mean(fold['chase_only']['F1'] for fold in folds)
    images = sum(len(fold['test_images']) for fold in folds)
    rows.append(f'| mean | {images} | {both:.4f} | {alone:.4f} | {both - alone:+.4f} |')
    return rows


def cross_dataset_rows():
    record = read_record('cross_dataset.json')
    if not record:
        return []
    return [
        '## Across datasets: the shipped models, with and without rescaling',
        '',
        *cross_dataset_table(record),
        '',
        'F1 on CHASE_DB1 per fold:',
        '',
        *combined_folds_table(record),
        '',
        'Made by `bench/cross_dataset.py`: inside the FOV, threshold 0.5; "rescaled" '
        "brings each image's FOV to the model's scale (evaluate.py's default), "
        '"native" predicts it as it is (`--norescale`).',
        '',
    ]


def cross_camera_table(record):
    """F1 on each camera's held-out images under each scale rule (FOV disc / vessel calibre):
    the shipped models (* where the model trained on those images, so not a held-out score),
    the recipe trained without the camera, in-domain cross-validation, and bob.ip.binseg's
    leave-one-out U-Net."""
    shipped = record['shipped']

    def f1(scores, mark=''):
        return ' / '.join(f"{scores[rule]['F1']:.4f}" for rule in record['scale_rules']) + mark

    rows = [
        '| test camera | images | '
        + ' | '.join(f'`{name}`' for name in shipped)
        + ' | the other three cameras | in-domain CV | bob, the four others |',
        '| --- | --- |' + ' --- |' * (len(shipped) + 3),
    ]
    for camera, loco in record['leave_one_camera_out'].items():
        cells = [
            f1(scores[camera], '*' * scores[camera]['saw_these_images'])
            for scores in shipped.values()
        ]
        in_domain = record['in_domain'].get(camera)
        cells += [
            f1(loco),
            f1(in_domain) if in_domain else '',
            f"{record['loco_anchors'][camera]:.3f}",
        ]
        rows.append(f"| {camera} | {loco['images']} | " + ' | '.join(cells) + ' |')
    return rows


def trained_with(training):
    """'the recipe `FLAGS` for N steps (DATE)' of one trained section of cross_camera.json (its
    recipe names each setting once: bench.accuracy.with_flags)."""
    recipe = ' '.join(training['recipe'])
    return f"the recipe `{recipe}` for {training['steps']} steps ({training['date']})"


def cross_camera_rows(record):
    if not record:
        return []
    loco, in_domain = (record['trainings'][s] for s in ('leave_one_camera_out', 'in_domain'))
    return [
        '## Across cameras: DRIVE, CHASE_DB1, STARE and HRF',
        '',
        *cross_camera_table(record),
        '',
        'Made by `bench/cross_dataset.py --cameras`: F1 inside the FOV at threshold 0.5, each '
        "image rescaled to the model's scale by the FOV disc's diameter / by the calibre of "
        'its predicted main vessels (`evaluate.py --scale_by=vessels`). Held-out images: '
        "DRIVE's test set; the whole training halves of the others (their test halves are not "
        'here). * the model trained on these images. "The other three cameras": '
        f'{trained_with(loco)} on the other three training sets. "In-domain CV": '
        + ('the same recipe' if in_domain == loco else trained_with(in_domain))
        + f", {len(next(iter(record['in_domain'].values()))['folds'])}-fold subject-wise "
        'cross-validation of CHASE_DB1, STARE and HRF at once, DRIVE\'s training set always in.',
        '',
    ]


def agreement_table(record):
    """Per set and feature: means, mean difference, r and ICC(2,1) of predicted against manual
    maps, and the second observer's r and ICC against the first where the set has one."""
    rows = [
        '| images (model) | feature | predicted mean | manual mean | mean difference | r '
        '| ICC(2,1) | 2nd observer r | ICC(2,1) |',
        '| --- |' + ' --- |' * 8,
    ]
    for name, entry in record['sets'].items():
        observer = entry.get('second_observer', {})
        for key, stats in entry['features'].items():
            other = observer.get(key)
            rows.append(
                f"| {name}, {entry['images']} ({entry['model']}) | {key} | "
                f"{stats['predicted_mean']:.4g} | {stats['manual_mean']:.4g} | "
                f"{stats['mean_difference']:+.3g} | {stats['pearson_r']:.2f} | "
                f"{stats['icc_2_1']:.2f} | "
                + (f"{other['pearson_r']:.2f} | {other['icc_2_1']:.2f} |" if other else ' | |')
            )
    return rows


def agreement_rows():
    record = read_record('agreement.json')
    if not record:
        return []
    timing = record['measure_hrf']
    return [
        '## Features of predicted against manual maps',
        '',
        *agreement_table(record),
        '',
        f"Made by `bench/agreement.py`: threshold {record['threshold']}, features at a FOV "
        f"of {record['reference_fov_px']} px (docs/features.md). features.measure on a "
        f"{timing['shape'][1]}x{timing['shape'][0]} HRF map: {timing['cpu_seconds']:.2f} s "
        'of one core.',
        '',
    ]


def readme_table():
    """The shipped models on DRIVE test at threshold 0.5 and at each card's calibrated one."""
    rows = [
        '| model | trained on | threshold | F1 | AUC-ROC | Se | Sp |',
        '| --- | --- | --- | --- | --- | --- | --- |',
    ]
    for name in ('drive', 'chase', 'drive_chase', 'all'):
        with open(os.path.join(ROOT, 'models', name, 'card.json')) as stream:
            card = json.load(stream)
        trained_on = ', '.join(part.split('/')[0] for part in card['training_data'].split(','))
        for row in card['evaluations']:
            if row['data'] == 'DRIVE/test':
                how = '0.5' if row['threshold'] == 0.5 else f"{row['threshold']:.2f} (calibrated)"
                rows.append(
                    f"| `{name}` | {trained_on} | {how} | "
                    + ' | '.join(
                        f"{row['scores'][key]:.4f}" for key in ('F1', 'AUC_ROC', 'Se', 'Sp')
                    )
                    + ' |'
                )
    return rows


def write_between(relative_path, begin, end, rows):
    """Replaces the lines between `begin` and `end` in the file at `relative_path` by `rows`."""
    path = os.path.join(ROOT, relative_path)
    with open(path) as stream:
        text = stream.read()
    head, rest = text.split(begin + '\n')
    _, tail = rest.split(end)
    with open(path, 'w') as stream:
        stream.write(head + begin + '\n' + '\n'.join(rows) + '\n' + end + tail)


def main():
    cameras, accuracy = read_record('cross_camera.json'), accuracy_records()
    lines = [
        '# Benchmark results',
        '',
        'Made by `bench/report.py` from the JSON files here.',
        '',
        '## Accuracy on real data, inside the FOV',
        '',
        *accuracy_rows(accuracy),
        '',
        *seed_spread_rows(accuracy),
        *cross_dataset_rows(),
        *cross_camera_rows(cameras),
        *agreement_rows(),
        '## Speed and memory',
        '',
        *throughput_rows('throughput.json'),
        *throughput_rows('throughput_gpu.json'),
    ]
    path = os.path.join(RESULTS, 'summary.md')
    with open(path, 'w') as stream:
        stream.write('\n'.join(lines))
    write_between('README.md', README_BEGIN, README_END, readme_table())
    if cameras:
        write_between(
            os.path.join('docs', 'results.md'),
            CAMERAS_BEGIN,
            CAMERAS_END,
            cross_camera_table(cameras),
        )
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
