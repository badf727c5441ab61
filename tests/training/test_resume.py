"""Resuming a training run, in-process (train.train through
train.state_lib.restore_or_warm_start): the step count, the optimizer's
state and the weights continue; a checkpoint of another run is refused;
after a divergence the last good checkpoint is resumed, with the lr of the
command."""

import os
import shutil

import numpy as np
import pytest

from support.training_runs import (BASE, LR, checkpoint_reader,
                                   printed_losses, run_training, saved_weight,
                                   trainable_paths)



# --- resume -----------------------------------------------------------------

def test_resume_continues_step_count(tmp_path, dataset, crnn_bce3):
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  out = run_training(dataset, 'crnn', BASE, train_dir, 5)
  assert 'Resuming from %s at step 3' % os.path.join(
      train_dir, 'model.ckpt-3') in out
  assert [s for s, _ in printed_losses(out)] == [4, 5]
  assert os.path.exists(os.path.join(train_dir, 'model.ckpt-5.index'))
  reader = checkpoint_reader(os.path.join(train_dir, 'model.ckpt-5'))
  assert reader.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE') == 5
  # The optimizer state is restored too: its iteration count (which drives
  # the lr decay schedule) continues instead of restarting at 0.
  assert reader.get_tensor(
      'optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE') == 5
  # The weights continued from step 3 instead of being re-initialised: two
  # Adam steps move a weight by a few lr at most.
  before = checkpoint_reader(os.path.join(train_dir, 'model.ckpt-3'))
  for path in trainable_paths('crnn', BASE):
    np.testing.assert_allclose(saved_weight(reader, path),
                               saved_weight(before, path),
                               atol=20 * LR, rtol=0, err_msg=path)
  # At max_steps already: nothing to do, nothing written.
  names = sorted(os.listdir(train_dir))
  out = run_training(dataset, 'crnn', BASE, train_dir, 5)
  assert 'Already at step 5' in out
  assert not printed_losses(out)
  assert sorted(n for n in os.listdir(train_dir)
                if not n.startswith('events.')) == [
                    n for n in names if not n.startswith('events.')]


@pytest.mark.parametrize('model_name, hparams', [
    ('mobilenet-v1', BASE),                      # another architecture
    ('crnn', BASE + ',loss=mfom_microf1'),       # an MFoM head to add
])
def test_resume_refuses_another_run(tmp_path, dataset, crnn_bce3, model_name,
                                    hparams):
  from tagger.core import files
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  with pytest.raises(files.UserError) as e:
    run_training(dataset, model_name, hparams, train_dir, 5)
  assert 'model.ckpt-3: cannot resume' in str(e.value)
  assert '--model %s' % model_name in str(e.value)
  # Nothing new was written.
  assert not os.path.exists(os.path.join(train_dir, 'model.ckpt-4.index'))


# --- resume after divergence ------------------------------------------------

def _snapshot_first_step(monkeypatch, snapshots):
  """Wraps train.step_lib.make_train_step so that the model's weights, the step and
  the optimizer's learning rate are recorded just before the first step."""
  import train
  real = train.step_lib.make_train_step

  def make_train_step(model, loss_fn, variables, optimizer, step, *args):
    train_step = real(model, loss_fn, variables, optimizer, step, *args)

    def first_recorded(examples, labels):
      if not snapshots:
        snapshots.append({
            'weights': {v.path: v.numpy().copy() for v in model.weights},
            'step': int(step),
            'learning_rate': float(optimizer.learning_rate),
            'iterations': int(optimizer.iterations)})
      return train_step(examples, labels)
    return first_recorded

  monkeypatch.setattr(train.step_lib, 'make_train_step', make_train_step)


def test_resume_after_divergence_from_last_good_checkpoint(
    tmp_path, dataset, crnn_bce3, monkeypatch):
  """A run that diverges (here: a loss made NaN from its third step on)
  keeps its last good checkpoint; the same command then resumes from it:
  the step count continues and the weights are exactly the checkpoint's
  before the first new step."""
  from tagger.core import files
  import tensorflow as tf
  import train
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  real_make_loss = train.step_lib.make_loss

  def make_loss_nan_from_third_call(hparams, num_classes):
    loss_fn, head = real_make_loss(hparams, num_classes)
    calls = tf.Variable(0)

    def loss(labels, logits):
      calls.assign_add(1)
      value = loss_fn(labels, logits)
      return tf.where(calls >= 3, tf.constant(np.nan, value.dtype), value)
    return loss, head

  with monkeypatch.context() as patch:
    patch.setattr(train.step_lib, 'make_loss', make_loss_nan_from_third_call)
    with pytest.raises(files.UserError, match='diverged at step 6'):
      run_training(dataset, 'crnn', BASE, train_dir, 20)
  steps_on_disk = sorted(n for n in os.listdir(train_dir)
                         if n.endswith('.index'))
  assert steps_on_disk == ['model.ckpt-0.index', 'model.ckpt-3.index']

  snapshots = []
  _snapshot_first_step(monkeypatch, snapshots)
  out = run_training(dataset, 'crnn', BASE, train_dir, 5)
  assert 'Resuming from %s at step 3' % os.path.join(
      train_dir, 'model.ckpt-3') in out
  assert [s for s, _ in printed_losses(out)] == [4, 5]
  assert all(np.isfinite(l) for _, l in printed_losses(out))
  (snapshot,) = snapshots
  assert snapshot['step'] == 3 and snapshot['iterations'] == 3
  good = checkpoint_reader(os.path.join(train_dir, 'model.ckpt-3'))
  assert len(snapshot['weights']) > 20
  for path, value in snapshot['weights'].items():
    np.testing.assert_array_equal(value, saved_weight(good, path), err_msg=path)
  reader = checkpoint_reader(os.path.join(train_dir, 'model.ckpt-5'))
  assert reader.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE') == 5


def test_resume_uses_the_lr_of_the_command(tmp_path, dataset, crnn_bce3,
                                           monkeypatch):
  """After `training diverged`, the README says to lower lr and rerun: the
  resumed run must train with the new lr (crnn_bce3 was trained with
  1e-4)."""
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  snapshots = []
  _snapshot_first_step(monkeypatch, snapshots)
  out = run_training(dataset, 'crnn', 'batch_size=4,lr=2e-5', train_dir, 4)
  assert 'Resuming from' in out
  assert snapshots[0]['learning_rate'] == pytest.approx(2e-5, rel=1e-6)
