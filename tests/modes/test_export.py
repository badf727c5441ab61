"""--mode export's files and folder (export.py): what it writes and
reports; a failed self-check, a full disk or an export_dir that cannot be
made leaves nothing behind; a new export_dir's mode follows the umask;
and only write errors inside the build are renamed to the part of
--export_dir."""

import errno
import os
import re

import pytest

from support.cli import assert_one_error, export_args, run_main
from support.scores import read_class_names
from support.settings import CLASS_MAP, TAG_HPARAMS


def test_export_files_and_report(mobilenet_export):
  assert sorted(os.listdir(mobilenet_export['dir'])) == [
      'class_map.csv', 'examples_float32.tflite', 'model.tflite',
      'saved_model']
  out = mobilenet_export['result'].stdout
  assert re.search(r'SavedModel: scores of a [0-9.]+ s clip within', out)
  assert re.search(r'TFLite: [0-9]+ examples/s', out)
  with open(os.path.join(mobilenet_export['dir'], 'class_map.csv')) as f, \
      open(CLASS_MAP) as g:
    assert f.read() == g.read()


def test_failed_self_check_leaves_nothing(tmp_path, tagger, monkeypatch,
                                          parse_hparams):
  from tagger.modes import export
  from tagger.modes import export_checks
  from tagger.core import files
  monkeypatch.setattr(export_checks, 'TFLITE_TOLERANCE', -1.0)
  export_dir = str(tmp_path / 'out')
  with pytest.raises(files.UserError, match='TFLite scores a clip'):
    export.export('crnn', parse_hparams(TAG_HPARAMS), read_class_names(),
                  CLASS_MAP, tagger['checkpoint'], export_dir)
  assert os.listdir(str(tmp_path)) == []


def test_export_dir_must_be_new_or_empty(tmp_path, mobilenet_train):
  taken = tmp_path / 'taken'
  taken.mkdir()
  (taken / 'something').write_text('x')
  assert_one_error(run_main(export_args(mobilenet_train['checkpoint'],
                                        str(taken))),
                   '--export_dir', str(taken), 'not an empty folder')


# --- destinations -----------------------------------------------------------

class _FullDisk:
  """A file opened for writing on a disk that fills up: it takes half of
  what is written, then fails as write(2) does, with an error that names
  no file."""

  def __init__(self, path):
    self.file = open(path, 'wb')

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.file.close()

  def write(self, data):
    self.file.write(data[:len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _saved_model_on_a_full_disk(save):
  """tf.saved_model.save (`save`) writing the export's SavedModel on a disk
  that fills up: a part written, then TensorFlow's error, naming the file
  as it names it. Other SavedModels (the converter's) are saved."""
  import tensorflow as tf

  def full(obj, path, signatures=None):
    if os.path.basename(path) != 'saved_model':
      return save(obj, path, signatures=signatures)
    os.makedirs(path)
    with open(os.path.join(path, 'saved_model.pb.tmp0e92f6b2'), 'wb') as f:
      f.write(b'\0' * 1000)
    raise tf.errors.ResourceExhaustedError(
        None, None, '%s/saved_model.pb.tmp0e92f6b2; No space left on device'
        % path)
  return full


@pytest.mark.parametrize('part', ['examples_float32.tflite', 'saved_model'])
def test_a_full_disk_names_the_export_dir(tagger, tagger_export, monkeypatch,
                                          parse_hparams, tmp_path, part):
  """The disk fills while a file of the export is written (the first one;
  the SavedModel, through TensorFlow): one line naming --export_dir and the
  part that could not be written, not the temporary folders the export is
  written through, and nothing left of them or of export_dir. (The model
  part is the fixture's export of the same checkpoint, not converted
  again.)"""
  import tempfile
  from tagger.modes import export
  from tagger.core import files
  from tagger.engines import tflite_engine
  with open(tagger_export['float32'], 'rb') as f:
    model_part = f.read()
  monkeypatch.setattr(tflite_engine, 'convert', lambda *args: model_part)
  temporary = tmp_path / 'tmp'  # where the export's temporary links go
  temporary.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temporary))
  if part == 'saved_model':
    full = _saved_model_on_a_full_disk(export.tf.saved_model.save)
    monkeypatch.setattr(export.tf.saved_model, 'save', full)
  else:
    monkeypatch.setattr(export, 'open', lambda path, mode='r': (
        _FullDisk(path) if 'w' in mode else open(path, mode)), raising=False)
  export_dir = str(tmp_path / 'out')
  with pytest.raises(files.UserError) as raised:
    export.export('crnn', parse_hparams(TAG_HPARAMS), read_class_names(),
                  CLASS_MAP, tagger['checkpoint'], export_dir)
  assert str(raised.value) == (
      '--export_dir: cannot write %s (No space left on device); nothing '
      'written' % os.path.join(export_dir, part))
  assert sorted(os.listdir(str(tmp_path))) == ['tmp']
  # What TensorFlow's autograph leaves there is not the export's.
  assert [name for name in os.listdir(str(temporary))
          if not name.startswith('__autograph_generated_file')] == []


@pytest.mark.parametrize('umask', [0o022, 0o027], ids=['022', '027'])
def test_export_dir_mode_follows_the_umask(tagger, monkeypatch,
                                           parse_hparams, tmp_path, umask):
  """A new export_dir gets 0o777 less the umask, as mkdir gives a folder
  (the export is built in a private temporary folder first); an existing
  empty one keeps its own mode. The build is a stand-in writing one file:
  what is under test is the folder it lands in."""
  from tagger.modes import export

  def build(scorer, class_names, class_map_path, folder, entries):
    with open(os.path.join(folder, 'built'), 'w') as f:
      f.write('x')
    return []

  monkeypatch.setattr(export, '_build', build)
  existing = tmp_path / 'existing'
  existing.mkdir()
  existing.chmod(0o751)
  hparams = parse_hparams(TAG_HPARAMS)
  previous = os.umask(umask)
  try:
    for export_dir, mode in ((tmp_path / 'new', 0o777 & ~umask),
                             (existing, 0o751)):
      export.export('crnn', hparams, read_class_names(), CLASS_MAP,
                    tagger['checkpoint'], str(export_dir))
      assert oct(os.stat(str(export_dir)).st_mode & 0o7777) == oct(mode)
      assert os.listdir(str(export_dir)) == ['built']
  finally:
    os.umask(previous)
  assert sorted(os.listdir(str(tmp_path))) == ['existing', 'new']


@pytest.mark.parametrize('where', ['under_a_file', 'proc'])
def test_export_dir_that_cannot_be_created(tmp_path, mobilenet_train, where):
  """Found before TensorFlow is imported: one line naming --export_dir and
  the path, nothing created. Root passes every permission check, so these
  fail for anyone: a parent below a regular file, and /proc."""
  blocker = tmp_path / 'somefile'
  blocker.write_text('x')
  path = (str(blocker / 'sub' / 'export') if where == 'under_a_file'
          else '/proc/export-test/sub/export')
  result = run_main(export_args(mobilenet_train['checkpoint'], path))
  assert_one_error(result, '--export_dir', path)
  assert result.stdout == ''  # before the checkpoint's record was read
  assert os.listdir(str(tmp_path)) == ['somefile']
  assert blocker.read_text() == 'x'
  assert not os.path.exists('/proc/export-test')


def test_only_errors_inside_the_build_are_renamed(tmp_path):
  """A write error inside the export's build folder is renamed to the
  part of --export_dir it was writing; an error about any other path (a
  clip, a checkpoint) is left as it is."""
  import errno
  from tagger.modes import export
  build = str(tmp_path / 'build')
  inside = OSError(errno.ENOSPC, 'No space left on device',
                   os.path.join(build, 'saved_model', 'variables'))
  renamed = export._writing_error(inside, [build], '/out/my_tagger')
  assert str(renamed) == ('--export_dir: cannot write /out/my_tagger/'
                          'saved_model (No space left on device); nothing '
                          'written')
  for path in (str(tmp_path / 'clips' / 'a.wav'), build + '_other/x', None):
    outside = OSError(errno.EIO, 'Input/output error', path)
    assert export._writing_error(outside, [build], '/out/my_tagger') is None
