"""How TensorFlow runs in this process: a quiet import and one op at a time."""

import contextlib
import os
import sys
import warnings


@contextlib.contextmanager
def quiet_stderr():
  """Keeps what native code prints to stderr (CUDA probing, oneDNN and
  TFLite notices) and Python warnings out of the run's own output."""
  with _silenced(2):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      yield


@contextlib.contextmanager
def quiet_stdout():
  """Keeps what native code prints to stdout (TFLite's calibrator prints
  its settings) out of the run's own output."""
  sys.stdout.flush()
  with _silenced(1):
    yield


@contextlib.contextmanager
def _silenced(fd):
  saved = os.dup(fd)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, fd)
    yield
  finally:
    os.dup2(saved, fd)
    os.close(saved)
    os.close(devnull)


def available_memory():
  """Bytes of memory this process can still take: the kernel's
  MemAvailable, or less if a cgroup (v2) limit leaves less; None where
  neither can be read."""
  found = []
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          found.append(int(line.split()[1]) * 1024)
  except (OSError, ValueError, IndexError):
    pass
  try:
    with open('/sys/fs/cgroup/memory.max') as f:
      limit = f.read().strip()
    with open('/sys/fs/cgroup/memory.current') as f:
      used = int(f.read())
    if limit != 'max':
      found.append(int(limit) - used)
  except (OSError, ValueError):
    pass
  return min(found) if found else None


def import_tensorflow():
  """Imports TensorFlow with its start-up chatter kept off stderr, so that
  the run's own output stays readable, and runs one op at a time (see
  use_one_inter_op_thread)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with quiet_stderr():
    import tensorflow as tf
    use_one_inter_op_thread()
    tf.config.list_physical_devices()
  tf.get_logger().setLevel('ERROR')
  return tf


def use_one_inter_op_thread():
  """Runs one TensorFlow op at a time (each op still uses every core).

  The tf.data pipeline computes features on its own threads while the model
  runs; with the default inter-op pool as well, a small machine is
  oversubscribed and both slow down (on 2 cores scoring ran ~10% slower than
  with this setting). Must be called before TensorFlow runs its first op.
  """
  import tensorflow as tf
  tf.config.threading.set_inter_op_parallelism_threads(1)
