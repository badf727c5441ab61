"""Keras layers the architectures share."""

import keras


def initializer(hparams):
  """Weights start from a truncated normal of stddev weights_init_stddev, or
  Xavier (Glorot uniform) when it is 0; biases always start at 0."""
  if hparams.weights_init_stddev == 0.0:
    return keras.initializers.GlorotUniform()
  return keras.initializers.TruncatedNormal(stddev=hparams.weights_init_stddev)


class ConvBlock(keras.layers.Layer):
  """One scope of convolutions, each followed by optional batch norm and an
  activation. Sub-layers are named so variables read `scope/unit/kernel` and
  `scope/unit_bn/gamma`, which is what the warm-start scope flags match."""

  def __init__(self, units, activation, hparams, batch_norm=True, **kwargs):
    super().__init__(**kwargs)
    self.units = []
    for unit_name, conv in units:
      norm = (keras.layers.BatchNormalization(
          momentum=hparams.bndecay, epsilon=hparams.bneps,
          name=unit_name + '_bn') if batch_norm else None)
      self.units.append((conv, norm))
    self.activation = keras.activations.get(activation)

  def call(self, x, training=None):
    for conv, norm in self.units:
      x = conv(x)
      if norm is not None:
        x = norm(x, training=training)
      x = self.activation(x)
    return x
