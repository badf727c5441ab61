"""--mode tag from the command line (tag_mode.py): the same clip in every
WAV format gets the same tags, the original's scores those of --mode
inference; one line per file, an unreadable file or a named pipe among
good ones included; a non-finite sample in any chunk named; and the flags
checked before any work."""

import collections
import os
import re

import numpy as np

from support.cli import assert_one_error, check_ok, run_main
from support.scores import read_csv_rows
from support.settings import CLASS_MAP
from support.signals import buzz, cut_in_half, times, write_audio
from support.tag_runs import (bell, num_examples, parse_line,
                              resampled_length, tag_args)
from support.wav_files import write_frames


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


# --- the test clip, defined in continuous time ------------------------------

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


# --- the command line -------------------------------------------------------

def test_same_clip_in_every_format_gets_the_same_tags(tagger, tmp_path):
  paths = write_clip_versions(tmp_path / 'versions')
  original, others, control = paths[0], paths[1:4], paths[4]
  timeline = str(tmp_path / 'timeline.csv')
  result = check_ok(run_main(tag_args(
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
  result = run_main(tag_args(tagger['checkpoint'], [str(folder)],
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
  result = run_main(tag_args(tagger['checkpoint'],
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
  result = run_main(tag_args(tagger['checkpoint'], [str(folder)]))
  assert result.returncode == 1, result.stderr
  assert [parse_line(l)[0] for l in result.stdout.splitlines()] == [
      p for p, at in expected.items() if at is None]
  errors = [l for l in result.stderr.splitlines() if ': error: ' in l]
  assert errors == [
      '%s: error: frame %d holds a NaN or infinite sample' % (p, at)
      for p, at in expected.items() if at is not None] + [
          'main.py: error: 6 of 7 files could not be tagged (see above)']


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
  assert_one_error(run_main(tag_args(str(tmp_path / 'model.ckpt-1'),
                                     [clip])),
                   '--inference_checkpoint', 'not found')
  assert_one_error(run_main(tag_args(checkpoint, [clip, str(
      tmp_path / 'gone.wav')])), '--tag_paths', 'gone.wav not found')
  assert_one_error(run_main(tag_args(checkpoint, [str(empty)])),
                   '--tag_paths', str(empty), 'no audio files')
  assert_one_error(run_main(tag_args(checkpoint, [clip], ['--top_k', '0'])),
                   '--top_k')
  assert_one_error(run_main(tag_args(
      checkpoint, [clip], ['--timeline_csv_path', str(empty)])),
                   '--timeline_csv_path', 'is a folder')
  assert_one_error(run_main(tag_args(
      checkpoint, [clip], ['--timeline_csv_path',
                           str(tmp_path / 'no' / 'such' / 't.csv')])),
                   '--timeline_csv_path', 'does not exist')
