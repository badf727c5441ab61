"""Runs training steps in a process whose CPU is split into two logical
devices, for tests/training/test_mirrored.py (the split must happen before
TensorFlow starts, hence a process of its own).

  python two_devices.py steps MODEL HPARAMS none,mirrored [weights|losses]
      (a JSON line each; with `losses`, no weights)
  python two_devices.py train TRAIN_CSV CLIP_DIR TRAIN_DIR HPARAMS MAX_STEPS
"""

import json
import os
import sys

# The project is two folders up.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tagger.core import params  # noqa: E402
import train  # noqa: E402

NUM_CLASSES = 5


def mirrored():
  return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


def steps(model_name, text, modes, weights='weights'):
  """steps_in for each of the comma-separated modes, in one process (a
  second process would pay TensorFlow's start-up again)."""
  for mode in modes.split(','):
    steps_in(model_name, text, mode, weights == 'weights')


def steps_in(model_name, text, mode, weights=True):
  """Three training steps on fixed batches from fixed weights; the losses,
  the step and (unless weights is False) every weight afterwards."""
  hparams = params.parse_hparams(text)
  strategy = mirrored() if mode == 'mirrored' else tf.distribute.get_strategy()
  state = train.state_lib.TrainingState(model_name, hparams, NUM_CLASSES, 0, strategy)
  rng = np.random.default_rng(0)
  start = rng.normal(0, 0.1, sum(int(np.prod(v.shape))
                                 for v in state.model.weights))
  offset = 0
  for v in state.model.weights:
    size = int(np.prod(v.shape))
    if v.path.endswith(('gamma', 'moving_variance')):
      v.assign(np.ones(v.shape, np.float32))
    else:
      v.assign(start[offset:offset + size].reshape(v.shape).astype(
          np.float32))
    offset += size
  size = hparams.batch_size
  batches = [(rng.normal(-2, 1, (size, 100, hparams.mel_bands)).astype(
      np.float32), (rng.random((size, NUM_CLASSES)) < 0.3).astype(np.float32))
             for _ in range(3)]
  step = train.step_lib.make_train_step(state.model, state.loss_fn, state.variables,
                               state.optimizer, state.step, strategy)
  half = size // 2

  def split(array):
    return strategy.experimental_distribute_values_from_function(
        lambda context: array[context.replica_id_in_sync_group * half:
                              (context.replica_id_in_sync_group + 1) * half])

  losses = []
  for examples, labels in batches:
    if mode == 'mirrored':
      examples, labels = split(examples), split(labels)
    loss, finite = step(examples, labels)
    assert bool(finite)
    losses.append(float(loss))
  print(json.dumps({
      'losses': losses, 'step': int(state.step.numpy()),
      'weights': {v.path: np.asarray(v.numpy()).tolist()
                  for v in state.model.weights} if weights else None}))


def train_run(train_csv, clip_dir, train_dir, text, max_steps, kinds=''):
  """train_csv, clip_dir and kinds as main.py's flags (comma-separated
  sources)."""
  from tagger.core import files
  from tagger.core import sources
  class_names = files.read_class_map(os.path.join(REPO, 'class_map.csv'))
  try:
    train.train('crnn', params.parse_hparams(text), class_names,
                sources.from_flags(train_csv, clip_dir, kinds=kinds),
                train_dir, max_steps=int(max_steps), strategy=mirrored())
  except files.UserError as e:
    print('error: %s' % e)
    sys.exit(1)


if __name__ == '__main__':
  if sys.argv[1] == 'steps':
    steps(*sys.argv[2:])
  else:
    train_run(*sys.argv[2:])
