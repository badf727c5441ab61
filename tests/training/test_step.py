"""The loss and the optimizer of the training step
(tagger/training/step.py: make_loss, make_optimizer) against NumPy: label
smoothing, each loss, and Adam's and SGD's update rules."""

import numpy as np
import pytest

from support import reference


# --- label smoothing --------------------------------------------------------

def test_label_smoothing_bce(parse_hparams):
  import train
  rng = np.random.default_rng(0)
  labels = (rng.random((6, 80)) < 0.1).astype(np.float32)
  logits = (3 * rng.standard_normal((6, 80))).astype(np.float32)
  loss_fn, head = train.step_lib.make_loss(parse_hparams('lsmooth=0.3'), 80)
  assert head is None
  got = float(loss_fn(labels, logits))
  x = logits.astype(np.float64)
  z = labels * 0.7 + 0.15
  expected = np.mean(np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x))))
  assert got == pytest.approx(expected, rel=1e-5)
  plain, _ = train.step_lib.make_loss(parse_hparams(''), 80)
  assert abs(float(plain(labels, logits)) - expected) > 1e-3


# --- optimizers against the NumPy update rules ------------------------------

def _apply(optimizer, w0, gradients):
  """Applies each gradient in turn to a float32 variable; returns the
  values after each step."""
  import keras
  import tensorflow as tf
  variable = keras.Variable(np.asarray(w0, np.float32))
  optimizer.build([variable])
  values = []
  for g in gradients:
    optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
    values.append(variable.numpy().astype(np.float64))
  return values


W0 = [1.0, -2.0, 3.0, 0.5, -0.25]
# The last two gradients are tiny, so that Adam's epsilon decides their step.
GRADIENTS = [[0.5, -0.1, 2.0, 1e-8, -3e-8],
             [-0.3, 0.2, 1.0, 2e-8, 1e-8],
             [0.1, 0.4, -0.5, -1e-8, 2e-8]]


@pytest.mark.parametrize('flags,lr,eps', [
    ('lr=0.1,adam_eps=1.0', 0.1, 1.0),
    ('lr=0.1,adam_eps=0.001', 0.1, 1e-3),
    ('lr=0.1', 0.1, 1e-8),     # the default epsilon
    ('', 1e-4, 1e-8),          # the default lr as well
])
def test_adam_steps_match_numpy(parse_hparams, flags, lr, eps):
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams(flags), 0)
  got = _apply(optimizer, W0, GRADIENTS)
  want = reference.np_adam(W0, GRADIENTS, lr, eps)
  # float32 arithmetic: ~1e-6 on weights of order 1 after steps of 0.1;
  # with lr 1e-4, the float32 rounding of the weights themselves.
  atol = 3e-6 if lr >= 0.1 else 3e-7
  for step, (g, w) in enumerate(zip(got, want), start=1):
    np.testing.assert_allclose(g, w, rtol=0, atol=atol,
                               err_msg='step %d' % step)
  # Epsilon is visible: another epsilon moves the weights elsewhere.
  other = reference.np_adam(W0, GRADIENTS, lr, 1e-8 if eps != 1e-8 else 1e-6)
  assert np.abs(other[-1] - want[-1]).max() > 30 * atol


@pytest.mark.parametrize('flags,lr', [('opt=sgd,lr=0.1', 0.1),
                                      ('opt=sgd', 1e-4)])
def test_sgd_steps_match_numpy(parse_hparams, flags, lr):
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams(flags), 0)
  got = _apply(optimizer, W0, GRADIENTS)
  w = np.array(W0)
  for step, (g, value) in enumerate(zip(GRADIENTS, got), start=1):
    w = w - lr * np.array(g)  # plain SGD: no momentum
    np.testing.assert_allclose(value, w, rtol=0, atol=3e-7,
                               err_msg='step %d' % step)


# --- each loss of make_loss against NumPy -----------------------------------

def _loss_batch(seed, rows=6, classes=80):
  rng = np.random.default_rng(seed)
  labels = (rng.random((rows, classes)) < 0.1).astype(np.float32)
  labels[np.arange(rows), rng.integers(0, classes, rows)] = 1.0  # >= 1 each
  logits = (2 * rng.standard_normal((rows, classes))).astype(np.float32)
  return labels, logits


def _np_bce(labels, logits):
  x = logits.astype(np.float64)
  return np.mean(np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x))))


@pytest.mark.parametrize('lsmooth', [0.0, 0.3])
def test_mfom_eer_embed_loss_matches_numpy(parse_hparams, lsmooth):
  """loss=mfom_eer_embed is the MFoM-embedding loss on sigmoid(logits), not
  BCE; label smoothing applies to BCE only. A row without a positive class
  is left out."""
  import train
  labels, logits = _loss_batch(0)
  labels[-1] = 0.0  # no positive: excluded
  loss_fn, _ = train.step_lib.make_loss(parse_hparams(
      'loss=mfom_eer_embed,lsmooth=%s' % lsmooth), 80)
  got = float(loss_fn(labels, logits))
  scores = reference.np_sigmoid(logits)
  want = reference.np_eer_embed(labels[:-1], scores[:-1])
  assert got == pytest.approx(want, rel=1e-5)
  assert abs(got - _np_bce(labels, logits)) > 0.05


@pytest.mark.parametrize('loss,np_fn', [
    ('mfom_microf1', reference.np_microf1),
    ('mfom_eer_normalized', reference.np_eer_normalized),
    ('mfom_cprim', reference.np_cprim),
])
def test_layer_mfom_losses_match_numpy(parse_hparams, loss, np_fn):
  """The layer-based objectives start from alpha = 1, beta = 0 on the
  sigmoid scores."""
  import train
  labels, logits = _loss_batch(1)
  loss_fn, _ = train.step_lib.make_loss(parse_hparams('loss=' + loss), 80)
  got = float(loss_fn(labels, logits))
  y = labels.astype(np.float64)
  want = np_fn(y, reference.np_l(y, reference.np_sigmoid(logits)))
  assert got == pytest.approx(want, rel=1e-5)
  assert abs(got - _np_bce(labels, logits)) > 0.05


def test_bce_loss_matches_numpy(parse_hparams):
  import train
  labels, logits = _loss_batch(2)
  loss_fn, _ = train.step_lib.make_loss(parse_hparams(''), 80)
  assert float(loss_fn(labels, logits)) == pytest.approx(
      _np_bce(labels, logits), rel=1e-6)
