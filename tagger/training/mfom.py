"""Maximal figure-of-merit (MFoM) objectives for multi-label tagging.

After Kukanov, Hautamaki and Lee, "Maximal Figure-of-Merit Embedding for
Multi-label Audio Classification" (ICASSP 2018). Scores s (sigmoid outputs)
are turned into a units-vs-zeros misclassification measure d, then into a
smooth error count l = sigmoid(alpha * d + beta), from which a differentiable
EER, Cprim or micro-F1 is computed over the whole batch.

A row with no positive class (or no negative class) has no misclassification
measure: it is masked out of every objective instead of producing NaN.
"""

import keras
import tensorflow as tf

EPSILON = 1e-7


def _row_mask(y_true):
  """1.0 for rows with at least one positive and one negative class."""
  positives = tf.reduce_sum(y_true, axis=-1, keepdims=True)
  negatives = tf.reduce_sum(1.0 - y_true, axis=-1, keepdims=True)
  return tf.cast((positives > 0) & (negatives > 0), y_true.dtype)


def _log_mean_exp(scores, mask):
  """log of the mean of exp(scores) where mask is 1, per row; 0 where a row
  has none (those rows are masked out by the objectives)."""
  count = tf.reduce_sum(mask, axis=-1, keepdims=True)
  total = tf.reduce_sum(tf.exp(scores) * mask, axis=-1, keepdims=True)
  # exp(s) >= 1 for s in [eps, 1 - eps], so the mean is finite and positive.
  return tf.math.log(tf.where(count > 0, total / tf.maximum(count, 1.0), 1.0))


def uvz_misclassification(y_true, scores):
  """d = -s + (1 - y) log mean_{pos} e^s + y log mean_{neg} e^s."""
  y_true = tf.cast(y_true, scores.dtype)
  s = tf.clip_by_value(scores, EPSILON, 1.0 - EPSILON)
  return (-s + (1.0 - y_true) * _log_mean_exp(s, y_true) +
          y_true * _log_mean_exp(s, 1.0 - y_true))


class UvZMisclassification(keras.layers.Layer):
  """Called on [y_true, scores]; returns the units-vs-zeros measure d."""

  def call(self, inputs):
    y_true, scores = inputs
    return uvz_misclassification(y_true, scores)


class SmoothErrorCounter(keras.layers.Layer):
  """l = sigmoid(alpha * d + beta) with trainable per-class alpha and beta."""

  def build(self, input_shape):
    num_classes = input_shape[-1]
    self.alpha = self.add_weight(shape=(num_classes,), name='alpha',
                                 initializer='ones')
    self.beta = self.add_weight(shape=(num_classes,), name='beta',
                                initializer='zeros')

  def call(self, d):
    return tf.sigmoid(self.alpha * d + self.beta)


def _error_rates(y_true, l):
  """Smooth false-negative and false-positive rates over the whole batch."""
  y_true = tf.cast(y_true, l.dtype)
  mask = _row_mask(y_true)
  positives = y_true * mask
  negatives = (1.0 - y_true) * mask
  fnr = tf.math.divide_no_nan(tf.reduce_sum(l * positives),
                              tf.reduce_sum(positives))
  fpr = tf.math.divide_no_nan(tf.reduce_sum((1.0 - l) * negatives),
                              tf.reduce_sum(negatives))
  return fnr, fpr


def mfom_eer_normalized(y_true, l):
  fnr, fpr = _error_rates(y_true, l)
  return fpr + 4.0 * tf.abs(fnr - fpr)


def mfom_cprim(y_true, l):
  fnr, fpr = _error_rates(y_true, l)
  return 0.5 * fnr + 10.0 * fpr


def mfom_microf1(y_true, l):
  y_true = tf.cast(y_true, l.dtype)
  mask = _row_mask(y_true)
  hits = tf.reduce_sum((1.0 - l) * y_true * mask)
  total = tf.reduce_sum(((1.0 - l) + y_true) * mask)
  return 1.0 - 2.0 * tf.math.divide_no_nan(hits, total)


def mfom_eer_embed(y_true, scores, alpha=3.0, beta=0.0, rounds=3):
  """BCE of the scores against the soft labels 1 - l, where l comes from a
  fixed smooth error counter applied to the scores and then twice more to
  1 - l, as the seed's code does. Gradients flow through both sides."""
  y_true = tf.cast(y_true, scores.dtype)
  l = tf.sigmoid(alpha * uvz_misclassification(y_true, scores) + beta)
  for _ in range(rounds - 1):
    l = tf.sigmoid(alpha * uvz_misclassification(y_true, 1.0 - l) + beta)
  target = 1.0 - l
  s = tf.clip_by_value(scores, EPSILON, 1.0 - EPSILON)
  bce = -(target * tf.math.log(s) + (1.0 - target) * tf.math.log(1.0 - s))
  mask = _row_mask(y_true)[:, 0]
  return tf.math.divide_no_nan(
      tf.reduce_sum(tf.reduce_mean(bce, axis=-1) * mask), tf.reduce_sum(mask))


_LAYER_OBJECTIVE_FNS = {
    'mfom_eer_normalized': mfom_eer_normalized,
    'mfom_cprim': mfom_cprim,
    'mfom_microf1': mfom_microf1,
}


class MFoMObjective(keras.layers.Layer):
  """The training-only head of a layer-based MFoM objective: the two MFoM
  layers on top of the sigmoid scores and the objective on their output.
  Its alpha and beta are trained and checkpointed with the model; eval and
  inference use the plain scores."""

  def __init__(self, objective, **kwargs):
    super().__init__(**kwargs)
    self.objective = _LAYER_OBJECTIVE_FNS[objective]
    self.uvz = UvZMisclassification(name='uvz')
    self.counter = SmoothErrorCounter(name='smooth_error_counter')

  def call(self, y_true, scores):
    return self.objective(y_true, self.counter(self.uvz([y_true, scores])))
