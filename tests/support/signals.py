"""Test signals several test files share: waveforms with a non-finite
sample in one chunk, a WAV file hours long that takes no disk space, and
the test clip of the tagging and audio tests, and audio files written
from samples."""

import os
import struct

import numpy as np

from support.settings import SAMPLE_RATE

NUM_SAMPLES = 20 * 44100  # three chunks of the tagger's geometry
# A bad sample in the first chunk only, the middle one only, the last one.
POSITIONS = {'start': 0, 'middle': NUM_SAMPLES // 2, 'end': NUM_SAMPLES - 1}


def non_finite_waveforms():
  """{case: (waveform, the bad sample's index)}: a good waveform (index
  None), and copies with NaN or -inf at each of POSITIONS."""
  good = np.random.default_rng(3).uniform(-0.3, 0.3, NUM_SAMPLES).astype(
      np.float32)
  cases = {'good': (good, None)}
  for name, at in POSITIONS.items():
    for bad in (np.nan, -np.inf):
      waveform = good.copy()
      waveform[at] = bad
      cases['%s at the %s' % (bad, name)] = (waveform, at)
  return cases


def write_sparse_wav(path, hours):
  """A 16-bit mono 44.1 kHz WAV header promising `hours` of samples, the
  samples a hole in the file (no disk blocks, zeros when read)."""
  frames = int(hours * 3600 * 44100)
  header = struct.pack('<4sI4s4sIHHIIHH4sI', b'RIFF', 36 + 2 * frames,
                       b'WAVE', b'fmt ', 16, 1, 1, 44100, 88200, 2, 16,
                       b'data', 2 * frames)
  with open(path, 'wb') as f:
    f.write(header)
    f.truncate(len(header) + 2 * frames)
  return frames


# The test clip of the tagging and audio tests, in continuous time.

CLIP_SECONDS = 4.0
_NOISE = np.random.default_rng(1)
_FLOOR_HZ = _NOISE.uniform(50, 9000, 300)
_FLOOR_PHASE = _NOISE.uniform(0, 2 * np.pi, 300)


def buzz(t):
  """The 'Buzz' sound of make_demo_data (a 130 Hz sawtooth), band-limited
  to 9 kHz so that every sample rate below holds all of it, over a floor of
  300 sinusoids (RMS ~0.005) so that no mel band is empty and the
  original's 16-bit quantisation noise (~100 dB down) does not show."""
  k = np.arange(1, 9000 // 130 + 1)
  saw = (0.4 * 2 / np.pi) * (np.sin(2 * np.pi * 130 * np.outer(t, k)) *
                             ((-1.0) ** (k + 1) / k)).sum(axis=1)
  floor = sum(0.0004 * np.sin(2 * np.pi * f * t + p)
              for f, p in zip(_FLOOR_HZ, _FLOOR_PHASE))
  return saw + floor


def times(rate, seconds=CLIP_SECONDS):
  return np.arange(int(round(seconds * rate))) / rate


def write_pcm_wav(path, samples, rate=SAMPLE_RATE):
  """A mono 16-bit PCM WAV of int16 samples."""
  from tagger.sound import audio
  audio.write_pcm16(str(path), np.asarray(samples, np.int16), rate)


def write_audio(path, samples, rate=SAMPLE_RATE, **kwargs):
  """An audio file written by libsndfile (soundfile): float samples
  ([frames] or [frames, channels]) in the format its extension names
  (kwargs: soundfile.write's format and subtype, e.g. a lossless
  subtype='PCM_16' FLAC)."""
  import soundfile
  soundfile.write(str(path), np.asarray(samples, np.float32), rate, **kwargs)
  return str(path)


def cut_in_half(path, dest):
  """dest: the first half of path's bytes, as a copy cut short."""
  data = open(str(path), 'rb').read()
  with open(str(dest), 'wb') as f:
    f.write(data[:len(data) // 2])
  return str(dest)


def write_check_clip(path, seconds, seed):
  """A WAV file of export_checks.check_waveform (recorded-sound dynamics)."""
  from tagger.modes import export_checks
  write_pcm_wav(path, np.round(32768 * export_checks.check_waveform(seconds,
                                                             seed=seed)))


def pipeline_examples(name, folder, hparams):
  """The pipeline's examples of one clip file (inputs.clips_log_mel_examples),
  a NumPy array."""
  import inputs
  return next(inputs.clips_log_mel_examples([os.path.join(folder, name)],
                                            hparams))[1]
