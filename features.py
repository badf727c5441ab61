"""Log-mel examples from a waveform: pure functions, and a Keras layer that
applies them so that a model can take waveforms.

The baseline's definition: STFT magnitude with a 25 ms periodic Hann window
and 10 ms hop (FFT length the next power of two), 96 mel bands from 20 Hz to
20 kHz, log(mel + 0.001), framed into 1 s examples with a 0.5 s hop, the end
padded with zeros. A waveform shorter than one STFT window is zero-padded to
one window, so every clip yields at least one example.

The training and scoring pipelines (inputs.py) call these functions on the
CPU inside tf.data; LogMelExamples calls the same functions inside a model.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from params import example_geometry, stft_geometry  # noqa: F401  (geometry)
from wav import SAMPLE_RATE


def num_examples(num_samples, hparams):
  """How many examples a clip of num_samples yields (at least one).

  The one definition of the count, for Python ints and int tensors alike:
  the STFT frames of the (padded) clip, framed with the example hop and the
  end padded.
  """
  window, hop, _ = stft_geometry(hparams)
  maximum = tf.maximum if tf.is_tensor(num_samples) else max
  num_frames = 1 + (maximum(num_samples, window) - window) // hop
  example_hop = example_geometry(hparams)[1]
  return (num_frames + example_hop - 1) // example_hop


@functools.lru_cache(maxsize=None)
def _mel_matrix(mel_bands, num_spectrogram_bins, mel_min_hz, mel_max_hz):
  # Built once, eagerly, and captured as a constant by the functions that
  # use it instead of being rebuilt for every chunk or call.
  with tf.init_scope():
    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=mel_bands, num_spectrogram_bins=num_spectrogram_bins,
        sample_rate=SAMPLE_RATE, lower_edge_hertz=float(mel_min_hz),
        upper_edge_hertz=float(mel_max_hz))


def pad_to_window(waveform, hparams):
  """[..., samples] zero-padded at the end to at least one STFT window."""
  window, _, _ = stft_geometry(hparams)
  short = tf.maximum(0, window - tf.shape(waveform)[-1])
  paddings = tf.concat([tf.zeros([tf.rank(waveform) - 1, 2], tf.int32),
                        [[0, short]]], 0)
  return tf.pad(waveform, paddings)


def waveform_to_mel(waveform, hparams):
  """[..., samples] float waveform in [-1, 1] -> [..., frames, bands] mel
  energies (STFT magnitudes through the mel matrix)."""
  window, hop, fft_length = stft_geometry(hparams)
  magnitude = tf.abs(tf.signal.stft(
      pad_to_window(waveform, hparams), frame_length=window, frame_step=hop,
      fft_length=fft_length,
      window_fn=tf.signal.hann_window))  # periodic Hann by default
  return tf.matmul(magnitude, _mel_matrix(hparams.mel_bands,
                                          fft_length // 2 + 1,
                                          hparams.mel_min_hz,
                                          hparams.mel_max_hz))


def log_compress(mel, hparams):
  """The stabilised log: log(mel + mel_log_offset)."""
  return tf.math.log(mel + hparams.mel_log_offset)


def log_mel_to_examples(log_mel, hparams):
  """[..., frames, bands] -> [..., examples, example_window, bands], the end
  zero-padded."""
  window, hop = example_geometry(hparams)
  return tf.signal.frame(log_mel, frame_length=window, frame_step=hop,
                         pad_end=True, pad_value=0.0, axis=-2)


def waveform_to_features(waveform, hparams):
  """[..., samples] -> [..., frames, bands]: what the model's input
  examples are made of: the log mel (frontend=logmel, the baseline), or the
  mel energies that the model's PCEN layer compresses (frontend=pcen)."""
  mel = waveform_to_mel(waveform, hparams)
  return log_compress(mel, hparams) if hparams.frontend == 'logmel' else mel


def waveform_to_examples(waveform, hparams):
  """[..., samples] -> [..., num_examples(samples), frames, bands]."""
  return log_mel_to_examples(waveform_to_features(waveform, hparams),
                             hparams)


class PCEN(keras.layers.Layer):
  """Per-channel energy normalisation (Wang et al., "Trainable Frontend For
  Robust and Far-Field Keyword Spotting", ICASSP 2017) of [batch, frames,
  bands] mel energies E, per example:

    M(t) = (1 - s) M(t - 1) + s E(t),   M(-1) = E(0)
    PCEN(t) = (E(t) / (eps + M(t))^alpha + delta)^r - delta^r

  The smoother starts from the example's first frame (so M(0) = E(0)) and
  runs over the example's own frames only, so an example's features do not
  depend on where a long clip was cut. alpha, delta and r are per band and
  held in log space; they train with trainable=1. The smoother is a
  [frames, frames] matrix product (no loop), which any converter takes.
  """

  def __init__(self, hparams, **kwargs):
    super().__init__(trainable=bool(hparams.pcen_trainable), **kwargs)
    self.hparams = hparams

  def build(self, input_shape):
    frames, bands = input_shape[-2], input_shape[-1]
    hp = self.hparams

    def per_band(name, value):
      return self.add_weight(
          name=name, shape=(bands,),
          initializer=keras.initializers.Constant(np.log(value)))

    self.log_alpha = per_band('log_alpha', hp.pcen_alpha)
    self.log_delta = per_band('log_delta', hp.pcen_delta)
    self.log_r = per_band('log_r', hp.pcen_r)
    # M = K^T E: M(t) = sum over u <= t of s (1 - s)^(t - u) E(u), plus
    # (1 - s)^(t + 1) E(0) from M(-1) = E(0).
    s = hp.pcen_s
    t = np.arange(frames)
    kernel = np.where(t[:, None] <= t[None, :],
                      s * (1 - s) ** (t[None, :] - t[:, None]), 0.0)
    kernel[0, :] += (1 - s) ** (t + 1)
    self.smoother = tf.constant(kernel, tf.float32)  # [u, t]

  def call(self, energies):
    smooth = tf.einsum('...uf,ut->...tf', energies, self.smoother)
    alpha = tf.exp(self.log_alpha)
    delta = tf.exp(self.log_delta)
    r = tf.exp(self.log_r)
    gain = tf.pow(self.hparams.pcen_eps + smooth, -alpha)
    return tf.pow(energies * gain + delta, r) - tf.pow(delta, r)


class LogMelExamples(keras.layers.Layer):
  """[batch, samples] waveforms -> [batch, examples, frames, bands] log-mel
  examples, by waveform_to_examples. Not trainable; it lets a model (an
  export, or features computed on an accelerator) start from audio."""

  def __init__(self, hparams, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.hparams = hparams

  def call(self, waveforms):
    return waveform_to_examples(waveforms, self.hparams)

  def compute_output_shape(self, input_shape):
    frames, _ = example_geometry(self.hparams)
    return (input_shape[0], None, frames, self.hparams.mel_bands)
