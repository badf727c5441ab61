"""Damaged checkpoints (tagger/core/checkpoints.py): scoring one is one line;
resume falls back to the newest readable checkpoint by step, and with every
one damaged is one line; checkpoints are listed by step, not by name."""

import os
import re
import shutil

import pytest

from support.cli import assert_one_error, check_ok, run_main, train_args
from support.remembered_run import RUN_HPARAMS, inference_args




def _damage(prefix, what):
  folder, base = os.path.split(prefix)
  if what == 'data':
    data = [n for n in os.listdir(folder) if n.startswith(base + '.data')][0]
    with open(os.path.join(folder, data), 'r+b') as f:
      f.truncate(64)
  else:
    with open(prefix + '.index', 'wb') as f:
      f.write(b'\x00' * 200)


@pytest.fixture
def damaged_run(tmp_path, remembered):
  train_dir = str(tmp_path / 'train')
  shutil.copytree(remembered['train_dir'], train_dir)
  return train_dir


@pytest.mark.parametrize('what', ['data', 'index'])
def test_damaged_checkpoint_is_one_line(damaged_run, dataset, tmp_path,
                                        what):
  prefix = os.path.join(damaged_run, 'model.ckpt-1')
  _damage(prefix, what)
  csv_path = str(tmp_path / 'submission.csv')
  assert_one_error(run_main(inference_args(prefix, dataset['test_clip_dir'],
                                            csv_path)),
                   prefix, 'unreadable checkpoint')
  assert not os.path.exists(csv_path)


@pytest.mark.parametrize('what', ['data', 'index'])
def test_resume_falls_back_to_the_newest_readable_checkpoint(
    damaged_run, dataset, what):
  """Three checkpoints, the newest damaged: resume takes the next newest by
  step, not by name (model.ckpt-1000 sorts before model.ckpt-200 as text)
  and not the oldest."""
  for step, source in ((200, 1), (1000, 1)):
    for name in os.listdir(damaged_run):
      if name.startswith('model.ckpt-%d.' % source):
        shutil.copy(os.path.join(damaged_run, name), os.path.join(
            damaged_run, name.replace('ckpt-%d.' % source, 'ckpt-%d.' % step)))
  os.mkdir(os.path.join(damaged_run, 'model.ckpt-9_temp'))  # a failed save
  _damage(os.path.join(damaged_run, 'model.ckpt-1000'), what)
  result = check_ok(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'], damaged_run, 2,
      hparams=RUN_HPARAMS)))
  warning = [l for l in result.stdout.splitlines()
             if l.startswith('warning:')]
  assert len(warning) == 1 and 'model.ckpt-1000' in warning[0]
  assert 'unreadable checkpoint' in warning[0]
  # model.ckpt-200 holds step 1 (a copy of model.ckpt-1).
  assert 'Resuming from %s at step 1' % os.path.join(
      damaged_run, 'model.ckpt-200') in result.stdout
  assert re.findall(r'^step (\d+) loss', result.stdout, re.M) == ['2']
  assert not os.path.exists(os.path.join(damaged_run, 'model.ckpt-9_temp'))


def test_checkpoints_are_listed_by_step(tmp_path):
  from tagger.core import checkpoints
  for step in (1000, 30, 200, 4):
    (tmp_path / ('model.ckpt-%d.index' % step)).write_bytes(b'')
  (tmp_path / 'model.ckpt-7_temp.index').write_bytes(b'')
  assert checkpoints.list_checkpoints(str(tmp_path)) == [
      (step, str(tmp_path / ('model.ckpt-%d' % step)))
      for step in (4, 30, 200, 1000)]


def test_resume_with_every_checkpoint_damaged_is_an_error(damaged_run,
                                                          dataset):
  for step in (0, 1):
    _damage(os.path.join(damaged_run, 'model.ckpt-%d' % step), 'data')
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'], damaged_run, 2,
      hparams=RUN_HPARAMS)), damaged_run, 'none of its 2 checkpoints')
