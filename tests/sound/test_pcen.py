"""features.LogMelExamples (the waveform front end a model can own), the
tf.data pipeline and a NumPy reference give the same examples."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest
import tensorflow as tf

from tagger.sound import features
import inputs
from tools import make_demo_data
from tagger.core import params
from support import reference
from support.signals import pipeline_examples

SR = reference.SR
HPARAMS = params.parse_hparams()
WINDOW = reference.stft_window(HPARAMS)
HOP = reference.stft_hop(HPARAMS)

CHUNK = inputs.EXAMPLES_PER_CHUNK * 50  # frames in a chunk's examples' hops


@pytest.fixture
def tf_mel_matrix(monkeypatch):
  # The reference's float64 mel matrix differs from TensorFlow's float32 one
  # by up to ~5e-5 (test_features checks the two against each other), which
  # is ~1e-5 in the log. With TensorFlow's matrix in the NumPy STFT, framing
  # and log, the remaining differences are float32 rounding (< 3e-6 seen).
  matrix = tf.signal.linear_to_mel_weight_matrix(
      96, 1025, SR, 20.0, 20000.0).numpy().astype(np.float64)
  monkeypatch.setattr(reference, 'np_mel_matrix', lambda hparams: matrix)


def clip(num_samples, seed):
  """Noise with a quiet stretch and a stretch of digital silence, so that
  the log offset shapes part of every long example."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-0.5, 0.5, num_samples)
  x[:num_samples // 3] *= 1e-3
  x[num_samples // 3:num_samples // 2] = 0.0
  return x


@pytest.mark.parametrize('num_samples', [
    100,                                # shorter than one STFT window
    WINDOW - 1,
    WINDOW,                             # one frame
    WINDOW + 99 * HOP,                  # exactly one example window
    WINDOW + (CHUNK - 1) * HOP,         # exactly one chunk of examples
    WINDOW + CHUNK * HOP,               # one frame into the next chunk
    3 * SR + 17,
    12 * SR,                            # several chunks
])
def test_layer_pipeline_and_numpy_agree(tmp_path, tf_mel_matrix,
                                        num_samples):
  hparams = params.parse_hparams()
  make_demo_data.write_wav(str(tmp_path / 'c.wav'), clip(num_samples, 1))
  samples = reference.read_wav_samples(str(tmp_path / 'c.wav'))
  expected = reference.np_examples(samples, reference.README_DEFAULTS)
  assert expected.shape[0] == features.num_examples(num_samples, hparams)
  pipeline = pipeline_examples('c.wav', str(tmp_path), hparams)
  layer = features.LogMelExamples(hparams)
  from_layer = layer(tf.constant(samples[None], tf.float32)).numpy()[0]
  assert pipeline.shape == from_layer.shape == expected.shape
  np.testing.assert_allclose(pipeline, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(from_layer, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(from_layer, pipeline, atol=1e-5, rtol=0)


def test_layer_in_a_model_on_a_batch():
  """A Keras model that starts from waveforms: a batch of equal-length
  waveforms gives each waveform's own examples."""
  import keras
  hparams = params.parse_hparams()
  waveforms = np.stack([clip(2 * SR, seed) for seed in (2, 3)]).astype(
      np.float32)
  inputs_ = keras.Input((None,), name='waveform')
  net = keras.Model(inputs_, features.LogMelExamples(hparams)(inputs_))
  got = net(waveforms).numpy()
  assert got.shape == (2, features.num_examples(2 * SR, hparams), 100, 96)
  for row, waveform in zip(got, waveforms):
    single = features.waveform_to_examples(tf.constant(waveform), hparams)
    np.testing.assert_allclose(row, single.numpy(), atol=1e-5, rtol=0)
  assert not net.trainable_weights
