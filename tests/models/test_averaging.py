"""The weight average of a training run (ema_decay;
tagger/models/averaging.py): the recurrence over each step's checkpoint,
scoring with the averaged weights unless told otherwise, and their own
precise batch-norm statistics."""

import os

import numpy as np
import pytest

from tagger.core import checkpoints
from support import reference
from support.training_runs import (checkpoint_reader, run_training,
                                   saved_weight, trainable_paths)
from conftest import shared
from support.scores import read_class_names


AVERAGED = 'batch_size=4,crnn_filters=4,crnn_dropout=0,lr=0.01,seed=5,' \
    'ema_decay=0.5,bn_stats_batches=2'


@pytest.fixture(scope='session')
def averaged_run(tmp_path_factory, dataset):
  """crnn, 4 steps with a checkpoint after each, weights averaged (made
  once for every test process)."""
  def make(root):
    patch = pytest.MonkeyPatch()
    patch.setattr(checkpoints, 'CHECKPOINT_EVERY', 1)
    try:
      run_training(dataset, 'crnn', AVERAGED, root / 'train', 4)
    finally:
      patch.undo()
    return root / 'train'
  return shared(tmp_path_factory, 'averaged_run', make)


def test_weight_average_is_the_recurrence(averaged_run):
  """ema_t = d_t ema_{t-1} + (1 - d_t) w_t from the initial weights, with
  d_t = min(ema_decay, (1 + t) / (10 + t)), over the raw weights of each
  step's checkpoint, in NumPy."""
  paths = trainable_paths('crnn', AVERAGED)
  raw = [checkpoint_reader(str(averaged_run / ('model.ckpt-%d' % t)))
         for t in range(5)]
  last = raw[-1]
  assert last.get_tensor('ema/updates/.ATTRIBUTES/VARIABLE_VALUE') == 4
  moved = 0
  for path in paths:
    average = saved_weight(raw[0], path).astype(np.float64)
    for t in range(1, 5):
      d = min(0.5, (1 + t) / (10 + t))
      average = d * average + (1 - d) * saved_weight(raw[t], path)
    got = last.get_tensor(checkpoints.checkpoint_key(path, 'ema'))
    np.testing.assert_allclose(got, average, rtol=1e-5, atol=1e-7,
                               err_msg=path)
    moved += not np.allclose(got, saved_weight(last, path), atol=1e-6)
  assert moved > len(paths) // 2  # the average is not the raw weights


def test_scoring_uses_the_averaged_weights_unless_told(averaged_run,
                                                         dataset):
  """A checkpoint with averaged weights is scored with them and their own
  precise statistics; score_averaged=0 scores its raw weights. Each against
  a plain model loaded independently."""
  from tagger.core import files
  from tagger.core import params
  from tagger.engines import scoring
  import tensorflow as tf
  from support import plain_models
  prefix = str(averaged_run / 'model.ckpt-4')
  reader = checkpoint_reader(prefix)
  clip = os.path.join(dataset['test_clip_dir'],
                      sorted(os.listdir(dataset['test_clip_dir']))[0])
  examples = reference.np_clip_examples(clip, params.parse_hparams(
      AVERAGED)).astype(np.float32)

  def expected(group, statistics):
    net = plain_models.plain_model('crnn', 80, params.parse_hparams(
        AVERAGED))
    plain_models.load_checkpoint(net, prefix, bn_stats='moving')
    for v in net.weights:
      path = plain_models.project_path(v)
      if v.trainable and group:
        v.assign(reader.get_tensor(checkpoints.checkpoint_key(path, group)))
      if path.endswith(('moving_mean', 'moving_variance')):
        v.assign(reader.get_tensor(checkpoints.checkpoint_key(path,
                                                              statistics)))
    return tf.sigmoid(net(examples, training=False)).numpy().mean(axis=0)

  got = {}
  for flag in (1, 0):
    scorer = scoring.Scorer('crnn', 80, params.parse_hparams(
        AVERAGED + ',score_averaged=%d' % flag))
    got[flag] = (scorer.load(prefix),
                 scorer.score([clip], files.check_clips([clip]))[0])
  assert got[1][0] == 'precise of the averaged weights'
  assert got[0][0] == 'precise'
  np.testing.assert_allclose(got[1][1], expected('ema', 'ema_precise_bn'),
                             atol=1e-5)
  np.testing.assert_allclose(got[0][1], expected(None, 'precise_bn'),
                             atol=1e-5)
  assert np.abs(got[1][1] - got[0][1]).max() > 1e-4


def test_averaged_weights_have_their_own_precise_statistics(averaged_run,
                                                            dataset):
  """ema_precise_bn holds the batch-norm statistics of the averaged
  weights over the run's statistics batches, recomputed here; they differ
  from the raw weights' (precise_bn)."""
  from tagger.models import averaging
  from tagger.models import batchnorm
  import inputs
  import model as model_lib
  from tagger.core import params
  hparams = params.parse_hparams(AVERAGED)
  prefix = str(averaged_run / 'model.ckpt-4')
  reader = checkpoint_reader(prefix)
  ours = model_lib.build_model('crnn', 80, hparams)
  checkpoints.assign_from_checkpoint(ours.weights, reader, prefix)
  averaging.load_average(ours.trainable_variables, reader)
  batches = inputs.statistics_dataset(
      dataset['train_csv'], dataset['train_clip_dir'], read_class_names(),
      hparams, hparams.bn_stats_batches, seed=5)
  expected = batchnorm.PreciseStatistics(ours).compute(batches)
  differ = 0
  for path, value in expected.items():
    saved = reader.get_tensor(checkpoints.checkpoint_key(path,
                                                         'ema_precise_bn'))
    np.testing.assert_allclose(saved, value, rtol=1e-4, atol=1e-5,
                               err_msg=path)
    raw = reader.get_tensor(checkpoints.checkpoint_key(path, 'precise_bn'))
    differ += not np.allclose(raw, value, rtol=1e-4, atol=1e-5)
  assert differ >= 4
