"""Outputs (tagger/core/files.py): a path ending in a slash, or in a folder
that cannot be written, is named before any work; an atomic write on a
full disk names the file and leaves the old one whole, keeps a replaced
file's mode and writes through links."""

import errno
import os
import stat

import pytest

from support.cli import assert_one_error, run_main
from support.remembered_run import inference_args




def test_output_path_ending_in_a_slash(tmp_path, remembered, dataset):
  output = str(tmp_path / 'out') + '/'
  assert_one_error(run_main(inference_args(
      remembered['checkpoint'], dataset['test_clip_dir'], output)),
                   '--predictions_csv_path', output, 'is a folder')


def test_unwritable_output_folder_is_named_before_work(tmp_path,
                                                       monkeypatch):
  from tagger.core import files
  folder = tmp_path / 'locked'
  folder.mkdir()
  real_access = os.access
  # Tests may run as root, who may write anywhere: deny like a read-only
  # folder would.
  monkeypatch.setattr(os, 'access', lambda path, mode: False if str(
      path) == str(folder) else real_access(path, mode))
  with pytest.raises(files.UserError) as e:
    files.check_writable(str(folder / 'sub.csv'), '--predictions_csv_path')
  assert str(folder) in str(e.value) and 'cannot write' in str(e.value)


def test_disk_full_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
  from tagger.core import files
  path = str(tmp_path / 'submission.csv')
  with open(path, 'w') as f:
    f.write('old')

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'fsync', full)
  with pytest.raises(OSError) as e:
    files.write_atomically(path, 'new')
  assert e.value.filename == path and e.value.errno == errno.ENOSPC
  assert os.listdir(str(tmp_path)) == ['submission.csv']
  with open(path) as f:
    assert f.read() == 'old'


def test_replaced_file_keeps_its_mode_and_links_are_written_through(
    tmp_path):
  from tagger.core import files
  path = tmp_path / 'submission.csv'
  path.write_text('old')
  os.chmod(str(path), 0o640)
  files.write_atomically(str(path), 'new')
  assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o640
  assert path.read_text() == 'new'
  fresh = tmp_path / 'fresh.csv'
  files.write_atomically(str(fresh), 'x')
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(str(fresh)).st_mode) == 0o666 & ~umask
  target = tmp_path / 'elsewhere' / 'real.csv'
  target.parent.mkdir()
  target.write_text('old')
  link = tmp_path / 'link.csv'
  os.symlink(str(target), str(link))
  files.write_atomically(str(link), 'through')
  assert os.path.islink(str(link))
  assert target.read_text() == 'through'
