"""The WAV files a run reads: what their header says, which ones the
pipeline takes, and their samples for tagging.

One header reader, in plain Python, for every part of a run: the pre-flight
check names unusable files before any work starts, and the tf.data pipeline
decodes samples at the data offset and count found here, so that the two can
never disagree about a file. Reading a header costs one small read per file,
however long the clip is.

Tagging (tagging.py) takes any uncompressed WAV: read_samples decodes a block
of frames of 8/16/24/32-bit PCM or 32/64-bit float, mixed down to mono.
"""

import collections
import os
import struct

import numpy as np

# The one sample rate of FSDKaggle2019, the features and the models.
SAMPLE_RATE = 44100

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
# WAVE_FORMAT_EXTENSIBLE's subformat GUIDs start with the plain format tag.
_GUID_TAIL = b'\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71'

Header = collections.namedtuple('Header', [
    'format_tag',    # 1 PCM, 3 IEEE float (EXTENSIBLE resolved to these)
    'channels',
    'sample_rate',
    'bits',          # bits per sample
    'data_offset',   # byte offset of the first sample
    'num_frames',    # samples per channel
])


class WavError(Exception):
  """A file that is not a readable WAV; the message says what is wrong."""


def _format_chunk(body):
  """(format_tag, channels, rate, bits) of a fmt chunk's body."""
  tag, channels, rate, _, _, bits = struct.unpack('<HHIIHH', body[:16])
  if tag == _EXTENSIBLE:
    if len(body) < 40:
      raise WavError('truncated: extensible format chunk')
    subformat = body[24:40]
    if subformat[2:] == _GUID_TAIL:
      tag = struct.unpack('<H', subformat[:2])[0]
  return tag, channels, rate, bits


def read_header(path):
  """Returns the Header of a WAV file; raises WavError saying what is wrong."""
  try:
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      head = f.read(12)
      if not head:
        raise WavError('empty file')
      if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
        raise WavError('not a WAV file (no RIFF/WAVE header)')
      fmt, pos = None, 12
      while True:
        chunk = f.read(8)
        if len(chunk) < 8:
          raise WavError('truncated: no audio data chunk' if fmt else
                         'truncated: no format chunk')
        chunk_id, chunk_size = chunk[:4], struct.unpack('<I', chunk[4:])[0]
        if chunk_id == b'fmt ':
          body = f.read(min(chunk_size, 40))
          if chunk_size < 16 or len(body) < 16:
            raise WavError('truncated: format chunk')
          fmt = _format_chunk(body)
        elif chunk_id == b'data':
          break
        pos += 8 + chunk_size + (chunk_size & 1)
        f.seek(pos)
  except OSError as e:
    raise WavError('cannot read (%s)' % (e.strerror or e)) from None
  if fmt is None:
    raise WavError('no format chunk before the audio data')
  tag, channels, rate, bits = fmt
  data_offset = pos + 8
  available = max(0, size - data_offset)
  if chunk_size > available:
    # Written through a pipe (size 0xFFFFFFFF or 0, fixed never) or cut
    # short: the audio runs to the end of the file, as common readers take
    # it.
    chunk_size = available
  frame_bytes = max(1, channels * bits // 8)
  if chunk_size < frame_bytes:
    raise WavError('empty (no audio samples)')
  return Header(tag, channels, rate, bits, data_offset,
                chunk_size // frame_bytes)


def pipeline_problem(header):
  """None if the tf.data pipeline can decode the file (44.1 kHz mono 16-bit
  PCM, as FSDKaggle2019's clips), else what is wrong with it."""
  if header.format_tag != _PCM or header.bits != 16:
    return ('%d-bit samples with format tag %d, expected 16-bit PCM (tag 1)'
            % (header.bits, header.format_tag))
  if header.sample_rate != SAMPLE_RATE:
    return 'sample rate %d Hz, expected %d' % (header.sample_rate,
                                                SAMPLE_RATE)
  if header.channels != 1:
    return '%d channels, expected mono' % header.channels
  return None


# Format tags a user may meet, named in the message refusing them.
_FORMAT_NAMES = {
    2: 'Microsoft ADPCM', 6: 'A-law', 7: 'mu-law', 0x11: 'IMA ADPCM',
    0x31: 'GSM 6.10', 0x50: 'MPEG', 0x55: 'MPEG Layer 3',
    _EXTENSIBLE: 'extensible, with a subformat other than PCM or float',
}
# (format tag, bits) -> (NumPy dtype of one sample, offset, scale): the
# float value is (sample - offset) * scale. 24-bit samples are read through
# a 32-bit view (see _decode).
_DECODE = {
    (_PCM, 8): ('u1', 128.0, 1.0 / 128),
    (_PCM, 16): ('<i2', 0.0, 1.0 / 2 ** 15),
    (_PCM, 24): ('<i4', 0.0, 1.0 / 2 ** 31),
    (_PCM, 32): ('<i4', 0.0, 1.0 / 2 ** 31),
    (_FLOAT, 32): ('<f4', 0.0, 1.0),
    (_FLOAT, 64): ('<f8', 0.0, 1.0),
}


def sample_problem(header):
  """None if read_samples can decode the file (8/16/24/32-bit PCM or
  32/64-bit float, any number of channels, any sample rate), else what is
  wrong with it, as one line."""
  tag, bits = header.format_tag, header.bits
  if tag not in (_PCM, _FLOAT):
    name = _FORMAT_NAMES.get(tag)
    return 'format tag %d%s is not uncompressed PCM or float' % (
        tag, ' (%s)' % name if name else '')
  if (tag, bits) not in _DECODE:
    return '%d-bit %s samples are not supported (%s)' % (
        bits, 'PCM' if tag == _PCM else 'float',
        '8, 16, 24 or 32-bit' if tag == _PCM else '32 or 64-bit')
  if header.channels < 1:
    return 'no channels'
  if header.sample_rate < 1:
    return 'sample rate 0 Hz'
  return None


def _decode(raw, header):
  """[frames, channels] float64 samples of whole frames of raw bytes."""
  dtype, offset, scale = _DECODE[(header.format_tag, header.bits)]
  if header.bits == 24:
    # Each 3-byte little-endian sample goes into the top three bytes of an
    # int32: its value times 2^8, sign included, so scaled by 2^-31.
    padded = np.zeros((len(raw) // 3, 4), np.uint8)
    padded[:, 1:] = np.frombuffer(raw, np.uint8).reshape(-1, 3)
    values = padded.view('<i4')[:, 0]
  else:
    values = np.frombuffer(raw, dtype)
  samples = values.astype(np.float64)
  if offset:
    samples -= offset
  if scale != 1.0:
    samples *= scale
  return samples.reshape(-1, header.channels)


def read_samples(path, header, start, count):
  """Frames [start, start + count) of a file whose header passed
  sample_problem, as float32 in [-1, 1) (floats as stored), the channels
  averaged: 8-bit PCM (x - 128) / 128, 16-bit x / 2^15, 24-bit x / 2^23,
  32-bit x / 2^31. Reads only those frames. Raises WavError if the file no
  longer holds them or holds a NaN or infinite float sample."""
  frame_bytes = header.channels * header.bits // 8
  try:
    with open(path, 'rb') as f:
      f.seek(header.data_offset + start * frame_bytes)
      raw = f.read(count * frame_bytes)
  except OSError as e:
    raise WavError('cannot read (%s)' % (e.strerror or e)) from None
  if len(raw) < count * frame_bytes:
    raise WavError('truncated: %d frames after frame %d, expected %d (did '
                   'the file change?)' % (len(raw) // frame_bytes, start,
                                          count))
  frames = _decode(raw, header)
  if header.format_tag == _FLOAT:
    bad = ~np.isfinite(frames).all(axis=1)
    if bad.any():
      raise WavError('frame %d holds a NaN or infinite sample' % (
          start + int(np.flatnonzero(bad)[0])))
  return _mix_down(frames).astype(np.float32)


def _mix_down(frames):
  """[frames, channels] -> [frames], the channels' mean, added one channel
  at a time: ~3x faster than frames.mean(axis=1), a reduction over a short
  last axis, and equal to it bit for bit up to 7 channels (from 8, NumPy
  adds in another order: within float64 rounding)."""
  if frames.shape[1] == 1:
    return frames[:, 0]  # no copy, no division, for the common case
  mono = frames[:, 0].copy()
  for channel in range(1, frames.shape[1]):
    mono += frames[:, channel]
  mono /= frames.shape[1]
  return mono
