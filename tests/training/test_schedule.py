"""The learning-rate schedules of the training step
(tagger/training/step.py: learning_rate, with_horizon): the staircase decay
(none by default) and the rate a training run logs; the warm-up and cosine
decay against their closed form, the horizon they need, and a resumed
cosine decay keeping its recorded horizon."""

import os

import numpy as np
import pytest

from support.training_runs import printed_losses, run_training


# --- learning-rate decay ----------------------------------------------------

@pytest.mark.parametrize('decay_epochs,period', [(2, 6), (2.5, 7)])
def test_lr_decay_staircase(parse_hparams, decay_epochs, period):
  import keras
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams(
      'lr=0.1,lrdecay=0.5,decay_epochs=%s' % decay_epochs), 3)
  optimizer.build([keras.Variable(np.zeros(2, np.float32))])
  for it in range(13):
    optimizer.iterations.assign(it)
    expected = 0.1 * 0.5 ** (it // period)
    assert float(optimizer.learning_rate) == pytest.approx(expected,
                                                           rel=1e-6), it


def test_lr_decay_in_training_summaries(tmp_path, dataset):
  """The training loop logs the decayed rate: at step 10 the optimizer has
  taken 10 steps, so with 3 batches per epoch and decay every epoch the rate
  is lr * 0.5 ** (10 // 3)."""
  import tensorflow as tf
  out = run_training(dataset, 'crnn', 'batch_size=4,lr=0.01,lrdecay=0.5,'
                     'decay_epochs=1', tmp_path, 10, epoch_num_batches=3)
  assert [s for s, _ in printed_losses(out)] == list(range(1, 11))
  scalars, images = _summaries(tmp_path)
  assert sorted(scalars) == [('learning_rate', 10), ('loss', 10)]
  # The run's first examples as images at its start: width, height, then
  # three encoded images (of 100 frames by 96 bands).
  assert sorted(images) == [('log_mel_examples', 0)]
  encoded = images[('log_mel_examples', 0)]
  assert [int(v) for v in encoded[:2]] == [100, 96] and len(encoded) == 5
  decoded = tf.io.decode_png(encoded[2]).numpy()
  assert decoded.shape == (96, 100, 1) and decoded.max() == 255 and (
      decoded.min() == 0)
  assert scalars[('learning_rate', 10)] == pytest.approx(0.01 * 0.5 ** 3,
                                                         rel=1e-6)
  assert scalars[('loss', 10)] == pytest.approx(printed_losses(out)[-1][1],
                                                abs=1e-6)


def _summaries(train_dir):
  """({(tag, step): value} of the scalars, {(tag, step): encoded tensor}
  of the images) in a run's TensorBoard event files."""
  import glob
  import tensorflow as tf
  scalars, images = {}, {}
  for path in glob.glob(os.path.join(str(train_dir),
                                     'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'images':
          images[(value.tag, event.step)] = tf.make_ndarray(value.tensor)
          continue
        scalars[(value.tag, event.step)] = float(
            tf.make_ndarray(value.tensor))
  return scalars, images


def test_no_lr_decay_by_default(parse_hparams):
  import keras
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams('lr=0.1'), 3)
  optimizer.build([keras.Variable(np.zeros(2, np.float32))])
  optimizer.iterations.assign(1000)
  assert float(optimizer.learning_rate) == pytest.approx(0.1)


# --- warm-up and cosine decay -----------------------------------------------

@pytest.mark.parametrize('text,max_steps', [
    ('warmup_steps=200,cosine_decay=1,lr_floor=0.1', 1000),
    ('warmup_steps=200,cosine_decay=1,decay_horizon=600', None),
    ('cosine_decay=1', 1000),
    ('warmup_steps=200', None),
])
def test_schedule_against_the_closed_form(text, max_steps):
  """lr(t) = lr * t / W during the warm-up, then lr * (f + (1 - f) *
  (1 + cos(pi * (t - W) / (H - W))) / 2) up to the horizon H and lr * f
  after it; without cosine_decay the warm-up ends at the constant lr. The
  rate the optimizer of a training run applies at each step."""
  import math
  from tagger.core import params
  import train
  hparams = params.parse_hparams('lr=0.003,' + text)
  state = train.state_lib.TrainingState('crnn', hparams, 80, None, max_steps=max_steps)
  # From the text, with the documented defaults: no warm-up, a floor of 0,
  # the horizon at max_steps.
  given = dict(item.split('=') for item in text.split(','))
  warmup = int(given.get('warmup_steps', 0))
  floor = float(given.get('lr_floor', 0))
  horizon = int(given.get('decay_horizon', 0)) or max_steps
  cosine = given.get('cosine_decay') == '1'

  def closed_form(t):
    if t < warmup:
      return 0.003 * t / warmup
    if not cosine:
      return 0.003
    done = min(t, horizon) - warmup
    return 0.003 * (floor + (1 - floor) * 0.5 * (
        1 + math.cos(math.pi * done / (horizon - warmup))))

  for t in (0, 50, 199, 200, 201, 400, 599, 600, 999, 1000, 1500):
    state.optimizer.iterations.assign(t)
    assert float(state.optimizer.learning_rate) == pytest.approx(
        closed_form(t), rel=1e-5, abs=1e-9), t


def test_cosine_decay_needs_a_horizon():
  from tagger.core import params
  import train
  from tagger.core import files
  with pytest.raises(files.UserError, match='decay_horizon or --max_steps'):
    train.state_lib.TrainingState('crnn', params.parse_hparams(
        'cosine_decay=1,warmup_steps=50'), 80, None, max_steps=40)
  with pytest.raises(ValueError, match='not with lrdecay'):
    params.parse_hparams('cosine_decay=1,lrdecay=0.9')


def test_a_resumed_cosine_decay_keeps_its_horizon(tmp_path, dataset):
  """A cosine run records its horizon (decay_horizon: its --max_steps).
  The same command with a larger --max_steps, as a study that grows its
  runs gives, would re-base the decay on the steps taken (from the floor
  back up): it is refused, one line naming the flag and the recorded
  horizon, nothing written. The same --max_steps resumes; with the
  recorded horizon given, the run trains on at lr x lr_floor, the recorded
  schedule's closed form past its horizon."""
  import json
  from support.cli import check_ok, run_main, train_args
  from support.cli import assert_one_error
  # Moving statistics: no PreciseBN pass at each save, a shorter test.
  hparams = ('batch_size=2,crnn_filters=2,lr=0.01,cosine_decay=1,'
             'lr_floor=0.25,bn_stats=moving')
  train_dir = tmp_path / 'train'

  def command(max_steps, more=''):
    return train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                      str(train_dir), max_steps, hparams=hparams + more)

  check_ok(run_main(command(3)))
  with open(str(train_dir / 'hparams.json')) as f:
    assert json.load(f)['hparams']['decay_horizon'] == 3
  written = {n: os.stat(str(train_dir / n)).st_mtime_ns
             for n in os.listdir(str(train_dir))}
  result = run_main(command(10))
  assert_one_error(result, '--max_steps 10: %s decays the learning rate to '
                   'step 3' % (train_dir / 'model.ckpt-3'),
                   'decay_horizon=3')
  assert {n: os.stat(str(train_dir / n)).st_mtime_ns
          for n in os.listdir(str(train_dir))} == written
  assert 'Already at step 3' in check_ok(run_main(command(3))).stdout
  out = check_ok(run_main(command(10, ',decay_horizon=3'))).stdout
  assert [s for s, _ in printed_losses(out)] == list(range(4, 11))
  scalars, _ = _summaries(train_dir)
  assert scalars[('learning_rate', 10)] == pytest.approx(0.01 * 0.25,
                                                         rel=1e-6)
