"""train.py and train_distribute.py as users run them: learning, TensorBoard, resume, signals,
non-finite losses, the logdir lock, bad flags, two CPU replicas and two worker processes."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import dataset
import errors
from conftest import (
    ROOT,
    TINY_TRAINING,
    checkpoint_step,
    free_port,
    interrupt,
    last_line,
    read_events,
    read_weights,
    run_here,
    signal_at,
    start_training,
    steps_of,
    train,
    train_here,
    wait_for,
)

SCALARS = {'train/loss', 'train/learning_rate', 'train/global_steps_per_sec'}
IMAGES = {'train/input', 'train/label', 'train/vessel_probability'}


def test_loss_falls_and_summaries_are_complete(trained):
    events = read_events(trained)
    assert SCALARS | IMAGES <= set(events)
    for tag in SCALARS:
        assert steps_of(events, tag) == list(range(1, 201)), tag
    for tag in IMAGES:
        assert steps_of(events, tag) == [100, 200], tag
    losses = [float(value) for _, value in events['train/loss']]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:10])
    rates = [float(value) for _, value in events['train/learning_rate']]
    assert rates[0] == pytest.approx(3e-3) and rates[100] == pytest.approx(3e-3 * 100 / 200)
    assert {'architecture.json', 'checkpoints', 'model.weights.h5', 'train_logs'} <= set(
        os.listdir(trained)
    )
    assert json.load(open(os.path.join(trained, 'architecture.json'))) == {
        'base_channels': 8,
        'depth': 4,
        'num_classes': 2,
        'preprocess': True,
        'transpose_conv': False,
    }


def test_tensorboard_serves_the_scalars(trained):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'tensorboard.main',
            '--logdir',
            os.path.join(trained, 'train_logs'),
            '--host',
            '127.0.0.1',
            '--port',
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import urllib.request

        for _ in range(120):
            try:
                with urllib.request.urlopen(
                    f'http://127.0.0.1:{port}/data/plugin/scalars/tags'
                ) as response:
                    tags = json.load(response)
                if tags:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert SCALARS <= set(next(iter(tags.values())))
    finally:
        server.terminate()
        server.wait()


def test_resume_continues_the_step_counter(tmp_path, synthetic, logs):
    logdir = tmp_path / 'log'
    train_here(logdir, synthetic['training'], max_iters=10, save_interval=5)
    interrupt(logdir, 20)  # a finished run's learning rate is 0: extend an interrupted one
    # A save killed half-way: its files exist, but the checkpoint state (renamed into place
    # last) still names step 10.
    (logdir / 'checkpoints' / 'ckpt-15.index').write_bytes(b'partial')
    (logdir / 'checkpoints' / 'ckpt-15.data-00000-of-00001').write_bytes(b'')
    train_here(logdir, synthetic['training'], max_iters=16, save_interval=5)
    assert 'resuming at step 10 of 16' in logs()
    assert steps_of(read_events(logdir), 'train/loss') == list(range(1, 17))
    train_here(logdir, synthetic['training'], max_iters=16, save_interval=5)
    assert 'already trained to --max_iters=16' in logs()
    with pytest.raises(
        errors.UserError,
        match='was trained with other settings: '
        r'--transpose_conv=True \(saved: False\)',
    ):
        train_here(logdir, synthetic['training'], max_iters=20, transpose_conv=True)


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, synthetic):
    logdir = str(tmp_path / 'log')
    process = start_training(
        logdir, synthetic['training'], '--max_iters=100000', '--save_interval=100000'
    )
    stderr = tmp_path / 'stderr.txt'
    wait_for(lambda: 'step 10/' in stderr.read_text())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    saved = checkpoint_step(logdir)
    assert saved >= 10
    assert f'signal {signal.SIGTERM}: stopped at step {saved} after saving' in stderr.read_text()
    assert steps_of(read_events(logdir), 'train/loss') == list(range(1, saved + 1))


def test_ctrl_c_saves_the_step_it_arrives_in_and_stops(tmp_path, synthetic, logs):
    logdir = tmp_path / 'log'
    with signal_at('step 10/1000', signal.SIGINT):
        result = train_here(logdir, synthetic['training'], max_iters=1000, save_interval=1000)
    assert (result.signal, result.step, result.steps_run) == (signal.SIGINT, 10, 10)
    assert checkpoint_step(logdir) == 10
    assert f'signal {signal.SIGINT}: stopped at step 10 after saving' in logs()
    assert steps_of(read_events(logdir), 'train/loss') == list(range(1, 11))
    assert signal.getsignal(signal.SIGINT) is not None  # the previous handler is back


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, synthetic):
    logdir = tmp_path / 'log'
    with pytest.raises(errors.UserError) as error:
        train_here(logdir, synthetic['training'], initial_lr=1e30, max_iters=50, save_interval=1)
    message = str(error.value)
    match = re.fullmatch(
        r'the loss became (nan|inf) at step (\d+); stopped without saving '
        r'\(the last good checkpoint is .*ckpt-(\d+)\); try a lower --initial_lr',
        message,
    )
    assert match, message
    assert int(match.group(3)) == int(match.group(2)) - 1 == checkpoint_step(logdir)


@pytest.mark.parametrize(
    'args, message',
    [
        (['--batch_size=0'], 'flag --batch_size=0: 0 is not a positive integer'),
        (['--max_iters=-5'], 'flag --max_iters=-5'),
        (['--image_size=100', '--patch_size=0'], '--image_size must be a positive multiple of 16'),
        (['--patch_size=20'], '--patch_size must be 0 or a multiple of 16'),
        (['--best_metric=IoU'], "flag --best_metric=IoU: value should be one of <F1|AUC_ROC|loss>"),
    ],
)
def test_bad_flags_are_refused_by_the_parser(args, message):
    """In process, on the script's own flag definitions (the parser's one-line message is what
    absl prints); tests/test_reliability.py runs a script with a bad flag end to end."""
    import train_config

    try:
        with pytest.raises(flags.Error) as error:
            train_config.FLAGS(['train.py', *args])
    finally:
        train_config.FLAGS.unparse_flags()
    assert message in str(error.value)


def test_a_patch_larger_than_the_images_is_refused(tmp_path, synthetic):
    result = run_here(
        'train.py',
        f'--logdir={tmp_path / "log"}',
        f'--label_file_path={synthetic["training"]}',
        *TINY_TRAINING,
        '--patch_size=112',
    )
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert last_line(result.stderr) == (
        'error: --patch_size=112 is larger than the smallest '
        f'image side (96) in {synthetic["training"]}'
    )


def test_missing_inputs(tmp_path, synthetic):
    result = run_here('train.py', f'--label_file_path={synthetic["training"]}')
    assert result.returncode == 2 and last_line(result.stderr) == 'error: --logdir is required'
    result = run_here(
        'train.py', f'--logdir={tmp_path / "log"}', f'--label_file_path={tmp_path}/none.txt'
    )
    assert result.returncode == 2
    assert (
        last_line(result.stderr) == f'error: --label_file_path={tmp_path}/none.txt: file not found'
    )


@pytest.fixture(scope='module')
def four_steps(tmp_path_factory, synthetic):
    """The logdir of the tiny model trained 4 steps on one replica (seed 0, a save at step 2)."""
    logdir = tmp_path_factory.mktemp('four') / 'log'
    train_here(logdir, synthetic['training'], max_iters=4, save_interval=2)
    return logdir


def test_two_cpu_replicas_train_with_the_same_loop(tmp_path, synthetic, four_steps):
    logdir = tmp_path / 'log'
    result = train(
        logdir,
        synthetic['training'],
        '--max_iters=4',
        '--save_interval=2',
        '--cpu_replicas=2',
        script='train_distribute.py',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'global batch 8 = 2 replicas x 4' in result.stderr
    events = read_events(logdir)
    assert steps_of(events, 'train/loss') == list(range(1, 5))
    assert len(glob.glob(str(logdir / 'train_logs' / '*'))) == 1
    # One replica sees the same global batches (step 1's loss to float rounding) and, with the
    # gradient and the batch norm synchronised, makes the same updates (to rounding that Adam
    # amplifies a little: 8e-5 relative at step 4).
    one = [float(value) for _, value in read_events(four_steps)['train/loss']]
    two = [float(value) for _, value in events['train/loss']]
    assert two[0] == pytest.approx(one[0], rel=1e-5)
    assert two == pytest.approx(one, rel=2e-3)
    import train as train_module
    import train_config

    examples = dataset.load_label_files(synthetic['training'], preprocess=True)
    odd = train_config.TrainConfig(logdir='x', label_file_path='y', batch_size=3)
    with pytest.raises(
        errors.UserError, match='^--batch_size=3 is not divisible by the 2 replicas$'
    ):
        train_module.check_settings(odd, examples, replicas=2)


def start_workers(logdir, label_file, *args):
    """Two local train_distribute.py workers of one cluster: (their host:port, processes)."""
    workers = [f'127.0.0.1:{free_port()}' for _ in range(2)]
    processes = []
    for index in range(2):
        config = {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}
        command = [
            sys.executable,
            os.path.join(ROOT, 'train_distribute.py'),
            f'--logdir={logdir}',
            f'--label_file_path={label_file}',
            *TINY_TRAINING,
            *args,
        ]
        processes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'TF_CONFIG': json.dumps(config)},
            )
        )
    return workers, processes


def test_two_workers_end_with_identical_weights(tmp_path, synthetic):
    logdir = tmp_path / 'log'
    _, processes = start_workers(
        logdir, synthetic['training'], '--max_iters=8', '--save_interval=4'
    )
    outputs = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[1][-3000:]
    checksums = [re.search(r'checksum (\S+)\)', output).group(1) for output in outputs]
    assert checksums[0] == checksums[1]
    assert 'global batch 8 = 2 replicas x 4' in outputs[0]
    assert sorted(os.listdir(logdir / 'checkpoints')) == [
        'checkpoint',
        'ckpt-4.data-00000-of-00001',
        'ckpt-4.index',
        'ckpt-8.data-00000-of-00001',
        'ckpt-8.index',
    ]
    assert len(os.listdir(logdir / 'train_logs')) == 1
    assert steps_of(read_events(logdir), 'train/loss') == list(range(1, 9))


def test_mixed_precision_trains_with_float32_weights(tmp_path, synthetic):
    logdir = tmp_path / 'log'
    train_here(logdir, synthetic['training'], max_iters=6, save_interval=3, mixed_precision=True)
    losses = [float(value) for _, value in read_events(logdir)['train/loss']]
    assert len(losses) == 6 and all(np.isfinite(losses))
    arrays = read_weights(logdir / 'model.weights.h5').values()
    assert {str(array.dtype) for array in arrays} == {'float32'}


def test_pixel_loss_on_a_hand_worked_example():
    import train as train_module

    labels = tf.constant([[[1, 0], [0, 0]]])
    masks = tf.constant([[[1.0, 1.0], [1.0, 0.0]]])  # the last pixel is outside the FOV
    logits = tf.constant([[[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 9.0]]]])
    cross_entropy = np.log(2)  # p = 0.5 at the three FOV pixels
    # Soft Dice over the FOV: P = 0.5 three times, Y = 1 once: 1 - (2 * 0.5 + 1) / (1.5 + 1 + 1)
    dice = 1 - 2.0 / 3.5
    assert float(train_module.pixel_loss(labels, logits, masks, True)[0]) == pytest.approx(
        cross_entropy, rel=1e-6
    )
    assert float(train_module.pixel_loss(labels, logits, masks, True, 2.0)[0]) == pytest.approx(
        cross_entropy + 2 * dice, rel=1e-6
    )
    everywhere = (3 * np.log(2) + np.log(1 + np.exp(9.0))) / 4  # the fourth pixel is labelled 0
    assert float(train_module.pixel_loss(labels, logits, masks, False)[0]) == pytest.approx(
        everywhere, rel=1e-5
    )
    # vessel_weight 3: the one vessel pixel counts three times, the mean still over 3 FOV pixels
    weighted = train_module.pixel_loss(labels, logits, masks, True, vessel_weight=3.0)
    assert float(weighted[0]) == pytest.approx(5 * np.log(2) / 3, rel=1e-6)


@pytest.mark.parametrize('vessel_weight', [1.0, 1.5, 4.0])
def test_vessel_weight_moves_the_minimising_probability_as_theory_says(vessel_weight):
    """One logit pair fitted to labels with vessel share f: weighted cross-entropy is lowest at
    p = w f / (w f + 1 - f), so the threshold 1 / (1 + w) of the unweighted probability maps
    to 0.5."""
    import train as train_module

    labels = tf.constant(np.eye(4, dtype=np.int32)[None, :, :])  # vessel share f = 1/4
    masks = tf.ones([1, 4, 4])
    vessel_logit = tf.Variable(0.0)
    optimizer = tf.keras.optimizers.SGD(learning_rate=2.0)
    for _ in range(300):
        with tf.GradientTape() as tape:
            logits = tf.stack([tf.zeros([1, 4, 4]), tf.fill([1, 4, 4], vessel_logit)], axis=-1)
            loss = train_module.pixel_loss(labels, logits, masks, True, vessel_weight=vessel_weight)
        optimizer.apply_gradients([(tape.gradient(loss, vessel_logit), vessel_logit)])
    share = 0.25
    expected = vessel_weight * share / (vessel_weight * share + 1 - share)
    assert float(tf.sigmoid(vessel_logit)) == pytest.approx(expected, abs=1e-4)


def test_fused_adam_makes_the_textbook_adam_update_in_graph():
    """Three steps of optimization.FusedAdam on a scheduled rate, in a tf.function as the loop
    runs it, against Adam written out in NumPy (Kingma and Ba, Keras's epsilon outside the root)."""
    import optimization

    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    gradients = [[rng.normal(size=w.shape).astype(np.float32) for w in start] for _ in range(3)]
    schedule = optimization.PiecewiseLinear([[0, 0.1], [4, 0.02]])
    variables = [tf.Variable(w) for w in start]
    optimizer = optimization.FusedAdam(schedule)
    optimizer.build(variables)

    @tf.function
    def apply(step_gradients):
        optimizer.apply(step_gradients, variables)

    for step_gradients in gradients:
        apply([tf.constant(g) for g in step_gradients])
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    for index, expected in enumerate(start):
        expected, m, v = expected.astype(np.float64), 0.0, 0.0
        for t, step_gradients in enumerate(gradients, start=1):
            g = step_gradients[index].astype(np.float64)
            m, v = beta_1 * m + (1 - beta_1) * g, beta_2 * v + (1 - beta_2) * g * g
            rate = 0.1 - 0.02 * (t - 1)  # the schedule at the step before the update
            alpha = rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            expected = expected - alpha * m / (np.sqrt(v) + epsilon)
        np.testing.assert_allclose(variables[index].numpy(), expected, rtol=0, atol=1e-6)
    assert int(optimizer.iterations.numpy()) == 3


def test_fused_adam_applies_the_summed_gradient_of_two_replicas_once():
    """Under two replicas the loop hands FusedAdam the gradient summed once; summing it again
    would double it (epsilon = 1 makes Adam's step depend on the gradient's scale)."""
    script = """
import numpy as np, keras, tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import optimization
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope():
    variable = keras.Variable([1.0, 2.0])
    optimizer = optimization.FusedAdam(learning_rate=0.1, epsilon=1.0)
    optimizer.build([variable])
tf.function(lambda: strategy.run(
    lambda: optimizer.apply([tf.constant([0.5, -1.0])], [variable])))()
print(*variable.numpy())
"""
    result = subprocess.run(
        [sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    gradient = np.array([0.5, -1.0])
    m, v = 0.1 * gradient, 0.001 * gradient**2  # one step, beta_1 0.9, beta_2 0.999
    expected = np.array([1.0, 2.0]) - 0.1 * np.sqrt(0.001) / 0.1 * m / (np.sqrt(v) + 1.0)
    np.testing.assert_allclose(
        [float(x) for x in result.stdout.split()], expected, rtol=0, atol=1e-6
    )


def test_same_seed_same_weights(tmp_path, synthetic, four_steps):
    def weights(logdir):
        return list(read_weights(logdir / 'model.weights.h5').values())

    for name, seed in (('again', 0), ('other', 1)):
        train_here(tmp_path / name, synthetic['training'], max_iters=4, save_interval=2, seed=seed)
    first, again, other = (
        weights(four_steps),
        weights(tmp_path / 'again'),
        weights(tmp_path / 'other'),
    )
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


@pytest.mark.parametrize(
    'config, message',
    [
        ('{"cluster": {"worker": ["a:1", "b:2"]}', 'TF_CONFIG is not valid JSON (Expecting'),
        ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'TF_CONFIG names a cluster but no "task"'),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
            'TF_CONFIG: task worker 2 is not in the cluster (it has 2 worker tasks)',
        ),
        (
            '{"cluster": {"worker": ["a", "b:2"]}, "task": {"type": "worker", "index": 0}}',
            'TF_CONFIG: "cluster" must map task types to lists of "host:port"',
        ),
    ],
)
def test_bad_tf_config_is_one_line(monkeypatch, config, message):
    import train_distribute

    monkeypatch.setenv('TF_CONFIG', config)
    with pytest.raises(errors.UserError) as error:
        train_distribute.read_tf_config()
    assert str(error.value).startswith(message)


def test_a_missing_peer_is_waited_for_with_progress_then_a_timeout(
    tmp_path, synthetic, monkeypatch
):
    workers = [f'127.0.0.1:{free_port()}' for _ in range(2)]
    config = json.dumps({'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': 0}})
    monkeypatch.setenv('TF_CONFIG', config)  # the wait comes before any cluster is made
    handlers = [signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)]
    result = run_here(
        'train_distribute.py',
        f'--logdir={tmp_path / "log"}',
        f'--label_file_path={synthetic["training"]}',
        *TINY_TRAINING,
        '--cluster_timeout=1',
    )
    assert result.returncode == 2
    assert f'waiting 0 s (of --cluster_timeout=1) for {workers[1]}' in result.stderr
    assert last_line(result.stderr) == (
        f'error: TF_CONFIG: {workers[1]} did not start within --cluster_timeout=1 s'
    )
    assert [signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)] == handlers
    # Signals are honoured while waiting (TensorFlow's own wait ignores them).
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, 'train_distribute.py'),
            f'--logdir={tmp_path / "b"}',
            f'--label_file_path={synthetic["training"]}',
            *TINY_TRAINING,
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'TF_CONFIG': config},
    )
    for line in process.stderr:
        if 'waiting' in line:  # the first progress line, at once
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM


def test_a_lost_worker_is_named_in_one_line(tmp_path, synthetic):
    logdir = tmp_path / 'log'
    workers, processes = start_workers(
        logdir, synthetic['training'], '--max_iters=100000', '--save_interval=4'
    )
    try:
        wait_for(lambda: os.path.exists(logdir / 'checkpoints' / 'ckpt-8.index'), timeout=300)
        processes[1].kill()
        output = processes[0].communicate(timeout=120)[1]
    finally:
        for process in processes:
            process.kill()
    assert processes[0].returncode == 2, output[-3000:]
    line = last_line(output)
    assert re.fullmatch(
        rf'error: worker 1 \({workers[1]}\) of the cluster stopped answering '
        rf'\(.*\); the last checkpoint is {logdir}/checkpoints/ckpt-\d+: restart '
        'every worker to resume from it',
        line,
    ), line
    assert 'Traceback' not in output


def test_the_cpu_recipe_flag_file_sets_the_recipe(tmp_path):
    """recipes/cpu.flags, which the Makefile, bench/accuracy.py and the docs use, read by
    train.py's own flags; a flag given after it still wins."""
    import train_config

    try:
        train_config.FLAGS(
            [
                'train.py',
                f'--flagfile={ROOT}/recipes/cpu.flags',
                f'--logdir={tmp_path}',
                '--label_file_path=x',
                '--batch_size=8',
            ]
        )
        config = train_config.config_from_flags()
    finally:
        train_config.FLAGS.unparse_flags()
    recipe = dict(
        preprocess=True, patch_size=64, base_channels=16, initial_lr=1e-3, vessel_weight=1.5
    )
    assert {key: getattr(config, key) for key in recipe} == recipe
    assert (config.augmentation, config.batch_size) == (True, 8)


def test_the_benchmarks_train_at_the_cpu_recipe(tmp_path):
    """bench/accuracy.py's runs (and so bench/cross_dataset.py's) are the recipe's: its
    settings, parsed in process, equal train.py's with recipes/cpu.flags and the same flags."""
    import train_config
    from bench.accuracy import CPU_RECIPE, recipe_config, with_flags

    flags = with_flags(CPU_RECIPE, '--fov_diameter=919', '--vessel_weight=1.9')
    assert flags.count('--vessel_weight=1.9') == 1 and '--vessel_weight=1.5' not in flags
    negated = with_flags(flags, '--noaugmentation')  # a boolean's negation replaces it too
    assert '--augmentation=True' not in negated and negated[-1] == '--noaugmentation'
    assert with_flags(negated, '--augmentation=True')[-1] == '--augmentation=True'
    assert '--noaugmentation' not in with_flags(negated, '--augmentation=True')
    assert not recipe_config(str(tmp_path), 'a.txt', 300, negated).augmentation
    config = recipe_config(str(tmp_path), 'a.txt,b.txt', 300, flags)
    assert config.label_file_path == 'a.txt,b.txt' and config.max_iters == 300
    assert (config.patch_size, config.base_channels, config.fov_diameter) == (64, 16, 919)
    try:
        train_config.FLAGS(
            [
                'train.py',
                f'--flagfile={ROOT}/recipes/cpu.flags',
                f'--logdir={tmp_path}',
                '--label_file_path=a.txt,b.txt',
                '--max_iters=300',
                '--save_interval=500',
                '--fov_diameter=919',
                '--vessel_weight=1.9',
            ]
        )
        assert config == train_config.config_from_flags()
        assert config.vessel_weight == 1.9
    finally:
        train_config.FLAGS.unparse_flags()
