"""TensorFlow input pipeline: CSV records and WAV files to log-mel examples.

Features follow the original baseline exactly: STFT magnitude with a 25 ms
periodic Hann window and 10 ms hop (FFT length the next power of two), 96 mel
bands from 20 Hz to 20 kHz, log(mel + 0.001), framed into 1 s examples with a
0.5 s hop, padding the end with zeros. Everything after the CSV is read runs
inside tf.data; nothing is precomputed or stored.

A long clip is cut into chunks of EXAMPLES_PER_CHUNK examples, each chunk
carrying the extra samples its last example needs, so that memory stays
bounded (no whole-clip STFT) while every example equals the one whole-clip
framing would give.
"""

import math
import os

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 44100
EXAMPLES_PER_CHUNK = 16
EXAMPLE_SHUFFLE_BUFFER = 20000


def stft_geometry(hparams):
  """Returns (window, hop, fft_length) in samples."""
  window = int(round(SAMPLE_RATE * hparams.stft_window_seconds))
  hop = int(round(SAMPLE_RATE * hparams.stft_hop_seconds))
  fft_length = 2 ** int(math.ceil(math.log2(window)))
  return window, hop, fft_length


def example_geometry(hparams):
  """Returns (window, hop) of an example, in spectrogram frames."""
  frames_per_second = 1.0 / hparams.stft_hop_seconds
  return (int(round(frames_per_second * hparams.example_window_seconds)),
          int(round(frames_per_second * hparams.example_hop_seconds)))


def num_examples(num_samples, hparams):
  """How many examples a clip of num_samples yields (at least one)."""
  window, hop, _ = stft_geometry(hparams)
  num_frames = 1 + (max(num_samples, window) - window) // hop
  return -(-num_frames // example_geometry(hparams)[1])


def waveform_to_log_mel(waveform, hparams):
  """[samples] float waveform in [-1, 1] -> [frames, mel_bands] log mel."""
  window, hop, fft_length = stft_geometry(hparams)
  magnitude = tf.abs(tf.signal.stft(
      waveform, frame_length=window, frame_step=hop, fft_length=fft_length,
      window_fn=tf.signal.hann_window))  # periodic Hann by default
  mel_matrix = tf.signal.linear_to_mel_weight_matrix(
      num_mel_bins=hparams.mel_bands,
      num_spectrogram_bins=fft_length // 2 + 1,
      sample_rate=SAMPLE_RATE,
      lower_edge_hertz=float(hparams.mel_min_hz),
      upper_edge_hertz=float(hparams.mel_max_hz))
  mel = tf.matmul(magnitude, mel_matrix)
  return tf.math.log(mel + hparams.mel_log_offset)


def log_mel_to_examples(log_mel, hparams):
  """[frames, bands] -> [examples, example_window, bands], zero-padded end."""
  window, hop = example_geometry(hparams)
  return tf.signal.frame(log_mel, frame_length=window, frame_step=hop,
                         pad_end=True, pad_value=0.0, axis=0)


def decode_clip(path):
  """Reads a 44.1 kHz mono 16-bit WAV file into a [samples] float32 tensor.

  The pre-flight scan in checks.py reports bad files by name before a run;
  these assertions are the backstop for files that change under a run.
  """
  waveform, sample_rate = tf.audio.decode_wav(tf.io.read_file(path))
  tf.debugging.Assert(tf.equal(sample_rate, SAMPLE_RATE),
                      [path, 'sample rate', sample_rate, 'expected 44100'])
  tf.debugging.Assert(tf.equal(tf.shape(waveform)[1], 1),
                      [path, 'channels', tf.shape(waveform)[1],
                       'expected mono'])
  return tf.reshape(waveform, [-1])  # a view; slicing would copy the clip


def _chunk_bounds(waveform, hparams):
  """Splits a clip into chunks of examples.

  Returns the waveform padded to at least one STFT window (so that a clip
  shorter than 25 ms still yields one example), and per chunk the start and
  end sample and the number of examples it contributes.
  """
  window, hop, _ = stft_geometry(hparams)
  example_window, example_hop = example_geometry(hparams)
  shortfall = window - tf.size(waveform)
  waveform = tf.cond(shortfall > 0,
                     lambda: tf.pad(waveform, [[0, tf.maximum(shortfall, 0)]]),
                     lambda: waveform)  # no copy of a long clip
  num_samples = tf.size(waveform)
  num_frames = 1 + (num_samples - window) // hop
  total = (num_frames + example_hop - 1) // example_hop
  per_chunk = EXAMPLES_PER_CHUNK
  first_example = tf.range(0, total, per_chunk)
  starts = first_example * example_hop * hop
  # Frames a full chunk needs: its examples' hops plus the last one's tail.
  chunk_frames = (per_chunk - 1) * example_hop + example_window
  ends = tf.minimum(starts + (chunk_frames - 1) * hop + window, num_samples)
  counts = tf.minimum(per_chunk, total - first_example)
  return waveform, starts, ends, counts


def _chunk_to_examples(chunk, count, hparams):
  """Examples of one chunk: the first `count` of its own framing."""
  return log_mel_to_examples(waveform_to_log_mel(chunk, hparams),
                             hparams)[:count]


def clip_to_log_mel_examples(clip, clip_dir, hparams):
  """[num_examples, example_window, mel_bands] float32 examples of one clip.

  Meant for eager use (inspection, tests); the datasets below run the same
  functions inside tf.data.
  """
  waveform, starts, ends, counts = _chunk_bounds(
      decode_clip(tf.strings.join([clip_dir, clip], separator=os.sep)),
      hparams)
  return tf.concat([
      _chunk_to_examples(waveform[s:e], c, hparams)
      for s, e, c in zip(starts.numpy(), ends.numpy(), counts.numpy())], 0)


def _examples(clips, hparams, deterministic):
  """(key, path) clips -> (example, key) pairs, one per example.

  `key` rides along unchanged: the multi-hot labels when training, the clip's
  index when scoring.
  """
  def chunks(key, path):
    waveform, starts, ends, counts = _chunk_bounds(decode_clip(path), hparams)
    return tf.data.Dataset.from_tensor_slices((starts, ends, counts)).map(
        lambda s, e, c: (key, waveform[s:e], c))

  def chunk_examples(key, chunk, count):
    examples = _chunk_to_examples(chunk, count, hparams)
    keys = tf.repeat(tf.expand_dims(key, 0), count, axis=0)
    return examples, keys

  return (clips
          .interleave(chunks, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=deterministic)
          .map(chunk_examples, num_parallel_calls=tf.data.AUTOTUNE,
               deterministic=deterministic)
          .unbatch())


def parse_csv_records(csv_path, clip_dir, class_names):
  """`fname,labels` CSV (header skipped) -> (multi_hot_labels, clip_path).

  labels is a comma-separated list of class names, quoted when it holds a
  comma, as in FSDKaggle2019's train_curated.csv.
  """
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(class_names), tf.range(len(class_names), dtype=tf.int64)),
      default_value=-1)

  def parse(line):
    fname, labels = tf.io.decode_csv(line, record_defaults=[[''], ['']])
    names = tf.strings.strip(tf.strings.split(labels, ','))
    ids = table.lookup(tf.boolean_mask(names, tf.strings.length(names) > 0))
    multi_hot = tf.reduce_max(
        tf.one_hot(ids, len(class_names), dtype=tf.float32), axis=0)
    path = tf.strings.join([clip_dir, tf.strings.strip(fname)],
                           separator=os.sep)
    return multi_hot, path

  return (tf.data.TextLineDataset(csv_path)
          .skip(1)
          .filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
          .map(parse))


def train_dataset(csv_path, clip_dir, class_names, hparams, num_clips,
                  epochs=None):
  """Shuffled, repeated batches of (examples, multi-hot labels) for training."""
  clips = parse_csv_records(csv_path, clip_dir, class_names).shuffle(
      num_clips, reshuffle_each_iteration=True)
  return (_examples(clips, hparams, deterministic=False)
          .shuffle(EXAMPLE_SHUFFLE_BUFFER)
          .repeat(epochs)
          .batch(hparams.batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))


def scoring_dataset(clip_paths, hparams):
  """Batches of (examples, clip_index) over many clips, for eval/inference.

  Short clips share a batch and long clips spread over several, so every
  batch is full but the last; a clip's examples may arrive in any order.
  """
  clips = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(clip_paths), dtype=np.int32),
       np.asarray(clip_paths, dtype=object).astype(str)))
  return (_examples(clips, hparams, deterministic=False)
          .batch(hparams.batch_size)
          .prefetch(tf.data.AUTOTUNE))
