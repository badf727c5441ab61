"""A clip's 16-bit samples inside tf.data, for inputs.py's pipelines: every
header read before any work (clip_headers), then each chunk's samples,
cut out of the file's bytes by tf.data's own ops for a 44.1 kHz mono
16-bit WAV (FSDKaggle2019's clips), decoded by libsndfile (audio.py) in
the pipeline's threads for any other file."""

import numpy as np
import tensorflow as tf

from tagger.core import files
from tagger.sound import audio


def clip_headers(paths):
  """(data offsets, sample counts at 44.1 kHz) of audio files, read by
  audio.inspect: the offset of the 16-bit samples of a WAV the pipeline
  decodes itself, -1 for a file libsndfile decodes; UserError naming the
  first file that cannot be read."""
  offsets, counts = [], []
  for path in paths:
    try:
      clip = audio.inspect(path)
    except audio.AudioError as e:
      raise files.UserError('%s: %s' % (path, e)) from None
    _INSPECTED[path] = clip
    offsets.append(clip.data_offset)
    counts.append(audio.num_samples(clip))
  # int64: the byte offsets of a 16-bit file longer than 6.8 hours pass
  # 2**31.
  return np.array(offsets, np.int64), np.array(counts, np.int64)


# The Clip of each file clip_headers read, for the pipeline's threads to
# decode without reading its header again.
_INSPECTED = {}


def _decoded(path, start, end):
  """audio.decoded_pcm16 inside tf.data, with the header clip_headers
  read; a file that fails stops the run with `path: what` (main.py's one
  line)."""
  def decode(path, start, end):
    path = path.decode() if isinstance(path, bytes) else str(path)
    return audio.decoded_pcm16(path, int(start), int(end),
                               _INSPECTED.get(path))

  pcm, problem = tf.numpy_function(decode, [path, start, end],
                                   [tf.int16, tf.string], stateful=False)
  check = tf.debugging.Assert(tf.equal(problem, ''), [path, problem])
  with tf.control_dependencies([check]):
    pcm = tf.identity(pcm)
  pcm.set_shape([None])
  return pcm


def byte_range(data_offset, start, end):
  """(position, length) in the file of the 16-bit samples [start, end)."""
  return data_offset + 2 * start, 2 * (end - start)


def raw_pcm(contents, data_offset, start, end):
  """Samples [start, end) of 16-bit PCM bytes, int16."""
  return tf.io.decode_raw(
      tf.strings.substr(contents, *byte_range(data_offset, start, end)),
      tf.int16)


def readers(offsets):
  """(read(path, data offset, samples) -> the file's bytes or '',
  pcm(bytes, path, data offset, start, end) -> int16 samples [start, end)
  at 44.1 kHz) for clips of these data offsets: a WAV the pipeline reads
  itself (offset >= 0) is cut out of its bytes, any other file decoded by
  libsndfile a chunk at a time. When every clip is such a WAV (or none
  is), one way is built alone: a tf.cond per chunk, and a Python call in
  the graph, made the WAV pipeline ~20% slower."""
  fast = np.asarray(offsets) >= 0
  if fast.all():
    return _read, lambda contents, path, offset, s, e: raw_pcm(
        contents, offset, s, e)
  if not fast.any():
    return (lambda path, offset, n: tf.constant(''),
            lambda contents, path, offset, s, e: _decoded(path, s, e))

  def read(path, offset, num_samples):
    return tf.cond(offset >= 0, lambda: _read(path, offset, num_samples),
                   lambda: tf.constant(''))

  def pcm(contents, path, offset, start, end):
    return tf.cond(offset >= 0,
                   lambda: raw_pcm(contents, offset, start, end),
                   lambda: _decoded(path, start, end))

  return read, pcm


def to_float(pcm):
  """16-bit samples as floats in [-1, 1), scaled as tf.audio.decode_wav
  does (int16 / 32768)."""
  return tf.cast(pcm, tf.float32) * (1.0 / 32768.0)


def _read(path, data_offset, num_samples):
  """The file's bytes, checked to still hold the samples its header
  promised when the run started (a backstop for files that change under a
  run; the error reads `path: what` once main.py has formatted it)."""
  contents = tf.io.read_file(path)
  tf.debugging.Assert(
      tf.cast(tf.strings.length(contents), tf.int64) >=
      data_offset + 2 * num_samples,
      [path, 'is truncated'])
  return contents
