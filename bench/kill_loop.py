"""train.py killed with SIGKILL again and again: does a run still end with every step once?

  python -m bench.kill_loop                 # 30 starts, each killed after 5-15 s (~8 minutes)
  python -m bench.kill_loop --kills=5

The issue's repro at full length (tests/test_run_folder.py runs it with 3 kills): the synthetic
set at 128 px, `--patch_size=48 --batch_size=8 --save_interval=10 --max_iters=500`, each start
killed after a random 5-15 s, then one run to the end. Checks that TensorBoard holds every step
1..max_iters exactly once and that no temporary file or half-saved checkpoint is left; writes
bench/results/kill_loop.json.
"""

import argparse
import glob
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time

import cli  # noqa: E402
import fileio  # noqa: E402

cli.quiet_tensorflow()

import preprocess  # noqa: E402
from bench.common import RESULTS, ROOT  # noqa: E402

TRAINING = [
    '--preprocess=True',
    '--patch_size=48',
    '--batch_size=8',
    '--base_channels=8',
    '--save_interval=10',
]


def loss_steps(logdir):
    """Every step of train/loss in the event files, repeats included."""
    import tensorflow as tf

    steps = []
    for path in sorted(glob.glob(os.path.join(logdir, 'train_logs', 'events.out.tfevents.*'))):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(record)
            steps += [event.step for value in event.summary.value if value.tag == 'train/loss']
    return steps


def leftovers(logdir):
    return sorted(
        os.path.relpath(os.path.join(folder, name), logdir)
        for folder, folders, files in os.walk(logdir)
        for name in folders + files
        if name.startswith(fileio.TEMPORARY_PREFIX) or name.endswith('_temp')
    )


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kills', type=int, default=30)
    parser.add_argument('--max_iters', type=int, default=500)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def kill_repeatedly(command, kills, rng, logdir):
    """Starts `command` up to `kills` times, each killed with SIGKILL after 5-15 s unless it
    finished first; returns how many were killed."""
    killed = 0
    for start in range(kills):
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            if process.wait(timeout=rng.uniform(5, 15)):
                sys.exit(
                    f'start {start + 1} failed (exit code {process.returncode}): '
                    f'{" ".join(command)}'
                )
            break  # finished before its kill
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed += 1
        print(f'start {start + 1}: killed; steps in TensorBoard so far {len(loss_steps(logdir))}')
    return killed


def main():
    args = parse_arguments()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix='kill_loop_')
    preprocess.generate_synthetic(os.path.join(work, 'raw', 'SYNTH'), 8, 2, 128, seed=0)
    preprocess.process(os.path.join(work, 'raw'), os.path.join(work, 'data'))
    logdir = os.path.join(work, 'log')
    command = [
        sys.executable,
        os.path.join(ROOT, 'train.py'),
        f'--logdir={logdir}',
        f'--label_file_path={os.path.join(work, "data", "SYNTH", "training.txt")}',
        f'--max_iters={args.max_iters}',
        *TRAINING,
    ]
    started = time.time()
    killed = kill_repeatedly(command, args.kills, rng, logdir)
    final = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    steps = loss_steps(logdir)
    result = {
        'kills': killed,
        'max_iters': args.max_iters,
        'final_exit_code': final.returncode,
        'every_step_once': steps == list(range(1, args.max_iters + 1)),
        'missing_steps': sorted(set(range(1, args.max_iters + 1)) - set(steps)),
        'repeated_steps': sorted({step for step in steps if steps.count(step) > 1}),
        'leftovers': leftovers(logdir),
        'minutes': round((time.time() - started) / 60, 1),
        'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
        'command': ' '.join(['python', 'train.py', *command[3:]]),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'kill_loop.json'), 'w') as stream:
        json.dump(result, stream, indent=2)
        stream.write('\n')
    print(json.dumps(result, indent=2))
    sys.exit(
        0 if result['every_step_once'] and not result['leftovers'] and final.returncode == 0 else 1
    )


if __name__ == '__main__':
    main()
