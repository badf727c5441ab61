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

A worker of a cluster holds its own port and waits, in Python, until every
other task answers on its port before TensorFlow's start-up, which holds the
interpreter (deaf to signals) until all have joined; TensorFlow's own wait is
bounded by the same deadline. A process that has started TensorFlow's
multi-worker runtime ends with leave(), never through the runtime's
shutdown.

Plain Python at import (main.py offers the modes before importing
TensorFlow); TensorFlow is imported when a strategy is made.
"""

import contextlib
import os
import re
import socket
import sys
import time

from tagger.core import stopping
from tagger.core.files import UserError
from tagger.training import cluster_config

MODES = ('auto', 'none', 'mirrored', 'multi_worker')
def _cluster_size():
  spec, _ = cluster_config.check_config()
  return sum(len(tasks) for tasks in (spec or {}).values())


def uses_cluster(mode):
  """True if a --distribution mode trains on the TF_CONFIG cluster."""
  return mode == 'multi_worker' or (mode == 'auto' and _cluster_size() > 1)


def make_strategy(mode, start_timeout=600.0):
  """The tf.distribute strategy for a --distribution mode (see above); a
  cluster waits start_timeout seconds at most for all its tasks to start."""
  import tensorflow as tf
  if uses_cluster(mode):
    return _multi_worker(start_timeout)
  if mode == 'auto':
    mode = ('mirrored' if len(tf.config.list_logical_devices('GPU')) > 1 else
            'none')
  if mode == 'none':
    return tf.distribute.get_strategy()
  return tf.distribute.MirroredStrategy()


# --- a cluster's start ------------------------------------------------------

_PROBE_SECONDS = 1.0  # for a peer's port to answer
_POLL_SECONDS = 0.25  # between rounds of probes
_STOPPED_WAITING = ('nothing was trained: the other tasks of the cluster '
                    'had not all started')
_TASK_NAME = re.compile(r'/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)')
_runtime = {}  # 'started' once TensorFlow's multi-worker runtime starts


def _tasks():
  """[(name, address)] of the cluster's tasks ('worker 1', 'host:port'),
  this one first."""
  spec, task = cluster_config.check_config()
  own = (task['type'], task['index'])
  others = [('%s %d' % (kind, index), address) for kind in cluster_config.TASK_TYPES
            for index, address in enumerate(spec.get(kind, ()))
            if (kind, index) != own]
  return [('%s %d' % own, spec[own[0]][own[1]])] + others


def _port(address):
  return int(address.rpartition(':')[2])


def _listen(name, address):
  """A socket holding this task's port (all interfaces, as TensorFlow's
  server takes it); UserError if the port cannot be had."""
  try:
    return socket.create_server(('', _port(address)))
  except OSError as e:
    # (create_server's own message repeats the address.)
    reason = os.strerror(e.errno) if e.errno else str(e)
    raise UserError('TF_CONFIG: %s\'s address %s: cannot listen on port %d '
                    '(%s)' % (name, address, _port(address), reason)) from None


def check_port():
  """Raises UserError if this task's port is taken (see _listen)."""
  _listen(*_tasks()[0]).close()


def _answers(address):
  host = address.rpartition(':')[0].strip('[]')
  try:
    socket.create_connection((host, _port(address)),
                             timeout=_PROBE_SECONDS).close()
  except OSError:
    return False
  return True


def _no_answer(missing, timeout):
  return ('the cluster did not form within --cluster_start_timeout_seconds='
          '%g: no answer from %s; start every task of TF_CONFIG\'s cluster' %
          (timeout, ', '.join('%s (%s)' % task for task in missing)))


def wait_for_peers(timeout):
  """Holds this task's port (so that the others see it is up) until every
  other task of the cluster answers on its own; returns the deadline
  (time.monotonic() + timeout). Raises UserError if some task has not
  answered by then, stopping.Stopped on SIGINT or SIGTERM."""
  own, missing = _tasks()[0], _tasks()[1:]
  print('Joining the cluster as %s (%s) of %d tasks; waiting up to %g s for '
        'the others' % (own + (len(missing) + 1, timeout)), flush=True)
  deadline = time.monotonic() + timeout
  with contextlib.closing(_listen(*own)):
    while True:
      missing = [task for task in missing if not _answers(task[1])]
      if not missing:
        return deadline
      if time.monotonic() >= deadline:
        raise UserError(_no_answer(missing, timeout))
      stopping.sleep(_POLL_SECONDS, _STOPPED_WAITING)


def _limit_registration(seconds):
  """Bounds TensorFlow's own wait for the other tasks to join (an hour or
  more by default): the coordination service MultiWorkerMirroredStrategy
  would configure, plus a registration barrier with that timeout."""
  from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
  from tensorflow.python.eager import context
  spec, _ = cluster_config.check_config()
  jobs = [coordination_config_pb2.CoordinatedJob(name=kind,
                                                 num_tasks=len(spec[kind]))
          for kind in cluster_config.TASK_TYPES if kind in spec]
  leader = '/job:%s/replica:0/task:0' % ('chief' if 'chief' in spec else
                                          'worker')
  context.context().configure_coordination_service(
      service_type='standalone', service_leader=leader,
      cluster_register_timeout_in_ms=int(seconds * 1000),
      coordinated_jobs=jobs)
  context.context().coordination_service.cluster_register_with_barrier = True


def _multi_worker(timeout):
  import tensorflow as tf
  deadline = wait_for_peers(timeout)
  # All have answered: what is left is TensorFlow's own start-up (seconds),
  # given at least 10 s however late the last task answered.
  _limit_registration(max(deadline - time.monotonic(), min(timeout, 10.0)))
  _runtime['started'] = True
  # A failed start-up is logged at length, and again in the background; its
  # one line says it all.
  silence_native_stderr()
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  except tf.errors.OpError as e:
    raise UserError(_start_failure(e, timeout)) from None
  restore_native_stderr()
  stopping.reinstall()  # the runtime took SIGTERM
  return strategy


def _named_tasks(message):
  """[(name, address)] of the other tasks of the cluster a TensorFlow error
  message names, each once."""
  spec, task = cluster_config.check_config()
  found = []
  for kind, index in _TASK_NAME.findall(message):
    if (kind, int(index)) != (task['type'], task['index']) and int(
        index) < len(spec.get(kind, ())):
      name = ('%s %s' % (kind, index), spec[kind][int(index)])
      if name not in found:
        found.append(name)
  return found


# What TensorFlow's errors say when a collective operation or the
# coordination service has lost another task.
_PEER_FAILURES = ('Collective ops is aborted', 'WorkerService/',
                  'CoordinationService/', 'coordination service',
                  'stopped sending heartbeats')


def lost_tasks(error):
  """[(name, address)] of the tasks a TensorFlow error says this one lost
  (empty if it names none), or None if the error is no such loss (or no
  cluster runs)."""
  if not started() or not any(p in error.message for p in _PEER_FAILURES):
    return None
  return _named_tasks(error.message)


def _start_failure(error, timeout):
  """The line for an error of TensorFlow's start-up."""
  import tensorflow as tf
  if 'Could not start gRPC server' in error.message:
    return ('TF_CONFIG: %s\'s address %s: cannot listen on port %d (taken '
            'since it was checked)' % (_tasks()[0] + (_port(_tasks()[0][1]),)))
  if isinstance(error, tf.errors.DeadlineExceededError):
    return _no_answer(_named_tasks(error.message) or _tasks()[1:], timeout)
  return 'TensorFlow could not join the cluster of TF_CONFIG: %s' % (
      error.message.strip().splitlines()[0])


# --- a cluster's end --------------------------------------------------------

def silence_native_stderr():
  """Sends what TensorFlow's runtime writes to stderr (fd 2) nowhere until
  restore_native_stderr(); Python's sys.stderr keeps the real one."""
  if 'stderr' in _runtime:
    return
  sys.stderr.flush()
  real = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os.close(devnull)
  _runtime['stderr'] = sys.stderr
  sys.stderr = os.fdopen(real, 'w', buffering=1)


def restore_native_stderr():
  if 'stderr' not in _runtime:
    return
  sys.stderr.flush()
  os.dup2(sys.stderr.fileno(), 2)
  sys.stderr.close()
  sys.stderr = _runtime.pop('stderr')


def started():
  """True once this process has started TensorFlow's multi-worker
  runtime."""
  return 'started' in _runtime


def leave(code):
  """Ends a process that has started TensorFlow's multi-worker runtime, with
  the run's output flushed. Not through the runtime's shutdown: it waits for
  the other tasks, and its coordination service reports those that leave
  first as crashed (`The tasks have crashed`)."""
  sys.stdout.flush()
  silence_native_stderr()
  sys.stderr.flush()
  os._exit(code)


def is_chief(strategy):
  """True for the worker that writes checkpoints, summaries and the run's
  files: the only one, the `chief` task, or worker 0 of a cluster without a
  chief."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == 'chief':
    return True
  spec, _ = cluster_config.check_config()
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
