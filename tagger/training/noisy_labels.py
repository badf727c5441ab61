"""Losses and relabelling rules for training sources with noisy labels.

Each loss takes [batch, classes] labels (0/1 or soft) and sigmoid logits and
returns a [batch] tensor: every example's loss, averaged over its classes.
Per-example values let a caller weight and average examples drawn from
sources of different label quality (curated and noisy) in one batch.

Every class is its own binary problem, so the losses written for a softmax
(Zhang and Sabuncu's L_q, Reed et al.'s bootstrapping) are applied per class
to the probability of the class being present, p = sigmoid(z).
"""

import numpy as np
import tensorflow as tf

from tagger.core import param_checks


def _check_range(name, value, low, high, low_open=False):
  if not (low < value <= high if low_open else low <= value <= high):
    raise ValueError('%s=%s: must be in %s%g, %g]' % (
        name, value, '(' if low_open else '[', low, high))


def _prepare(labels, logits):
  logits = tf.convert_to_tensor(logits)
  return tf.cast(labels, logits.dtype), logits


def _cross_entropy(targets, logits):
  """Per-example mean over classes of the sigmoid cross-entropy."""
  return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
      labels=targets, logits=logits), axis=-1)


def bce(labels, logits, lsmooth=0.0):
  """Binary cross-entropy with labels smoothed toward 0.5, as train.py's
  loss=bce: y becomes (1 - lsmooth) * y + 0.5 * lsmooth."""
  _check_range('lsmooth', lsmooth, 0.0, 1.0)
  labels, logits = _prepare(labels, logits)
  return _cross_entropy(labels * (1.0 - lsmooth) + 0.5 * lsmooth, logits)


def lq(labels, logits, q):
  """Generalized cross-entropy L_q = (1 - p^q) / q (Zhang and Sabuncu,
  NeurIPS 2018) of each class's binary label: y * L_q(p) + (1 - y) *
  L_q(1 - p). q -> 0 gives BCE, q = 1 the mean absolute error 1 - p; values
  in between trade BCE's fast fitting for MAE's robustness to wrong labels.

  p^q is exp(q * log p) with log p = log_sigmoid(+-z), and 1 - p^q is
  -expm1(q * log p): finite for any logit, and exact as q -> 0.
  """
  _check_range('q', q, 0.0, 1.0, low_open=True)
  labels, logits = _prepare(labels, logits)
  present = -tf.math.expm1(q * tf.math.log_sigmoid(logits)) / q
  absent = -tf.math.expm1(q * tf.math.log_sigmoid(-logits)) / q
  return tf.reduce_mean(labels * present + (1.0 - labels) * absent, axis=-1)


def bootstrap_soft(labels, logits, beta):
  """Soft bootstrapping (Reed et al., ICLR 2015 workshop): the cross-entropy
  of p against the target beta * y + (1 - beta) * p, p = sigmoid(z).

  The target's p is NOT a constant: the paper's loss is
  -sum (beta t + (1 - beta) q) log q with q the prediction, which it reads
  as cross-entropy plus (1 - beta) times the entropy of the prediction, a
  pull toward confident predictions. Gradients flow through both sides.
  beta = 1 is plain BCE.
  """
  _check_range('beta', beta, 0.0, 1.0)
  labels, logits = _prepare(labels, logits)
  targets = beta * labels + (1.0 - beta) * tf.sigmoid(logits)
  return _cross_entropy(targets, logits)


def bootstrap_hard(labels, logits, beta):
  """Hard bootstrapping (Reed et al.): the cross-entropy of p against
  beta * y + (1 - beta) * 1[p > 0.5], the binary form of the paper's argmax.
  The indicator has no gradient. beta = 1 is plain BCE."""
  _check_range('beta', beta, 0.0, 1.0)
  labels, logits = _prepare(labels, logits)
  predicted = tf.cast(logits > 0.0, logits.dtype)  # sigmoid(z) > 0.5
  return _cross_entropy(beta * labels + (1.0 - beta) * predicted, logits)


def make_noisy_loss(hparams):
  """The loss of examples from a noisy source, as chosen by the hparams:
  a function (labels, logits) -> [batch] per-example losses."""
  name = hparams.noisy_loss
  if name == 'bce':
    return lambda labels, logits: bce(labels, logits, hparams.noisy_lsmooth)
  if name == 'lq':
    return lambda labels, logits: lq(labels, logits, hparams.lq_q)
  if name == 'bootstrap_soft':
    return lambda labels, logits: bootstrap_soft(
        labels, logits, hparams.bootstrap_soft_beta)
  if name == 'bootstrap_hard':
    return lambda labels, logits: bootstrap_hard(
        labels, logits, hparams.bootstrap_hard_beta)
  raise ValueError('hparam noisy_loss=%s: must be one of %s' % (
      name, ', '.join(param_checks.NOISY_LOSSES)))


def relabel(given, scores, keep_threshold, add_threshold):
  """New multi-hot labels of clips from their given labels and a model's
  scores (both [clips, classes]).

  A given label is kept where score >= keep_threshold and dropped
  elsewhere; a label not given is added where score >= add_threshold (at
  least keep_threshold: a given label never needs more evidence). A
  clip left with no label although it had some keeps its highest-scoring
  given label (counted as kept; ties go to the lowest class index), so that
  every clip still trains toward something. Returns (float32 labels,
  {'kept': n, 'dropped': n, 'added': n}).
  """
  _check_range('keep_threshold', keep_threshold, 0.0, 1.0)
  _check_range('add_threshold', add_threshold, 0.0, 1.0)
  if keep_threshold > add_threshold:
    raise ValueError('keep_threshold=%s is above add_threshold=%s: a given '
                     'label would need a higher score to stay than a new one '
                     'to be added' % (keep_threshold, add_threshold))
  given, scores = np.asarray(given), np.asarray(scores, np.float64)
  if given.ndim != 2 or given.shape != scores.shape:
    raise ValueError('labels %s and scores %s: want the same [clips, '
                     'classes] shape' % (given.shape, scores.shape))
  if not np.isin(given, (0, 1)).all():
    raise ValueError('labels: want multi-hot 0/1 values')
  if not np.isfinite(scores).all():
    raise ValueError('scores: not all finite')
  given = given == 1
  kept = given & (scores >= keep_threshold)
  added = ~given & (scores >= add_threshold)
  emptied = given.any(axis=1) & ~kept.any(axis=1) & ~added.any(axis=1)
  best = np.argmax(np.where(given, scores, -np.inf), axis=1)
  kept[np.flatnonzero(emptied), best[emptied]] = True
  counts = {'kept': int(kept.sum()), 'dropped': int((given & ~kept).sum()),
            'added': int(added.sum())}
  return (kept | added).astype(np.float32), counts
