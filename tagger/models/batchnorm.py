"""Batch norm at scoring time: which statistics it uses, and the model with
each batch norm folded into the convolution before it.

The moving averages training keeps (decay `bndecay`, as the original) lag
behind the weights: with the default 0.9997 they are still near their
initial 0 and 1 thousands of steps in. So when training saves a checkpoint
it also stores each batch norm's population statistics, recomputed with that
checkpoint's own weights over a fixed set of training batches (PreciseBN: Wu
& Johnson, "Rethinking 'Batch' in BatchNorm", 2021), under `precise_bn/`
next to the moving averages, which keep their own values. Scoring uses them
unless bn_stats=moving or the checkpoint has none.

Inference-mode batch norm is y = (x - mean) * gamma / sqrt(var + eps) +
beta, so a convolution followed by it equals one with its kernel scaled per
output channel and a bias of beta - mean * scale: the same scores with less
arithmetic.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tagger.core import checkpoints
import model as model_lib
from tagger.models.layers import BatchNorm, ConvBlock, observe_batch_statistics

PRECISE = 'precise_bn'  # the checkpoint group of the precise statistics


def batch_norm_layers(model):
  """The model's BatchNorm layers, in build order."""
  return [layer for layer in model._flatten_layers(include_self=False)
          if isinstance(layer, BatchNorm)]


class PreciseStatistics:
  """The population statistics of a model's batch norms, in variables that a
  training checkpoint saves as the group PRECISE."""

  def __init__(self, model):
    self.model = model
    self.layers = batch_norm_layers(model)
    # {moving_mean / moving_variance path: its precise counterpart}
    self.variables = {v.path: tf.Variable(v, trainable=False)
                      for layer in self.layers
                      for v in (layer.moving_mean, layer.moving_variance)}
    self._moments = tf.function(self._batch_moments, autograph=False)

  def _batch_moments(self, examples):
    """{layer path: (mean, variance)} of each batch norm's inputs."""
    with observe_batch_statistics() as observed:
      self.model(examples, training=False)
    return {layer.path: (mean, variance) for layer, mean, variance in observed}

  def compute(self, batches):
    """{moving variable path: value} of every batch norm's population mean
    and variance over the examples of `batches`.

    One forward pass per batch with the model's current weights, in
    inference mode (no dropout, nothing updated) except that each batch norm
    normalises with its batch's statistics, as in training, so that each
    layer sees the inputs it sees in training. Each layer's mean and variance
    are over all the batches' values of its inputs, per channel, accumulated
    in float64.
    """
    sums = {layer.path: 0.0 for layer in self.layers}
    squares = dict(sums)
    count = 0
    for examples in batches:
      # Equal-sized batches: E[x] and E[x^2] are the means of the batches'.
      for path, (mean, variance) in self._moments(examples).items():
        mean = mean.numpy().astype(np.float64)
        sums[path] = sums[path] + mean
        squares[path] = squares[path] + (
            variance.numpy().astype(np.float64) + mean ** 2)
      count += 1
    if not count:
      raise ValueError('no batches to compute batch-norm statistics from')
    statistics = {}
    for layer in self.layers:
      mean = sums[layer.path] / count
      statistics[layer.moving_mean.path] = mean
      statistics[layer.moving_variance.path] = np.maximum(
          squares[layer.path] / count - mean ** 2, 0.0)
    return statistics

  def update(self, batches):
    """Recomputes the statistics with the model's current weights."""
    for path, value in self.compute(batches).items():
      self.variables[path].assign(value.astype(np.float32))


def use_precise(model, reader, prefix, group=PRECISE):
  """Replaces the moving averages of `model` (just loaded from the
  checkpoint at `prefix`) by the checkpoint's precise statistics (those of
  `group`: of the raw weights, or averaging.PRECISE_GROUP of the averaged
  ones), if it has them all; returns the statistics now in use: 'precise',
  'moving', or 'none' for a model without batch norm."""
  moving = [v for layer in batch_norm_layers(model)
            for v in (layer.moving_mean, layer.moving_variance)]
  if not moving:
    return 'none'
  keys = reader.get_variable_to_shape_map()
  if not all(checkpoints.checkpoint_key(v.path, group) in keys
             for v in moving):
    return 'moving'
  for v in moving:
    v.assign(reader.get_tensor(checkpoints.checkpoint_key(v.path, group)))
  return 'precise'


def build_inference_model(model_name, num_classes, hparams, static=False):
  """A model for scoring only: where the architecture allows it, a twin
  without batch norm whose convolutions carry biases for the folded scale
  and shift (see fold_batch_norm); otherwise the model itself."""
  if model_lib.architecture(model_name).FOLDS_BATCH_NORM and hparams.bn:
    hparams = dataclasses.replace(hparams, bn=0, dropout=0.0)
  return model_lib.build_model(model_name, num_classes, hparams, static)


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
