"""Training on several devices or machines with TensorFlow's tf.distribute:
which strategy a run uses, which worker writes its files, and each worker's
share of the training data.

  none          one device (TensorFlow's default strategy)
  mirrored      every local GPU (tf.distribute.MirroredStrategy)
  multi_worker  the machines of a cluster described by the TF_CONFIG
                environment variable (tf.distribute.MultiWorkerMirroredStrategy),
                each with its local GPUs
  auto          multi_worker if TF_CONFIG names more than one task, else
                mirrored if more than one GPU is visible, else none

`batch_size` stays the number of examples per step in all: each of the N
replicas gets batch_size / N of them, and the gradients of the replicas'
losses, each scaled by 1 / N, are summed, so that a step is the single-device
step on the same examples.

Plain Python at import (main.py offers the modes before importing
TensorFlow); TensorFlow is imported when a strategy is made.
"""

import json
import os

MODES = ('auto', 'none', 'mirrored', 'multi_worker')


def cluster():
  """(cluster spec dict, task dict) of TF_CONFIG, or (None, None)."""
  text = os.environ.get('TF_CONFIG')
  if not text:
    return None, None
  config = json.loads(text)
  return config.get('cluster') or {}, config.get('task') or {}


def _cluster_size():
  spec, _ = cluster()
  return sum(len(tasks) for tasks in (spec or {}).values())


def make_strategy(mode):
  """The tf.distribute strategy for a --distribution mode (see above)."""
  import tensorflow as tf
  if mode == 'auto':
    if _cluster_size() > 1:
      mode = 'multi_worker'
    elif len(tf.config.list_logical_devices('GPU')) > 1:
      mode = 'mirrored'
    else:
      mode = 'none'
  if mode == 'none':
    return tf.distribute.get_strategy()
  if mode == 'mirrored':
    return tf.distribute.MirroredStrategy()
  return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
  """True for the worker that writes checkpoints, summaries and the run's
  files: the only one, the `chief` task, or worker 0 of a cluster without a
  chief."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == 'chief':
    return True
  spec, _ = cluster()
  return (resolver.task_type == 'worker' and resolver.task_id == 0 and
          'chief' not in (spec or {}))


def worker_save_dir(strategy, train_dir):
  """Where this worker saves checkpoints. Saving takes every worker, but only
  the chief's copy is kept: the others write to a folder of their own inside
  train_dir, emptied after each save."""
  if is_chief(strategy):
    return train_dir
  resolver = strategy.cluster_resolver
  return os.path.join(train_dir, '.%s-%d' % (resolver.task_type,
                                             resolver.task_id))


def num_workers(strategy):
  """The number of machines (processes) the strategy trains on."""
  return getattr(strategy.extended, '_num_workers', 1)


def describe(strategy):
  """One line on the devices a run trains on."""
  return '%s: %d replica(s) on %d worker(s)' % (
      type(strategy).__name__, strategy.num_replicas_in_sync,
      num_workers(strategy))
