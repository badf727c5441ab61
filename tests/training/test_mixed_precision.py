"""Mixed precision (precision=mixed_float16 or mixed_bfloat16): the layers
compute in its dtype (float16 loss-scaled), the weights stay float32, and a
run trains and scores in float32."""

import os
import re

import numpy as np
import pytest

from support.cli import check_ok, run_main, train_args
from support.settings import FEW_BN_BATCHES
from support.distributed import CRNN


@pytest.mark.parametrize('precision,dtype', [
    ('precision=mixed_float16', 'float16'),
    ('precision=mixed_bfloat16', 'bfloat16')])
def test_mixed_precision_computes_in_its_dtype(precision, dtype):
  """The layers compute in the precision's dtype (weights and logits
  float32), and float16 is loss-scaled: with a loss so small that its
  float16 gradients underflow to zero unscaled, a step still moves the
  convolutions' weights."""
  from tagger.core import params
  import train
  state = train.state_lib.TrainingState('crnn', params.parse_hparams(
      CRNN + ',' + precision), 5, 0)
  model = state.model
  assert {model.get_layer(name).compute_dtype for name in (
      'conv1', 'conv4', 'gru')} == {dtype}
  assert model.get_layer('logits').compute_dtype == 'float32'
  assert {v.dtype for v in model.weights} == {'float32'}
  step = train.step_lib.make_train_step(
      model, lambda labels, logits: 1e-7 * state.loss_fn(labels, logits),
      state.variables, state.optimizer, state.step)
  kernels = [v for name in ('conv1', 'conv4')
             for v in model.get_layer(name).trainable_weights
             if v.path.endswith('kernel')]
  before = [v.numpy() for v in kernels]
  rng = np.random.default_rng(0)
  loss, finite = step(
      rng.normal(-2, 1, (4, 100, 96)).astype(np.float32),
      (rng.random((4, 5)) < 0.3).astype(np.float32))
  assert bool(finite) and 0 < float(loss) < 1e-6
  for kernel, old in zip(kernels, before):
    assert np.abs(kernel.numpy() - old).max() > 1e-7, kernel.path


@pytest.mark.parametrize('precision', ['mixed_float16', 'mixed_bfloat16'])
def test_mixed_precision_trains_and_scores_float32(tmp_path, dataset,
                                                   precision):
  import tensorflow as tf
  train_dir = str(tmp_path / 'train')
  out = check_ok(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'], train_dir, 3,
      hparams='batch_size=4,crnn_filters=4,%s,precision=%s' % (
          FEW_BN_BATCHES, precision)))).stdout
  losses = [float(l) for l in re.findall(r'^step \d+ loss (\S+)', out, re.M)]
  assert len(losses) == 3 and all(np.isfinite(losses))
  prefix = os.path.join(train_dir, 'model.ckpt-3')
  dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
  weights = {k: d for k, d in dtypes.items() if k.startswith('weights/')}
  assert weights and set(weights.values()) == {tf.float32}
  from tagger.core import params
  from tagger.engines import scoring
  from support.scores import read_class_names
  scorer = scoring.Scorer('crnn', 80, params.parse_hparams(
      'crnn_filters=4,precision=' + precision))
  scorer.load(prefix)
  clip = os.path.join(dataset['test_clip_dir'],
                      sorted(os.listdir(dataset['test_clip_dir']))[0])
  from tagger.core import files
  scores = scorer.score([clip], files.check_clips([clip]))
  assert scores.dtype == np.float64 and np.all(np.isfinite(scores))
  examples = np.zeros((2, 100, 96), np.float32)
  assert scorer.inference_model(examples).dtype == tf.float32
  assert len(read_class_names()) == 80
