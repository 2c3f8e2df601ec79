"""Trains with the same loop as train.py on several GPUs, or on several machines.

  python train_distribute.py --logdir=log/retina_distribute \
      --label_file_path=data/CHASEDB/training.txt --batch_size=8 --max_iters=1000 \
      --preprocess=True --transpose_conv=True

MirroredStrategy over every visible GPU (or --cpu_replicas logical CPU devices where there are
none); MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of several tasks.
"""
import json
import os

import tensorflow as tf
from absl import app, flags

import train
import utils

FLAGS = flags.FLAGS
flags.DEFINE_integer('cpu_replicas', 0, 'Without GPUs: split the CPU into this many logical '
                     'devices and mirror over them (to test the distributed path).',
                     lower_bound=0)


def split_cpu(replicas):
    """Makes `replicas` logical CPU devices; must run before TensorFlow initialises devices."""
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    return [device.name for device in tf.config.list_logical_devices('CPU')]


def cluster_size():
    cluster = json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {})
    return sum(len(tasks) for tasks in cluster.values())


def choose_strategy():
    """The strategy for this machine; the only thing that differs from train.py."""
    if cluster_size() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if FLAGS.cpu_replicas and not tf.config.list_physical_devices('GPU'):
        return tf.distribute.MirroredStrategy(split_cpu(FLAGS.cpu_replicas))
    return tf.distribute.MirroredStrategy()


def main(argv):
    del argv
    train.train(choose_strategy())


if __name__ == '__main__':
    app.run(utils.run_main(main))
