"""Reading every WAV format (audio.py): every sample format decoded and
mixed down exactly by audio.BlockReader, the ones libsndfile cannot read
refused in one line, resampling block by block equal to resampling the
whole file, and a 44.1 kHz file not resampled at all.

The WAV files are written with struct and NumPy (support/wav_files.py),
not with wav.py or libsndfile.
"""

import numpy as np
import pytest

from support.tag_runs import resampled_length
from support.wav_files import FLOAT, PCM, sample_bytes, write_frames, write_wav


FORMATS = [  # (bits, floating, extensible)
    (8, False, False), (16, False, False), (24, False, False),
    (32, False, False), (32, True, False), (64, True, False),
    (16, False, True), (24, False, True), (32, True, True)]


@pytest.mark.parametrize('bits,floating,extensible', FORMATS)
@pytest.mark.parametrize('channels', [1, 3])
def test_source_decodes_and_mixes_down(tmp_path, bits, floating, extensible,
                                       channels):
  from tagger.sound import audio
  rng = np.random.default_rng(bits + channels)
  if floating:
    values = rng.uniform(-1.2, 1.2, (1000, channels))  # floats as stored
    stored = values.astype('<f%d' % (bits // 8)).astype(np.float64)
  else:
    full = 2 ** (bits - 1)
    values = rng.integers(-full, full, (1000, channels))
    values[:4] = [[-full] * channels, [full - 1] * channels,
                  [0] * channels, [1] * channels]  # the extremes, 0, 1 LSB
    stored = values / float(full)  # the README's scales: x / 2^(bits - 1)
  path = str(tmp_path / 'x.wav')
  write_wav(path, sample_bytes(values, bits, floating), 44100, bits,
            channels, FLOAT if floating else PCM, extensible)
  source = audio.BlockReader(path, audio.inspect(path))
  got = source.read(0, 1000)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, stored.mean(axis=1), rtol=0, atol=1e-7)
  # A block from the middle reads the same frames.
  np.testing.assert_array_equal(source.read(123, 579), got[123:579])


@pytest.mark.parametrize('tag,bits,extensible,needle', [
    (7, 8, False, None),  # mu-law, decoded by libsndfile
    (PCM, 12, False, None),
    (2, 4, False, "not an audio file libsndfile can read (Error in "
     "WAV/W64/RF64 file. Malformed 'fmt ' chunk)"),
    (FLOAT, 16, False, 'not an audio file libsndfile can read (Unspecified '
     'internal error)'),
    (7, 8, True, 'not an audio file libsndfile can read (File contains data '
     'in an unimplemented format)'),
])
def test_wav_formats_libsndfile_reads_or_refuses_in_one_line(
    tmp_path, tag, bits, extensible, needle):
  from tagger.core import files
  path = str(tmp_path / 'x.wav')
  write_wav(path, b'\x00' * 64, 8000, bits, 1, tag, extensible)
  if extensible:
    # A subformat GUID outside the PCM/float family (its tail differs).
    raw = bytearray(open(path, 'rb').read())
    raw[50:52] = b'\xff\xff'
    open(path, 'wb').write(bytes(raw))
  problem, num_samples, _ = files.inspect_clip(path)
  assert problem == needle
  assert (num_samples > 0) == (needle is None)


@pytest.mark.parametrize('rate', [48000, 22050, 96000, 8000, 11025, 32000,
                                  44099, 200003])
def test_blockwise_resampling_equals_resampling_the_whole_file(tmp_path,
                                                               rate):
  """Blocks of any size and position, stitched, give what soxr gives for
  the whole signal at once, to its length rounded down."""
  import soxr
  from tagger.sound import audio
  rng = np.random.default_rng(rate)
  frames = int(rng.integers(20000, 40000))
  mono = rng.standard_normal(frames) * 0.2
  path = str(tmp_path / 'x.wav')
  write_frames(path, mono, rate, 32, floating=True)
  source = audio.BlockReader(path, audio.inspect(path))
  whole = soxr.resample(mono.astype(np.float32), rate, 44100, quality='VHQ')
  assert source.num_samples == resampled_length(frames, rate)
  assert len(whole) - 1 <= source.num_samples <= len(whole)
  whole = whole[:source.num_samples]
  cuts = sorted(rng.choice(np.arange(1, len(whole)), 9, replace=False))
  edges = [0] + [int(c) for c in cuts] + [len(whole)]
  blocks = [source.read(a, b) for a, b in zip(edges[:-1], edges[1:])]
  # Out of order and overlapping, too: a block depends only on its range.
  # Within float32 rounding; an odd rate's phases are interpolated, within
  # 2e-6.
  exact = 2e-6 if rate in (44099, 200003) else 1e-7
  np.testing.assert_allclose(source.read(edges[3], edges[6]),
                             np.concatenate(blocks[3:6]), rtol=0, atol=exact)
  np.testing.assert_allclose(np.concatenate(blocks), whole, rtol=0,
                             atol=exact)


def test_44100_hz_is_not_resampled(tmp_path):
  from tagger.sound import audio
  path = str(tmp_path / 'x.wav')
  ints = np.random.default_rng(0).integers(-32768, 32768, 5000)
  write_wav(path, sample_bytes(ints, 16), 44100, 16, 1)
  source = audio.BlockReader(path, audio.inspect(path))
  np.testing.assert_array_equal(source.read(100, 4000),
                                (ints[100:4000] / 32768.0).astype(np.float32))
