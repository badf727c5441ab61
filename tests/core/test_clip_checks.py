"""The checks of a clip before a run (files.inspect_clip, check_clips): a
WAV file's samples counted from its header (extra chunks, a cut or
streamed data chunk), other WAVs read by libsndfile, empty and non-RIFF
files named, and files that are not regular named and never opened."""

import os
import signal
import socket
import struct
import wave

import numpy as np
import pytest

from tagger.core import files
from tools import make_demo_data


def pcm_wav(path, num_samples=1000, rate=44100, channels=1, width=2):
  with wave.open(str(path), 'wb') as w:
    w.setnchannels(channels)
    w.setsampwidth(width)
    w.setframerate(rate)
    w.writeframes(b'\x01' * (num_samples * channels * width))
  return str(path)


def riff(chunks):
  body = b'WAVE' + b''.join(chunks)
  return b'RIFF' + struct.pack('<I', len(body)) + body


def chunk(chunk_id, data):
  pad = b'\x00' if len(data) % 2 else b''
  return chunk_id + struct.pack('<I', len(data)) + data + pad


def fmt_chunk(tag=1, channels=1, rate=44100, bits=16):
  block = channels * bits // 8
  return chunk(b'fmt ', struct.pack('<HHIIHH', tag, channels, rate,
                                    rate * block, block, bits))


def test_inspect_good_wav(tmp_path):
  path = tmp_path / 'good.wav'
  make_demo_data.write_wav(str(path), np.zeros(12345))
  assert files.inspect_clip(str(path)) == (None, 12345, None)


def test_inspect_wav_with_extra_odd_chunk(tmp_path):
  # A LIST chunk of odd size (padded to even) before the data chunk.
  data = np.arange(777, dtype='<i2').tobytes()
  path = tmp_path / 'list.wav'
  path.write_bytes(riff([fmt_chunk(), chunk(b'LIST', b'abc'),
                         chunk(b'data', data)]))
  assert files.inspect_clip(str(path)) == (None, 777, None)
  with wave.open(str(path)) as w:  # the stdlib agrees it is valid
    assert w.getnframes() == 777


@pytest.mark.parametrize('maker, num_samples', [
    (lambda p: pcm_wav(p, rate=48000), 918),  # 1000 * 44100 // 48000
    (lambda p: pcm_wav(p, channels=2), 1000),
    (lambda p: pcm_wav(p, width=1), 1000),
    (lambda p: pcm_wav(p, width=3), 1000),
])
def test_inspect_other_wavs_are_read_by_libsndfile(tmp_path, maker,
                                                  num_samples):
  from tagger.sound import audio
  path = maker(tmp_path / 'other.wav')
  assert files.inspect_clip(path) == (None, num_samples, None)
  assert audio.inspect(path).data_offset == -1  # not the tf.data fast path


def test_inspect_empty_pcm(tmp_path):
  problem, num_samples, _ = files.inspect_clip(
      pcm_wav(tmp_path / 'bad.wav', num_samples=0))
  assert problem == 'empty (no audio samples)' and num_samples == 0


def test_inspect_float_wav(tmp_path):
  data = np.zeros(100, '<f4').tobytes()
  path = tmp_path / 'float.wav'
  path.write_bytes(riff([fmt_chunk(tag=3, bits=32), chunk(b'data', data)]))
  assert files.inspect_clip(str(path)) == (None, 100, None)


def test_inspect_truncated_and_streamed(tmp_path):
  path = tmp_path / 'cut.wav'
  make_demo_data.write_wav(str(path), np.zeros(1000))
  raw = path.read_bytes()
  # A data chunk that claims more than the file holds (cut short, or written
  # through a pipe with size 0xFFFFFFFF): the audio runs to the end.
  path.write_bytes(raw[:-100])
  assert files.inspect_clip(str(path)) == (None, 950, None)
  path.write_bytes(raw[:-101])  # an odd byte: 949 whole samples
  assert files.inspect_clip(str(path)) == (None, 949, None)
  streamed = raw[:40] + struct.pack('<I', 0xFFFFFFFF) + raw[44:]
  path.write_bytes(streamed)
  assert files.inspect_clip(str(path)) == (None, 1000, None)
  # Less than one whole sample is no audio.
  path.write_bytes(raw[:45])
  problem, _, _ = files.inspect_clip(str(path))
  assert problem is not None and 'empty' in problem
  # Cut inside the header: no data chunk at all.
  path.write_bytes(raw[:30])
  problem, _, _ = files.inspect_clip(str(path))
  assert problem and 'not an audio file libsndfile can read' in problem


def test_inspect_empty_and_not_riff(tmp_path):
  empty = tmp_path / 'empty.wav'
  empty.write_bytes(b'')
  assert files.inspect_clip(str(empty))[0] == 'empty file'
  text = tmp_path / 'text.wav'
  text.write_bytes(b'this is not audio at all, just text\n')
  problem, _, _ = files.inspect_clip(str(text))
  assert problem == ('not an audio file libsndfile can read (Format not '
                     'recognised)')
  short = tmp_path / 'short.wav'
  short.write_bytes(b'RIFF')
  assert files.inspect_clip(str(short))[0] is not None


class _Late(Exception):
  pass


def _raise_late(signum, frame):
  raise _Late('still waiting: a named pipe was opened')


def test_files_that_are_not_regular_are_named_and_never_opened(tmp_path):
  folder = tmp_path / 'clips'
  folder.mkdir()
  make_demo_data.write_wav(str(folder / 'a.wav'), np.zeros(100))
  os.mkfifo(str(folder / 'b_pipe.wav'))
  os.mkfifo(str(folder / 'f_pipe'))  # not named as audio: never probed
  os.symlink(str(folder / 'b_pipe.wav'), str(folder / 'c_link.wav'))
  (folder / 'd_folder.wav').mkdir()
  with socket.socket(socket.AF_UNIX) as server:
    server.bind(str(folder / 'e_socket.wav'))
    # Opening a named pipe for reading waits for a writer: the alarm ends
    # the wait, so that a regression fails instead of hanging.
    before = signal.signal(signal.SIGALRM, _raise_late)
    signal.alarm(10)
    try:
      names = files.list_clips(str(folder))
      problems = {n: files.inspect_clip(str(folder / n)) for n in names}
      with pytest.raises(files.UserError) as caught:
        files.check_clips([str(folder / n) for n in names])
      device = files.inspect_clip(os.devnull)
    finally:
      signal.alarm(0)
      signal.signal(signal.SIGALRM, before)
  pipe = 'not a regular file (a named pipe)'
  assert names == ['a.wav', 'b_pipe.wav', 'c_link.wav', 'e_socket.wav']
  assert problems == {
      'a.wav': (None, 100, None), 'b_pipe.wav': (pipe, 0, None),
      'c_link.wav': (pipe, 0, None),
      'e_socket.wav': ('not a regular file (a socket)', 0, None)}
  assert str(caught.value) == (
      '3 clips with unusable audio: %s: %s; %s: %s; %s: not a regular file '
      '(a socket)' % (folder / 'b_pipe.wav', pipe, folder / 'c_link.wav',
                      pipe, folder / 'e_socket.wav'))
  assert device == ('not a regular file (a character device)', 0, None)


def test_inspect_data_before_fmt(tmp_path):
  path = tmp_path / 'order.wav'
  path.write_bytes(riff([chunk(b'data', b'\x00' * 10), fmt_chunk()]))
  problem, _, _ = files.inspect_clip(str(path))
  assert problem is not None


def test_check_clips(tmp_path):
  good1 = tmp_path / 'g1.wav'
  good2 = tmp_path / 'g2.wav'
  make_demo_data.write_wav(str(good1), np.zeros(500))
  make_demo_data.write_wav(str(good2), np.zeros(44100))
  assert files.check_clips([str(good1), str(good2)]) == [500, 44100]
  bad = pcm_wav(tmp_path / 'empty.wav', num_samples=0)
  with pytest.raises(files.UserError) as e:
    files.check_clips([str(good1), bad, str(good2)])
  message = str(e.value)
  assert bad in message
  assert str(good1) not in message and str(good2) not in message
  assert 'empty (no audio samples)' in message
