"""The byte offset of the samples of the WAV files tf.data decodes itself.

44.1 kHz mono 16-bit PCM WAV files, as FSDKaggle2019's clips are, are read
by the tf.data pipeline without libsndfile (inputs.py): it cuts each chunk's
samples out of the file's bytes, which needs the data chunk's byte offset
and the sample count, and libsndfile gives neither offset nor chunk. This
reader finds both, in plain Python, for the pre-flight check and the
pipeline alike, so that the two never disagree about a file; a header costs
one small read, however long the clip. Every other file, and decoding for
every other purpose, is libsndfile's (audio.py).
"""

import collections
import os
import struct

# The one sample rate of FSDKaggle2019, the features and the models.
SAMPLE_RATE = 44100

_PCM, _EXTENSIBLE = 1, 0xFFFE
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


def pipeline_reads(header):
  """Whether the tf.data pipeline decodes the file itself: 44.1 kHz mono
  16-bit PCM, as FSDKaggle2019's clips (libsndfile decodes the others)."""
  return (header.format_tag == _PCM and header.bits == 16 and
          header.sample_rate == SAMPLE_RATE and header.channels == 1)
