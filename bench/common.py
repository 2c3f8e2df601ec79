"""What the benchmarks share: paths, running a project script, and reading event files."""

import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
WORK = os.path.join(ROOT, 'bench', 'work')
RESULTS = os.path.join(ROOT, 'bench', 'results')


def run(script, *args):
    """Runs a project script, failing loudly; returns (stdout, seconds)."""
    started = time.time()
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        sys.exit(f'{script} failed:\n{result.stderr[-3000:]}')
    return result.stdout, time.time() - started


def evaluation_result(*args):
    """evaluate.run in this process, its settings parsed from evaluate.py's flags `args`;
    returns the whole-set result (what metrics.json holds, with 'per_image' and 'out_dir')."""
    from absl import flags

    import evaluate

    try:
        flags.FLAGS(['evaluate.py', *args])
        return evaluate.run(evaluate.EvalConfig.from_flags())
    finally:
        flags.FLAGS.unparse_flags()


def evaluation_metrics(output_dir, *args):
    """evaluation_result into a fresh output_dir, without its 'out_dir'."""
    shutil.rmtree(output_dir, ignore_errors=True)
    result = evaluation_result(f'--output_dir={output_dir}', *args)
    return {key: value for key, value in result.items() if key != 'out_dir'}


def read_scalars(logdir, tags, folder='train_logs'):
    """{tag: (steps, values)} from the event files of {logdir}/{folder}."""
    import numpy as np
    import tensorflow as tf

    values = {tag: {} for tag in tags}
    folder = os.path.join(logdir, folder)
    for name in sorted(os.listdir(folder)):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(record)
            for value in event.summary.value:
                if value.tag in values:
                    values[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    return {
        tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for tag, v in values.items()
    }
