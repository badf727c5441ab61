"""The WAV files a run reads: what their header says, and which ones the
pipeline takes.

One header reader, in plain Python, for every part of a run: the pre-flight
check names unusable files before any work starts, and the tf.data pipeline
decodes samples at the data offset and count found here, so that the two can
never disagree about a file. Reading a header costs one small read per file,
however long the clip is.
"""

import collections
import os
import struct

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
