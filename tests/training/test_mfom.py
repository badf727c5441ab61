"""MFoM layers and objectives against NumPy implementations of the formulas."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest
import tensorflow as tf

from tagger.training import mfom

# The NumPy formulas live in tests/support/reference.py, shared with the loss tests
# of training/test_step.py.
from support.reference import (np_cprim, np_d, np_eer_embed,
                               np_eer_normalized, np_l, np_microf1, np_sigmoid)


LAYER_FNS = {
    'mfom_eer_normalized': (mfom.mfom_eer_normalized, np_eer_normalized),
    'mfom_cprim': (mfom.mfom_cprim, np_cprim),
    'mfom_microf1': (mfom.mfom_microf1, np_microf1),
}


def random_batch(seed, rows=7, classes=5, extremes=True):
  """Rows with at least one positive and one negative; with extremes, one
  score of exactly 0 and one of exactly 1 (clipped by the code)."""
  rng = np.random.default_rng(seed)
  y = (rng.random((rows, classes)) < 0.4).astype(np.float64)
  for r in range(rows):
    if y[r].sum() == 0:
      y[r, rng.integers(classes)] = 1
    if y[r].sum() == classes:
      y[r, rng.integers(classes)] = 0
  s = rng.random((rows, classes))
  if extremes:
    s[0, 0] = 0.0  # clipped to EPS
    s[1, 1] = 1.0  # clipped to 1 - EPS
  return y, s


def edge_batch(seed, classes=6):
  """No labels, all labels, one label, all but one, then random rows."""
  rng = np.random.default_rng(seed)
  y = np.zeros((7, classes))
  y[1] = 1
  y[2, 3] = 1
  y[3] = 1
  y[3, 0] = 0
  y[4:, :] = (rng.random((3, classes)) < 0.5)
  y[4:, 0], y[4:, 1] = 1, 0
  s = rng.uniform(0.05, 0.95, (7, classes))
  valid = np.array([False, False, True, True, True, True, True])
  return y, s, valid


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_uvz_misclassification(seed):
  y, s = random_batch(seed)
  d = mfom.UvZMisclassification()([tf.constant(y, tf.float32),
                                   tf.constant(s, tf.float32)]).numpy()
  np.testing.assert_allclose(d, np_d(y, s), atol=1e-5)
  d64 = mfom.uvz_misclassification(tf.constant(y), tf.constant(s)).numpy()
  np.testing.assert_allclose(d64, np_d(y, s), atol=1e-12)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_smooth_error_counter(seed):
  rng = np.random.default_rng(seed + 10)
  y, s = random_batch(seed)
  d = np_d(y, s)
  counter = mfom.SmoothErrorCounter()
  counter.build((None, s.shape[1]))
  alpha = rng.uniform(0.5, 5.0, s.shape[1])
  beta = rng.normal(0, 1, s.shape[1])
  counter.alpha.assign(alpha.astype(np.float32))
  counter.beta.assign(beta.astype(np.float32))
  l = counter(tf.constant(d, tf.float32)).numpy()
  np.testing.assert_allclose(l, np_sigmoid(alpha * d + beta), atol=1e-6)


@pytest.mark.parametrize('name', sorted(LAYER_FNS))
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_layer_objectives(name, seed):
  tf_fn, np_fn = LAYER_FNS[name]
  rng = np.random.default_rng(seed + 20)
  y, s = random_batch(seed)
  alpha = rng.uniform(0.5, 5.0, s.shape[1])
  beta = rng.normal(0, 1, s.shape[1])
  l = np_l(y, s, alpha, beta)
  got = tf_fn(tf.constant(y, tf.float32), tf.constant(l, tf.float32))
  assert float(got) == pytest.approx(np_fn(y, l), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_eer_embed(seed):
  # float32: 1 - 1e-7 is not representable, so log(1 - s) of a clipped
  # score of 1 differs from float64; compare float32 away from the ends.
  y, s = random_batch(seed, extremes=False)
  got = mfom.mfom_eer_embed(tf.constant(y, tf.float32),
                            tf.constant(s, tf.float32))
  assert float(got) == pytest.approx(np_eer_embed(y, s), rel=1e-5)
  y, s = random_batch(seed)
  got64 = mfom.mfom_eer_embed(tf.constant(y), tf.constant(s))
  assert float(got64) == pytest.approx(np_eer_embed(y, s), rel=1e-10)


@pytest.mark.parametrize('name', sorted(LAYER_FNS))
def test_mfom_objective_head(name):
  tf_fn, np_fn = LAYER_FNS[name]
  y, s = random_batch(5, rows=6, classes=4)
  head = mfom.MFoMObjective(name)
  got = head(tf.constant(y, tf.float32), tf.constant(s, tf.float32))
  assert float(got) == pytest.approx(np_fn(y, np_l(y, s)), rel=1e-5)
  np.testing.assert_array_equal(head.counter.alpha.numpy(), np.ones(4))
  np.testing.assert_array_equal(head.counter.beta.numpy(), np.zeros(4))
  assert {tuple(v.shape) for v in head.trainable_variables} == {(4,)}
  assert len(head.trainable_variables) == 2


def test_mfom_microf1_head_alpha_beta_trainable():
  head = mfom.MFoMObjective('mfom_microf1')
  zeros = tf.zeros([1, 80])
  head(zeros, zeros)
  names = sorted(v.path.rsplit('/', 1)[-1] for v in head.trainable_variables)
  assert names == ['alpha', 'beta']
  assert head.counter.alpha.trainable and head.counter.beta.trainable
  assert head.counter.alpha.shape == (80,)
  np.testing.assert_array_equal(head.counter.alpha.numpy(), np.ones(80))
  np.testing.assert_array_equal(head.counter.beta.numpy(), np.zeros(80))


def tf_layer_loss(name, y, s, alpha, beta):
  """The full chain in float64: d -> l -> objective."""
  tf_fn, _ = LAYER_FNS[name]
  l = tf.sigmoid(alpha * mfom.uvz_misclassification(y, s) + beta)
  return tf_fn(y, l)


@pytest.mark.parametrize('name', sorted(LAYER_FNS) + ['mfom_eer_embed'])
def test_edge_rows_are_finite_and_excluded(name):
  y, s, valid = edge_batch(3)
  rng = np.random.default_rng(4)
  alpha_np = rng.uniform(0.5, 3.0, y.shape[1])
  beta_np = rng.normal(0, 0.5, y.shape[1])
  if name == 'mfom_eer_embed':
    want = np_eer_embed(y[valid], s[valid])
  else:
    want = LAYER_FNS[name][1](y[valid],
                              np_l(y[valid], s[valid], alpha_np, beta_np))

  scores = tf.Variable(s.astype(np.float32))
  labels = tf.constant(y, tf.float32)
  if name == 'mfom_eer_embed':
    with tf.GradientTape() as tape:
      loss = mfom.mfom_eer_embed(labels, scores)
    grads = tape.gradient(loss, [scores])
  else:
    head = mfom.MFoMObjective(name)
    head(labels, scores)  # build
    head.counter.alpha.assign(alpha_np.astype(np.float32))
    head.counter.beta.assign(beta_np.astype(np.float32))
    with tf.GradientTape() as tape:
      loss = head(labels, scores)
    grads = tape.gradient(loss, [scores, head.counter.alpha,
                                 head.counter.beta])
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
  for g in grads:
    assert g is not None
    assert np.all(np.isfinite(g.numpy()))
  score_grad = grads[0].numpy()
  # Excluded rows have no influence on the loss...
  np.testing.assert_array_equal(score_grad[~valid], 0.0)
  # ...and the remaining ones do.
  assert np.all(np.abs(score_grad[valid]).sum(axis=1) > 0)
  if name != 'mfom_eer_embed':
    assert np.abs(grads[1].numpy()).sum() > 0
    assert np.abs(grads[2].numpy()).sum() > 0


@pytest.mark.parametrize('name', sorted(LAYER_FNS) + ['mfom_eer_embed'])
def test_gradients_match_finite_differences(name):
  y, s, valid = edge_batch(8, classes=4)
  rng = np.random.default_rng(9)
  alpha = rng.uniform(0.5, 3.0, 4)
  beta = rng.normal(0, 0.5, 4)

  def np_loss(s_valid):
    if name == 'mfom_eer_embed':
      return np_eer_embed(y[valid], s_valid)
    return LAYER_FNS[name][1](y[valid], np_l(y[valid], s_valid, alpha, beta))

  scores = tf.Variable(s)  # float64
  with tf.GradientTape() as tape:
    if name == 'mfom_eer_embed':
      loss = mfom.mfom_eer_embed(tf.constant(y), scores)
    else:
      loss = tf_layer_loss(name, tf.constant(y), scores, tf.constant(alpha),
                           tf.constant(beta))
  grad = tape.gradient(loss, scores).numpy()
  numeric = np.zeros_like(s)
  h = 1e-6
  sv = s[valid]
  for idx in np.ndindex(sv.shape):
    plus, minus = sv.copy(), sv.copy()
    plus[idx] += h
    minus[idx] -= h
    numeric[np.flatnonzero(valid)[idx[0]], idx[1]] = (
        np_loss(plus) - np_loss(minus)) / (2 * h)
  np.testing.assert_allclose(grad, numeric, atol=1e-6, rtol=1e-4)
