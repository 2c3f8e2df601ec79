"""Training and inference speed on this machine, written to bench/results/throughput.json.

Training, for (a) whole images, image_size 512, batch 2, base 32 (the original's net) and
(b) 64px patches, batch 32, base 16 (the CPU recipe), in steps/s and megapixels/s:
  train.py          the real script (median of its per-step rate after warm-up),
  pure compute      the same steps on one batch already in memory, 20 per tf.function call
                    (train.make_train_loop) and one per call ("per_step_calls"),
  model.fit         Keras' own loop on that batch, and with XLA (jit_compile=True),
  pipeline          dataset.py's batches alone.
Setting (c) is (b) in bfloat16 (train.py --mixed_precision). Where a GPU is visible, also the
original's settings on it (train_distribute.py: MirroredStrategy, image_size 1024, batch 4,
base 32, transposed convolutions) in float32 and bfloat16; results then go to
throughput_gpu.json, with the card's name.
Inference: evaluate.py on the 20 DRIVE test images (base 16 and base 32), and the peak memory
(RSS) of predicting one 1024x1024 image. Needs DRIVE in ../shared/data and a quiet machine.
The input pipeline per CPU core ("pipeline_per_core": dataset.training_dataset with augmentation
on one thread, DRIVE's preprocessed training images): 64px patches per second at batch 32 and
256, and whole 1024x1024 images per second at batch 4.
Photos ("photos", bench/photo_cost.py): per photo size (DRIVE, CHASE_DB1, HRF, 6000x4000), the
model alone, --predict per photo after start-up and its peak memory, and evaluation of 5 and 40
HRF-sized images (time per image, peak memory).

  python -m bench.throughput                    # everything
  python -m bench.throughput --pipeline_only    # the pipeline per core, merged into the file
  python -m bench.throughput --photos_only      # the photo costs, merged into the file
  python -m bench.throughput --loop_only        # steps per call against one step per call
"""

import functools
import itertools
import json
import os
import platform
import subprocess
import sys
import time

import cli  # noqa: E402

cli.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataset  # noqa: E402
import model  # noqa: E402
import optimization  # noqa: E402
import run_folder  # noqa: E402
import train  # noqa: E402
from bench import photo_cost  # noqa: E402
from bench.common import (  # noqa: E402
    RESULTS,
    ROOT,
    SHARED,
    WORK,
    evaluation_result,
    read_scalars,
    run,
)

SETTINGS = {
    'a_whole_512_batch2_base32': {
        'patch_size': 0,
        'image_size': 512,
        'batch': 2,
        'base': 32,
        'steps': 12,
    },
    'b_patch64_batch32_base16': {
        'patch_size': 64,
        'image_size': 1024,
        'batch': 32,
        'base': 16,
        'steps': 60,
    },
    'c_patch64_batch32_base16_bf16': {
        'patch_size': 64,
        'image_size': 1024,
        'batch': 32,
        'base': 16,
        'steps': 60,
        'mixed_precision': True,
    },
}
GPU_SETTINGS = {
    f'gpu_whole_1024_batch4_base32{suffix}': {
        'patch_size': 0,
        'image_size': 1024,
        'batch': 4,
        'base': 32,
        'transpose_conv': True,
        'steps': 50,
        'script': 'train_distribute.py',
        'mixed_precision': mixed,
    }
    for suffix, mixed in (('', False), ('_bf16', True))
}
WARMUP = 4
LOOP = 20  # steps per call of train.make_train_loop, as train.py's default --log_interval
RATE = 'train/global_steps_per_sec'


def drive_data():
    raw, data = os.path.join(WORK, 'raw'), os.path.join(WORK, 'data')
    os.makedirs(raw, exist_ok=True)
    if not os.path.exists(os.path.join(raw, 'DRIVE')):
        os.symlink(os.path.join(SHARED, 'DRIVE'), os.path.join(raw, 'DRIVE'))
    if not os.path.exists(os.path.join(data, 'DRIVE', 'test.txt')):
        run('preprocess.py', f'--data_dir={raw}', f'--output_dir={data}')
    return os.path.join(data, 'DRIVE')


def timed_steps(step, steps):
    for _ in range(WARMUP):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - started)


def fit_rate(batch, setting, jit_compile):
    """Keras model.fit on one batch in memory, in steps per second."""
    fit_model = model.build_unet(
        base_channels=setting['base'], transpose_conv=setting.get('transpose_conv', False)
    )
    fit_model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    data = tf.data.Dataset.from_tensors(batch[:2]).repeat()
    fit_model.fit(data, steps_per_epoch=WARMUP, epochs=1, verbose=0)
    started = time.perf_counter()
    fit_model.fit(data, steps_per_epoch=setting['steps'], epochs=1, verbose=0)
    return setting['steps'] / (time.perf_counter() - started)


LOOP_SETTINGS = {  # the tests' model (tests/conftest.py TINY) and the CPU recipe
    'tests_tiny_patch32_batch8_base8': {
        'patch_size': 32,
        'image_size': 1024,
        'batch': 8,
        'base': 8,
        'steps': 200,
    },
    'b_patch64_batch32_base16': {**SETTINGS['b_patch64_batch32_base16'], 'steps': 100},
}


def loop_rates(examples):
    """Steps per second of LOOP steps per call, of one step per call, and of the per-step loop
    train.py ran before 6529b99 (one call, float(loss) and the schedule evaluated eagerly per
    step), on one batch in memory (median of 3 rounds)."""
    rates = {}
    for name, setting in LOOP_SETTINGS.items():
        batch = next(
            iter(
                dataset.training_dataset(
                    examples,
                    setting['batch'],
                    setting['patch_size'],
                    setting['image_size'],
                    augmentation=True,
                )
            )
        )
        rounds = call_rates(batch, setting)
        before, per_step, looped = (
            float(np.median(values)) for values in zip(*rounds, strict=True)
        )
        rates[name] = {
            'per_step_loop_before': round(before, 2),
            'one_step_per_call': round(per_step, 2),
            f'{LOOP}_steps_per_call': round(looped, 2),
            'speed-up': round(looped / per_step, 3),
            'speed-up_over_before': round(looped / before, 3),
        }
        print(name, rates[name], flush=True)
    return rates


def call_rates(batch, setting, rounds=3):
    """[(steps/s of the per-step loop before 6529b99, at one step per call, at LOOP per call)]
    for each round, on `batch` held in memory."""
    unet = model.build_unet(
        base_channels=setting['base'], transpose_conv=setting.get('transpose_conv', False)
    )
    schedule = optimization.PiecewiseLinear([[0, 1e-3], [100_000, 0.0]])
    optimizer = optimization.FusedAdam(schedule)
    optimizer.build(unet.trainable_variables)
    steps = train.make_train_loop(
        tf.distribute.get_strategy(),
        unet,
        optimizer,
        setting['batch'],
        functools.partial(train.pixel_loss, fov_loss=True),
    )
    in_memory = iter(tf.data.Dataset.from_tensors(batch).repeat())
    one, loop = tf.constant(1), tf.constant(LOOP)
    calls = max(1, setting['steps'] // LOOP)

    step_numbers = itertools.count()

    def step_as_before():  # train.py's loop body before 6529b99, on the same graph
        float(steps(in_memory, one)[0][0])
        float(schedule(next(step_numbers)))

    return [
        (
            timed_steps(step_as_before, setting['steps']),
            timed_steps(lambda: steps(in_memory, one)[0].numpy(), setting['steps']),
            LOOP * timed_steps(lambda: steps(in_memory, loop)[0].numpy(), calls),
        )
        for _ in range(rounds)
    ]


def in_memory_rates(examples, setting):
    """Pure compute, model.fit (without and with XLA) and the pipeline alone, in steps (batches)
    per second, under the setting's precision policy."""
    keras.mixed_precision.set_global_policy(
        'mixed_bfloat16' if setting.get('mixed_precision') else 'float32'
    )
    stream = dataset.training_dataset(
        examples, setting['batch'], setting['patch_size'], setting['image_size'], augmentation=True
    )
    batch = next(iter(stream))
    [(_, per_step, pure)] = call_rates(batch, setting, rounds=1)
    rates = {
        'pure_compute': pure,
        'pure_compute_per_step_calls': per_step,
        'model_fit': fit_rate(batch, setting, jit_compile=False),
        'model_fit_xla': fit_rate(batch, setting, jit_compile=True),
    }
    keras.mixed_precision.set_global_policy('float32')
    iterator = iter(stream)
    rates['pipeline_only'] = timed_steps(lambda: next(iterator), setting['steps'] * 5)
    return rates


PIPELINE_SETTINGS = {  # name: (patch_size, batch); per second: patches, or whole images
    'patches64_batch32': (64, 32),
    'patches64_batch256': (64, 256),
    'whole1024_batch4': (0, 4),
}


def pipeline_per_core(examples, seconds=10):
    """Samples (patches or whole images) per second that dataset.training_dataset, with
    augmentation, delivers on one thread: its map and its ops limited to one core."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = 1
    rates = {}
    for name, (patch_size, batch) in PIPELINE_SETTINGS.items():
        stream = dataset.training_dataset(
            examples, batch, patch_size, 1024, augmentation=True
        ).with_options(options)
        iterator = iter(stream)
        for _ in range(3):
            next(iterator)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            next(iterator)
            count += batch
        rates[name] = round(count / (time.perf_counter() - started), 1)
        print(f'pipeline, one core, {name}: {rates[name]:.0f} samples/s', flush=True)
    return rates


def train_script_rate(label_file, setting, name):
    """The train script's own median per-step rate after warm-up, from its TensorBoard
    events."""
    logdir = os.path.join(WORK, f'throughput_{name}')
    subprocess.run(['rm', '-rf', logdir], check=True)
    run(
        setting.get('script', 'train.py'),
        f'--logdir={logdir}',
        f'--label_file_path={label_file}',
        '--preprocess=True',
        f'--patch_size={setting["patch_size"]}',
        f'--image_size={setting["image_size"]}',
        f'--batch_size={setting["batch"]}',
        f'--base_channels={setting["base"]}',
        '--augmentation=True',
        f'--max_iters={setting["steps"] + WARMUP}',
        f'--mixed_precision={setting.get("mixed_precision", False)}',
        f'--transpose_conv={setting.get("transpose_conv", False)}',
        f'--save_interval={setting["steps"] + WARMUP}',
    )
    steps, rates = read_scalars(logdir, [RATE])[RATE]
    return float(np.median(rates[steps > WARMUP]))


def evaluation_seconds(drive, base):
    """evaluate.py's own timing of the 20 test images (model loaded, TensorFlow started)."""
    logdir = os.path.join(WORK, f'inference_base{base}')
    os.makedirs(logdir, exist_ok=True)
    architecture = {
        'num_classes': 2,
        'base_channels': base,
        'transpose_conv': False,
        'preprocess': True,
        'depth': model.DEPTH,
    }
    run_folder.save_architecture(logdir, architecture)
    model.build_from_architecture(architecture).save_weights(run_folder.weights_path(logdir))
    return evaluation_result(f'--logdir={logdir}', f'--label_file_path={drive}/test.txt')['seconds']


PEAK_MEMORY_SCRIPT = '''
import os, sys
sys.path.insert(0, sys.argv[1])
import utils
import cli
cli.quiet_tensorflow()
import numpy as np, model, inference

def high_water_mib():  # VmHWM starts afresh at exec, unlike ru_maxrss (inherited from the parent)
    status = open('/proc/self/status').read()
    return int(status.split('VmHWM:')[1].split()[0]) / 1024

unet = model.build_unet(base_channels=int(sys.argv[2]))
predict = inference.make_predictor(unet, 1)
before = high_water_mib()
inference.predict_image(predict, np.random.default_rng(0).random((1024, 1024, 1), np.float32))
print(before, high_water_mib())
'''


def peak_memory_mib(base):
    out = subprocess.run(
        [sys.executable, '-c', PEAK_MEMORY_SCRIPT, ROOT, str(base)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {'before_predict': round(float(out[0])), 'peak': round(float(out[1]))}


def training_rates(drive, examples, name, setting):
    """Steps and megapixels per second of one training setting: train.py, and in memory."""
    side = setting['patch_size'] or setting['image_size']
    megapixels = setting['batch'] * side * side / 1e6
    rates = {
        'train_script': train_script_rate(os.path.join(drive, 'training.txt'), setting, name),
        **in_memory_rates(examples, setting),
    }
    result = {
        'setting': setting,
        'steps_per_sec': {k: round(v, 3) for k, v in rates.items()},
        'megapixels_per_sec': {
            k: round(v * megapixels, 3) for k, v in rates.items() if k != 'pipeline_only'
        },
        'train_script_over_pure_compute': round(rates['train_script'] / rates['pure_compute'], 3),
    }
    print(name, json.dumps(result), flush=True)
    return result


def remeasure_one_part(path, examples):
    """With --pipeline_only, --photos_only or --loop_only: measures that part again into the
    record at `path`; returns whether it did."""
    only = {
        '--pipeline_only': ('pipeline_per_core', lambda: pipeline_per_core(examples)),
        '--photos_only': ('photos', photo_cost.measure),
        '--loop_only': ('steps_per_call', lambda: loop_rates(examples)),
    }
    for flag, (key, measure) in only.items():
        if flag in sys.argv[1:]:
            with open(path) as stream:
                record = json.load(stream)
            record[key] = measure()
            with open(path, 'w') as stream:
                json.dump(record, stream, indent=2)
            print(f'wrote {path}')
            return True
    return False


def main():
    if not os.path.isdir(os.path.join(SHARED, 'DRIVE')):
        sys.exit('DRIVE is not in ../shared/data: nothing to measure')
    drive = drive_data()
    examples = dataset.load_label_files(os.path.join(drive, 'training.txt'), preprocess=True)
    gpus = tf.config.list_physical_devices('GPU')
    path = os.path.join(RESULTS, 'throughput_gpu.json' if gpus else 'throughput.json')
    if remeasure_one_part(path, examples):
        return
    record = {
        'machine': platform.processor() or platform.machine(),
        'cpus': os.cpu_count(),
        'gpu': tf.config.experimental.get_device_details(gpus[0]).get('device_name')
        if gpus
        else None,
        'tensorflow': tf.__version__,
        'date': time.strftime('%Y-%m-%d'),
        'training': {
            name: training_rates(drive, examples, name, setting)
            for name, setting in {**SETTINGS, **(GPU_SETTINGS if gpus else {})}.items()
        },
    }
    record['inference'] = {
        f'base{base}': {
            'drive_test_20_images_seconds': evaluation_seconds(drive, base),
            'rss_mib_1024x1024': peak_memory_mib(base),
        }
        for base in (16, 32)
    }
    record['pipeline_per_core'] = pipeline_per_core(examples)
    record['steps_per_call'] = loop_rates(examples)
    record['photos'] = photo_cost.measure()
    record['reference'] = {'original TF 2.3 eager loop, setting (a), 2-core CPU': 0.224}
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, 'w') as stream:
        json.dump(record, stream, indent=2)
    print(json.dumps(record['inference'], indent=1))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
