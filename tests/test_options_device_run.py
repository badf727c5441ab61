"""A run of two steps on two sources, examples made on the device and kept
in memory, checks the training options it sets: the first step trains each
source with its loss (smoothed BCE for the curated one, lq for the noisy
one) by SGD on NumPy's examples; the seed is recorded and draws the initial
weights; the weight average follows ema_decay; the precise statistics cover
bn_stats_batches of every source; the progress line counts batch_size
examples a step; score_averaged chooses the weights that score."""

import contextlib
import io
import re

import numpy as np
import pytest

from tagger.core import checkpoints
from support.options import (FEATURES, hparams_of, np_bce, np_crop_examples,
                             np_noisy, raw_weight)
from support.scores import read_class_names



# A run of two steps on both sources, examples made on the device and kept
# in memory, with a checkpoint after each step: the noisy source trained
# with lq, the curated one with smoothed BCE, by SGD; seeded; weights
# averaged; PreciseBN over one batch. Large initial weights make the first
# loss depend clearly on the examples.
RUN = (FEATURES + ',batch_size=6,crnn_filters=2,crnn_dropout=0,opt=sgd,lr=2.0,'
       'crnn_bndecay=0.5,weights_init_stddev=0.5,seed=7,ema_decay=0.1,'
       'bn_stats_batches=1,lsmooth=0.2,noisy_loss=lq,lq_q=0.4')


@pytest.fixture(scope='module')
def device_run(tmp_path_factory, two_sources):
  import inputs
  import train
  train_dir = tmp_path_factory.mktemp('device_run') / 'train'
  sources = [inputs.Source(*two_sources[0], weight=1.0),
             inputs.Source(*two_sources[1], weight=1.0, noisy=True)]
  patch = pytest.MonkeyPatch()
  patch.setattr(checkpoints, 'CHECKPOINT_EVERY', 1)
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      train.train('crnn', hparams_of(RUN), read_class_names(), sources,
                  str(train_dir), max_steps=2, cache_examples=True,
                  features_on='device')
  finally:
    patch.undo()
  return {'train_dir': train_dir, 'out': out.getvalue(), 'sources': sources}


def _reader(run, step):
  import tensorflow as tf
  return tf.train.load_checkpoint(str(run['train_dir'] /
                                      ('model.ckpt-%d' % step)))


def test_first_step_trains_each_source_with_its_loss_on_device_examples(
    device_run):
  """The first step's loss (printed) is the NumPy loss of its batch under
  the step-0 weights: the NumPy examples of the batch's crops through a
  plain model of stock layers; smoothed BCE (lsmooth=0.2) for the curated
  examples, lq with q=0.4 for the noisy ones. The step's update is SGD's
  with lr=2 on that loss, and the input batch norm's moving mean moved
  with crnn_bndecay=0.5 toward the batch's. The batch is rebuilt as the run
  built it (the pipeline is deterministic for a seed)."""
  import inputs
  import keras
  import tensorflow as tf
  from support.scores import load_model_from_checkpoint
  hparams = hparams_of(RUN)
  keras.utils.set_random_seed(7)
  (crops, frames), (labels, noisy) = next(iter(inputs.sources_dataset(
      device_run['sources'], read_class_names(), hparams, seed=7,
      cache_examples=True, crops=True)))
  labels, noisy = labels.numpy().astype(np.float64), noisy.numpy()
  assert 0 < noisy.sum() < len(noisy)
  examples = np_crop_examples(crops, frames, hparams).astype(np.float32)
  net = load_model_from_checkpoint('crnn', hparams, str(
      device_run['train_dir'] / 'model.ckpt-0'))
  logits = net(examples, training=True).numpy().astype(np.float64)

  def batch_loss(lsmooth, q):
    curated = np_bce(labels * (1 - lsmooth) + 0.5 * lsmooth, logits)
    return np.where(noisy > 0, np_noisy('lq', labels, logits, q),
                    curated).mean()

  (loss,) = re.findall(r'^step 1 loss (\S+) ', device_run['out'], re.M)
  assert float(loss) == pytest.approx(batch_loss(0.2, 0.4), rel=1e-4)
  for other in (batch_loss(0.0, 0.4), batch_loss(0.2, 0.7)):
    assert abs(other - batch_loss(0.2, 0.4)) > 1e-3
  # The update: w - lr * dloss/dw, the gradient of the same loss (written
  # with TensorFlow ops) through the plain model.
  kernel = net.get_layer('logits').kernel
  with tf.GradientTape() as tape:
    z = tf.cast(net(examples, training=True), tf.float64)
    p = tf.sigmoid(z)
    smooth = labels * 0.8 + 0.1
    curated = -tf.reduce_mean(smooth * tf.math.log(p) + (1 - smooth) *
                              tf.math.log(1 - p), axis=1)
    lq = tf.reduce_mean(labels * (1 - p ** 0.4) / 0.4 + (1 - labels) *
                        (1 - (1 - p) ** 0.4) / 0.4, axis=1)
    loss = tf.reduce_mean(tf.where(noisy > 0, lq, curated))
  gradient = tape.gradient(loss, kernel).numpy()
  before, after = (raw_weight(_reader(device_run, t), 'logits/kernel')
                   for t in (0, 1))
  np.testing.assert_allclose(after, before - 2.0 * gradient, atol=2e-5)
  assert np.abs(2.0 * gradient).max() > 1e-3
  # Input batch norm: moving mean 0.5 * 0 + (1 - 0.5) * the batch's.
  np.testing.assert_allclose(
      raw_weight(_reader(device_run, 1), 'input_bn/moving_mean'),
      0.5 * examples.astype(np.float64).mean(axis=(0, 1)), atol=1e-4)


def test_seed_is_recorded_and_draws_the_initial_weights(device_run):
  """seed=7 is the run's (none drawn, recorded as given), and the step-0
  weights are those a model built after seeding everything with 7 starts
  from."""
  import json
  import keras
  import model as model_lib
  assert 'drawn' not in device_run['out']
  with open(str(device_run['train_dir'] / 'hparams.json')) as f:
    assert json.load(f)['hparams']['seed'] == 7
  keras.utils.set_random_seed(7)
  fresh = model_lib.build_model('crnn', 80, hparams_of(RUN))
  reader = _reader(device_run, 0)
  for v in fresh.trainable_variables:
    np.testing.assert_array_equal(raw_weight(reader, v.path), v.numpy(),
                                  err_msg=v.path)
  keras.utils.set_random_seed(8)
  other = model_lib.build_model('crnn', 80, hparams_of(RUN))
  assert not np.array_equal(other.get_layer('logits').kernel.numpy(),
                            fresh.get_layer('logits').kernel.numpy())


def test_weight_average_uses_ema_decay(device_run):
  """ema_decay=0.1: a_t = d a_(t-1) + (1 - d) w_t from the step-0 weights,
  d = min(0.1, (1 + t) / (10 + t)) = 0.1 at steps 1 and 2, over the raw
  weights of each step's checkpoint."""
  from tagger.core import checkpoints
  import model as model_lib
  readers = [_reader(device_run, t) for t in range(3)]
  paths = [v.path for v in model_lib.build_model(
      'crnn', 80, hparams_of(RUN)).trainable_variables]
  for path in paths:
    average = raw_weight(readers[0], path)
    for t in (1, 2):
      average = 0.1 * average + 0.9 * raw_weight(readers[t], path)
    saved = readers[2].get_tensor(checkpoints.checkpoint_key(path, 'ema'))
    np.testing.assert_allclose(saved, average, rtol=1e-5, atol=1e-6,
                               err_msg=path)
  raw = raw_weight(readers[2], 'logits/kernel')
  saved = readers[2].get_tensor(checkpoints.checkpoint_key('logits/kernel',
                                                           'ema'))
  assert np.abs(saved - raw).max() > 1e-4  # an average, not the weights


def test_precise_statistics_cover_bn_stats_batches_of_every_source(
    device_run):
  """The precise statistics of the CRNN's input batch norm are each band's
  mean and variance over the examples of bn_stats_batches=1 batch of 6
  examples drawn (with the run's seed) from the clips of both sources."""
  from tagger.core import checkpoints
  import inputs
  hparams = hparams_of(RUN)
  sources = device_run['sources']
  (batch,) = list(inputs.statistics_dataset(
      sources[0].csv_path, sources[0].clip_dir, read_class_names(), hparams,
      1, seed=7, more_sources=sources[1:]))
  examples = batch.numpy().astype(np.float64)
  assert examples.shape == (6, 50, 64)
  reader = _reader(device_run, 2)
  for name, expected in (('moving_mean', examples.mean(axis=(0, 1))),
                         ('moving_variance', examples.var(axis=(0, 1)))):
    saved = reader.get_tensor(checkpoints.checkpoint_key(
        'input_bn/' + name, 'precise_bn'))
    np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-4)
  # Two batches would give other statistics.
  two = np.concatenate([b.numpy() for b in inputs.statistics_dataset(
      sources[0].csv_path, sources[0].clip_dir, read_class_names(), hparams,
      2, seed=7, more_sources=sources[1:])])
  assert np.abs(two.mean(axis=(0, 1)) - examples.mean(axis=(0, 1))).max() > (
      1e-2)


def test_progress_counts_batch_size_examples_a_step(device_run):
  """Each step's line gives examples/s as batch_size (6) times steps/s."""
  found = re.findall(r'^step \d+ loss \S+ \((\S+) steps/s, (\S+) examples/s',
                     device_run['out'], re.M)
  assert len(found) == 2
  for steps, examples in found:
    assert float(examples) == pytest.approx(6 * float(steps), abs=0.1)


def test_score_averaged_chooses_the_weights_that_score(device_run):
  """A checkpoint with averaged weights scores with them (and their own
  precise statistics) unless score_averaged=0: the scores of the two
  differ, each equal to the model holding those weights."""
  from tagger.core import checkpoints
  from tagger.engines import scoring
  prefix = str(device_run['train_dir'] / 'model.ckpt-2')
  reader = _reader(device_run, 2)
  examples = np.random.default_rng(6).normal(-3, 2, (4, 50, 64)).astype(
      np.float32)
  got = {}
  for flag in (1, 0):
    scorer = scoring.Scorer('crnn', 80, hparams_of(RUN + ',score_averaged=%d'
                                                   % flag))
    used = scorer.load(prefix)
    kernel = scorer.model.get_layer('logits').kernel.numpy()
    group = 'ema' if flag else 'weights'
    np.testing.assert_array_equal(kernel, reader.get_tensor(
        checkpoints.checkpoint_key('logits/kernel', group)))
    got[flag] = used, scorer.score_examples(examples)
  assert got[1][0] == 'precise of the averaged weights'
  assert got[0][0] == 'precise'
  assert np.abs(got[1][1] - got[0][1]).max() > 1e-4
