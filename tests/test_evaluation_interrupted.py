"""Eval interrupted, or without checkpoints: a checkpoint deleted during the
run is skipped with a warning; a run killed while writing a marker, or
stopped by Ctrl-C, leaves only whole markers, and a rerun evaluates exactly
the checkpoints without one; a train_dir without checkpoints is an error."""

import os
import re
import shutil
import signal

import pytest

from support.settings import HPARAMS
from support.cli import Run
from support.remembered_run import eval_args


# --- eval: vanished checkpoints, interrupted runs (in-process) --------------

@pytest.fixture
def three_checkpoints(tmp_path, mobilenet_train):
  """A train_dir with model.ckpt-1, -2, -3 (copies of one checkpoint)."""
  train_dir = tmp_path / 'train'
  train_dir.mkdir()
  source = mobilenet_train['train_dir']
  for name in os.listdir(source):
    if name.startswith('model.ckpt-3.'):
      for step in (1, 2, 3):
        shutil.copy(os.path.join(source, name), str(
            train_dir / name.replace('ckpt-3', 'ckpt-%d' % step)))
  return str(train_dir)


def _evaluate(dataset, train_dir, eval_dir):
  import evaluation
  from tagger.core import files
  from tagger.core import params
  from support.scores import labeled_rows, read_class_names
  rows = labeled_rows(dataset['validation_csv'])
  samples = files.check_clips([os.path.join(dataset['train_clip_dir'], f)
                              for f, _ in rows])
  evaluation.evaluate('mobilenet-v1', params.parse_hparams(HPARAMS),
                      read_class_names(), rows, dataset['train_clip_dir'],
                      samples, train_dir, eval_dir)


def _markers(eval_dir):
  return sorted(n for n in os.listdir(eval_dir) if n.startswith('eval-'))


def test_eval_skips_checkpoint_deleted_during_run(
    tmp_path, dataset, three_checkpoints, monkeypatch, capsys):
  from tagger.engines import scoring
  original = scoring.Scorer.score
  calls = []

  def score_and_delete_next(self, *args, **kwargs):
    if not calls:
      for name in os.listdir(three_checkpoints):
        if name.startswith('model.ckpt-2.'):
          os.remove(os.path.join(three_checkpoints, name))
    calls.append(1)
    return original(self, *args, **kwargs)

  monkeypatch.setattr(scoring.Scorer, 'score', score_and_delete_next)
  eval_dir = str(tmp_path / 'eval')
  _evaluate(dataset, three_checkpoints, eval_dir)
  out = capsys.readouterr().out
  assert '3 checkpoints in %s, 0 already evaluated' % three_checkpoints in out
  warnings = [l for l in out.splitlines() if l.startswith('warning:')]
  assert len(warnings) == 1
  assert os.path.join(three_checkpoints, 'model.ckpt-2') in warnings[0]
  assert 'skipped' in warnings[0]
  assert len(calls) == 2
  assert _markers(eval_dir) == ['eval-1.txt', 'eval-3.txt']
  with open(os.path.join(eval_dir, 'eval-1.txt')) as f1, open(
      os.path.join(eval_dir, 'eval-3.txt')) as f3:
    assert f1.read() == f3.read()  # the same weights, the same report


class _Killed(BaseException):
  pass


def test_eval_interrupted_marker_write_then_rerun(
    tmp_path, dataset, three_checkpoints, monkeypatch, capsys):
  """Killed while writing the second marker: no partial marker appears, and
  a rerun evaluates exactly the checkpoints without one. (Each checkpoint
  writes metrics-N.txt, then its marker eval-N.txt: the fourth write is the
  second marker.)"""
  eval_dir = str(tmp_path / 'eval')
  real_fsync = os.fsync
  calls = []

  def fsync_then_die(fd):
    calls.append(fd)
    if len(calls) == 4:
      raise _Killed()
    real_fsync(fd)

  with monkeypatch.context() as patch:
    patch.setattr(os, 'fsync', fsync_then_die)
    with pytest.raises(_Killed):
      _evaluate(dataset, three_checkpoints, eval_dir)
  assert _markers(eval_dir) == ['eval-1.txt']
  assert not [n for n in os.listdir(eval_dir) if n.endswith('.tmp')]
  marker = os.path.join(eval_dir, 'eval-1.txt')
  with open(marker) as f:
    text = f.read()
  assert re.search(r'\nOverall lwlrap = [0-9.]+$', text)  # the last line
  mtime = os.stat(marker).st_mtime_ns
  capsys.readouterr()

  _evaluate(dataset, three_checkpoints, eval_dir)
  out = capsys.readouterr().out
  assert '3 checkpoints in %s, 1 already evaluated' % three_checkpoints in out
  evaluated = re.findall(r'^Checkpoint (\S+) \(', out, re.M)
  assert evaluated == [os.path.join(three_checkpoints, 'model.ckpt-%d' % n)
                       for n in (2, 3)]
  assert _markers(eval_dir) == ['eval-1.txt', 'eval-2.txt', 'eval-3.txt']
  assert os.stat(marker).st_mtime_ns == mtime
  with open(os.path.join(eval_dir, 'eval-2.txt')) as f:
    assert f.read() == text


def test_eval_without_checkpoints(tmp_path, dataset):
  from tagger.core import files
  empty = tmp_path / 'train'
  empty.mkdir()
  with pytest.raises(files.UserError, match='no model.ckpt-N checkpoints'):
    _evaluate(dataset, str(empty), str(tmp_path / 'eval'))
  assert not (tmp_path / 'eval').exists()


# --- Ctrl-C in eval ---------------------------------------------------------



def test_ctrl_c_in_eval_stops_cleanly(tmp_path, remembered, dataset):
  """Many copies of one checkpoint keep eval busy; SIGINT after its first
  line stops it with one line and exit 130, leaving only whole markers."""
  train_dir = tmp_path / 'train'
  train_dir.mkdir()
  for name in os.listdir(remembered['train_dir']):
    if name.startswith('model.ckpt-1.'):
      for step in range(1, 41):
        shutil.copy(os.path.join(remembered['train_dir'], name),
                    str(train_dir / name.replace('ckpt-1.', 'ckpt-%d.' %
                                                 step)))
  eval_dir = tmp_path / 'eval'
  run = Run(eval_args(str(train_dir), str(eval_dir), dataset))
  # After the first checkpoint's report: the model is built and eval is in
  # its loop (a signal during start-up could land where Python drops it).
  run.wait_for(r'Checkpoint ')
  rc, out, err = run.finish(signal.SIGINT)
  assert rc == 130, (out[-2000:], err)
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('main.py: stopped: '), err
  assert 'Traceback' not in out + err
  markers = [n for n in os.listdir(str(eval_dir)) if n.startswith('eval-')]
  assert len(markers) < 40
  for name in markers:
    text = (eval_dir / name).read_text()
    assert re.search(r'\nOverall lwlrap = [0-9.]+$', text)
  assert not [n for n in os.listdir(str(eval_dir)) if n.endswith('.tmp')]
