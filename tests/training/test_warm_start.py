"""Warm starts: train.state_lib.warm_start on a fresh model (the scopes
included and excluded; batch-norm statistics never warm-started), and in a
training run (the bce-then-MFoM recipe; a refused warm start writes
nothing; a run that resumes ignores the warm-start checkpoint)."""

import os
import re
import shutil

import numpy as np
import pytest

from support.training_runs import (BASE, LR, MFOM_KEYS, checkpoint_reader,
                                   printed_losses, run_training, saved_weight,
                                   trainable_paths)
from support.settings import HPARAMS



# --- warm start (train.state_lib.warm_start on a fresh model) ---------------

@pytest.fixture
def fresh_mobilenet(parse_hparams):
  import model as model_lib
  net = model_lib.build_model('mobilenet-v1', 80, parse_hparams(HPARAMS))
  initial = {v.path: v.numpy().copy() for v in net.weights}
  return net, initial


def _warm_start(net, checkpoint, include, exclude, capsys):
  import train
  restored = train.state_lib.warm_start(net.trainable_variables, checkpoint, include,
                              exclude)
  out = capsys.readouterr().out
  assert 'Warm-started %d variables from %s:' % (len(restored),
                                                  checkpoint) in out
  return restored


def _check_restored(net, initial, reader, restored):
  restored = set(restored)
  for v in net.weights:
    value = v.numpy()
    source = saved_weight(reader, v.path)
    if v.path in restored:
      np.testing.assert_array_equal(value, source, err_msg=v.path)
    else:
      np.testing.assert_array_equal(value, initial[v.path], err_msg=v.path)
      if not np.array_equal(initial[v.path], source):
        continue
      # Equal to the source only if initialisation already gave that value
      # (e.g. batch norm beta at zero is not possible after training).
      assert v.path.endswith(('beta', 'gamma', 'bias')), v.path


def test_warm_start_exclude_scope(mobilenet_train, fresh_mobilenet, capsys):
  net, initial = fresh_mobilenet
  checkpoint = mobilenet_train['checkpoint']
  restored = _warm_start(net, checkpoint, [], ['logits'], capsys)
  trainable = [v.path for v in net.trainable_variables]
  assert sorted(restored) == sorted(
      p for p in trainable if not p.startswith('logits/'))
  reader = checkpoint_reader(checkpoint)
  _check_restored(net, initial, reader, restored)
  logits = net.get_layer('logits').kernel
  assert not np.allclose(logits.numpy(), saved_weight(reader, logits.path))
  # Batch norm moving statistics are never warm-started: the source's are
  # far from the initial zeros / ones, and ours stay at the initial values.
  for stat in ('moving_mean', 'moving_variance'):
    path = 'sepconv5/pointwise_bn/' + stat
    assert path not in restored
    assert np.abs(saved_weight(reader, path) - initial[path]).max() > 1e-3
    np.testing.assert_array_equal(
        [v for v in net.weights if v.path == path][0].numpy(), initial[path])


@pytest.mark.parametrize('scope', ['sepconv13', 'sepconv1'])
def test_warm_start_include_scope(mobilenet_train, fresh_mobilenet, capsys,
                                  scope):
  net, initial = fresh_mobilenet
  checkpoint = mobilenet_train['checkpoint']
  restored = _warm_start(net, checkpoint, [scope], [], capsys)
  # 'sepconv1' names its own scope, not sepconv10..13.
  assert sorted(restored) == sorted(
      v.path for v in net.trainable_variables
      if v.path.startswith(scope + '/'))
  assert len(restored) == 6  # depthwise, pointwise, gamma and beta of each bn
  _check_restored(net, initial, checkpoint_reader(checkpoint), restored)


def test_warm_start_include_then_exclude(mobilenet_train, fresh_mobilenet,
                                         capsys):
  net, initial = fresh_mobilenet
  checkpoint = mobilenet_train['checkpoint']
  restored = _warm_start(net, checkpoint, ['sepconv13', 'logits'],
                         ['sepconv13/depthwise_bn'], capsys)
  assert sorted(restored) == sorted([
      'logits/kernel', 'logits/bias', 'sepconv13/depthwise/kernel',
      'sepconv13/pointwise/kernel', 'sepconv13/pointwise_bn/gamma',
      'sepconv13/pointwise_bn/beta'])
  _check_restored(net, initial, checkpoint_reader(checkpoint), restored)


def test_warm_start_nothing_matched(mobilenet_train, fresh_mobilenet):
  from tagger.core import files
  import train
  net, initial = fresh_mobilenet
  with pytest.raises(files.UserError, match="scope 'nope' matches no "
                     'variable of this model'):
    train.state_lib.warm_start(net.trainable_variables, mobilenet_train['checkpoint'],
                     ['nope'], [])
  for v in net.weights:
    np.testing.assert_array_equal(v.numpy(), initial[v.path])


# --- warm start of a training run -------------------------------------------

def test_bce_then_mfom_warm_start_recipe(tmp_path, dataset, crnn_bce3):
  source = os.path.join(crnn_bce3, 'model.ckpt-3')
  out = run_training(dataset, 'crnn',
                     'batch_size=4,loss=mfom_microf1,warmstart=1',
                     tmp_path, 1, warmstart_checkpoint=source)
  trainable = trainable_paths('crnn', BASE)
  match = re.search(r'^Warm-started (\d+) variables from (.*):$', out, re.M)
  assert match and match.group(2) == source
  listed = re.findall(r'^  (\S+)$', out, re.M)
  assert int(match.group(1)) == len(listed)
  # Every model variable, and not the MFoM head (absent from a bce run).
  assert sorted(listed) == sorted(trainable)
  assert [s for s, _ in printed_losses(out)] == [1]
  reader = checkpoint_reader(str(tmp_path / 'model.ckpt-1'))
  source_reader = checkpoint_reader(source)
  # One Adam step from the warm-started values moves each weight <= lr.
  for path in trainable:
    np.testing.assert_allclose(saved_weight(reader, path),
                               saved_weight(source_reader, path),
                               atol=1.01 * LR, rtol=0, err_msg=path)
  np.testing.assert_allclose(saved_weight(reader, MFOM_KEYS[0]), np.ones(80),
                             atol=1.01 * LR, rtol=0)
  np.testing.assert_allclose(saved_weight(reader, MFOM_KEYS[1]), np.zeros(80),
                             atol=1.01 * LR, rtol=0)
  # The closeness above means something: a fresh initialisation is far off.
  import model as model_lib
  from tagger.core import params
  fresh = model_lib.build_model('crnn', 80, params.parse_hparams(BASE))
  kernel = fresh.get_layer('logits').kernel
  assert np.abs(kernel.numpy() - saved_weight(
      source_reader, kernel.path)).max() > 0.01


def test_a_refused_warm_start_writes_nothing(tmp_path, dataset, crnn_bce3):
  """A warm start from a checkpoint of another architecture is refused
  before the run records anything: in-process, where no main.py made the
  folder, no train_dir at all."""
  from tagger.core import files
  with pytest.raises(files.UserError, match='crnn_filters=32, not 4'):
    run_training(dataset, 'crnn', BASE + ',crnn_filters=4,warmstart=1',
                 tmp_path / 'train', 1,
                 warmstart_checkpoint=os.path.join(crnn_bce3, 'model.ckpt-3'))
  assert not (tmp_path / 'train').exists()


def test_warm_start_ignored_when_resuming(tmp_path, dataset, crnn_bce3,
                                          mobilenet_train):
  """A run with checkpoints resumes; the warm-start checkpoint (here of
  another model, which could not even be loaded) is not touched."""
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  out = run_training(dataset, 'crnn', BASE + ',warmstart=1', train_dir, 4,
                     warmstart_checkpoint=mobilenet_train['checkpoint'])
  assert 'Resuming from' in out and 'Warm-started' not in out
  assert [s for s, _ in printed_losses(out)] == [4]
