"""Training stopped without damage: SIGTERM or Ctrl-C (SIGINT) saves a
checkpoint at the step it stopped, says so in one `main.py: stopped:` line
and exits with 128 + the signal number, and the same command resumes there
(after a SIGKILL too, from the last complete checkpoint); a loss that is no
longer finite stops training with no checkpoint of the bad step or later."""

import os
import re
import signal

import numpy as np
import pytest

from tagger.core import checkpoints
from support.cli import Run, train_args
from support.settings import FEW_BN_BATCHES


# --- signals ----------------------------------------------------------------

def _steps_on_disk(train_dir):
  return sorted(int(m.group(1)) for m in (
      re.fullmatch(r'model\.ckpt-(\d+)\.index', n)
      for n in os.listdir(train_dir)) if m)


def _step_in(prefix):
  import tensorflow as tf
  return int(tf.train.load_checkpoint(prefix).get_tensor(
      'step/.ATTRIBUTES/VARIABLE_VALUE'))


def test_sigterm_then_sigkill_resume(tmp_path, dataset):
  train_dir = str(tmp_path / 'train')
  args = train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                    train_dir, 100000)

  # 1. SIGTERM after the first step: a checkpoint at the current step, a
  # one-line 'stopped' message, a non-zero exit.
  run = Run(args)
  run.wait_for(r'step \d+ loss')
  rc, out, err = run.finish(signal.SIGTERM)
  assert rc == 128 + 15 == 143  # 128 + the signal number
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  match = re.fullmatch(r'main\.py: stopped: stopped by SIGTERM at step (\d+)'
                       r'; run the same command to resume', lines[0])
  assert match, lines[0]
  stopped_at = int(match.group(1))
  assert 'Traceback' not in out + err
  assert _steps_on_disk(train_dir) == [0, stopped_at]
  assert _step_in(os.path.join(train_dir, 'model.ckpt-%d' % stopped_at)) == (
      stopped_at)
  with open(os.path.join(train_dir, 'checkpoint')) as f:
    assert 'model_checkpoint_path: "model.ckpt-%d"' % stopped_at in f.read()

  # 2. The same command resumes there; SIGKILL it a few steps later.
  run = Run(args)
  resumed = run.wait_for(r'Resuming from (.*) at step (\d+)$')
  assert resumed.group(1) == os.path.join(train_dir,
                                          'model.ckpt-%d' % stopped_at)
  assert int(resumed.group(2)) == stopped_at
  first = int(run.wait_for(r'step (\d+) loss').group(1))
  assert first == stopped_at + 1
  run.wait_for(r'step %d loss' % (stopped_at + 3))
  rc, out, _ = run.finish(signal.SIGKILL)
  assert rc == -signal.SIGKILL
  on_disk = _steps_on_disk(train_dir)
  assert on_disk[:2] == [0, stopped_at]

  # 3. The same command again: resumes from the last complete checkpoint and
  # continues the count; SIGTERM saves where it stops.
  run = Run(args)
  resumed = run.wait_for(r'Resuming from (.*) at step (\d+)$')
  resumed_at = int(resumed.group(2))
  assert resumed_at == on_disk[-1]
  assert resumed.group(1) == os.path.join(train_dir,
                                          'model.ckpt-%d' % resumed_at)
  assert int(run.wait_for(r'step (\d+) loss').group(1)) == resumed_at + 1
  rc, out, err = run.finish(signal.SIGTERM)
  assert rc == 143
  final = int(re.search(r'stopped by SIGTERM at step (\d+)', err).group(1))
  assert final > resumed_at
  assert _steps_on_disk(train_dir)[-1] == final
  assert _step_in(os.path.join(train_dir, 'model.ckpt-%d' % final)) == final


def test_sigint_saves_and_exits_130(tmp_path, dataset):
  """Ctrl-C during training: a checkpoint at the current step, one line
  `main.py: stopped: stopped by SIGINT at step N; ...`, exit status
  128 + 2."""
  train_dir = str(tmp_path / 'train')
  run = Run(train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                        train_dir, 100000,
                        hparams='batch_size=4,crnn_filters=4,' +
                        FEW_BN_BATCHES))
  run.wait_for(r'step 2 loss')
  rc, out, err = run.finish(signal.SIGINT)
  assert rc == 128 + 2 == 130
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  match = re.fullmatch(r'main\.py: stopped: stopped by SIGINT at step (\d+)'
                       r'; run the same command to resume', lines[0])
  assert match, lines[0]
  stopped_at = int(match.group(1))
  assert stopped_at >= 2
  assert 'Traceback' not in out + err
  assert 'KeyboardInterrupt' not in out + err
  # The last step printed is the step it stopped at, and saved.
  printed = [int(s) for s in re.findall(r'^step (\d+) loss', out, re.M)]
  assert printed == list(range(1, stopped_at + 1))
  assert 'Saved checkpoint %s' % os.path.join(
      train_dir, 'model.ckpt-%d' % stopped_at) in out
  assert _steps_on_disk(train_dir) == [0, stopped_at]
  assert _step_in(os.path.join(train_dir, 'model.ckpt-%d' % stopped_at)) == (
      stopped_at)


# --- divergence (in-process) ------------------------------------------------

def test_non_finite_loss_stops_without_bad_checkpoint(tmp_path, dataset,
                                                      monkeypatch, capsys):
  import tensorflow as tf
  from tagger.core import files
  import inputs
  from tagger.core import params
  import train
  from support.scores import read_class_names
  monkeypatch.setattr(checkpoints, 'CHECKPOINT_EVERY', 1)
  train_dir = str(tmp_path / 'train')
  with pytest.raises(files.UserError) as caught:
    train.train('crnn', params.parse_hparams('batch_size=4,lr=1e30'),
                read_class_names(), [inputs.Source(
                    dataset['train_csv'], dataset['train_clip_dir'])],
                train_dir, max_steps=20)
  message = str(caught.value)
  match = re.search(r'diverged at step (\d+)', message)
  assert match, message
  bad_step = int(match.group(1))
  assert bad_step >= 2  # the first step starts from finite weights
  assert train_dir in message
  # A checkpoint for every good step and none for the bad one or later.
  assert _steps_on_disk(train_dir) == list(range(0, bad_step))
  reader = tf.train.load_checkpoint(
      os.path.join(train_dir, 'model.ckpt-%d' % (bad_step - 1)))
  for key in reader.get_variable_to_shape_map():
    if key.startswith('weights/'):
      assert np.all(np.isfinite(reader.get_tensor(key))), key
