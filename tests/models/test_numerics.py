"""Model hyperparameters measured, not read back: batch-norm decay and epsilon
against NumPy, pooling and inference against plain Keras models of stock
layers (tests/support/plain_models.py), dropout rates counted."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import model  # noqa: E402
from tagger.core import params  # noqa: E402
from support import plain_models  # noqa: E402
import train  # noqa: E402

NUM_CLASSES = 80


def _by_path(net):
  return {v.path: v for v in net.weights}


def _one_train_step(net, hparams, examples, labels):
  """One step of train.py's compiled step with its loss and optimizer."""
  loss_fn, _ = train.step_lib.make_loss(hparams, NUM_CLASSES)
  optimizer = train.step_lib.make_optimizer(hparams, 0)
  optimizer.build(net.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  train_step = train.step_lib.make_train_step(net, loss_fn, net.trainable_variables,
                                     optimizer, step)
  loss, finite = train_step(tf.constant(examples), tf.constant(labels))
  assert bool(finite) and int(step) == 1
  return float(loss)


def np_conv3x3_same(x, kernel, bias=None):
  """[B, T, F, Cin] x [3, 3, Cin, Cout] cross-correlation, zero 'same'
  padding, stride 1."""
  b, t, f, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, t, f, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += padded[:, i:i + t, j:j + f, :] @ kernel[i, j]
  return out if bias is None else out + bias


def np_depthwise3x3_same(x, kernel):
  """[B, T, F, C] x [3, 3, C, 1] depthwise cross-correlation, 'same'."""
  b, t, f, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros_like(x)
  for i in range(3):
    for j in range(3):
      out += padded[:, i:i + t, j:j + f, :] * kernel[i, j, :, 0]
  return out


def np_batch_norm_train(x, gamma, beta, eps, axes):
  mean = x.mean(axis=axes)
  var = x.var(axis=axes)  # biased, as the batch statistics of Keras
  shape = [1] * x.ndim
  keep = [a for a in range(x.ndim) if a not in axes]
  shape[keep[0]] = -1
  normed = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
  return normed * gamma.reshape(shape) + beta.reshape(shape), mean, var


def _examples(rng, batch, frames=100, bands=96):
  """Log-mel-like examples whose bands have distinct means and spreads."""
  band_mean = rng.uniform(-5, 3, bands)
  band_std = rng.uniform(0.5, 2.0, bands)
  return (band_mean + band_std * rng.standard_normal(
      (batch, frames, bands))).astype(np.float32)


def _labels(rng, batch):
  labels = (rng.random((batch, NUM_CLASSES)) < 0.05).astype(np.float32)
  labels[:, 0] = 1.0
  return labels


# --- batch-norm decay (moving statistics) and epsilon in training mode ------

def test_crnn_moving_statistics_after_one_step_match_numpy():
  """input_bn and conv1's batch norm after one training step from the
  initial 0 / 1 statistics: moving = crnn_bndecay * initial +
  (1 - crnn_bndecay) *
  batch statistic, with the batch statistics computed in NumPy (conv1's
  input is the input batch norm's training-mode output, which uses bneps)."""
  hparams = params.parse_hparams('batch_size=3,crnn_bndecay=0.9,bneps=0.5,'
                                 'crnn_filters=4')
  rng = np.random.default_rng(0)
  net = model.build_model('crnn', NUM_CLASSES, hparams)
  weights = _by_path(net)
  x = _examples(rng, 3)
  kernel = weights['conv1/conv/kernel'].numpy().astype(np.float64)
  bias = weights['conv1/conv/bias'].numpy().astype(np.float64)
  gamma = weights['input_bn/gamma'].numpy().astype(np.float64)
  beta = weights['input_bn/beta'].numpy().astype(np.float64)
  _one_train_step(net, hparams, x, _labels(rng, 3))

  decay = 0.9
  x64 = x.astype(np.float64)
  normed, mean, var = np_batch_norm_train(x64, gamma, beta, 0.5, (0, 1))
  np.testing.assert_allclose(weights['input_bn/moving_mean'].numpy(),
                             (1 - decay) * mean, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(weights['input_bn/moving_variance'].numpy(),
                             decay * 1.0 + (1 - decay) * var, atol=1e-5,
                             rtol=1e-5)
  conv = np_conv3x3_same(normed[..., None], kernel, bias)
  conv_mean, conv_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
  np.testing.assert_allclose(weights['conv1/conv_bn/moving_mean'].numpy(),
                             (1 - decay) * conv_mean, atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(weights['conv1/conv_bn/moving_variance'].numpy(),
                             decay + (1 - decay) * conv_var, atol=1e-5,
                             rtol=1e-4)
  # The statistics are far from what 1 - bndecay or bneps=0.001 would give.
  assert np.abs(mean).max() > 1.0 and np.abs(var - 1).max() > 0.5
  other, _, _ = np_batch_norm_train(x64, gamma, beta, 0.001, (0, 1))
  assert np.abs(np_conv3x3_same(other[..., None], kernel, bias).var(
      axis=(0, 1, 2)) - conv_var).max() > 0.01


def test_mobilenet_moving_statistics_after_one_step_match_numpy():
  """conv0's and sepconv1's depthwise batch norms after one training step,
  against NumPy convolutions of the batch (bndecay=0.9, bneps=0.5)."""
  hparams = params.parse_hparams('batch_size=2,bndecay=0.9,bneps=0.5')
  rng = np.random.default_rng(1)
  # Seeded weights: the size checks at the end hold for this draw, not for
  # every draw of the initializer.
  keras.utils.set_random_seed(1)
  net = model.build_model('mobilenet-v1', NUM_CLASSES, hparams)
  weights = _by_path(net)
  x = _examples(rng, 2)
  initial = {p: v.numpy().astype(np.float64) for p, v in weights.items()}
  _one_train_step(net, hparams, x, _labels(rng, 2))

  decay, eps = 0.9, 0.5
  conv = np_conv3x3_same(x.astype(np.float64)[..., None],
                         initial['conv0/conv/kernel'])
  normed, mean, var = np_batch_norm_train(
      conv, initial['conv0/conv_bn/gamma'], initial['conv0/conv_bn/beta'],
      eps, (0, 1, 2))
  np.testing.assert_allclose(weights['conv0/conv_bn/moving_mean'].numpy(),
                             (1 - decay) * mean, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(weights['conv0/conv_bn/moving_variance'].numpy(),
                             decay + (1 - decay) * var, atol=1e-4, rtol=1e-4)
  depthwise = np_depthwise3x3_same(np.maximum(normed, 0.0),
                                   initial['sepconv1/depthwise/kernel'])
  d_mean, d_var = depthwise.mean(axis=(0, 1, 2)), depthwise.var(
      axis=(0, 1, 2))
  np.testing.assert_allclose(
      weights['sepconv1/depthwise_bn/moving_mean'].numpy(),
      (1 - decay) * d_mean, atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(
      weights['sepconv1/depthwise_bn/moving_variance'].numpy(),
      decay + (1 - decay) * d_var, atol=1e-5, rtol=1e-4)
  # Far from a trivial update.
  assert np.abs(mean).max() > 0.5 and np.abs(var - 1).max() > 0.5
  assert np.abs(d_mean).max() > 0.05


# --- bneps, pooling and bn=0 in inference mode against plain models ---------

@pytest.mark.parametrize('model_name,flags,default', [
    ('mobilenet-v1', 'bneps=0.02', 'bneps=0.001'),
    ('mobilenet-v1', 'global_pool=max', 'global_pool=mean'),
    ('mobilenet-v1', 'bn=0,global_pool=max,dropout=0.5', 'bn=0'),
    ('crnn', 'bneps=0.5,crnn_filters=8,crnn_dropout=0.2', 'crnn_filters=8'),
])
def test_inference_matches_plain_model(model_name, flags, default):
  """Inference-mode logits of model.build_model equal those of the plain
  model of stock layers built with the same hparams (epsilon, pooling,
  biases without batch norm), and differ from the plain model built with the
  default value."""
  hparams = params.parse_hparams(flags)
  rng = np.random.default_rng(2)
  plain = plain_models.calibrated(model_name, NUM_CLASSES, hparams,
                                  _examples(rng, 4), rng)
  net = model.build_model(model_name, NUM_CLASSES, hparams)
  plain_models.copy_weights(plain, net)
  x = _examples(rng, 4)
  want = plain(x, training=False).numpy()
  got = net(x, training=False).numpy()
  assert np.ptp(want, axis=0).max() > 0.01  # examples are told apart
  scale = max(1.0, np.abs(want).max())
  np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=1e-5)
  other = plain_models.plain_model(model_name, NUM_CLASSES,
                                   params.parse_hparams(default))
  plain_models.copy_weights(plain, other)
  assert np.abs(other(x, training=False).numpy() - want).max() > 1e-2


# --- dropout: measured drop fractions ---------------------------------------

def test_mobilenet_dropout_is_a_keep_probability():
  """dropout=0.8 keeps 80% of the pooled features (and scales them by
  1/0.8) in training mode. Without batch norm, training and inference
  differ only by the dropout; with an identity classifier the logits are
  the (dropped-out) pooled features themselves."""
  hparams = params.parse_hparams('bn=0,dropout=0.8')
  net = model.build_model('mobilenet-v1', 1024, hparams)
  weights = _by_path(net)
  weights['logits/kernel'].assign(np.eye(1024, dtype=np.float32))
  weights['logits/bias'].assign(np.zeros(1024, np.float32))
  # Positive biases keep the ReLUs alive through 27 unnormalised layers.
  rng = np.random.default_rng(3)
  for path, v in weights.items():
    if path.endswith('/bias') and not path.startswith('logits'):
      v.assign(rng.uniform(0.05, 0.2, v.shape).astype(np.float32))
  x = _examples(rng, 6)
  inference = net(x, training=False).numpy()
  training = net(x, training=True).numpy()
  live = inference > 1e-4
  assert live.sum() > 3000
  ratio = training[live] / inference[live]
  dropped = np.abs(ratio) < 1e-6
  # 20% dropped: the binomial's standard deviation is < 0.8% here.
  assert abs(dropped.mean() - 0.2) < 0.04, dropped.mean()
  np.testing.assert_allclose(ratio[~dropped], 1 / 0.8, rtol=1e-4)


def _dropout_layers(net):
  return [l for l in net._flatten_layers(include_self=False)
          if isinstance(l, keras.layers.Dropout)]


def test_crnn_dropout_is_a_drop_rate():
  """crnn_dropout=0.2 drops 20% after each of the four blocks and after the
  GRU: each of the five dropout layers, run in training mode on ones."""
  net = model.build_model('crnn', NUM_CLASSES,
                          params.parse_hparams('crnn_dropout=0.2'))
  layers = _dropout_layers(net)
  assert len(layers) == 5
  ones = tf.ones([200, 500])
  for layer in layers:
    out = layer(ones, training=True).numpy()
    dropped = out == 0.0
    # 100,000 draws: standard deviation 0.13%.
    assert abs(dropped.mean() - 0.2) < 0.01, (layer.name, dropped.mean())
    np.testing.assert_allclose(out[~dropped], 1 / 0.8, rtol=1e-6)
    np.testing.assert_array_equal(layer(ones, training=False).numpy(), 1.0)


def test_crnn_dropout_is_absent_from_inference():
  net = model.build_model('crnn', NUM_CLASSES,
                          params.parse_hparams('crnn_dropout=0.2'))
  x = _examples(np.random.default_rng(4), 2)
  first = net(x, training=False).numpy()
  np.testing.assert_array_equal(net(x, training=False).numpy(), first)
