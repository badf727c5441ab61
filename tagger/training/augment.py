"""Data augmentation in the training step (off by default): SpecAugment's
masks and mixup. Both run inside the compiled step, on each replica's share
of the batch, after the pipeline and before the model; eval, inference and
the PreciseBN statistics see the examples as they are.

SpecAugment (Park et al., Interspeech 2019), without time warping: per
example, specaug_freq_masks bands ranges and specaug_time_masks frame ranges,
each of a width drawn uniformly from 0 to specaug_freq_width (or
specaug_time_width) and a start drawn uniformly from where it fits, are set
to the example's mean, so that a mask carries no energy of its own. With
frontend=pcen the examples are mel energies, which the model's PCEN layer
compresses; specaug_after_pcen=1 moves the masks into the model, onto PCEN's
output (SpecAugmentLayer), so that they are gaps of the model's features,
as masks on log-mel examples are, and not loud blocks that PCEN sees.

mixup (Zhang et al., ICLR 2018): each example is mixed with another of the
same batch (a random permutation), x = l x + (1 - l) x', y = l y + (1 - l) y',
with l drawn from Beta(mixup, mixup) per example.
"""

import keras
import tensorflow as tf



def _masks(shape, count, max_width, axis_length):
  """[batch, axis_length] float 1 where any of `count` masks covers, drawn
  per example."""
  batch = shape[0]
  covered = tf.zeros([batch, axis_length], tf.bool)
  positions = tf.range(axis_length)[None, :]
  for _ in range(count):
    width = tf.random.uniform([batch, 1], 0, max_width + 1, tf.int32)
    start = tf.cast(tf.floor(tf.random.uniform([batch, 1]) * tf.cast(
        axis_length - width + 1, tf.float32)), tf.int32)
    covered |= (positions >= start) & (positions < start + width)
  return covered


def spec_augment(examples, hparams):
  """[batch, frames, bands] with SpecAugment's masks applied."""
  shape = tf.shape(examples)
  frames, bands = examples.shape[1], examples.shape[2]
  mean = tf.reduce_mean(examples, axis=[1, 2], keepdims=True)
  covered = tf.zeros_like(examples, tf.bool)
  if hparams.specaug_time_masks:
    covered |= _masks(shape, hparams.specaug_time_masks,
                      min(hparams.specaug_time_width, frames), frames)[
                          :, :, None]
  if hparams.specaug_freq_masks:
    covered |= _masks(shape, hparams.specaug_freq_masks,
                      min(hparams.specaug_freq_width, bands), bands)[
                          :, None, :]
  return tf.where(covered, mean, examples)


class SpecAugmentLayer(keras.layers.Layer):
  """SpecAugment's masks inside the model (specaug_after_pcen): applied
  in training only; scoring and the PreciseBN statistics see the
  features as they are."""

  def __init__(self, hparams, **kwargs):
    super().__init__(**kwargs)
    self.hparams = hparams

  def call(self, examples, training=None):
    return spec_augment(examples, self.hparams) if training else examples


def mixup(examples, labels, alpha):
  """Examples and labels mixed with a partner of the same batch."""
  batch = tf.shape(examples)[0]
  a = tf.random.gamma([batch], alpha)
  b = tf.random.gamma([batch], alpha)
  weight = a / tf.maximum(a + b, 1e-12)  # Beta(alpha, alpha)
  partner = tf.random.shuffle(tf.range(batch))
  w = weight[:, None, None]
  examples = w * examples + (1 - w) * tf.gather(examples, partner)
  w = weight[:, None]
  labels = w * labels + (1 - w) * tf.gather(labels, partner)
  return examples, labels


def make(hparams):
  """The augmentation (examples, labels) -> (examples, labels) the hparams
  ask for, or None."""
  masks = hparams.has_masks and not hparams.specaug_after_pcen
  if not masks and not hparams.mixup:
    return None

  def augment(examples, labels):
    if masks:
      examples = spec_augment(examples, hparams)
    if hparams.mixup:
      examples, labels = mixup(examples, labels, hparams.mixup)
    return examples, labels

  return augment
