"""Noisy-label losses and relabelling rules against NumPy written from the
papers' formulas (the losses: fixed labels and logits, hard and soft labels,
logits of +-30 and exactly 0) and a hand-worked case."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest
import tensorflow as tf

from tagger.training import noisy_labels
from tagger.core import params

# Rows 0, 1 and 3 are multi-hot, row 2 soft. Row 0 has confident right and
# wrong logits of +-30 and a logit of 0 (p = 0.5, not above the threshold).
LABELS = np.array([[1.0, 0.0, 1.0, 0.0, 0.0],
                   [0.0, 1.0, 0.0, 0.0, 1.0],
                   [0.3, 0.5, 0.9, 0.0, 1.0],
                   [1.0, 1.0, 0.0, 0.0, 0.0]])
LOGITS = np.array([[30.0, -30.0, -30.0, 30.0, 0.0],
                   [-2.5, 1.2, 0.3, -0.7, 4.0],
                   [0.8, -1.5, 2.2, -3.1, -0.4],
                   [-4.0, 0.5, -0.2, 1.7, 12.0]])
HARD_ROWS = [0, 1, 3]
# Per-example weights of the summed loss whose gradient is checked: each
# example's gradient must come from its own loss only.
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.5])


# ------------------------------------------------------- NumPy references


def np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def np_bce(y, z, lsmooth=0.0):
  t = y * (1.0 - lsmooth) + 0.5 * lsmooth
  p, not_p = np_sigmoid(z), np_sigmoid(-z)
  return -(t * np.log(p) + (1.0 - t) * np.log(not_p)).mean(axis=-1)


def np_bce_grad(y, z, lsmooth=0.0):
  t = y * (1.0 - lsmooth) + 0.5 * lsmooth
  return (np_sigmoid(z) - t) / z.shape[-1]


def np_lq(y, z, q):
  p, not_p = np_sigmoid(z), np_sigmoid(-z)
  return (y * (1.0 - p ** q) / q +
          (1.0 - y) * (1.0 - not_p ** q) / q).mean(axis=-1)


def np_lq_grad(y, z, q):
  p, not_p = np_sigmoid(z), np_sigmoid(-z)
  return (-y * p ** q * not_p + (1.0 - y) * not_p ** q * p) / z.shape[-1]


def np_bootstrap_soft(y, z, beta):
  p, not_p = np_sigmoid(z), np_sigmoid(-z)
  t = beta * y + (1.0 - beta) * p
  return -(t * np.log(p) + (1.0 - t) * np.log(not_p)).mean(axis=-1)


def np_bootstrap_soft_grad(y, z, beta):
  # d/dz of -(t log p + (1 - t) log(1 - p)) with t depending on p:
  # (p - t) - dt/dz * (log p - log(1 - p)) = (p - t) - (1-beta) p (1-p) z.
  p, not_p = np_sigmoid(z), np_sigmoid(-z)
  t = beta * y + (1.0 - beta) * p
  return ((p - t) - (1.0 - beta) * p * not_p * z) / z.shape[-1]


def np_bootstrap_hard(y, z, beta):
  p, not_p = np_sigmoid(z), np_sigmoid(-z)
  t = beta * y + (1.0 - beta) * (p > 0.5)
  return -(t * np.log(p) + (1.0 - t) * np.log(not_p)).mean(axis=-1)


def np_bootstrap_hard_grad(y, z, beta):
  p = np_sigmoid(z)
  return (p - (beta * y + (1.0 - beta) * (p > 0.5))) / z.shape[-1]


def np_entropy(z):
  p, not_p = np_sigmoid(z), np_sigmoid(-z)
  return -(p * np.log(p) + not_p * np.log(not_p)).mean(axis=-1)


# name: (function, its parameter, NumPy loss, NumPy gradient)
LOSSES = {
    'bce': (noisy_labels.bce, 0.2, np_bce, np_bce_grad),
    'lq': (noisy_labels.lq, 0.7, np_lq, np_lq_grad),
    'bootstrap_soft': (noisy_labels.bootstrap_soft, 0.8, np_bootstrap_soft,
                       np_bootstrap_soft_grad),
    'bootstrap_hard': (noisy_labels.bootstrap_hard, 0.8, np_bootstrap_hard,
                       np_bootstrap_hard_grad),
}
SMOOTH = ('bce', 'lq', 'bootstrap_soft')  # differentiable everywhere


def tf_value_and_grad(fn, labels, logits, *args, dtype=tf.float64):
  """The [batch] losses and the gradient of their WEIGHTS-weighted sum."""
  z = tf.Variable(logits, dtype=dtype)
  with tf.GradientTape() as tape:
    loss = fn(tf.constant(labels, dtype), z, *args)
    total = tf.reduce_sum(tf.constant(WEIGHTS[:len(labels)], dtype) * loss)
  return loss.numpy(), tape.gradient(total, z).numpy()


def finite_difference(np_fn, y, z, arg, h=1e-6):
  grad = np.zeros_like(z)
  for idx in np.ndindex(z.shape):
    plus, minus = z.copy(), z.copy()
    plus[idx] += h
    minus[idx] -= h
    grad[idx] = WEIGHTS @ (np_fn(y, plus, arg) - np_fn(y, minus, arg)) / (
        2 * h)
  return grad


# ------------------------------------------------------------ the losses


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_values_and_gradients_match_numpy(name):
  fn, arg, np_fn, np_grad = LOSSES[name]
  loss, grad = tf_value_and_grad(fn, LABELS, LOGITS, arg)
  assert loss.shape == (4,)
  np.testing.assert_allclose(loss, np_fn(LABELS, LOGITS, arg), rtol=1e-12,
                             atol=1e-14)
  np.testing.assert_allclose(grad, WEIGHTS[:, None] * np_grad(
      LABELS, LOGITS, arg), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize('name', SMOOTH)
def test_gradients_match_finite_differences(name):
  """Checks the analytic references too, and that the losses' gradients
  are those of the whole formula (bootstrap_soft's target included)."""
  fn, arg, np_fn, _ = LOSSES[name]
  _, grad = tf_value_and_grad(fn, LABELS, LOGITS, arg)
  np.testing.assert_allclose(grad, finite_difference(np_fn, LABELS, LOGITS,
                                                     arg), atol=1e-8)


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_float32_is_finite_and_accurate_at_large_logits(name):
  fn, arg, np_fn, np_grad = LOSSES[name]
  for scale in (1.0, 10.0):  # +-30 and +-300
    logits = LOGITS * scale
    loss, grad = tf_value_and_grad(fn, LABELS, logits, arg, dtype=tf.float32)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, np_fn(LABELS, logits, arg), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(grad, WEIGHTS[:, None] * np_grad(
        LABELS, logits, arg), rtol=1e-4, atol=1e-6)


def test_lq_tends_to_bce_as_q_tends_to_zero():
  loss, grad = tf_value_and_grad(noisy_labels.lq, LABELS, LOGITS, 1e-4)
  bce_loss, bce_grad = tf_value_and_grad(noisy_labels.bce, LABELS, LOGITS)
  np.testing.assert_allclose(loss, bce_loss, rtol=5e-3)
  cosine = np.sum(grad * bce_grad) / (np.linalg.norm(grad) *
                                      np.linalg.norm(bce_grad))
  assert cosine > 1 - 1e-5
  # (Where a soft label's BCE gradient nearly vanishes, only absolutely.)
  np.testing.assert_allclose(grad, bce_grad, rtol=5e-3, atol=1e-5)


def test_lq_with_q_one_is_the_mean_absolute_error():
  loss, grad = tf_value_and_grad(noisy_labels.lq, LABELS, LOGITS, 1.0)
  p = np_sigmoid(LOGITS)
  hard = LABELS[HARD_ROWS]
  p_observed = np.where(hard == 1, p[HARD_ROWS], 1.0 - p[HARD_ROWS])
  np.testing.assert_allclose(loss[HARD_ROWS], (1.0 - p_observed).mean(-1),
                             rtol=1e-12)
  # Soft labels: y (1 - p) + (1 - y) p.
  np.testing.assert_allclose(loss, (LABELS * (1 - p) + (1 - LABELS) * p).mean(
      -1), rtol=1e-12)
  # MAE's gradient: sign(p - y) p (1 - p) on the multi-hot rows.
  mae_grad = np.sign(p - LABELS) * p * (1 - p) / LOGITS.shape[1]
  np.testing.assert_allclose(grad[HARD_ROWS], (WEIGHTS[:, None] * mae_grad)[
      HARD_ROWS], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize('name', ['bootstrap_soft', 'bootstrap_hard'])
@pytest.mark.parametrize('dtype', [tf.float32, tf.float64])
def test_bootstrap_with_beta_one_is_bce_exactly(name, dtype):
  fn = LOSSES[name][0]
  loss, grad = tf_value_and_grad(fn, LABELS, LOGITS, 1.0, dtype=dtype)
  bce_loss, bce_grad = tf_value_and_grad(noisy_labels.bce, LABELS, LOGITS,
                                         dtype=dtype)
  np.testing.assert_array_equal(loss, bce_loss)
  np.testing.assert_array_equal(grad, bce_grad)


def test_bootstrap_soft_is_cross_entropy_plus_entropy():
  """The paper's reading of its soft loss, beta CE + (1 - beta) H(p), holds
  for value and gradient only because the target's p is not a constant."""
  beta = 0.7
  loss, grad = tf_value_and_grad(noisy_labels.bootstrap_soft, LABELS,
                                 LOGITS, beta)
  np.testing.assert_allclose(loss, beta * np_bce(LABELS, LOGITS) + (
      1 - beta) * np_entropy(LOGITS), rtol=1e-12, atol=1e-14)
  entropy_grad = finite_difference(lambda y, z, _: np_entropy(z), LABELS,
                                   LOGITS, None)
  np.testing.assert_allclose(grad, beta * WEIGHTS[:, None] * np_bce_grad(
      LABELS, LOGITS) + (1 - beta) * entropy_grad, atol=1e-8)


def test_bootstrap_hard_thresholds_above_one_half():
  """Logit 0 (p = 0.5) is not a predicted label; its target is beta * y."""
  labels = np.zeros((1, 3))
  logits = np.array([[0.0, 1e-3, -1e-3]])
  beta = 0.6
  loss, grad = tf_value_and_grad(noisy_labels.bootstrap_hard, labels, logits,
                                 beta)
  targets = np.array([[0.0, 1.0 - beta, 0.0]])
  np.testing.assert_allclose(grad, WEIGHTS[0] * (np_sigmoid(logits) -
                                                 targets) / 3, rtol=1e-12)


@pytest.mark.parametrize('lsmooth', [0.0, 0.3])
def test_bce_is_the_training_loss_of_train_py(lsmooth):
  import train
  hparams = params.parse_hparams('lsmooth=%s' % lsmooth)
  loss_fn, head = train.step_lib.make_loss(hparams, LOGITS.shape[1])
  assert head is None
  labels, logits = (tf.constant(LABELS, tf.float32),
                    tf.constant(LOGITS, tf.float32))
  want = float(loss_fn(labels, logits))
  got = noisy_labels.bce(labels, logits, lsmooth)
  assert float(tf.reduce_mean(got)) == pytest.approx(want, rel=1e-6)
  # A noisy source's own smoothing is the same formula.
  noisy = noisy_labels.make_noisy_loss(params.parse_hparams(
      'noisy_lsmooth=%s' % lsmooth))
  np.testing.assert_array_equal(noisy(labels, logits), got)


# (hparams, NumPy loss with the values the hparams should select)
CHOICES = [
    ('', lambda y, z: np_bce(y, z, 0.0)),
    ('noisy_lsmooth=0.4', lambda y, z: np_bce(y, z, 0.4)),
    ('noisy_loss=lq', lambda y, z: np_lq(y, z, 0.7)),
    ('noisy_loss=lq,lq_q=0.5', lambda y, z: np_lq(y, z, 0.5)),
    ('noisy_loss=bootstrap_soft', lambda y, z: np_bootstrap_soft(y, z, 0.95)),
    ('noisy_loss=bootstrap_soft,bootstrap_soft_beta=0.6',
     lambda y, z: np_bootstrap_soft(y, z, 0.6)),
    ('noisy_loss=bootstrap_hard', lambda y, z: np_bootstrap_hard(y, z, 0.8)),
    ('noisy_loss=bootstrap_hard,bootstrap_hard_beta=0.3',
     lambda y, z: np_bootstrap_hard(y, z, 0.3)),
]


@pytest.mark.parametrize('flags,np_fn', CHOICES)
def test_make_noisy_loss_follows_the_hparams(flags, np_fn):
  loss_fn = noisy_labels.make_noisy_loss(params.parse_hparams(flags))
  got = loss_fn(tf.constant(LABELS), tf.constant(LOGITS)).numpy()
  np.testing.assert_allclose(got, np_fn(LABELS, LOGITS), rtol=1e-12,
                             atol=1e-14)


@pytest.mark.parametrize('flags,message', [
    ('lq_q=0', 'hparam lq_q=0.0: must be in (0, 1]'),
    ('lq_q=1.5', 'hparam lq_q=1.5: must be in (0, 1]'),
    ('bootstrap_soft_beta=1.5',
     'hparam bootstrap_soft_beta=1.5: must be between 0 and 1'),
    ('bootstrap_hard_beta=-0.1',
     'hparam bootstrap_hard_beta=-0.1: must be between 0 and 1'),
    ('noisy_lsmooth=1.2', 'hparam noisy_lsmooth=1.2: must be between 0 and 1'),
    ('noisy_loss=mae', 'hparam noisy_loss=mae: must be one of bce, lq, '
                       'bootstrap_soft, bootstrap_hard'),
    ('noisy_loss=lq,noisy_lsmooth=0.1',
     'hparam noisy_lsmooth=0.1: smooths noisy_loss=bce only'),
])
def test_noisy_hparams_out_of_range(flags, message):
  with pytest.raises(ValueError) as error:
    params.parse_hparams(flags)
  assert str(error.value) == message


@pytest.mark.parametrize('flags', [
    'lq_q=1', 'lq_q=1e-6', 'bootstrap_soft_beta=0', 'bootstrap_soft_beta=1',
    'bootstrap_hard_beta=0', 'bootstrap_hard_beta=1', 'noisy_lsmooth=1'])
def test_noisy_hparams_at_their_bounds(flags):
  params.parse_hparams(flags)


def test_noisy_hparams_only_steer_training():
  recorded = dict(noisy_loss='bce', lq_q=0.7)
  merged = params.merge(recorded, 'noisy_loss=lq,lq_q=0.3', 'a checkpoint')
  assert (merged.noisy_loss, merged.lq_q) == ('lq', 0.3)


@pytest.mark.parametrize('call,name', [
    (lambda: noisy_labels.lq(LABELS, LOGITS, 0.0), 'q=0'),
    (lambda: noisy_labels.lq(LABELS, LOGITS, 1.1), 'q=1.1'),
    (lambda: noisy_labels.bootstrap_soft(LABELS, LOGITS, -0.5), 'beta=-0.5'),
    (lambda: noisy_labels.bootstrap_hard(LABELS, LOGITS, 2.0), 'beta=2'),
    (lambda: noisy_labels.bce(LABELS, LOGITS, 1.5), 'lsmooth=1.5'),
])
def test_loss_arguments_out_of_range(call, name):
  with pytest.raises(ValueError, match='^%s' % name):
    call()


# -------------------------------------------------------------- relabel

# keep_threshold 0.5, add_threshold 0.75 (both exact in binary, so that the
# scores equal to them test >=).
GIVEN = np.array([[1, 1, 0, 0],
                  [0, 1, 0, 0],
                  [1, 0, 1, 0],
                  [1, 1, 0, 1],
                  [0, 0, 1, 0]], np.float32)
SCORES = np.array([[0.9, 0.2, 0.85, 0.1],   # keep 0, drop 1, add 2
                   [0.1, 0.5, 0.3, 0.75],   # keep 1 and add 3 at the bounds
                   [0.3, 0.95, 0.4, 0.2],   # drop both, add 1: no rescue
                   [0.2, 0.45, 0.7, 0.3],   # all dropped: rescue 1, not 2
                   [0.7, 0.1, 0.49, 0.0]])  # all dropped: rescue 2
WANT = np.array([[1, 0, 1, 0],
                 [0, 1, 0, 1],
                 [0, 1, 0, 0],
                 [0, 1, 0, 0],
                 [0, 0, 1, 0]], np.float32)


def test_relabel_keeps_drops_and_adds():
  given, scores = GIVEN.copy(), SCORES.copy()
  labels, counts = noisy_labels.relabel(given, scores, 0.5, 0.75)
  np.testing.assert_array_equal(labels, WANT)
  assert labels.dtype == np.float32
  # kept: 1 + 1 + 0 + 1 + 1 (two rescued); dropped: 1 + 0 + 2 + 2 + 0.
  assert counts == {'kept': 4, 'dropped': 5, 'added': 3}
  np.testing.assert_array_equal(given, GIVEN)
  np.testing.assert_array_equal(scores, SCORES)


def test_relabel_thresholds_at_the_ends_of_the_interval():
  given = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
  scores = np.array([[0.0, 1.0, 0.5], [0.2, 0.3, 0.3], [0.1, 0.2, 0.3]])
  # Keep every given label (score >= 0), add only a score of 1.
  labels, counts = noisy_labels.relabel(given, scores, 0.0, 1.0)
  np.testing.assert_array_equal(labels, [[1, 1, 0], [0, 1, 1], [0, 0, 0]])
  assert counts == {'kept': 3, 'dropped': 0, 'added': 1}
  # Keep nothing below 1: each labelled clip keeps its best given label
  # (the first of a tie); a clip without labels stays without.
  labels, counts = noisy_labels.relabel(given, scores * 0.99, 1.0, 1.0)
  np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
  assert counts == {'kept': 2, 'dropped': 1, 'added': 0}


@pytest.mark.parametrize('keep,add,message', [
    (1.5, 0.5, 'keep_threshold=1.5: must be in [0, 1]'),
    (-0.1, 0.5, 'keep_threshold=-0.1: must be in [0, 1]'),
    (0.5, -0.01, 'add_threshold=-0.01: must be in [0, 1]'),
    (0.5, 1.01, 'add_threshold=1.01: must be in [0, 1]'),
    (float('nan'), 0.5, 'keep_threshold=nan: must be in [0, 1]'),
])
def test_relabel_thresholds_out_of_range(keep, add, message):
  with pytest.raises(ValueError) as error:
    noisy_labels.relabel(GIVEN, SCORES, keep, add)
  assert str(error.value) == message


def test_relabel_refuses_keep_above_add():
  """A given label must not need more evidence than a new one: keep 0.9,
  add 0.1 would drop a given label scored 0.5 while adding ones scored
  0.1."""
  with pytest.raises(ValueError) as error:
    noisy_labels.relabel(GIVEN, SCORES, 0.9, 0.1)
  assert str(error.value).startswith(
      'keep_threshold=0.9 is above add_threshold=0.1')


def test_relabel_rejects_bad_inputs():
  with pytest.raises(ValueError, match='same'):
    noisy_labels.relabel(GIVEN, SCORES[:, :3], 0.5, 0.5)
  with pytest.raises(ValueError, match='0/1'):
    noisy_labels.relabel(GIVEN * 0.5, SCORES, 0.5, 0.5)
  with pytest.raises(ValueError, match='finite'):
    noisy_labels.relabel(GIVEN, SCORES * np.nan, 0.5, 0.5)
