"""Writes bench/results/summary.md, the tables the README quotes, from bench/results/*.json.

  python bench/report.py
"""
import glob
import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
METRICS = ('F1', 'AUC_ROC', 'IoU', 'Se', 'Sp', 'Acc')


def accuracy_rows():
    rows = ['| run | recipe | steps | train minutes | ' + ' | '.join(METRICS) + ' |',
            '| --- | --- | --- | --- |' + ' --- |' * len(METRICS)]
    observers = {}
    for path in sorted(glob.glob(os.path.join(RESULTS, 'accuracy_*.json'))):
        with open(path) as stream:
            record = json.load(stream)
        extra = ' '.join(flag for flag in record['recipe'] if 'dice' in flag) or 'CPU recipe'
        name = os.path.basename(path)[len('accuracy_'):-len('.json')]
        if 'folds' in record:
            minutes = sum(f['train_seconds'] for f in record['folds']) / len(record['folds']) / 60
            steps, scores = record['folds'][0]['steps'], record['mean_scores']
            name += f' ({len(record["folds"])}-fold CV, mean)'
        else:
            minutes, steps, scores = record['train_seconds'] / 60, record['steps'], record['scores']
        rows.append(f'| {name} | {extra} | {steps} | {minutes:.1f} | '
                    + ' | '.join(f'{scores[k]:.4f}' for k in METRICS) + ' |')
        if record.get('second_observer'):
            observers[record['dataset']] = record['second_observer']
        elif all(f.get('second_observer') for f in record.get('folds', [{}])):
            observers[f"{record['dataset']} (mean of folds)"] = {
                k: sum(f['second_observer'][k] for f in record['folds']) / len(record['folds'])
                for k in record['folds'][0]['second_observer']}
    for dataset, observer in observers.items():
        rows.append(f'| {dataset}: second observer vs first | | | | '
                    + ' | '.join(f'{observer[k]:.4f}' if k in observer else '' for k in METRICS)
                    + ' |')
    rows += ['', 'Train minutes are wall-clock while other jobs (the test suite) shared the 2 '
             'cores; on idle cores train.py runs the recipe at 3.94 steps/s (see below), 4000 '
             'steps in about 17 minutes.']
    return rows


def throughput_rows():
    path = os.path.join(RESULTS, 'throughput.json')
    if not os.path.exists(path):
        return []
    with open(path) as stream:
        record = json.load(stream)
    rows = [f"Training on {record['cpus']} CPU cores ({record['machine']}, TensorFlow "
            f"{record['tensorflow']}), steps/s (megapixels/s):", '',
            '| setting | train.py | pure compute | model.fit | pipeline alone | train.py / pure |',
            '| --- | --- | --- | --- | --- | --- |']
    for name, entry in record['training'].items():
        steps, pixels = entry['steps_per_sec'], entry['megapixels_per_sec']
        cells = [f"{steps[k]:.3f} ({pixels[k]:.3f})" for k in ('train.py', 'pure_compute',
                                                               'model_fit')]
        ratio = entry['train_py_over_pure_compute']
        rows.append(f"| {name} | " + ' | '.join(cells)
                    + f" | {steps['pipeline_only']:.0f} | {ratio:.3f} |")
    rows += ['', '| inference | 20 DRIVE test images (s) | peak RSS, one 1024x1024 image (MiB) |',
             '| --- | --- | --- |']
    for name, entry in record['inference'].items():
        rows.append(f"| {name} | {entry['drive_test_20_images_seconds']:.1f} | "
                    f"{entry['rss_mib_1024x1024']['peak']} |")
    return rows


def main():
    lines = ['# Benchmark results', '', 'Made by `bench/report.py` from the JSON files here.', '',
             '## Accuracy on real data, inside the FOV', '', *accuracy_rows(), '',
             '## Speed and memory', '', *throughput_rows(), '']
    path = os.path.join(RESULTS, 'summary.md')
    with open(path, 'w') as stream:
        stream.write('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
