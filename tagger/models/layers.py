"""Keras layers the architectures share."""

import contextlib

import keras
from keras import ops


def synchronized(hparams):
  """Whether batch norm pools its training statistics over the replicas of
  the distribution strategy the model is built under (bn_sync=1 and more
  than one replica); with one replica the question does not arise."""
  import tensorflow as tf
  return bool(hparams.bn_sync) and (
      tf.distribute.get_strategy().num_replicas_in_sync > 1)


def initializer(hparams):
  """Weights start from a truncated normal of stddev weights_init_stddev, or
  Xavier (Glorot uniform) when it is 0; biases always start at 0."""
  if hparams.weights_init_stddev == 0.0:
    return keras.initializers.GlorotUniform()
  return keras.initializers.TruncatedNormal(stddev=hparams.weights_init_stddev)


# While batch statistics are observed (see observe_batch_statistics), the
# list that BatchNorm layers append (layer, mean, variance) to; else None.
_observed = None


@contextlib.contextmanager
def observe_batch_statistics():
  """Within this context, every BatchNorm normalises with the statistics of
  the batch it sees (as in training) without touching its moving averages,
  and appends (layer, batch mean, batch variance) to the yielded list, in
  the order the layers run. Used while tracing a function of the model."""
  global _observed
  previous, _observed = _observed, []
  try:
    yield _observed
  finally:
    _observed = previous


class BatchNorm(keras.layers.BatchNormalization):
  """Keras batch norm that can also report the statistics of its inputs
  (see observe_batch_statistics); otherwise exactly the Keras layer."""

  def call(self, inputs, training=None, mask=None):
    if _observed is None:
      return super().call(inputs, training=training, mask=mask)
    x = ops.cast(inputs, 'float32')
    # This device's batch alone (no cross-replica reduction: the statistics
    # pass runs outside the replicas).
    mean, variance = ops.moments(x, axes=self._reduction_axes)
    _observed.append((self, mean, variance))
    outputs = ops.batch_normalization(
        x, mean, variance, axis=self.axis, offset=self.beta, scale=self.gamma,
        epsilon=self.epsilon)
    return ops.cast(outputs, self.compute_dtype)


class ConvBlock(keras.layers.Layer):
  """One scope of convolutions, each followed by optional batch norm and an
  activation. Sub-layers are named so variables read `scope/unit/kernel` and
  `scope/unit_bn/gamma`, which is what the warm-start scope flags match."""

  def __init__(self, units, activation, bn_momentum, bn_epsilon,
               bn_synchronized=False, **kwargs):
    """bn_momentum None: no batch norm."""
    super().__init__(**kwargs)
    self.units = []
    for unit_name, conv in units:
      norm = (BatchNorm(momentum=bn_momentum, epsilon=bn_epsilon,
                        synchronized=bn_synchronized, name=unit_name + '_bn')
              if bn_momentum is not None else None)
      self.units.append((conv, norm))
    self.activation = keras.activations.get(activation)

  def call(self, x, training=None):
    for conv, norm in self.units:
      x = conv(x)
      if norm is not None:
        x = norm(x, training=training)
      x = self.activation(x)
    return x
