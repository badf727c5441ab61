"""WAV files written and read independently of the project's readers:
with struct, NumPy and the standard library, not with wav.py or
libsndfile. Writers of every sample format (8-bit unsigned, 16/24/32-bit
PCM, 32/64-bit float, WAVE_FORMAT_EXTENSIBLE) for the tagging and WAV
format tests, and a 16-bit clip read back as float samples for the export
tests."""

import struct

import numpy as np


PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
GUID_TAIL = b'\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71'


def quantise(frames, bits):
  """Float frames in [-1, 1] -> integer samples of `bits` (rounded,
  clipped), as a converter writes them."""
  full = 2 ** (bits - 1)
  return np.clip(np.round(np.asarray(frames) * full), -full,
                 full - 1).astype(np.int64)


def sample_bytes(ints_or_floats, bits, floating=False):
  """Little-endian sample bytes: 8-bit unsigned (offset 128), 16/24/32-bit
  signed, or 32/64-bit IEEE float."""
  values = np.asarray(ints_or_floats).ravel()
  if floating:
    return values.astype('<f%d' % (bits // 8)).tobytes()
  if bits == 8:
    return (values + 128).astype('u1').tobytes()
  if bits == 24:
    four = values.astype('<i4').view('u1').reshape(-1, 4)
    return four[:, :3].tobytes()  # the low three bytes, little-endian
  return values.astype('<i%d' % (bits // 8)).tobytes()


def write_wav(path, data, rate, bits, channels, tag=PCM, extensible=False):
  """A RIFF/WAVE file of raw sample bytes; `extensible` writes
  WAVE_FORMAT_EXTENSIBLE with `tag` as the subformat GUID."""
  block = channels * bits // 8
  fmt = struct.pack('<HHIIHH', EXTENSIBLE if extensible else tag, channels,
                    rate, rate * block, block, bits)
  if extensible:
    fmt += struct.pack('<HHIH', 22, bits, 0, tag) + GUID_TAIL
  body = (b'WAVE' + b'fmt ' + struct.pack('<I', len(fmt)) + fmt +
          b'data' + struct.pack('<I', len(data)) + data +
          (b'\x00' if len(data) % 2 else b''))
  with open(str(path), 'wb') as f:
    f.write(b'RIFF' + struct.pack('<I', len(body)) + body)


def write_frames(path, frames, rate, bits, floating=False, extensible=False):
  """Float frames ([n] mono or [n, channels]) quantised to `bits` (or
  stored as float) in a WAV file."""
  frames = np.asarray(frames, np.float64)
  frames = frames[:, None] if frames.ndim == 1 else frames
  data = sample_bytes(frames if floating else quantise(frames, bits), bits,
                      floating)
  write_wav(path, data, rate, bits, frames.shape[1],
            FLOAT if floating else PCM, extensible)


def read_pcm(path):
  import wave
  with wave.open(path) as w:
    return np.frombuffer(w.readframes(w.getnframes()), '<i2').astype(
        np.float32) / 32768.0
