"""Training options with examples made on the device (--features_on
device) from several sources: the examples follow the feature hparams
(NumPy's examples of the same crops), the step sets SpecAugment's masks on
them and mixes examples and labels; the size of the example cache counts
the bands."""

import math
import os

import numpy as np
import pytest

from support import reference
from support.options import FEATURES, hparams_of, np_crop_examples
from support.scores import read_class_names



# --- training: examples made on the device, several sources -----------------

def _device_batch(two_sources, hparams, seed=5):
  """The first batch (crops, frames), (labels, noisy) of the two sources
  as --features_on device trains on them."""
  import inputs
  sources = [inputs.Source(*two_sources[0], weight=1.0),
             inputs.Source(*two_sources[1], weight=1.0, noisy=True)]
  return next(iter(inputs.sources_dataset(
      sources, read_class_names(), hparams, seed=seed, crops=True)))


def test_device_examples_follow_the_feature_hparams(two_sources):
  """With several sources and --features_on device, a batch holds
  batch_size crops; the step makes from them the examples NumPy makes
  with the feature hparams given (64 bands, 100 Hz to 8 kHz, offset 0.01,
  20 ms windows, 0.5 s examples)."""
  import train
  hparams = hparams_of(FEATURES + ',batch_size=5')
  (crops, frames), (labels, noisy) = _device_batch(two_sources, hparams)
  assert crops.shape == (5, (50 - 1) * 441 + 882)
  assert labels.shape == (5, 80) and noisy.shape == (5,)
  got = train.state_lib.device_features(hparams)((crops, frames)).numpy()
  expected = np_crop_examples(crops, frames, hparams)
  assert got.shape == expected.shape == (5, 50, 64)
  np.testing.assert_allclose(got, expected, atol=5e-5, rtol=0)
  # The offset shows in quiet bands: log(0.01), not log(0.001).
  assert expected[expected != 0].min() > math.log(0.01) - 1e-9


def _device_state(hparams):
  import train
  return train.state_lib.TrainingState('crnn', hparams, 80, None, features_on='device')


def test_device_step_sets_spec_augment_masks(two_sources):
  """--features_on device with SpecAugment: the examples the step trains
  on are the NumPy examples of the crops with whole frames and whole bands
  set to each example's mean, no more of them than the masks' counts times
  their widths."""
  import tensorflow as tf
  hparams = hparams_of(FEATURES + ',batch_size=8,crnn_filters=2,'
                       'specaug_time_masks=2,specaug_time_width=6,'
                       'specaug_freq_masks=3,specaug_freq_width=5')
  state = _device_state(hparams)
  (crops, frames), (labels, _) = _device_batch(two_sources, hparams)
  tf.random.set_seed(1)
  got, got_labels = (t.numpy() for t in state.prepare((crops, frames),
                                                      labels))
  np.testing.assert_array_equal(got_labels, labels.numpy())
  expected = np_crop_examples(crops, frames, hparams)
  means = expected.mean(axis=(1, 2), keepdims=True)
  kept = np.abs(got - expected) < 1e-4
  masked = np.abs(got - means) < 1e-3
  assert np.all(kept | masked)
  masked &= ~kept
  whole_frames = masked.all(axis=2)
  whole_bands = masked.all(axis=1)
  # Every masked cell lies in a masked frame or band.
  assert np.array_equal(masked, masked & (whole_frames[:, :, None] |
                                          whole_bands[:, None, :]))
  assert whole_frames.sum(axis=1).max() <= 2 * 6
  assert whole_bands.sum(axis=1).max() <= 3 * 5
  assert whole_frames.any(axis=1).mean() > 0.5
  assert whole_bands.any(axis=1).mean() > 0.5


def test_device_step_mixes_examples_and_labels(two_sources):
  """--features_on device with mixup: each example the step trains on is
  w x + (1 - w) x' of the NumPy examples x and x' of two crops, with the
  same w and partner as its labels (one class each here, so that both can
  be read off the labels)."""
  import tensorflow as tf
  hparams = hparams_of(FEATURES + ',batch_size=8,crnn_filters=2,mixup=0.5')
  state = _device_state(hparams)
  (crops, frames), _ = _device_batch(two_sources, hparams)
  labels = np.eye(8, 80, dtype=np.float32)
  tf.random.set_seed(2)
  got, got_labels = (t.numpy() for t in state.prepare((crops, frames),
                                                      tf.constant(labels)))
  expected = np_crop_examples(crops, frames, hparams)
  mixed = 0
  for i in range(8):
    weights = got_labels[i, :8]
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    others = [j for j in np.flatnonzero(weights > 1e-6) if j != i]
    partner = others[0] if others else i
    w = weights[i] if others else 1.0
    np.testing.assert_allclose(
        got[i], w * expected[i] + (1 - w) * expected[partner], atol=2e-4)
    mixed += 0.05 < w < 0.95
  assert mixed >= 2


# --- the example cache ------------------------------------------------------

def test_example_cache_size_counts_the_bands(two_sources):
  """--train_cache_examples holds per example 50 frames x 64 bands of
  float32 and 80 float32 labels: 13,120 bytes; the examples are those of
  the clips' lengths, counted in NumPy."""
  import inputs
  hparams = hparams_of(FEATURES)
  sources = [inputs.Source(*s) for s in two_sources]
  count = sum(reference.np_num_examples(len(reference.read_wav_samples(
      os.path.join(clip_dir, f))), hparams)
              for csv_path, clip_dir in two_sources
              for f in sorted(os.listdir(clip_dir)))
  assert inputs.example_cache_size(sources, read_class_names(), hparams) == (
      count, count * (4 * 50 * 64 + 4 * 80))
