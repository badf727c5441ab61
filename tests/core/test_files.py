"""Class map, CSV and WAV checks, atomic writes and make_class_map.py."""

import glob
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import wave

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest

from tagger.core import files
from tools import make_demo_data

from conftest import REPO  # noqa: E402
SEEDS = os.path.join(REPO, '..', 'shared', 'seeds')


# ---------------------------------------------------------------- class map


def write(path, text):
  path.write_text(text)
  return str(path)


def test_read_class_map_good(tmp_path):
  path = write(tmp_path / 'map.csv', '0,Bark\n1,Walk_and_footsteps\n\n2,Slam\n')
  assert files.read_class_map(path) == ['Bark', 'Walk_and_footsteps', 'Slam']


@pytest.mark.parametrize('text, fragment', [
    ('1,Bark\n0,Slam\n', 'index'),
    ('0,Bark\n2,Slam\n', 'index'),
    ('0,Bark\n1,Bark\n', 'duplicate'),
    ('0,Bark\n1,Slam,extra\n', 'index,name'),
    ('', 'empty'),
])
def test_read_class_map_errors(tmp_path, text, fragment):
  path = write(tmp_path / 'bad_map.csv', text)
  with pytest.raises(files.UserError) as e:
    files.read_class_map(path)
  assert path in str(e.value)
  assert fragment in str(e.value)


def test_read_class_map_missing(tmp_path):
  path = str(tmp_path / 'nope.csv')
  with pytest.raises(files.UserError) as e:
    files.read_class_map(path)
  assert path in str(e.value)


def test_repo_class_map():
  names = files.read_class_map(os.path.join(REPO, 'class_map.csv'))
  assert len(names) == 80
  assert names == sorted(names)
  with open(os.path.join(REPO, 'class_map.csv')) as f:
    lines = [l.rstrip('\n') for l in f if l.strip()]
  assert [int(l.split(',')[0]) for l in lines] == list(range(80))


def test_repo_class_map_matches_seed_table():
  if not os.path.exists(SEEDS):
    pytest.skip('seeds folder not available')
  seed = glob.glob(os.path.join(SEEDS, '000_*.txt'))
  if not seed:
    pytest.skip('baseline README seed not available')
  with open(seed[0], encoding='utf-8') as f:
    table = re.findall(r'^Lwlrap\((.+)\) = [0-9.]+$', f.read(), re.M)
  assert len(table) == 80
  names = files.read_class_map(os.path.join(REPO, 'class_map.csv'))
  assert names == sorted(table)


# ---------------------------------------------------------------- CSV


def make_clips(clip_dir, names):
  os.makedirs(clip_dir, exist_ok=True)
  for name in names:
    make_demo_data.write_wav(os.path.join(clip_dir, name), np.zeros(2000))


CLASSES = ['Bark', 'Slam', 'Walk_and_footsteps', 'Purr']


def test_read_labeled_csv_good(tmp_path):
  clip_dir = str(tmp_path / 'clips')
  make_clips(clip_dir, ['a.wav', 'b.wav', 'c.wav'])
  path = write(tmp_path / 'train.csv',
               'fname,labels\n'
               'a.wav,"Walk_and_footsteps,Slam"\n'
               'b.wav,Bark\n'
               '\n'
               'c.wav," Purr , Bark "\n')
  rows = files.read_labeled_csv(path, clip_dir, CLASSES)
  assert rows == [('a.wav', ['Walk_and_footsteps', 'Slam']),
                  ('b.wav', ['Bark']),
                  ('c.wav', ['Purr', 'Bark'])]


def test_read_labeled_csv_wrong_header(tmp_path):
  clip_dir = str(tmp_path)
  path = write(tmp_path / 'x.csv', 'name,labels\na.wav,Bark\n')
  with pytest.raises(files.UserError) as e:
    files.read_labeled_csv(path, clip_dir, CLASSES)
  assert path in str(e.value) and 'header' in str(e.value)


def test_read_labeled_csv_missing_clips(tmp_path):
  clip_dir = str(tmp_path / 'clips')
  make_clips(clip_dir, ['present.wav'])
  missing = ['m%d.wav' % i for i in range(7)]
  path = write(tmp_path / 'x.csv', 'fname,labels\npresent.wav,Bark\n' +
               ''.join('%s,Slam\n' % m for m in missing))
  with pytest.raises(files.UserError) as e:
    files.read_labeled_csv(path, clip_dir, CLASSES)
  message = str(e.value)
  assert path in message
  assert '7 clips not found' in message
  for m in missing[:5]:
    assert m in message
  for m in missing[5:]:
    assert m not in message
  assert '(and 2 more)' in message
  assert 'present.wav' not in message


def test_read_labeled_csv_unknown_label(tmp_path):
  clip_dir = str(tmp_path / 'clips')
  make_clips(clip_dir, ['a.wav', 'b.wav'])
  path = write(tmp_path / 'x.csv',
               'fname,labels\na.wav,"Bark,Meow"\nb.wav,Bark\n')
  with pytest.raises(files.UserError) as e:
    files.read_labeled_csv(path, clip_dir, CLASSES)
  assert path in str(e.value)
  assert 'Meow' in str(e.value)
  assert 'line 2' in str(e.value)


def test_read_labeled_csv_three_fields(tmp_path):
  clip_dir = str(tmp_path / 'clips')
  make_clips(clip_dir, ['a.wav', 'b.wav'])
  # Unquoted multi-label row: three fields.
  path = write(tmp_path / 'x.csv',
               'fname,labels\na.wav,Bark\nb.wav,Bark,Slam\n')
  with pytest.raises(files.UserError) as e:
    files.read_labeled_csv(path, clip_dir, CLASSES)
  assert path in str(e.value)
  assert 'line 3' in str(e.value)
  assert 'malformed' in str(e.value)


def test_read_labeled_csv_missing_file_and_folder(tmp_path):
  with pytest.raises(files.UserError) as e:
    files.read_labeled_csv(str(tmp_path / 'none.csv'), str(tmp_path),
                           CLASSES)
  assert 'none.csv' in str(e.value)
  path = write(tmp_path / 'x.csv', 'fname,labels\na.wav,Bark\n')
  with pytest.raises(files.UserError) as e:
    files.read_labeled_csv(path, str(tmp_path / 'noclips'), CLASSES)
  assert 'noclips' in str(e.value)


# ---------------------------------------------------------------- WAV


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


# ---------------------------------------------------------------- writing


def test_write_atomically(tmp_path):
  path = str(tmp_path / 'sub' / 'out.txt')
  files.write_atomically(path, 'hello\nworld\n')
  with open(path, newline='') as f:
    assert f.read() == 'hello\nworld\n'
  files.write_atomically(path, 'second')
  with open(path) as f:
    assert f.read() == 'second'
  assert os.listdir(tmp_path / 'sub') == ['out.txt']


def test_write_atomically_failed_write_keeps_old_file(tmp_path):
  path = str(tmp_path / 'out.txt')
  files.write_atomically(path, 'original')

  class Unwritable:
    def __str__(self):
      raise RuntimeError('no')

  with pytest.raises((TypeError, RuntimeError)):
    files.write_atomically(path, Unwritable())
  with open(path) as f:
    assert f.read() == 'original'
  assert os.listdir(tmp_path) == ['out.txt']


def test_write_atomically_failed_rename_keeps_old_file(tmp_path, monkeypatch):
  path = str(tmp_path / 'out.txt')
  files.write_atomically(path, 'original')

  def broken_replace(src, dst):
    raise OSError('disk on fire')

  monkeypatch.setattr(os, 'replace', broken_replace)
  with pytest.raises(OSError):
    files.write_atomically(path, 'new text')
  monkeypatch.undo()
  with open(path) as f:
    assert f.read() == 'original'
  assert os.listdir(tmp_path) == ['out.txt']


def test_list_clips(tmp_path):
  for name in ['b.wav', 'a.wav', 'C.WAV', 'notes.txt', 'd.flac', 'e.mp3',
               'f.m4a']:
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'dir.wav').mkdir()
  # Any file libsndfile opens, whatever its name.
  make_demo_data.write_wav(str(tmp_path / 'take1.dat'), np.zeros(10))
  assert files.list_clips(str(tmp_path)) == [
      'C.WAV', 'a.wav', 'b.wav', 'd.flac', 'e.mp3', 'f.m4a', 'take1.dat']


def test_list_clips_errors(tmp_path):
  (tmp_path / 'readme.txt').write_text('x')
  with pytest.raises(files.UserError) as e:
    files.list_clips(str(tmp_path))
  assert str(tmp_path) in str(e.value)
  with pytest.raises(files.UserError):
    files.list_clips(str(tmp_path / 'missing'))


# ---------------------------------------------------------------- make_class_map


def test_make_class_map_script(tmp_path):
  csv_text = ('fname,labels\n'
              'a.wav,"Walk_and_footsteps,Slam"\n'
              'b.wav,Bark\n'
              'c.wav,"Slam,Accordion"\n'
              '\n'
              'd.wav,Zipper_(clothing)\n')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'make_class_map.py')],
      input=csv_text, capture_output=True, text=True, cwd=REPO, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout == ('0,Accordion\n1,Bark\n2,Slam\n'
                           '3,Walk_and_footsteps\n4,Zipper_(clothing)\n')
  # The output is itself a valid class map.
  path = write(tmp_path / 'map.csv', result.stdout)
  assert files.read_class_map(path) == sorted(
      ['Walk_and_footsteps', 'Slam', 'Bark', 'Accordion', 'Zipper_(clothing)'])


def test_make_class_map_bad_header():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'make_class_map.py')],
      input='index,name\n0,Bark\n', capture_output=True, text=True, cwd=REPO,
      timeout=60)
  assert result.returncode != 0
  assert 'header' in result.stderr
  assert result.stdout == ''
