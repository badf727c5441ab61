"""Every format libsndfile reads, in every mode: a lossless FLAC (mono, or
stereo that mixes down to the same samples) gives the WAV's examples and
scores exactly; Ogg Vorbis, Opus and MP3 score within a measured bound of
it, their decoded waveforms close to the WAV's. The files are written
with soundfile in tmp_path."""

import os

import numpy as np
import pytest

from support.cli import check_ok, run_main
from support.scores import read_class_names, read_csv_rows
from support.settings import CLASS_MAP, TAG_HPARAMS
from support.signals import pipeline_examples, write_audio, write_pcm_wav


# The largest difference of a clip score between the WAV and its Ogg
# Vorbis, Opus or MP3 encoding (libsndfile's default settings) on the
# tests' tagger (seed 1), for the 4 s test clip of test_tag_mode.py, by tag
# and by inference alike: measured 6.4e-4 (Ogg Vorbis), 2.4e-4 (Opus) and
# 5.0e-5 (MP3) on a 2-core x86-64 machine (docs/export-and-tagging.md
# #formats). The bound is 8 times the largest, for other CPUs' training
# runs; the top class must not change.
LOSSY_BOUND = 0.005
# The tiny model hardly hears some faults (a 3 dB gain, a 48 kHz Opus file
# not resampled: within LOSSY_BOUND), so the decoded waveforms are held to
# the WAV's too: their signal-to-error ratio against it measured 24.7 dB
# (Ogg Vorbis), 22.2 dB (Opus) and 33.1 dB (MP3), with no delay; a 3 dB
# gain alone would give 10.5 dB.
LOSSY_SNR_DB = 15.0


def _int16_clip(seconds, seed):
  """Recorded-like 16-bit samples (a sum of the synthetic sounds)."""
  from tagger.sound import synthetic
  rng = np.random.default_rng(seed)
  clip = synthetic.make_clip(['Buzz', 'Hiss'], seconds, rng)
  return np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16)


def _flac_versions(folder, pcm, name):
  """name.wav (16-bit mono), name.flac (lossless, the same samples) and
  name_stereo.flac, whose channels differ but average to those samples."""
  wav_path = str(folder / (name + '.wav'))
  write_pcm_wav(wav_path, pcm)
  write_audio(folder / (name + '.flac'), pcm / 32768.0, subtype='PCM_16')
  wiggle = (np.arange(len(pcm)) % 7 - 3) * 100  # odd, whole, and small
  stereo = np.stack([pcm + wiggle, pcm - wiggle], 1).clip(-32768, 32767)
  assert np.array_equal(stereo.mean(axis=1), pcm)  # no clipping
  write_audio(folder / (name + '_stereo.flac'), stereo / 32768.0,
              subtype='PCM_16')
  return [wav_path, str(folder / (name + '.flac')),
          str(folder / (name + '_stereo.flac'))]


@pytest.fixture(scope='module')
def flac_set(tmp_path_factory):
  """Two clips (10.3 s: two chunks; 0.7 s) as WAV and as FLAC, and a
  CSV of each kind (_flac_versions) and of the first clip's WAV with the
  second's FLAC (a set of both kinds)."""
  from tools import make_demo_data
  folder = tmp_path_factory.mktemp('flac_set')
  versions = [_flac_versions(folder, _int16_clip(s, i), 'c%d' % i)
              for i, s in enumerate((10.3, 0.7))]
  versions.append([versions[0][0], versions[1][1]])  # mixed
  csvs = []
  for kind in range(4):
    csvs.append(str(folder / ('kind%d.csv' % kind)))
    paths = ([v[kind] for v in versions[:2]] if kind < 3 else versions[2])
    make_demo_data.write_csv(csvs[-1], [
        (os.path.basename(p), ['Buzz', 'Hiss']) for p in paths])
  return {'folder': str(folder), 'versions': versions[:2], 'csvs': csvs,
          'mixed': versions[2]}


def test_flac_gives_the_wavs_examples_in_every_pipeline(flac_set,
                                                        parse_hparams):
  """Calibration (clips_log_mel_examples), the training batches (with
  their labels, and the crops of --features_on device) and the scoring
  batches of eval, inference and relabel: equal, bit for bit."""
  import inputs
  from tagger.engines import tflite_engine
  hparams = parse_hparams('batch_size=8')
  folder = flac_set['folder']
  for versions in flac_set['versions']:
    names = [os.path.basename(p) for p in versions]
    wav = pipeline_examples(names[0], folder, hparams)
    for name in names[1:]:
      np.testing.assert_array_equal(pipeline_examples(name, folder, hparams),
                                    wav, err_msg=name)
  calibration = [tflite_engine.calibration_examples(
      [v[kind] for v in flac_set['versions']], hparams, count=20)
                 for kind in range(3)]
  for got in calibration[1:]:
    np.testing.assert_array_equal(got, calibration[0])

  def first_batches(kind, crops):
    batches = inputs.train_dataset(
        flac_set['csvs'][kind], folder, read_class_names(), hparams, 2,
        seed=1, crops=crops)
    return [tuple(np.asarray(t) for t in _flat(b)) for b, _ in zip(
        batches, range(2))]

  for crops in (False, True):
    wav_batches = first_batches(0, crops)
    for kind in (1, 2, 3):
      for got, want in zip(first_batches(kind, crops), wav_batches):
        for a, b in zip(got, want):
          np.testing.assert_array_equal(a, b)

  def scoring(kind):
    paths = ([v[kind] for v in flac_set['versions']] if kind < 3 else
             flac_set['mixed'])
    found = {}
    for examples, clip in inputs.scoring_dataset(paths, hparams, 4):
      for example, i in zip(examples.numpy(), clip.numpy()):
        found.setdefault(int(i), []).append(example)
    return {i: np.stack(sorted(e, key=lambda x: x.tobytes()))
            for i, e in found.items()}

  wav_scoring = scoring(0)
  assert sorted(wav_scoring) == [0, 1] and len(wav_scoring[0]) == 21
  for kind in (1, 2, 3):
    got = scoring(kind)
    for i in wav_scoring:
      np.testing.assert_array_equal(got[i], wav_scoring[i])


def _flat(batch):
  import tensorflow as tf
  return tf.nest.flatten(batch)


def test_flac_scores_as_the_wav(flac_set, tagger):
  """The scoring engine of eval, inference and relabel: the same scores."""
  from tagger.core import files
  from tagger.core import params
  from tagger.engines import scoring
  hparams = params.parse_hparams(TAG_HPARAMS)
  scorer = scoring.Scorer('crnn', 80, hparams)
  scorer.load(tagger['checkpoint'])
  paths = [p for v in flac_set['versions'] for p in v]
  scores = scorer.score(paths, files.check_clips(paths))
  for clip in (0, 3):
    np.testing.assert_array_equal(scores[clip + 1], scores[clip])
    np.testing.assert_array_equal(scores[clip + 2], scores[clip])
  assert np.abs(scores[0] - scores[3]).max() > 1e-3  # clips told apart


def _lossy_versions(folder):
  """The 4 s test clip of test_tag_mode.py as a 16-bit WAV; as a lossless
  FLAC, AIFF and a WAV named .mp3 (the same samples); as Ogg Vorbis, Opus
  (48 kHz) and MP3."""
  from support import signals
  os.makedirs(str(folder))
  pcm = np.round(signals.buzz(signals.times(44100)) * 32767)
  pcm = pcm.astype(np.int16)
  paths = {'wav': str(folder / 'a.wav')}
  write_pcm_wav(paths['wav'], pcm)
  os.link(paths['wav'], str(folder / 'b_wav_named.mp3'))
  paths['named'] = str(folder / 'b_wav_named.mp3')
  for key, name, kwargs in (('flac', 'c.flac', {'subtype': 'PCM_16'}),
                            ('aiff', 'd.aiff', {'subtype': 'PCM_16'}),
                            ('ogg', 'e.ogg', {}), ('mp3', 'f.mp3', {})):
    paths[key] = write_audio(folder / name, pcm / 32768.0, **kwargs)
  paths['opus'] = write_audio(
      folder / 'g.opus', signals.buzz(signals.times(48000)), 48000,
      format='OGG', subtype='OPUS')
  return paths


def test_every_format_tags_and_infers_from_the_command_line(tagger,
                                                            tmp_path):
  """tag and inference of one folder of every format: the lossless ones
  score exactly as the WAV (tag's timeline and inference's submission are
  written as float32 text, equal to the last digit); the lossy ones within
  LOSSY_BOUND, with the same top class; the WAV named .mp3 gets a note."""
  paths = _lossy_versions(tmp_path / 'formats')

  def main_on_the_folder(mode, folder_flag, output_flag, output):
    return check_ok(run_main([
        '--mode', mode, '--class_map_path', CLASS_MAP,
        '--inference_checkpoint', tagger['checkpoint'],
        folder_flag, str(tmp_path / 'formats'), output_flag, output]))

  timeline = str(tmp_path / 'timeline.csv')
  tagged = main_on_the_folder('tag', '--tag_paths', '--timeline_csv_path',
                              timeline)
  assert '%s: note: named .mp3 but holds WAV audio; read as WAV' % (
      paths['named']) in tagged.stderr.splitlines()
  rows = read_csv_rows(timeline)[1:]
  by_file = {}
  for row in rows:
    by_file.setdefault(row[0], []).append(row[2:])
  assert sorted(by_file) == sorted(paths.values())
  submission = str(tmp_path / 'submission.csv')
  inferred = main_on_the_folder('inference', '--inference_clip_dir',
                                '--predictions_csv_path', submission)
  assert ('main.py: note: 1 files not in the format their names say: %s: '
          'named .mp3 but holds WAV audio; read as WAV' % paths['named']
          in inferred.stderr.splitlines())
  scores = {row[0]: np.array(row[1:], np.float64)
            for row in read_csv_rows(submission)[1:]}
  wav = scores['a.wav']
  for key in ('flac', 'aiff', 'named'):
    assert by_file[paths[key]] == by_file[paths['wav']], key
    np.testing.assert_array_equal(scores[os.path.basename(paths[key])], wav)
  _check_lossy_waveforms(paths)
  tag_wav = np.array(by_file[paths['wav']], np.float64).mean(axis=0)
  for key in ('ogg', 'opus', 'mp3'):
    tag_scores = np.array(by_file[paths[key]], np.float64).mean(axis=0)
    inferred_scores = scores[os.path.basename(paths[key])]
    for got, want in ((tag_scores, tag_wav), (inferred_scores, wav)):
      difference = np.abs(got - want).max()
      assert difference < LOSSY_BOUND, (key, difference)
      assert np.argmax(got) == np.argmax(want), key


def _check_lossy_waveforms(paths):
  from tagger.sound import audio
  wav = audio.BlockReader(paths['wav'], audio.inspect(paths['wav'])).read(
      0, 4 * 44100)
  for key in ('ogg', 'opus', 'mp3'):
    clip = audio.inspect(paths[key])
    assert audio.num_samples(clip) == len(wav), key
    got = audio.BlockReader(paths[key], clip).read(0, len(wav))
    snr = 10 * np.log10(np.sum(wav ** 2) / np.sum((got - wav) ** 2))
    assert snr > LOSSY_SNR_DB, (key, snr)
