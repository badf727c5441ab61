"""What an audio file holds, and what is wrong with it (audio.py): a cut
file says how much was readable, before a run or during it; formats
libsndfile cannot read say what to do; empty files and text are named; a
name that lies is read by its content, with a note; a length a little
long reads as silence; float samples beyond full scale saturate; the MP3
decoder's warnings are silenced. The files are written with soundfile in
tmp_path."""

import os
import re

import numpy as np
import pytest

from support.signals import cut_in_half, write_audio


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
  import tensorflow as tf
  from tagger.core import params
  from tagger.sound import audio
  for ext in ('mp3', 'flac'):
    path = write_audio(tmp_path / ('a.' + ext), _noise(12.0))
    clip = audio.inspect(path)  # the pre-flight read, whole
    pcm, problem = audio.decoded_pcm16(path, 0, 44100, clip)
    assert problem == '' and len(pcm) == 44100
    batches = inputs.scoring_dataset([path], params.parse_hparams(), 4)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 3])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'(readable|cannot read).*did the file change'):
      for _ in batches:
        pass
    pcm, problem = audio.decoded_pcm16(path, 2 * 44100, 9 * 44100, clip)
    assert len(pcm) == 0
    if ext == 'mp3':
      readable = re.fullmatch(r'truncated: (\d\.\d) s of 12\.0 s readable '
                              r'\(did the file change\?\)', problem)
      assert 3.0 <= float(readable.group(1)) <= 4.5, problem
    else:
      pcm, problem = audio.decoded_pcm16(path, 8 * 44100, 9 * 44100, clip)
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
  from tagger.sound import audio
  values = np.array([0.5, 1.0, 1.5, -1.0, -1.5, 0.25] * 2000, np.float32)
  path = write_audio(tmp_path / 'loud.wav', values, subtype='FLOAT')
  pcm, problem = audio.decoded_pcm16(path, 0, len(values))
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
