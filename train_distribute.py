"""Trains with the same loop as train.py on several GPUs, or on several machines.

  python train_distribute.py --logdir=log/retina_distribute \
      --label_file_path=data/CHASEDB/training.txt --batch_size=8 --max_iters=1000 \
      --preprocess=True --transpose_conv=True

MirroredStrategy over every visible GPU (or --cpu_replicas logical CPU devices where there are
none); MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of several tasks.
"""

import cli
import errors

cli.quiet_tensorflow()

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import run_folder  # noqa: E402
import train  # noqa: E402
import train_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer(
    'cpu_replicas',
    0,
    'Without GPUs: split the CPU into this many logical '
    'devices and mirror over them (to test the distributed path).',
    lower_bound=0,
)
flags.DEFINE_float(
    'cluster_timeout',
    600,
    'With TF_CONFIG: seconds to wait for the other tasks of the cluster to start before giving up.',
    lower_bound=0,
)


def split_cpu(replicas):
    """Makes `replicas` logical CPU devices; must run before TensorFlow initialises devices."""
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )
    return [device.name for device in tf.config.list_logical_devices('CPU')]


def read_tf_config():
    """(cluster {type: [address]}, this task's address) from TF_CONFIG, checked; ({}, None)
    without a cluster of several tasks."""
    try:
        config = json.loads(os.environ.get('TF_CONFIG') or '{}')
    except ValueError as error:
        raise errors.UserError(f'TF_CONFIG is not valid JSON ({error})') from None
    cluster = config.get('cluster', {}) if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not all(
        isinstance(tasks, list) and all(isinstance(a, str) and ':' in a for a in tasks)
        for tasks in cluster.values()
    ):
        raise errors.UserError('TF_CONFIG: "cluster" must map task types to lists of "host:port"')
    if sum(len(tasks) for tasks in cluster.values()) <= 1:
        return {}, None
    task = config.get('task')
    if not isinstance(task, dict) or 'type' not in task or 'index' not in task:
        raise errors.UserError(
            'TF_CONFIG names a cluster but no "task" of this process, e.g. '
            '"task": {"type": "worker", "index": 0}'
        )
    tasks = cluster.get(task['type'], [])
    if type(task['index']) is not int or not 0 <= task['index'] < len(tasks):
        raise errors.UserError(
            f'TF_CONFIG: task {task["type"]} {task["index"]} is not in the '
            f'cluster (it has {len(tasks)} {task["type"]} tasks)'
        )
    return cluster, tasks[task['index']]


def wait_for_peers(cluster, own_address, timeout, interval=10):
    """Waits, in Python, until every other task of the cluster accepts connections on its port,
    while listening on this task's own port for them; prints progress, honours SIGINT/SIGTERM
    and gives up after `timeout` seconds. (TensorFlow's own wait cannot be interrupted.)"""
    peers = [address for tasks in cluster.values() for address in tasks if address != own_address]
    port = int(own_address.rsplit(':', 1)[1])
    with cli.SignalHandler(_exit_on_signal), socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(('', port))
        except OSError as error:
            raise errors.UserError(
                f'TF_CONFIG: cannot listen on port {port} of this task ({error.strerror})'
            ) from None
        listener.listen()
        listener.settimeout(0.2)
        started, reported = time.time(), -float(interval)
        while missing := [peer for peer in peers if not _accepts(peer)]:
            waited = time.time() - started
            if waited > timeout:
                raise errors.UserError(
                    f'TF_CONFIG: {", ".join(missing)} did not start within '
                    f'--cluster_timeout={timeout:g} s'
                )
            if waited - reported >= interval:
                logging.info(
                    'waiting %.0f s (of --cluster_timeout=%g) for %s',
                    waited,
                    timeout,
                    ', '.join(missing),
                )
                reported = waited
            _answer(listener)
    logging.info('all %d tasks of the cluster are up', len(peers) + 1)


def _exit_on_signal(number, frame):
    del frame
    raise SystemExit(128 + number)


def _accepts(address):
    host, port = address.rsplit(':', 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _answer(listener):
    try:
        connection, _ = listener.accept()
        connection.close()
    except TimeoutError:
        pass


def choose_strategy():
    """The strategy for this machine; the only thing that differs from train.py."""
    cluster, own_address = read_tf_config()
    if cluster:
        wait_for_peers(cluster, own_address, FLAGS.cluster_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if FLAGS.cpu_replicas and not tf.config.list_physical_devices('GPU'):
        return tf.distribute.MirroredStrategy(split_cpu(FLAGS.cpu_replicas))
    return tf.distribute.MirroredStrategy()


def main(argv):
    del argv
    config = train_config.config_from_flags()
    strategy = choose_strategy()
    try:
        result = train.train(strategy, config)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise errors.UserError(lost_worker(error, config.logdir)) from None
    train.exit_on_signal(result)


def lost_worker(error, logdir):
    """The line that says which worker of the cluster stopped answering, and where the run will
    resume."""
    cluster, _ = read_tf_config()
    task = re.search(r'/job:(\w+)/replica:\d+/task:(\d+)', str(error))
    who = 'a worker'
    if task and task.group(1) in cluster and int(task.group(2)) < len(cluster[task.group(1)]):
        who = f'{task.group(1)} {task.group(2)} ({cluster[task.group(1)][int(task.group(2))]})'
    steps = run_folder.checkpoint_steps(run_folder.checkpoint_dir(logdir))
    last = run_folder.checkpoint_prefix(logdir, steps[0]) if steps else 'none yet'
    return (
        f'{who} of the cluster stopped answering ({errors.first_line(error, 120)}); the last '
        f'checkpoint is {last}: restart every worker to resume from it'
    )


if __name__ == '__main__':
    app.run(cli.run_main(main))
