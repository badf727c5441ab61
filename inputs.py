"""TensorFlow input pipeline: CSV records and WAV files to log-mel examples.

Features follow the original baseline exactly: STFT magnitude with a 25 ms
periodic Hann window and 10 ms hop (FFT length the next power of two), 96 mel
bands from 20 Hz to 20 kHz, log(mel + 0.001), framed into 1 s examples with a
0.5 s hop, padding the end with zeros. Everything after the CSV is read runs
inside tf.data; nothing is precomputed or stored.

A long clip is cut into chunks of EXAMPLES_PER_CHUNK examples, each chunk
carrying the extra samples its last example needs and decoded on its own, so
that memory stays bounded (no whole-clip waveform or STFT) while every example
equals the one whole-clip framing would give.
"""

import functools
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


def use_one_inter_op_thread():
  """Runs one TensorFlow op at a time (each op still uses every core).

  The tf.data pipeline computes features on its own threads while the model
  runs; with the default inter-op pool as well, a small machine is
  oversubscribed and both slow down (on 2 cores scoring ran ~10% slower than
  with this setting). Must be called before TensorFlow runs its first op.
  """
  tf.config.threading.set_inter_op_parallelism_threads(1)


@functools.lru_cache(maxsize=None)
def _mel_matrix(mel_bands, num_spectrogram_bins, mel_min_hz, mel_max_hz):
  # Built once, eagerly, and captured as a constant by the pipeline's
  # functions instead of being rebuilt for every chunk.
  with tf.init_scope():
    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=mel_bands, num_spectrogram_bins=num_spectrogram_bins,
        sample_rate=SAMPLE_RATE, lower_edge_hertz=float(mel_min_hz),
        upper_edge_hertz=float(mel_max_hz))


def waveform_to_log_mel(waveform, hparams):
  """[samples] float waveform in [-1, 1] -> [frames, mel_bands] log mel."""
  window, hop, fft_length = stft_geometry(hparams)
  magnitude = tf.abs(tf.signal.stft(
      waveform, frame_length=window, frame_step=hop, fft_length=fft_length,
      window_fn=tf.signal.hann_window))  # periodic Hann by default
  mel = tf.matmul(magnitude, _mel_matrix(hparams.mel_bands,
                                         fft_length // 2 + 1,
                                         hparams.mel_min_hz,
                                         hparams.mel_max_hz))
  return tf.math.log(mel + hparams.mel_log_offset)


def log_mel_to_examples(log_mel, hparams):
  """[frames, bands] -> [examples, example_window, bands], zero-padded end."""
  window, hop = example_geometry(hparams)
  return tf.signal.frame(log_mel, frame_length=window, frame_step=hop,
                         pad_end=True, pad_value=0.0, axis=0)


def _le_int(contents, offset, dtype):
  """A little-endian integer (int32 or uint16) at a byte offset."""
  size = 4 if dtype == tf.int32 else 2
  return tf.cast(tf.io.decode_raw(tf.strings.substr(contents, offset, size),
                                  dtype)[0], tf.int32)


def read_wav(path):
  """Reads a 44.1 kHz mono 16-bit PCM WAV file without decoding it.

  Returns (contents, data_offset, num_samples): the file's bytes, where its
  samples start and how many there are. Decoding happens per chunk in
  `_samples`, so a long clip is never held as floats (tf.audio.decode_wav
  would hold the file, its floats and a copy: 6x the file size). The
  pre-flight scan in files.py reports bad files by name before a run; these
  assertions are the backstop for files that change under a run.
  """
  contents = tf.io.read_file(path)
  length = tf.strings.length(contents)
  tf.debugging.Assert(
      (length >= 12) & tf.equal(tf.strings.substr(contents, 0, 4), 'RIFF') &
      tf.equal(tf.strings.substr(contents, 8, 4), 'WAVE'),
      [path, 'is not a WAV file'])

  def more(pos, fmt, data, size):
    return (data < 0) & (pos + 8 <= length)

  def next_chunk(pos, fmt, data, size):
    chunk_id = tf.strings.substr(contents, pos, 4)
    chunk_size = _le_int(contents, pos + 4, tf.int32)
    fmt = tf.where(tf.equal(chunk_id, 'fmt '), pos + 8, fmt)
    is_data = tf.equal(chunk_id, 'data')
    return (pos + 8 + chunk_size + chunk_size % 2, fmt,
            tf.where(is_data, pos + 8, data), tf.where(is_data, chunk_size, 0))

  _, fmt, data, size = tf.while_loop(
      more, next_chunk, [tf.constant(12), tf.constant(-1), tf.constant(-1),
                         tf.constant(0)])
  tf.debugging.Assert((fmt >= 0) & (data >= 0),
                      [path, 'has no fmt or data chunk'])
  tf.debugging.Assert(
      tf.equal(_le_int(contents, fmt, tf.uint16), 1) &
      tf.equal(_le_int(contents, fmt + 14, tf.uint16), 16),
      [path, 'is not 16-bit PCM'])
  sample_rate = _le_int(contents, fmt + 4, tf.int32)
  tf.debugging.Assert(tf.equal(sample_rate, SAMPLE_RATE),
                      [path, 'sample rate', sample_rate, 'expected 44100'])
  channels = _le_int(contents, fmt + 2, tf.uint16)
  tf.debugging.Assert(tf.equal(channels, 1),
                      [path, 'channels', channels, 'expected mono'])
  tf.debugging.Assert(data + size <= length, [path, 'is truncated'])
  return contents, data, size // 2


def _samples(contents, data_offset, start, end):
  """Samples [start, end) as floats in [-1, 1), as tf.audio.decode_wav
  scales them (int16 / 32768)."""
  pcm = tf.io.decode_raw(
      tf.strings.substr(contents, data_offset + 2 * start, 2 * (end - start)),
      tf.int16)
  return tf.cast(pcm, tf.float32) * (1.0 / 32768.0)


def _chunk_bounds(num_samples, hparams):
  """Splits a clip into chunks of EXAMPLES_PER_CHUNK examples: per chunk,
  its start and end sample and the number of examples it contributes."""
  window, hop, _ = stft_geometry(hparams)
  example_window, example_hop = example_geometry(hparams)
  num_frames = 1 + (tf.maximum(num_samples, window) - window) // hop
  total = (num_frames + example_hop - 1) // example_hop
  per_chunk = EXAMPLES_PER_CHUNK
  first_example = tf.range(0, total, per_chunk)
  starts = first_example * example_hop * hop
  # Frames a full chunk needs: its examples' hops plus the last one's tail.
  chunk_frames = (per_chunk - 1) * example_hop + example_window
  ends = tf.minimum(starts + (chunk_frames - 1) * hop + window, num_samples)
  counts = tf.minimum(per_chunk, total - first_example)
  return starts, ends, counts


def _chunk_to_examples(chunk, count, hparams):
  """Examples of one chunk: the first `count` of its own framing. A clip
  shorter than one STFT window is zero-padded to one, so it yields one
  example."""
  window, _, _ = stft_geometry(hparams)
  chunk = tf.pad(chunk, [[0, tf.maximum(0, window - tf.size(chunk))]])
  return log_mel_to_examples(waveform_to_log_mel(chunk, hparams),
                             hparams)[:count]


def clip_to_log_mel_examples(clip, clip_dir, hparams):
  """[num_examples, example_window, mel_bands] float32 examples of one clip.

  Meant for eager use (inspection, tests); the datasets below run the same
  functions inside tf.data.
  """
  contents, offset, num_samples = read_wav(
      tf.strings.join([clip_dir, clip], separator=os.sep))
  starts, ends, counts = _chunk_bounds(num_samples, hparams)
  return tf.concat([
      _chunk_to_examples(_samples(contents, offset, s, e), c, hparams)
      for s, e, c in zip(starts.numpy(), ends.numpy(), counts.numpy())], 0)


def _examples(clips, hparams, deterministic):
  """(key, path) clips -> (example, key) pairs, one per example.

  `key` rides along unchanged: the multi-hot labels when training, the clip's
  index when scoring.
  """
  def chunks(key, path):
    contents, offset, num_samples = read_wav(path)
    starts, ends, counts = _chunk_bounds(num_samples, hparams)
    return tf.data.Dataset.from_tensor_slices((starts, ends, counts)).map(
        lambda s, e, c: (key, _samples(contents, offset, s, e), c))

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


def scoring_dataset(clip_paths, hparams, batch_size):
  """Batches of (examples, clip_index) over many clips, for eval/inference.

  Short clips share a batch and long clips spread over several, so every
  batch is full but the last; a clip's examples may arrive in any order.
  """
  clips = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(clip_paths), dtype=np.int32),
       np.asarray(clip_paths, dtype=object).astype(str)))
  return (_examples(clips, hparams, deterministic=False)
          .batch(batch_size)
          .prefetch(tf.data.AUTOTUNE))
