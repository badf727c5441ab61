"""Class map and CSV checks, atomic writes and listing clips (files.py)."""

import glob
import os
import re

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest

from tagger.core import files
from tools import make_demo_data

from support.settings import REPO
from support.text_files import write


SEEDS = os.path.join(REPO, '..', 'shared', 'seeds')


# ---------------------------------------------------------------- class map

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
