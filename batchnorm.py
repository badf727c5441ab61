"""Batch norm at scoring time: the model with each batch norm folded into
the convolution before it.

Inference-mode batch norm is y = (x - mean) * gamma / sqrt(var + eps) +
beta, so a convolution followed by it equals one with its kernel scaled per
output channel and a bias of beta - mean * scale: the same scores with less
arithmetic.
"""

import dataclasses

import keras
import tensorflow as tf

import model as model_lib
from layers import ConvBlock


def build_inference_model(model_name, num_classes, hparams):
  """A model for scoring only: where the architecture allows it, a twin
  without batch norm whose convolutions carry biases for the folded scale
  and shift (see fold_batch_norm); otherwise the model itself."""
  if model_lib.architecture(model_name).FOLDS_BATCH_NORM and hparams.bn:
    hparams = dataclasses.replace(hparams, bn=0, dropout=0.0)
  return model_lib.build_model(model_name, num_classes, hparams)


def fold_batch_norm(trained, inference):
  """Copies `trained` into `inference` (from build_inference_model), folding
  each batch norm's moving statistics into its convolution."""
  if len(trained.weights) == len(inference.weights):
    inference.set_weights(trained.get_weights())
    return
  for layer in trained.layers:
    twin = inference.get_layer(layer.name)
    if not isinstance(layer, ConvBlock):
      twin.set_weights(layer.get_weights())
      continue
    for (conv, norm), (twin_conv, _) in zip(layer.units, twin.units):
      kernel = conv.kernel
      scale = norm.gamma / tf.sqrt(norm.moving_variance + norm.epsilon)
      if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = kernel * scale[None, None, :, None]
      else:
        kernel = kernel * scale
      twin_conv.kernel.assign(kernel)
      twin_conv.bias.assign(norm.beta - norm.moving_mean * scale)
