"""Log-mel examples from a waveform: pure functions, and a Keras layer that
applies them so that a model can take waveforms.

The baseline's definition: STFT magnitude with a 25 ms periodic Hann window
and 10 ms hop (FFT length the next power of two), 96 mel bands from 20 Hz to
20 kHz, log(mel + 0.001), framed into 1 s examples with a 0.5 s hop, the end
padded with zeros. A waveform shorter than one STFT window is zero-padded to
one window, so every clip yields at least one example.

A clip is cut into chunks of EXAMPLES_PER_CHUNK examples (chunk_bounds),
each carrying the extra samples its last example needs, so that memory
stays bounded however long the clip while every example equals the one
whole-clip framing would give. The training and scoring pipelines
(inputs.py), tagging and the exported model all cut clips this way and
make a chunk's examples with chunk_examples: on the CPU inside tf.data, or
inside a model. With --features_on device, training ships each example's
samples (a crop, chunk_crops) and the model makes the example from it
(crops_to_examples), which gives the same example.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from tagger.sound.wav import SAMPLE_RATE

EXAMPLES_PER_CHUNK = 16


def num_examples(num_samples, hparams):
  """How many examples a clip of num_samples yields (at least one).

  The one definition of the count, for Python ints and int tensors alike:
  the STFT frames of the (padded) clip, framed with the example hop and the
  end padded.
  """
  example_hop = hparams.geometry.example_hop_frames
  return (num_frames(num_samples, hparams) + example_hop - 1) // example_hop


def num_frames(num_samples, hparams):
  """STFT frames of a clip of num_samples (zero-padded to one window)."""
  window, hop = hparams.geometry.window, hparams.geometry.hop
  maximum = tf.maximum if tf.is_tensor(num_samples) else max
  return 1 + (maximum(num_samples, window) - window) // hop


def chunk_bounds(num_samples, hparams):
  """Splits a clip of num_samples (an int tensor) into chunks of
  EXAMPLES_PER_CHUNK examples: per chunk, its start and end sample and the
  number of examples it contributes.

  The chunks are walked in two loops, each where it must run: the input
  pipeline's (inputs._chunks, in tf.data: training, eval, inference,
  relabelling, calibration and export's checks; tagging feeds its chunks,
  read in Python so that one bad file stops no other, to the same
  chunk_examples through scoring.waveform_examples), and the exported
  graph's (waveform_model.py, a tf.while_loop: a SavedModel or TFLite model
  holds no tf.data)."""
  geometry = hparams.geometry
  total = num_examples(num_samples, hparams)
  first_example = tf.range(0, total, EXAMPLES_PER_CHUNK)
  starts = first_example * geometry.example_hop_samples
  # Frames a full chunk needs: its examples' hops plus the last one's tail.
  chunk_frames = ((EXAMPLES_PER_CHUNK - 1) * geometry.example_hop_frames +
                  geometry.example_frames)
  ends = tf.minimum(starts + (chunk_frames - 1) * geometry.hop +
                    geometry.window, num_samples)
  counts = tf.minimum(total - first_example, EXAMPLES_PER_CHUNK)
  return starts, ends, counts


def chunk_examples(chunk, count, hparams):
  """[..., chunk samples] -> its first `count` examples. The chunk's own
  framing holds examples of the next chunk after `count`; they are made
  there, from their full context."""
  return waveform_to_examples(chunk, hparams)[..., :count, :, :]


def chunk_crops(chunk, count, hparams):
  """[chunk samples] (any dtype) -> [count, crop_length] the samples of the
  chunk's first `count` examples, zero-padded past the chunk's end."""
  return tf.signal.frame(chunk, hparams.geometry.crop_length,
                         hparams.geometry.example_hop_samples,
                         pad_end=True)[:count]


def crop_frames(num_samples, first_example, count, hparams):
  """[count] frames of the clip's framing that examples first_example ...
  first_example + count - 1 hold; the rest of an example is padding."""
  example_window = hparams.geometry.example_frames
  example_hop = hparams.geometry.example_hop_frames
  index = tf.cast(first_example, tf.int64) + tf.range(count, dtype=tf.int64)
  frames = num_frames(tf.cast(num_samples, tf.int64), hparams)
  return tf.cast(tf.clip_by_value(frames - index * example_hop, 0,
                                  example_window), tf.int32)


def crops_to_examples(crops, frames, hparams):
  """[batch, crop_length] float waveforms and [batch] frame counts (from
  crop_frames) -> [batch, example_window, bands]: the examples
  chunk_examples makes, frames past the clip's end zero as its padding."""
  features = waveform_to_features(crops, hparams)
  kept = tf.range(tf.shape(features)[1])[None, :] < frames[:, None]
  return tf.where(kept[:, :, None], features, tf.zeros_like(features))


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
  window = hparams.geometry.window
  short = tf.maximum(0, window - tf.shape(waveform)[-1])
  paddings = tf.concat([tf.zeros([tf.rank(waveform) - 1, 2], tf.int32),
                        [[0, short]]], 0)
  return tf.pad(waveform, paddings)


def waveform_to_mel(waveform, hparams):
  """[..., samples] float waveform in [-1, 1] -> [..., frames, bands] mel
  energies (STFT magnitudes through the mel matrix)."""
  window, hop = hparams.geometry.window, hparams.geometry.hop
  fft_length = hparams.geometry.fft_length
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
  window = hparams.geometry.example_frames
  hop = hparams.geometry.example_hop_frames
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
  examples, by waveform_to_examples: the front end of the waveform model
  (waveform_model.py). Not trainable."""

  def __init__(self, hparams, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.hparams = hparams

  def call(self, waveforms):
    return waveform_to_examples(waveforms, self.hparams)

  def chunk(self, chunk, count):
    """[batch, chunk samples] of a chunk of chunk_bounds -> (its features
    [batch, frames, bands], its first `count` examples), as
    chunk_examples makes them."""
    feature = waveform_to_features(chunk, self.hparams)
    return feature, log_mel_to_examples(feature, self.hparams)[:, :count]

  def compute_output_shape(self, input_shape):
    frames = self.hparams.geometry.example_frames
    return (input_shape[0], None, frames, self.hparams.mel_bands)
