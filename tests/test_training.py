"""Training, in-process: resume, warm start, every loss, label smoothing and
learning-rate decay."""

import contextlib
import io
import os
import re
import shutil

import numpy as np
import pytest

from conftest import HPARAMS, read_class_names

BASE = 'batch_size=4'  # default lr (1e-4): one Adam step moves a weight <= lr
LR = 1e-4


def _train(dataset, model_name, hparams, train_dir, max_steps, **kwargs):
  """Runs train.train; returns its stdout."""
  import params
  import train
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train(model_name, params.parse_hparams(hparams), read_class_names(),
                dataset['train_csv'], dataset['train_clip_dir'], 8,
                str(train_dir), max_steps=max_steps, **kwargs)
  return out.getvalue()


def _losses(stdout):
  return [(int(s), float(l)) for s, l in
          re.findall(r'^step (\d+) loss (\S+) ', stdout, re.M)]


def _reader(prefix):
  import tensorflow as tf
  return tf.train.load_checkpoint(prefix)


def _weight(reader, path):
  import checkpoints
  return reader.get_tensor(checkpoints.checkpoint_key(path))


def _trainable_paths(model_name, hparams):
  import model as model_lib
  import params
  net = model_lib.build_model(model_name, 80, params.parse_hparams(hparams))
  return [v.path for v in net.trainable_variables]


@pytest.fixture(scope='module')
def crnn_bce3(tmp_path_factory, dataset):
  """crnn, bce, 3 steps (read-only for the tests: copy to mutate)."""
  train_dir = tmp_path_factory.mktemp('crnn_bce3') / 'train'
  out = _train(dataset, 'crnn', BASE, train_dir, 3)
  assert [s for s, _ in _losses(out)] == [1, 2, 3]
  return str(train_dir)


# --- resume -----------------------------------------------------------------

def test_resume_continues_step_count(tmp_path, dataset, crnn_bce3):
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  out = _train(dataset, 'crnn', BASE, train_dir, 5)
  assert 'Resuming from %s at step 3' % os.path.join(
      train_dir, 'model.ckpt-3') in out
  assert [s for s, _ in _losses(out)] == [4, 5]
  assert os.path.exists(os.path.join(train_dir, 'model.ckpt-5.index'))
  reader = _reader(os.path.join(train_dir, 'model.ckpt-5'))
  assert reader.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE') == 5
  # The optimizer state is restored too: its iteration count (which drives
  # the lr decay schedule) continues instead of restarting at 0.
  assert reader.get_tensor(
      'optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE') == 5
  # The weights continued from step 3 instead of being re-initialised: two
  # Adam steps move a weight by a few lr at most.
  before = _reader(os.path.join(train_dir, 'model.ckpt-3'))
  for path in _trainable_paths('crnn', BASE):
    np.testing.assert_allclose(_weight(reader, path), _weight(before, path),
                               atol=20 * LR, rtol=0, err_msg=path)
  # At max_steps already: nothing to do, nothing written.
  names = sorted(os.listdir(train_dir))
  out = _train(dataset, 'crnn', BASE, train_dir, 5)
  assert 'Already at step 5' in out
  assert not _losses(out)
  assert sorted(n for n in os.listdir(train_dir)
                if not n.startswith('events.')) == [
                    n for n in names if not n.startswith('events.')]


# --- warm start (train.warm_start on a fresh model) -------------------------

@pytest.fixture
def fresh_mobilenet(parse_hparams):
  import model as model_lib
  net = model_lib.build_model('mobilenet-v1', 80, parse_hparams(HPARAMS))
  initial = {v.path: v.numpy().copy() for v in net.weights}
  return net, initial


def _warm_start(net, checkpoint, include, exclude, capsys):
  import train
  restored = train.warm_start(net.trainable_variables, checkpoint, include,
                              exclude)
  out = capsys.readouterr().out
  assert 'Warm-started %d variables from %s:' % (len(restored),
                                                  checkpoint) in out
  return restored


def _check_restored(net, initial, reader, restored):
  restored = set(restored)
  for v in net.weights:
    value = v.numpy()
    source = _weight(reader, v.path)
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
  reader = _reader(checkpoint)
  _check_restored(net, initial, reader, restored)
  logits = net.get_layer('logits').kernel
  assert not np.allclose(logits.numpy(), _weight(reader, logits.path))
  # Batch norm moving statistics are never warm-started: the source's are
  # far from the initial zeros / ones, and ours stay at the initial values.
  for stat in ('moving_mean', 'moving_variance'):
    path = 'sepconv5/pointwise_bn/' + stat
    assert path not in restored
    assert np.abs(_weight(reader, path) - initial[path]).max() > 1e-3
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
  _check_restored(net, initial, _reader(checkpoint), restored)


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
  _check_restored(net, initial, _reader(checkpoint), restored)


def test_warm_start_nothing_matched(mobilenet_train, fresh_mobilenet):
  import files
  import train
  net, initial = fresh_mobilenet
  with pytest.raises(files.UserError, match='no variable matched'):
    train.warm_start(net.trainable_variables, mobilenet_train['checkpoint'],
                     ['nope'], [])
  for v in net.weights:
    np.testing.assert_array_equal(v.numpy(), initial[v.path])


# --- losses -----------------------------------------------------------------

MFOM_KEYS = ('mfom/smooth_error_counter/alpha', 'mfom/smooth_error_counter/beta')


@pytest.mark.parametrize('loss', ['bce', 'mfom_eer_embed', 'mfom_microf1',
                                  'mfom_eer_normalized', 'mfom_cprim'])
def test_each_loss_trains_crnn(tmp_path, dataset, loss):
  import checkpoints
  out = _train(dataset, 'crnn', 'batch_size=4,loss=' + loss, tmp_path, 2)
  losses = _losses(out)
  assert [s for s, _ in losses] == [1, 2]
  assert all(np.isfinite(l) for _, l in losses), losses
  keys = _reader(str(tmp_path / 'model.ckpt-2')).get_variable_to_shape_map()
  layer_based = loss in ('mfom_microf1', 'mfom_eer_normalized', 'mfom_cprim')
  for path in MFOM_KEYS:
    assert (checkpoints.checkpoint_key(path) in keys) == layer_based, path
    if layer_based:
      assert keys[checkpoints.checkpoint_key(path)] == [80]
  assert checkpoints.checkpoint_key('logits/kernel') in keys


def test_mfom_loss_trains_mobilenet(tmp_path, dataset):
  import checkpoints
  out = _train(dataset, 'mobilenet-v1',
               'batch_size=4,loss=mfom_eer_normalized', tmp_path, 2)
  losses = _losses(out)
  assert [s for s, _ in losses] == [1, 2]
  assert all(np.isfinite(l) for _, l in losses), losses
  reader = _reader(str(tmp_path / 'model.ckpt-2'))
  alpha = _weight(reader, MFOM_KEYS[0])
  assert alpha.shape == (80,) and np.all(np.isfinite(alpha))
  assert checkpoints.checkpoint_key('sepconv13/pointwise/kernel') in (
      reader.get_variable_to_shape_map())


def test_bce_then_mfom_warm_start_recipe(tmp_path, dataset, crnn_bce3):
  source = os.path.join(crnn_bce3, 'model.ckpt-3')
  out = _train(dataset, 'crnn', 'batch_size=4,loss=mfom_microf1,warmstart=1',
               tmp_path, 1, warmstart_checkpoint=source)
  trainable = _trainable_paths('crnn', BASE)
  match = re.search(r'^Warm-started (\d+) variables from (.*):$', out, re.M)
  assert match and match.group(2) == source
  listed = re.findall(r'^  (\S+)$', out, re.M)
  assert int(match.group(1)) == len(listed)
  # Every model variable, and not the MFoM head (absent from a bce run).
  assert sorted(listed) == sorted(trainable)
  assert [s for s, _ in _losses(out)] == [1]
  reader = _reader(str(tmp_path / 'model.ckpt-1'))
  source_reader = _reader(source)
  # One Adam step from the warm-started values moves each weight <= lr.
  for path in trainable:
    np.testing.assert_allclose(_weight(reader, path),
                               _weight(source_reader, path),
                               atol=1.01 * LR, rtol=0, err_msg=path)
  np.testing.assert_allclose(_weight(reader, MFOM_KEYS[0]), np.ones(80),
                             atol=1.01 * LR, rtol=0)
  np.testing.assert_allclose(_weight(reader, MFOM_KEYS[1]), np.zeros(80),
                             atol=1.01 * LR, rtol=0)
  # The closeness above means something: a fresh initialisation is far off.
  import model as model_lib
  import params
  fresh = model_lib.build_model('crnn', 80, params.parse_hparams(BASE))
  kernel = fresh.get_layer('logits').kernel
  assert np.abs(kernel.numpy() - _weight(source_reader, kernel.path)).max() > 0.01


def test_warm_start_ignored_when_resuming(tmp_path, dataset, crnn_bce3,
                                          mobilenet_train):
  """A run with checkpoints resumes; the warm-start checkpoint (here of
  another model, which could not even be loaded) is not touched."""
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  out = _train(dataset, 'crnn', BASE + ',warmstart=1', train_dir, 4,
               warmstart_checkpoint=mobilenet_train['checkpoint'])
  assert 'Resuming from' in out and 'Warm-started' not in out
  assert [s for s, _ in _losses(out)] == [4]


# --- label smoothing and learning-rate decay --------------------------------

def test_label_smoothing_bce(parse_hparams):
  import train
  rng = np.random.default_rng(0)
  labels = (rng.random((6, 80)) < 0.1).astype(np.float32)
  logits = (3 * rng.standard_normal((6, 80))).astype(np.float32)
  loss_fn, head = train.make_loss(parse_hparams('lsmooth=0.3'), 80)
  assert head is None
  got = float(loss_fn(labels, logits))
  x = logits.astype(np.float64)
  z = labels * 0.7 + 0.15
  expected = np.mean(np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x))))
  assert got == pytest.approx(expected, rel=1e-5)
  plain, _ = train.make_loss(parse_hparams(''), 80)
  assert abs(float(plain(labels, logits)) - expected) > 1e-3


@pytest.mark.parametrize('decay_epochs,period', [(2, 6), (2.5, 7)])
def test_lr_decay_staircase(parse_hparams, decay_epochs, period):
  import keras
  import train
  optimizer = train.make_optimizer(parse_hparams(
      'lr=0.1,lrdecay=0.5,decay_epochs=%s' % decay_epochs), 3)
  optimizer.build([keras.Variable(np.zeros(2, np.float32))])
  for it in range(13):
    optimizer.iterations.assign(it)
    expected = 0.1 * 0.5 ** (it // period)
    assert float(optimizer.learning_rate) == pytest.approx(expected,
                                                           rel=1e-6), it


def test_lr_decay_in_training_summaries(tmp_path, dataset):
  """The training loop logs the decayed rate: at step 10 the optimizer has
  taken 10 steps, so with 3 batches per epoch and decay every epoch the rate
  is lr * 0.5 ** (10 // 3)."""
  import glob
  import tensorflow as tf
  out = _train(dataset, 'crnn', 'batch_size=4,lr=0.01,lrdecay=0.5,'
               'decay_epochs=1', tmp_path, 10, epoch_num_batches=3)
  assert [s for s, _ in _losses(out)] == list(range(1, 11))
  scalars = {}
  for path in glob.glob(str(tmp_path / 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = float(
            tf.make_ndarray(value.tensor))
  assert sorted(scalars) == [('learning_rate', 10), ('loss', 10)]
  assert scalars[('learning_rate', 10)] == pytest.approx(0.01 * 0.5 ** 3,
                                                         rel=1e-6)
  assert scalars[('loss', 10)] == pytest.approx(_losses(out)[-1][1],
                                                abs=1e-6)


def test_no_lr_decay_by_default(parse_hparams):
  import keras
  import train
  optimizer = train.make_optimizer(parse_hparams('lr=0.1'), 3)
  optimizer.build([keras.Variable(np.zeros(2, np.float32))])
  optimizer.iterations.assign(1000)
  assert float(optimizer.learning_rate) == pytest.approx(0.1)


@pytest.mark.parametrize('model_name, hparams', [
    ('mobilenet-v1', BASE),                      # another architecture
    ('crnn', BASE + ',loss=mfom_microf1'),       # an MFoM head to add
])
def test_resume_refuses_another_run(tmp_path, dataset, crnn_bce3, model_name,
                                    hparams):
  import files
  train_dir = str(tmp_path / 'train')
  shutil.copytree(crnn_bce3, train_dir)
  with pytest.raises(files.UserError) as e:
    _train(dataset, model_name, hparams, train_dir, 5)
  assert 'model.ckpt-3: cannot resume' in str(e.value)
  assert '--model %s' % model_name in str(e.value)
  # Nothing new was written.
  assert not os.path.exists(os.path.join(train_dir, 'model.ckpt-4.index'))
