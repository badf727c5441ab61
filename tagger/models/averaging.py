"""Weight averaging: an exponential moving average of the trainable weights,
kept during training (ema_decay > 0) and saved in every checkpoint beside
the raw weights, under `ema/<variable path>`, with the PreciseBN statistics
of the averaged weights under `ema_precise_bn/`.

The average after update t (t = 1, 2, ...) is

  a_t = d_t a_{t-1} + (1 - d_t) w_t,   d_t = min(ema_decay, (1 + t) / (10 + t))

from a_0 = the initial weights: the warm-up of d_t keeps the first steps'
average from being held at the initial weights for ~1 / (1 - ema_decay)
steps (the num_updates form of TensorFlow's ExponentialMovingAverage).

Why both kinds of averaging: the average of the weights is a different
network from any the optimizer visited, and batch norm's statistics belong
to one set of weights: neither the moving averages kept in training (of a
trajectory of raw weights) nor the raw weights' precise statistics describe
the averaged network's activations. So the averaged weights get their own
precise statistics, computed with them at each save.
"""

import contextlib

import tensorflow as tf

from tagger.core import checkpoints

GROUP = 'ema'  # the checkpoint group of the averaged weights
PRECISE_GROUP = 'ema_precise_bn'  # their batch-norm statistics


class WeightAverage:
  """The average of `variables` (the model's trainable weights), in
  variables a checkpoint saves as GROUP."""

  def __init__(self, variables, ema_decay):
    self.ema_decay = ema_decay
    self.sources = list(variables)
    # ONLY_FIRST_REPLICA: every replica holds the same weights, so each
    # computes the same average; the first one's is kept.
    self.averages = {
        v.path: tf.Variable(v, trainable=False,
                            aggregation=tf.VariableAggregation.
                            ONLY_FIRST_REPLICA)
        for v in self.sources}
    self.updates = tf.Variable(
        0, dtype=tf.int64, trainable=False,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def update(self):
    """One step of the recurrence, after the optimizer's update."""
    self.updates.assign_add(1)
    t = tf.cast(self.updates, tf.float32)
    decay = tf.minimum(self.ema_decay, (1.0 + t) / (10.0 + t))
    for v in self.sources:
      average = self.averages[v.path]
      average.assign(decay * average + (1.0 - decay) * tf.cast(v, tf.float32))

  def saved(self):
    """{variable path: average} plus the update count, for a checkpoint."""
    return dict(self.averages, updates=self.updates)

  @contextlib.contextmanager
  def swapped_in(self):
    """The averaged weights in the model while the block runs; the raw
    ones back afterwards."""
    raw = [tf.identity(v) for v in self.sources]
    for v in self.sources:
      v.assign(self.averages[v.path])
    try:
      yield
    finally:
      for v, value in zip(self.sources, raw):
        v.assign(value)


def has_average(reader, variables):
  """Whether a checkpoint holds the averaged value of every variable."""
  keys = reader.get_variable_to_shape_map()
  return all(checkpoints.checkpoint_key(v.path, GROUP) in keys
             for v in variables)


def load_average(variables, reader):
  """Assigns each variable its averaged value from the checkpoint."""
  for v in variables:
    v.assign(reader.get_tensor(checkpoints.checkpoint_key(v.path, GROUP)))
