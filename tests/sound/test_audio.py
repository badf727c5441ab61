"""Every format libsndfile reads, in every mode: a lossless FLAC (mono, or
stereo that mixes down to the same samples) gives the WAV's examples and
scores exactly; Ogg Vorbis, Opus and MP3 score within a measured bound of
it; bad files get one line each (what is wrong, and how much was
readable). The files are written with soundfile in tmp_path."""

import os
import re

import numpy as np
import pytest

from conftest import (CLASS_MAP, TAG_HPARAMS, check_ok, cut_in_half,
                      read_class_names, read_csv_rows, run_main, write_audio,
                      write_pcm_wav)

# The largest difference of a clip score between the WAV and its Ogg
# Vorbis, Opus or MP3 encoding (libsndfile's default settings) on the
# tests' tagger (seed 1), for the 4 s test clip of test_tagging.py, by tag
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
  """Calibration (clip_to_log_mel_examples), the training batches (with
  their labels, and the crops of --features_on device) and the scoring
  batches of eval, inference and relabel: equal, bit for bit."""
  import inputs
  from tagger.engines import tflite_engine
  hparams = parse_hparams('batch_size=8')
  folder = flac_set['folder']
  for versions in flac_set['versions']:
    names = [os.path.basename(p) for p in versions]
    wav = inputs.clip_to_log_mel_examples(names[0], folder, hparams).numpy()
    for name in names[1:]:
      np.testing.assert_array_equal(inputs.clip_to_log_mel_examples(
          name, folder, hparams).numpy(), wav, err_msg=name)
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
  """The 4 s test clip of test_tagging.py as a 16-bit WAV; as a lossless
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


# --- what a file holds, and what is wrong with it ---------------------------

def _noise(seconds, rate=44100, channels=1):
  rng = np.random.default_rng(int(seconds * 10))
  return rng.uniform(-0.3, 0.3, (int(seconds * rate), channels))


@pytest.mark.parametrize('ext,fragment', [
    ('flac', 'truncated or damaged: '), ('mp3', 'truncated or damaged: '),
    ('ogg', 'truncated: the Ogg stream has no end; ')])
def test_a_cut_file_says_how_much_was_readable(tmp_path, ext, fragment):
  """A 4 s file cut in half: about 2 s of it readable."""
  from tagger.sound import audio
  whole = write_audio(tmp_path / ('whole.' + ext), _noise(4.0))
  cut = cut_in_half(whole, tmp_path / ('cut.' + ext))
  with pytest.raises(audio.AudioError) as error:
    audio.inspect(cut)
  message = str(error.value)
  assert message.startswith(fragment) and '\n' not in message, message
  readable = float(re.search(r'(\d+\.\d) s (of 4\.0 s )?readable',
                             message).group(1))
  assert 1.2 <= readable <= 2.2, message
  if ext != 'ogg':
    assert message.endswith('of 4.0 s readable'), message
  assert audio.inspect(whole).frames == 4 * 44100



def _ogg_crc(page):
  """The CRC-32 of an Ogg page (polynomial 0x04C11DB7, not reflected, no
  initial or final inversion), its checksum field taken as zero."""
  crc = 0
  for byte in page:
    crc ^= byte << 24
    for _ in range(8):
      crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1)
      crc &= 0xFFFFFFFF
  return crc


def _ogg_page(header_type, granule, serial, sequence, body_segments=b''):
  """An Ogg page with its checksum."""
  import struct
  head = struct.pack('<4sBBqIII', b'OggS', 0, header_type, granule, serial,
                     sequence, 0) + bytes([len(body_segments)]) + body_segments
  crc = _ogg_crc(head)
  return head[:22] + struct.pack('<I', crc) + head[26:]


def test_an_ogg_stream_ended_by_an_empty_page_is_whole(tmp_path):
  """An end-of-stream page may hold no segments (27 bytes of header): the
  stream is complete. The same file without that page has no end."""
  import struct
  from tagger.sound import audio
  path = write_audio(tmp_path / 'a.ogg', _noise(2.0))
  data = bytearray(open(path, 'rb').read())
  last = data.rfind(b'OggS')
  assert data[last + 5] & 0x04  # the encoder ended the stream there
  data[last + 5] &= ~0x04 & 0xFF
  data[last + 22:last + 26] = b'\0\0\0\0'
  data[last + 22:last + 26] = struct.pack('<I', _ogg_crc(bytes(data[last:])))
  granule, serial, sequence = struct.unpack('<qII', data[last + 6:last + 22])
  unended = str(tmp_path / 'unended.ogg')
  with open(unended, 'wb') as f:
    f.write(bytes(data))
  with pytest.raises(audio.AudioError) as error:
    audio.inspect(unended)
  assert str(error.value).startswith('truncated: the Ogg stream has no end')
  ended = str(tmp_path / 'ended.ogg')
  with open(ended, 'wb') as f:
    f.write(bytes(data) + _ogg_page(0x04, granule, serial, sequence + 1))
  assert audio.inspect(ended).frames == audio.inspect(path).frames

def test_a_file_cut_during_a_run_stops_it_with_the_seconds_readable(
    tmp_path):
  """Checked before the run, cut after: the pipeline's read says so. An
  MP3 reads short (how much is said); a FLAC cannot seek past its end."""
  import inputs
  for ext in ('mp3', 'flac'):
    path = write_audio(tmp_path / ('a.' + ext), _noise(12.0))
    inputs._clip_headers([path])  # the pre-flight read, whole
    pcm, problem = inputs.decoded_pcm(path, 0, 44100)
    assert problem == '' and len(pcm) == 44100
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 3])
    pcm, problem = inputs.decoded_pcm(path, 2 * 44100, 9 * 44100)
    assert len(pcm) == 0
    if ext == 'mp3':
      readable = re.fullmatch(r'truncated: (\d\.\d) s of 12\.0 s readable '
                              r'\(did the file change\?\)', problem)
      assert 3.0 <= float(readable.group(1)) <= 4.5, problem
    else:
      pcm, problem = inputs.decoded_pcm(path, 8 * 44100, 9 * 44100)
      assert problem.startswith('cannot read frames from 352800 (') and (
          problem.endswith('; did the file change?)')), problem


@pytest.mark.parametrize('name,head,kind', [
    ('song.m4a', b'\x00\x00\x00\x20ftypM4A ', 'an MP4/M4A file (AAC or ALAC '
     'audio)'),
    ('song.dat', b'\x00\x00\x00\x20ftypmp42', 'an MP4/M4A file (AAC or ALAC '
     'audio)'),
    ('song.raw', b'\xff\xf1\x50\x80', 'an AAC (ADTS) stream'),
    ('song.wma', b'\x30\x26\xb2\x75', 'a WMA file'),
    ('tiny.aac', b'\xff', 'an AAC file'),
    ('tiny.dat', b'\xff\xf9', 'an AAC (ADTS) stream')])
def test_formats_libsndfile_cannot_read_say_what_to_do(tmp_path, name, head,
                                                       kind):
  from tagger.sound import audio
  path = tmp_path / name
  path.write_bytes(head + (b'\x00' * 200 if len(head) > 2 else b''))
  with pytest.raises(audio.AudioError) as error:
    audio.inspect(str(path))
  ext = os.path.splitext(name)[1]
  assert str(error.value) == (
      '%s, a format libsndfile cannot read; converting it to FLAC or WAV '
      'works (e.g. ffmpeg -i in%s out.flac)' % (kind, ext))


@pytest.mark.parametrize('ext,kwargs', [
    ('wav', {'subtype': 'PCM_24'}), ('aiff', {}), ('wav', {})])
def test_zero_frames_and_not_audio(tmp_path, ext, kwargs):
  from tagger.sound import audio
  path = write_audio(tmp_path / ('zero.' + ext), np.zeros((0, 1)), **kwargs)
  with pytest.raises(audio.AudioError) as error:
    audio.inspect(path)
  assert str(error.value) == 'empty (no audio samples)'
  (tmp_path / 'notes.flac').write_text('these are my notes\n' * 20)
  with pytest.raises(audio.AudioError) as error:
    audio.inspect(str(tmp_path / 'notes.flac'))
  assert str(error.value) == ('not an audio file libsndfile can read (Format '
                              'not recognised)')


def test_a_name_that_lies_is_read_by_content_with_a_note(tmp_path):
  """An MP3 named .wav and a 24-bit WAV named .mp3 read as the same files
  named rightly, with a note."""
  from tagger.sound import audio
  noise = _noise(1.0, 22050, 2)
  samples = {}
  for ext, kwargs, other in (('mp3', {}, 'wav'),
                             ('wav', {'subtype': 'PCM_24'}, 'mp3')):
    right = write_audio(tmp_path / ('right.' + ext), noise, 22050, **kwargs)
    wrong = str(tmp_path / ('wrong.' + other))
    os.link(right, wrong)
    clips = [audio.inspect(p) for p in (right, wrong)]
    assert clips[0].note is None
    container = 'MP3' if ext == 'mp3' else 'WAV'
    assert clips[1].note == 'named .%s but holds %s audio; read as %s' % (
        other, container, container)
    assert clips[1]._replace(note=None) == clips[0]
    reads = [audio.BlockReader(p, c).read(1000, 30000)
             for p, c in zip((right, wrong), clips)]
    np.testing.assert_array_equal(reads[1], reads[0])
    samples[ext] = reads[0]
  # Mixed down and resampled: the two channels' mean at 44.1 kHz.
  import soxr
  mean = noise.astype(np.float32).mean(axis=1)
  np.testing.assert_allclose(samples['wav'], soxr.resample(
      mean, 22050, 44100, quality='VHQ')[1000:30000], rtol=0, atol=1e-6)


def test_a_length_a_little_long_is_read_as_silence(tmp_path):
  """A length that overstates the file by less than 0.1 s (an estimate)
  is read with silence at the end; by more, the file is truncated."""
  from tagger.sound import audio
  path = write_audio(tmp_path / 'a.flac', _noise(1.0))
  clip = audio.inspect(path)
  near = clip._replace(frames=clip.frames + 4000)  # 0.09 s more
  audio._check_complete(path, near)
  got = audio.BlockReader(path, near).read(40000, clip.frames + 4000)
  assert np.abs(got[:4100 - 4000]).max() > 0.01
  np.testing.assert_array_equal(got[4100:], 0)
  # At the bound exactly (0.1 s: 4,410 frames more) still read; one more
  # frame is not.
  audio._check_complete(path, clip._replace(frames=clip.frames + 4410))
  with pytest.raises(audio.AudioError):
    audio._check_complete(path, clip._replace(frames=clip.frames + 4411))
  far = clip._replace(frames=clip.frames + 4500)  # 0.1 s more
  with pytest.raises(audio.AudioError) as error:
    audio._check_complete(path, far)
  assert str(error.value) == 'truncated or damaged: 1.0 s of 1.1 s readable'
  with pytest.raises(audio.AudioError) as error:
    audio.BlockReader(path, far).read(40000, clip.frames + 4500)
  assert str(error.value) == ('truncated: 1.0 s of 1.1 s readable (did the '
                              'file change?)')



def test_samples_beyond_full_scale_saturate_at_16_bits(tmp_path):
  """A float file's samples at or past full scale become the 16-bit
  extremes the pipeline takes (+1.0 and more: 32767; -1.0 and less:
  -32768), never wrapped round to the other sign."""
  import inputs
  values = np.array([0.5, 1.0, 1.5, -1.0, -1.5, 0.25] * 2000, np.float32)
  path = write_audio(tmp_path / 'loud.wav', values, subtype='FLOAT')
  pcm, problem = inputs.decoded_pcm(path.encode(), 0, len(values))
  assert problem == ''
  np.testing.assert_array_equal(pcm[:6], [16384, 32767, 32767, -32768,
                                          -32768, 8192])

def test_the_mp3_decoders_warnings_are_silenced(tmp_path, capfd):
  """libsndfile's MP3 decoder warns on stderr about a cut file: only our
  own line is shown; stderr works again after, and no descriptor leaks."""
  import sys
  from tagger.sound import audio
  cut = cut_in_half(write_audio(tmp_path / 'a.mp3', _noise(2.0)),
                    tmp_path / 'cut.mp3')
  open_fds = len(os.listdir('/proc/self/fd'))
  capfd.readouterr()
  with pytest.raises(audio.AudioError):
    audio.inspect(cut)
  print('after', file=sys.stderr, flush=True)
  assert capfd.readouterr().err == 'after\n'
  assert len(os.listdir('/proc/self/fd')) == open_fds
