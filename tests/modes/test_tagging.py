"""Tagging any audio file (--mode tag): every WAV sample format decoded and
mixed down exactly, resampling block by block equal to resampling the whole
file, the scoring pipeline's examples and scores, one line per file (an
unreadable file among good ones included), and memory bounded on a long
file.

The WAV files are written here with struct and NumPy, not with wav.py or
libsndfile.
"""

import collections
import math
import os
import re
import signal
import struct

import numpy as np
import pytest

from conftest import (CLASS_MAP, check_ok, cut_in_half, main_in_process,
                      read_csv_rows, run_main, write_audio)
from support.cli import Run, assert_one_error
from support.signals import buzz, times

# Scores of the same clip in other formats may differ from the 16-bit
# 44.1 kHz original's by this fraction of what the original 1 dB quieter
# (about the smallest level change a listener notices) does to them: they
# must score as the original would if its level changed by ~0.1 dB. The
# yardstick is measured in the test because the tiny model's sensitivity
# depends on its (unseeded) training: a 1 dB change moved its scores by
# 2e-4 to 1e-2 over 8 training runs. The versions' differences come from
# the original's 16-bit quantisation, the resampling filter's passband
# ripple and 24/32-bit requantisation; they were 1/39 to 1/182 of the
# yardstick (4e-6 to 6e-5). A wrong scale (6 dB per bit) or a channel left
# out of the mix (a 3 kHz tone, the Bicycle_bell sound, 8 dB below the
# clip) is far beyond it.
FORMAT_TOLERANCE = 0.1
# The same engine on the same samples: float32 rounding only.
SAME_ENGINE = 1e-5

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
GUID_TAIL = b'\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71'


# --- writing WAV files independently ----------------------------------------

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


# --- the test clip, defined in continuous time ------------------------------

def bell(t):
  """A 3 kHz tone: the part the channels of the multichannel versions
  differ by, which mixing down cancels."""
  return 0.15 * np.sin(2 * np.pi * 3000 * t)


def write_clip_versions(folder):
  """The clip as 16-bit 44.1 kHz mono (the original), 24-bit 48 kHz
  stereo, float32 22.05 kHz mono, and WAVE_FORMAT_EXTENSIBLE 32-bit PCM
  96 kHz with 3 channels; and a control: the original 1 dB quieter."""
  folder.mkdir()
  paths = [str(folder / name) for name in (
      'a_pcm16_44100_mono.wav', 'b_pcm24_48000_stereo.wav',
      'c_float32_22050_mono.wav', 'd_extensible_pcm32_96000_3ch.wav',
      'e_control_quieter.wav')]
  write_frames(paths[0], buzz(times(44100)), 44100, 16)
  t = times(48000)
  write_frames(paths[1], np.stack([buzz(t) + bell(t), buzz(t) - bell(t)], 1),
               48000, 24)
  write_frames(paths[2], buzz(times(22050)), 22050, 32, floating=True)
  t = times(96000)
  write_frames(paths[3], np.stack([buzz(t) + bell(t), buzz(t) - 2 * bell(t),
                                   buzz(t) + bell(t)], 1),
               96000, 32, extensible=True)
  write_frames(paths[4], buzz(times(44100)) * 10 ** (-1 / 20), 44100, 16)
  return paths


# --- independent geometry ---------------------------------------------------

def resampled_length(frames, rate):
  """The length at 44.1 kHz: frames * 44100 / rate, rounded down."""
  g = math.gcd(44100, rate)
  return frames * (44100 // g) // (rate // g)


def num_examples(num_samples):
  """The README's framing with the default hparams: 1102-sample window,
  441-sample hop, examples of 100 frames every 50, the end padded."""
  frames = 1 + (max(num_samples, 1102) - 1102) // 441
  return -(-frames // 50)


def timeline_by_file(path):
  """{fname: (start seconds, [examples, classes] scores)} of a timeline
  CSV, in file order; and its class names."""
  rows = read_csv_rows(path)
  assert rows[0][:2] == ['fname', 'start_seconds']
  found = collections.OrderedDict()
  for row in rows[1:]:
    found.setdefault(row[0], []).append(row[1:])
  return {fname: (np.array([float(r[0]) for r in rs]),
                  np.array([[float(v) for v in r[1:]] for r in rs]))
          for fname, rs in found.items()}, rows[0][2:]


def parse_line(line):
  """`path: Class_a 0.912, Class_b 0.301` -> (path, [(class, score)])."""
  path, tags = line.rsplit(': ', 1)
  return path, [(name, float(score)) for name, score in
                (tag.rsplit(' ', 1) for tag in tags.split(', '))]


# --- reading every format ---------------------------------------------------

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


def test_tag_examples_are_the_pipelines(tmp_path, parse_hparams):
  """The chunks tagging feeds the engine make the examples the tf.data
  pipeline makes from a 16-bit 44.1 kHz file, each with its index, over
  several chunks; a 48 kHz file's are those of its whole resampled
  waveform framed at once."""
  from tagger.sound import features
  import inputs
  from tagger.engines import scoring
  from tagger.modes import tagging
  hparams = parse_hparams()
  rng = np.random.default_rng(5)
  ints = rng.integers(-20000, 20000, int(44100 * 19.3))  # 3 chunks
  write_wav(str(tmp_path / 'a.wav'), sample_bytes(ints, 16), 44100, 16, 1)
  t = times(48000, 9.1)
  write_frames(str(tmp_path / 'b.wav'), np.stack([buzz(t), bell(t)], 1),
               48000, 24)
  reader = tagging.Reader([str(tmp_path / 'a.wav'), str(tmp_path / 'b.wav')],
                          hparams)
  sources = reader.sources
  got = [{}, {}]
  for example, clip, index in scoring.waveform_examples(
      reader.dataset(), hparams):
    assert int(index) not in got[int(clip)]
    got[int(clip)][int(index)] = example.numpy()
  pipeline = inputs.clip_to_log_mel_examples('a.wav', str(tmp_path),
                                             hparams).numpy()
  assert sorted(got[0]) == list(range(len(pipeline)))
  assert len(pipeline) == num_examples(len(ints)) == 39  # 16 + 16 + 7
  # Equal up to float32 rounding: chunks and a whole clip are different
  # shapes, for which some CPUs' kernels sum in different orders.
  np.testing.assert_allclose(np.stack([got[0][i] for i in sorted(got[0])]),
                             pipeline, rtol=1e-6, atol=0)
  whole = features.waveform_to_examples(
      sources[1].read(0, sources[1].num_samples), hparams).numpy()
  assert sorted(got[1]) == list(range(len(whole)))
  np.testing.assert_allclose(np.stack([got[1][i] for i in sorted(got[1])]),
                             whole, rtol=0, atol=1e-5)


# --- the command line -------------------------------------------------------

def _tag_args(checkpoint, paths, extra=()):
  return ['--mode', 'tag', '--class_map_path', CLASS_MAP,
          '--inference_checkpoint', checkpoint,
          '--tag_paths', ','.join(paths)] + list(extra)


def test_same_clip_in_every_format_gets_the_same_tags(tagger, tmp_path):
  paths = write_clip_versions(tmp_path / 'versions')
  original, others, control = paths[0], paths[1:4], paths[4]
  timeline = str(tmp_path / 'timeline.csv')
  result = check_ok(run_main(_tag_args(
      tagger['checkpoint'], [str(tmp_path / 'versions')],
      ['--top_k', '4', '--timeline_csv_path', timeline])))
  by_file, class_names = timeline_by_file(timeline)
  assert class_names == [row[1] for row in read_csv_rows(CLASS_MAP)]
  assert list(by_file) == paths  # the folder's .wav files, sorted

  # One line per file, in order, on stdout alone: the top 4 classes of the
  # mean of the file's example scores.
  lines = result.stdout.splitlines()
  assert [parse_line(l)[0] for l in lines] == paths
  clip_scores = {}
  for line in lines:
    path, tags = parse_line(line)
    starts, scores = by_file[path]
    clip = inspect(path)
    assert len(starts) == num_examples(resampled_length(clip.frames,
                                                        clip.rate))
    np.testing.assert_array_equal(starts, 0.5 * np.arange(len(starts)))
    clip_scores[path] = scores.mean(axis=0)
    best = np.argsort(-clip_scores[path], kind='stable')[:4]
    assert [name for name, _ in tags] == [class_names[j] for j in best]
    np.testing.assert_allclose([s for _, s in tags],
                               clip_scores[path][best], atol=5e-4 + 1e-7)

  # The original is scored as --mode inference scores it.
  check_ok(_inference_of(original, tagger, tmp_path))
  submission = read_csv_rows(str(tmp_path / 'sub.csv'))
  np.testing.assert_allclose([float(v) for v in submission[1][1:]],
                             clip_scores[original], rtol=0, atol=SAME_ENGINE)

  reference = clip_scores[original]
  one_db = np.abs(clip_scores[control] - reference).max()
  tolerance = FORMAT_TOLERANCE * one_db
  top, second = np.sort(reference)[::-1][:2]
  # Differences within the tolerance cannot change the top class.
  assert top - second > 2 * tolerance, 'no clear top class'
  for path in others:
    assert np.argmax(clip_scores[path]) == np.argmax(reference), path
    np.testing.assert_allclose(
        clip_scores[path], reference, rtol=0, atol=tolerance,
        err_msg='%s (1 dB moves scores by %.3g)' % (path, one_db))


def inspect(path):
  from tagger.sound import audio
  return audio.inspect(path)


def _inference_of(path, tagger, tmp_path):
  """--mode inference on a folder holding only `path`."""
  folder = tmp_path / 'inference_only'
  folder.mkdir()
  os.symlink(path, str(folder / os.path.basename(path)))
  return run_main(['--mode', 'inference', '--class_map_path', CLASS_MAP,
                   '--inference_checkpoint', tagger['checkpoint'],
                   '--inference_clip_dir', str(folder),
                   '--predictions_csv_path', str(tmp_path / 'sub.csv')])


def test_unreadable_files_get_one_line_each_and_the_others_are_tagged(
    tagger, tmp_path):
  folder = tmp_path / 'mixed'
  folder.mkdir()
  good = [str(folder / n) for n in ('a_good.wav', 'c_good.wav', 'g_good.wav',
                                    'h_mp3_named.wav')]
  write_frames(good[0], buzz(times(44100, 2.0)), 44100, 16)
  t = times(48000, 1.5)
  write_frames(good[1], np.stack([bell(t), buzz(t)], 1), 48000, 32,
               floating=True)
  write_frames(good[2], buzz(times(8000, 1.0)), 8000, 24)
  write_audio(good[3], buzz(times(44100, 1.0)), format='MP3')
  bad = {
      str(folder / 'b_m4a.m4a'): 'an MP4/M4A file (AAC or ALAC audio), a '
                                 'format libsndfile cannot read; converting '
                                 'it to FLAC or WAV works (e.g. ffmpeg -i '
                                 'in.m4a out.flac)',
      # Found while reading, after its first chunk went to the model.
      str(folder / 'd_nan.wav'): 'frame 441000 holds a NaN or infinite '
                                 'sample',
      str(folder / 'e_text.wav'): 'not an audio file libsndfile can read '
                                  '(Format not recognised)',
      str(folder / 'f_cut.ogg'): 'truncated: the Ogg stream has no end; ',
  }
  (folder / 'b_m4a.m4a').write_bytes(b'\x00\x00\x00\x18ftypM4A ' +
                                     b'\x00' * 64)
  samples = buzz(times(44100, 12.0))
  samples[441000] = np.nan
  write_frames(str(folder / 'd_nan.wav'), samples, 44100, 32, floating=True)
  (folder / 'e_text.wav').write_text('hello\n')
  cut_in_half(write_audio(tmp_path / 'whole.ogg', buzz(times(44100, 3.0))),
              folder / 'f_cut.ogg')
  (folder / 'readme.txt').write_text('not audio, not named as audio\n')
  timeline = str(tmp_path / 'timeline.csv')
  result = run_main(_tag_args(tagger['checkpoint'], [str(folder)],
                              ['--timeline_csv_path', timeline]))
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stdout + result.stderr
  assert [parse_line(l)[0] for l in result.stdout.splitlines()] == good
  errors = [l for l in result.stderr.splitlines() if ': error: ' in l]
  assert len(errors) == len(bad) + 1
  for line, (path, message) in zip(errors, sorted(bad.items())):
    assert line.startswith('%s: error: %s' % (path, message)), line
  assert errors[-1] == ('main.py: error: 4 of 8 files could not be tagged '
                        '(see above)')
  readable = re.fullmatch(r'.*no end; (\d\.\d) s readable', errors[3])
  assert 0 < float(readable.group(1)) < 3.0, errors[3]
  notes = [l for l in result.stderr.splitlines() if ': note: ' in l]
  assert notes == ['%s: note: named .wav but holds MP3 audio; read as MP3' %
                   good[3]]
  by_file, _ = timeline_by_file(timeline)
  assert list(by_file) == good


def test_named_pipes_are_named_and_skipped_and_the_others_are_tagged(
    tagger, tmp_path):
  # Opening a named pipe for reading waits for a writer: a run that opens
  # one never ends, hence the timeout.
  folder = tmp_path / 'with_pipe'
  folder.mkdir()
  good = [str(folder / 'a_good.wav'), str(tmp_path / 'direct.wav')]
  for path in good:
    write_frames(path, buzz(times(44100, 1.0)), 44100, 16)
  pipes = [str(folder / 'b_pipe.wav'), str(tmp_path / 'pipe')]
  for path in pipes:
    os.mkfifo(path)
  result = run_main(_tag_args(tagger['checkpoint'],
                              [str(folder), pipes[1], good[1]]), timeout=120)
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stdout + result.stderr
  assert [parse_line(l)[0] for l in result.stdout.splitlines()] == good
  errors = [l for l in result.stderr.splitlines() if ': error: ' in l]
  assert errors == ['%s: error: not a regular file (a named pipe)' % p
                    for p in pipes] + [
                        'main.py: error: 2 of 4 files could not be tagged '
                        '(see above)']


def test_a_non_finite_sample_in_any_chunk_is_named(tagger, tmp_path):
  """A NaN or infinite sample in the first, a middle or the last chunk of
  a float file: found as that chunk is read, named by its frame, and the
  file left out; the good file is tagged."""
  from support.signals import non_finite_waveforms
  folder = tmp_path / 'non_finite'
  folder.mkdir()
  expected = {}
  for i, (case, (waveform, at)) in enumerate(sorted(
      non_finite_waveforms().items())):
    path = str(folder / ('%d %s.wav' % (i, case)))
    write_frames(path, waveform, 44100, 32, floating=True)
    expected[path] = at
  result = run_main(_tag_args(tagger['checkpoint'], [str(folder)]))
  assert result.returncode == 1, result.stderr
  assert [parse_line(l)[0] for l in result.stdout.splitlines()] == [
      p for p, at in expected.items() if at is None]
  errors = [l for l in result.stderr.splitlines() if ': error: ' in l]
  assert errors == [
      '%s: error: frame %d holds a NaN or infinite sample' % (p, at)
      for p, at in expected.items() if at is not None] + [
          'main.py: error: 6 of 7 files could not be tagged (see above)']


# Both files go through audio.BlockReader (a 48 kHz stereo WAV is not one that
# tf.data reads itself), so one engine each covers both engines and both
# decoders.
@pytest.mark.parametrize('engine,ext', [('tflite', 'wav'), ('keras', 'mp3')])
def test_a_long_file_is_tagged_in_bounded_memory(tagger, tmp_path, engine,
                                                 ext):
  """A 30-minute file (3600 examples) is tagged with a peak resident
  memory within a margin of a 5-second file's, by either engine: a 48 kHz
  stereo WAV, and an 8 kHz mono MP3 (decoded by libsndfile a block at a
  time and resampled by soxr; 3.5 s to encode). Measured in fresh
  processes: +26 to +48 MiB with Keras (tf.data's autotuned buffers and
  allocator caches, not the file: 0.7 to 0.8 GiB for both), +33 and +42 MiB
  with TFLite (0.9 GiB for both); forked from the test's server, +26 and
  +24 MiB (0.4 and 0.5 GiB, most of it shared with the server); the MP3,
  forked, +34 MiB (0.7 GiB for both). The bound, 160 MiB, is far below
  what holding the file would take: its samples alone are 303 MiB as
  float32 at 44.1 kHz mono (330 MiB of the WAV's bytes, 1.3 GiB as float64
  frames)."""
  long_path = str(tmp_path / ('long.' + ext))
  short_path = str(tmp_path / ('short.' + ext))
  write_long = write_sparse_wav if ext == 'wav' else write_sparse_mp3
  write_long(long_path, 1800)
  write_long(short_path, 5)
  peaks = {}
  for path in (short_path, long_path):
    peak, result = _peak_rss_mib(_tag_args(tagger['checkpoint'], [path],
                                           ['--engine', engine]))
    check_ok(result)
    assert result.stdout.startswith(path + ': ')
    peaks[path] = peak
  growth = peaks[long_path] - peaks[short_path]
  assert growth < 160, peaks


def write_sparse_mp3(path, seconds, rate=8000):
  """An MP3 of `seconds`, silent but for one second of noise every
  minute, mono at 8 kHz (the cheapest to encode)."""
  rng = np.random.default_rng(0)
  samples = np.zeros(int(seconds * rate), np.float32)
  for start in range(0, len(samples), 60 * rate):
    count = min(rate, len(samples) - start)
    samples[start:start + count] = rng.standard_normal(count) * 0.1
  write_audio(path, samples, rate, format='MP3')


def test_ctrl_c_stops_tagging_cleanly(tagger, tmp_path):
  """SIGINT while a long file is being read by the Python generator inside
  tf.data: one line, exit status 130, promptly (the iterator is released
  before the interpreter exits), the lines already printed kept and no
  timeline written."""
  short_path = str(tmp_path / 'a_short.wav')
  long_path = str(tmp_path / 'b_long.wav')
  write_sparse_wav(short_path, 2)
  write_sparse_wav(long_path, 1800)
  timeline = tmp_path / 'timeline.csv'
  run = Run(_tag_args(tagger['checkpoint'], [short_path, long_path],
                       ['--timeline_csv_path', str(timeline)]))
  run.wait_for(re.escape(short_path) + ': ')
  rc, out, err = run.finish(signal.SIGINT, timeout=60)
  assert rc == 130, err
  assert [parse_line(l)[0] for l in out.splitlines()] == [short_path]
  assert [l for l in err.splitlines() if l.startswith('main.py:')] == [
      'main.py: stopped: stopped by SIGINT; files written so far are '
      'complete, run the same command to do the rest']
  assert 'Traceback' not in out + err
  assert not timeline.exists()


def write_sparse_wav(path, seconds, rate=48000, channels=2):
  """A 16-bit WAV of `seconds`, silent but for one second of noise every
  minute; the silence is a hole in a sparse file, so writing it is cheap."""
  frame_bytes = 2 * channels
  frames = int(seconds * rate)
  fmt = struct.pack('<HHIIHH', PCM, channels, rate, rate * frame_bytes,
                    frame_bytes, 16)
  head = (b'RIFF' + struct.pack('<I', 36 + frames * frame_bytes) + b'WAVE' +
          b'fmt ' + struct.pack('<I', 16) + fmt + b'data' +
          struct.pack('<I', frames * frame_bytes))
  rng = np.random.default_rng(0)
  with open(path, 'wb') as f:
    f.write(head)
    for start in range(0, frames, 60 * rate):
      f.seek(len(head) + start * frame_bytes)
      count = min(rate, frames - start) * channels
      f.write(quantise(rng.standard_normal(count) * 0.1, 16).astype(
          '<i2').tobytes())
    f.truncate(len(head) + frames * frame_bytes)


# Runs main.py in this process and reports its own peak resident memory
# (VmHWM; ru_maxrss would carry over the parent's peak), as benchmark.py's
# rss_child does.
_RSS_CHILD = main_in_process(after=r'''
with open('/proc/self/status') as status:
  peak = next(int(l.split()[1]) for l in status if l.startswith('VmHWM:'))
print('peak_kib %d' % peak, file=sys.stderr)
''')


def _peak_rss_mib(args):
  # Forked where it can be: the child starts with the server's resident
  # pages, the same for every run compared.
  result = run_main(args, timeout=600, script=_RSS_CHILD)
  peak = [l for l in result.stderr.splitlines() if l.startswith('peak_kib ')]
  assert peak, result.stderr[-3000:]
  result.stderr = result.stderr.replace(peak[-1] + '\n', '')
  return int(peak[-1].split()[1]) / 1024.0, result


# --- pre-flight -------------------------------------------------------------

def test_tag_flags_are_checked_before_any_work(tagger, tmp_path):
  checkpoint = tagger['checkpoint']
  empty = tmp_path / 'empty'
  empty.mkdir()
  clip = str(tmp_path / 'x.wav')
  write_frames(clip, buzz(times(44100, 1.0)), 44100, 16)
  assert_one_error(run_main(['--mode', 'tag', '--class_map_path', CLASS_MAP,
                             '--inference_checkpoint', checkpoint]),
                   '--tag_paths is required with --mode tag')
  assert_one_error(run_main(['--mode', 'tag', '--class_map_path', CLASS_MAP,
                             '--tag_paths', clip]),
                   '--inference_checkpoint is required')
  assert_one_error(run_main(_tag_args(str(tmp_path / 'model.ckpt-1'),
                                      [clip])),
                   '--inference_checkpoint', 'not found')
  assert_one_error(run_main(_tag_args(checkpoint, [clip, str(
      tmp_path / 'gone.wav')])), '--tag_paths', 'gone.wav not found')
  assert_one_error(run_main(_tag_args(checkpoint, [str(empty)])),
                   '--tag_paths', str(empty), 'no audio files')
  assert_one_error(run_main(_tag_args(checkpoint, [clip], ['--top_k', '0'])),
                   '--top_k')
  assert_one_error(run_main(_tag_args(
      checkpoint, [clip], ['--timeline_csv_path', str(empty)])),
                   '--timeline_csv_path', 'is a folder')
  assert_one_error(run_main(_tag_args(
      checkpoint, [clip], ['--timeline_csv_path',
                           str(tmp_path / 'no' / 'such' / 't.csv')])),
                   '--timeline_csv_path', 'does not exist')


def test_a_stop_that_ends_the_reading_stops_tagging(tagger, tmp_path,
                                                    monkeypatch, capsys):
  """A stop request the file reader sees before its first chunk ends the
  chunks with no batch for the scorer to stop at; the scorer then stops
  the run (Stopped), rather than reporting a file whose examples did not
  all arrive."""
  from tagger.core import params
  from tagger.core import stopping
  from tagger.modes import tagging
  from conftest import TAG_HPARAMS, read_class_names
  path = str(tmp_path / 'long.wav')
  write_sparse_wav(path, 60)
  asked = []

  def requested():
    # As if SIGTERM's handler had run just now: the reader's thread sees
    # the request before the scorer's own check does.
    if not asked:
      stopping._requested.append(signal.SIGTERM)
    asked.append(True)
    return stopping._requested[0]

  monkeypatch.setattr(stopping, 'requested', requested)
  with stopping.requests():
    with pytest.raises(stopping.Stopped) as stopped:
      tagging.tag('crnn', params.parse_hparams(TAG_HPARAMS),
                  read_class_names(), [path], tagger['checkpoint'], 3)
  assert stopped.value.exit_code == 143 and asked
  assert path not in capsys.readouterr().out
