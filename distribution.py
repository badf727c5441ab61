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

from files import UserError

MODES = ('auto', 'none', 'mirrored', 'multi_worker')
# The task types a cluster of this program has: TensorFlow's parameter
# servers and evaluators have no part in MultiWorkerMirroredStrategy.
TASK_TYPES = ('chief', 'worker')
EXAMPLE = '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'


def check_config():
  """(cluster dict, task dict) of the TF_CONFIG environment variable, or
  (None, None) if it is not set. Raises UserError (`TF_CONFIG: what is
  wrong`) unless it is a JSON object whose "cluster" maps "chief" (one at
  most) and "worker" to lists of distinct "host:port" addresses and whose
  "task" names one of them by "type" and "index"."""
  text = os.environ.get('TF_CONFIG')
  if not text:
    return None, None
  try:
    config = json.loads(text)
  except ValueError:
    raise UserError('TF_CONFIG: not valid JSON') from None
  problem = _config_problem(config)
  if problem:
    raise UserError('TF_CONFIG: ' + problem)
  return config['cluster'], config['task']


def cluster():
  """(cluster dict, task dict) of TF_CONFIG, or (None, None); see
  check_config."""
  return check_config()


def _json_type(value):
  if isinstance(value, bool):
    return 'true/false'
  for kind, name in ((dict, 'an object'), (list, 'a list'), (str, 'a string'),
                     ((int, float), 'a number')):
    if isinstance(value, kind):
      return name
  return 'null'


def _config_problem(config):
  if not isinstance(config, dict):
    return 'must be a JSON object like %s, not %s' % (EXAMPLE,
                                                      _json_type(config))
  for key in ('cluster', 'task'):
    if key not in config:
      return 'no "%s" (it must be like %s)' % (key, EXAMPLE)
  return (_cluster_problem(config['cluster']) or
          _task_problem(config['task'], config['cluster']))


def _cluster_problem(spec):
  if not isinstance(spec, dict) or not spec:
    return ('"cluster" must be an object of lists of "host:port" addresses, '
            'e.g. {"worker": ["host1:2222", "host2:2222"]}, not %s' % (
                'an empty one' if spec == {} else _json_type(spec)))
  owners = {}
  for kind, addresses in spec.items():
    if kind not in TASK_TYPES:
      return ('"cluster" lists "%s" tasks; this program runs only "chief" '
              'and "worker" tasks' % kind)
    if not isinstance(addresses, list) or not addresses:
      return ('"cluster" "%s" must be a list of "host:port" addresses, not '
              '%s' % (kind, 'an empty one' if addresses == [] else
                      _json_type(addresses)))
    if kind == 'chief' and len(addresses) > 1:
      return '"cluster" lists %d "chief" tasks; a cluster has one at most' % (
          len(addresses))
    for index, address in enumerate(addresses):
      owner = '%s %d' % (kind, index)
      if not _is_address(address):
        return '"cluster" %s: %s is not a "host:port" address' % (
            owner, json.dumps(address))
      if address in owners:
        return '"cluster": %s is the address of both %s and %s' % (
            address, owners[address], owner)
      owners[address] = owner
  return None


def _is_address(address):
  if not isinstance(address, str):
    return False
  host, _, port = address.rpartition(':')
  return bool(host.strip('[]')) and port.isdigit() and 0 < int(port) < 65536


def _task_problem(task, spec):
  if not isinstance(task, dict):
    return ('"task" must be an object like {"type": "worker", "index": 0}, '
            'not %s' % _json_type(task))
  for key in ('type', 'index'):
    if key not in task:
      return ('"task" has no "%s" (it must be like {"type": "worker", '
              '"index": 0})' % key)
  kind, index = task['type'], task['index']
  if kind not in TASK_TYPES:
    return ('"task" type %s: this program runs only "chief" and "worker" '
            'tasks' % json.dumps(kind))
  if kind not in spec:
    return '"task" type "%s" has no list in "cluster"' % kind
  if not isinstance(index, int) or isinstance(index, bool):
    return '"task" index must be a whole number, not %s' % json.dumps(index)
  count = len(spec[kind])
  if not 0 <= index < count:
    return '"task" index %d is out of range: "cluster" lists %s' % (
        index, '1 "%s" task (index 0)' % kind if count == 1 else
        '%d "%s" tasks (0 to %d)' % (count, kind, count - 1))
  return None


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


def describe(strategy):
  """One line on the devices a run trains on."""
  workers = strategy.extended._num_workers if hasattr(
      strategy.extended, '_num_workers') else 1
  return '%s: %d replica(s) on %d worker(s)' % (
      type(strategy).__name__, strategy.num_replicas_in_sync, workers)
