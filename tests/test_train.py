"""Training, in-process: resume, warm start, every loss, label smoothing and
learning-rate decay."""

import contextlib
import io
import os
import re
import shutil

import numpy as np
import pytest

from tagger.core import checkpoints
from support import reference
from conftest import FEW_BN_BATCHES, HPARAMS, read_class_names, shared

BASE = 'batch_size=4'  # default lr (1e-4): one Adam step moves a weight <= lr
LR = 1e-4


def _train(dataset, model_name, hparams, train_dir, max_steps, **kwargs):
  """Runs train.train; returns its stdout. FEW_BN_BATCHES where hparams
  do not set bn_stats_batches."""
  import inputs
  from tagger.core import params
  import train
  if 'bn_stats_batches' not in hparams:
    hparams += ',' + FEW_BN_BATCHES
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train(model_name, params.parse_hparams(hparams), read_class_names(),
                [inputs.Source(dataset['train_csv'], dataset['train_clip_dir'])],
                str(train_dir), max_steps=max_steps, **kwargs)
  return out.getvalue()


def _losses(stdout):
  return [(int(s), float(l)) for s, l in
          re.findall(r'^step (\d+) loss (\S+) ', stdout, re.M)]


def _reader(prefix):
  import tensorflow as tf
  return tf.train.load_checkpoint(prefix)


def _weight(reader, path):
  return reader.get_tensor(checkpoints.checkpoint_key(path))


def _trainable_paths(model_name, hparams):
  import model as model_lib
  from tagger.core import params
  net = model_lib.build_model(model_name, 80, params.parse_hparams(hparams))
  return [v.path for v in net.trainable_variables]


@pytest.fixture(scope='session')
def crnn_bce3(tmp_path_factory, dataset):
  """crnn, bce, 3 steps (read-only for the tests: copy to mutate; made
  once for every test process)."""
  def make(root):
    out = _train(dataset, 'crnn', BASE, root / 'train', 3)
    assert [s for s, _ in _losses(out)] == [1, 2, 3]
    return str(root / 'train')
  return shared(tmp_path_factory, 'crnn_bce3', make)


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


# --- warm start (train.state_lib.warm_start on a fresh model) -------------------------

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
  from tagger.core import files
  import train
  net, initial = fresh_mobilenet
  with pytest.raises(files.UserError, match="scope 'nope' matches no "
                     'variable of this model'):
    train.state_lib.warm_start(net.trainable_variables, mobilenet_train['checkpoint'],
                     ['nope'], [])
  for v in net.weights:
    np.testing.assert_array_equal(v.numpy(), initial[v.path])


# --- losses -----------------------------------------------------------------

MFOM_KEYS = ('mfom/smooth_error_counter/alpha', 'mfom/smooth_error_counter/beta')


@pytest.mark.parametrize('loss', ['bce', 'mfom_eer_embed', 'mfom_microf1',
                                  'mfom_eer_normalized', 'mfom_cprim'])
def test_each_loss_trains_crnn(tmp_path, dataset, loss):
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
  """At a quarter of the width: the same layer table, a fraction of the
  time."""
  out = _train(dataset, 'mobilenet-v1',
               'batch_size=4,width=0.25,loss=mfom_eer_normalized', tmp_path, 2)
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
  from tagger.core import params
  fresh = model_lib.build_model('crnn', 80, params.parse_hparams(BASE))
  kernel = fresh.get_layer('logits').kernel
  assert np.abs(kernel.numpy() - _weight(source_reader, kernel.path)).max() > 0.01


def test_a_refused_warm_start_writes_nothing(tmp_path, dataset, crnn_bce3):
  """A warm start from a checkpoint of another architecture is refused
  before the run records anything: in-process, where no main.py made the
  folder, no train_dir at all."""
  from tagger.core import files
  with pytest.raises(files.UserError, match='crnn_filters=32, not 4'):
    _train(dataset, 'crnn', BASE + ',crnn_filters=4,warmstart=1',
           tmp_path / 'train', 1,
           warmstart_checkpoint=os.path.join(crnn_bce3, 'model.ckpt-3'))
  assert not (tmp_path / 'train').exists()


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
  loss_fn, head = train.step_lib.make_loss(parse_hparams('lsmooth=0.3'), 80)
  assert head is None
  got = float(loss_fn(labels, logits))
  x = logits.astype(np.float64)
  z = labels * 0.7 + 0.15
  expected = np.mean(np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x))))
  assert got == pytest.approx(expected, rel=1e-5)
  plain, _ = train.step_lib.make_loss(parse_hparams(''), 80)
  assert abs(float(plain(labels, logits)) - expected) > 1e-3


@pytest.mark.parametrize('decay_epochs,period', [(2, 6), (2.5, 7)])
def test_lr_decay_staircase(parse_hparams, decay_epochs, period):
  import keras
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams(
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
  import tensorflow as tf
  out = _train(dataset, 'crnn', 'batch_size=4,lr=0.01,lrdecay=0.5,'
               'decay_epochs=1', tmp_path, 10, epoch_num_batches=3)
  assert [s for s, _ in _losses(out)] == list(range(1, 11))
  scalars, images = _summaries(tmp_path)
  assert sorted(scalars) == [('learning_rate', 10), ('loss', 10)]
  # The run's first examples as images at its start: width, height, then
  # three encoded images (of 100 frames by 96 bands).
  assert sorted(images) == [('log_mel_examples', 0)]
  encoded = images[('log_mel_examples', 0)]
  assert [int(v) for v in encoded[:2]] == [100, 96] and len(encoded) == 5
  decoded = tf.io.decode_png(encoded[2]).numpy()
  assert decoded.shape == (96, 100, 1) and decoded.max() == 255 and (
      decoded.min() == 0)
  assert scalars[('learning_rate', 10)] == pytest.approx(0.01 * 0.5 ** 3,
                                                         rel=1e-6)
  assert scalars[('loss', 10)] == pytest.approx(_losses(out)[-1][1],
                                                abs=1e-6)


def _summaries(train_dir):
  """({(tag, step): value} of the scalars, {(tag, step): encoded tensor}
  of the images) in a run's TensorBoard event files."""
  import glob
  import tensorflow as tf
  scalars, images = {}, {}
  for path in glob.glob(os.path.join(str(train_dir),
                                     'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'images':
          images[(value.tag, event.step)] = tf.make_ndarray(value.tensor)
          continue
        scalars[(value.tag, event.step)] = float(
            tf.make_ndarray(value.tensor))
  return scalars, images


def test_no_lr_decay_by_default(parse_hparams):
  import keras
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams('lr=0.1'), 3)
  optimizer.build([keras.Variable(np.zeros(2, np.float32))])
  optimizer.iterations.assign(1000)
  assert float(optimizer.learning_rate) == pytest.approx(0.1)


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
    _train(dataset, model_name, hparams, train_dir, 5)
  assert 'model.ckpt-3: cannot resume' in str(e.value)
  assert '--model %s' % model_name in str(e.value)
  # Nothing new was written.
  assert not os.path.exists(os.path.join(train_dir, 'model.ckpt-4.index'))


# --- optimizers against the NumPy update rules ------------------------------

def _apply(optimizer, w0, gradients):
  """Applies each gradient in turn to a float32 variable; returns the
  values after each step."""
  import keras
  import tensorflow as tf
  variable = keras.Variable(np.asarray(w0, np.float32))
  optimizer.build([variable])
  values = []
  for g in gradients:
    optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
    values.append(variable.numpy().astype(np.float64))
  return values


W0 = [1.0, -2.0, 3.0, 0.5, -0.25]
# The last two gradients are tiny, so that Adam's epsilon decides their step.
GRADIENTS = [[0.5, -0.1, 2.0, 1e-8, -3e-8],
             [-0.3, 0.2, 1.0, 2e-8, 1e-8],
             [0.1, 0.4, -0.5, -1e-8, 2e-8]]


@pytest.mark.parametrize('flags,lr,eps', [
    ('lr=0.1,adam_eps=1.0', 0.1, 1.0),
    ('lr=0.1,adam_eps=0.001', 0.1, 1e-3),
    ('lr=0.1', 0.1, 1e-8),     # the default epsilon
    ('', 1e-4, 1e-8),          # the default lr as well
])
def test_adam_steps_match_numpy(parse_hparams, flags, lr, eps):
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams(flags), 0)
  got = _apply(optimizer, W0, GRADIENTS)
  want = reference.np_adam(W0, GRADIENTS, lr, eps)
  # float32 arithmetic: ~1e-6 on weights of order 1 after steps of 0.1;
  # with lr 1e-4, the float32 rounding of the weights themselves.
  atol = 3e-6 if lr >= 0.1 else 3e-7
  for step, (g, w) in enumerate(zip(got, want), start=1):
    np.testing.assert_allclose(g, w, rtol=0, atol=atol,
                               err_msg='step %d' % step)
  # Epsilon is visible: another epsilon moves the weights elsewhere.
  other = reference.np_adam(W0, GRADIENTS, lr, 1e-8 if eps != 1e-8 else 1e-6)
  assert np.abs(other[-1] - want[-1]).max() > 30 * atol


@pytest.mark.parametrize('flags,lr', [('opt=sgd,lr=0.1', 0.1),
                                      ('opt=sgd', 1e-4)])
def test_sgd_steps_match_numpy(parse_hparams, flags, lr):
  import train
  optimizer = train.step_lib.make_optimizer(parse_hparams(flags), 0)
  got = _apply(optimizer, W0, GRADIENTS)
  w = np.array(W0)
  for step, (g, value) in enumerate(zip(GRADIENTS, got), start=1):
    w = w - lr * np.array(g)  # plain SGD: no momentum
    np.testing.assert_allclose(value, w, rtol=0, atol=3e-7,
                               err_msg='step %d' % step)


# --- each loss of make_loss against NumPy -----------------------------------

def _loss_batch(seed, rows=6, classes=80):
  rng = np.random.default_rng(seed)
  labels = (rng.random((rows, classes)) < 0.1).astype(np.float32)
  labels[np.arange(rows), rng.integers(0, classes, rows)] = 1.0  # >= 1 each
  logits = (2 * rng.standard_normal((rows, classes))).astype(np.float32)
  return labels, logits


def _np_bce(labels, logits):
  x = logits.astype(np.float64)
  return np.mean(np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x))))


@pytest.mark.parametrize('lsmooth', [0.0, 0.3])
def test_mfom_eer_embed_loss_matches_numpy(parse_hparams, lsmooth):
  """loss=mfom_eer_embed is the MFoM-embedding loss on sigmoid(logits), not
  BCE; label smoothing applies to BCE only. A row without a positive class
  is left out."""
  import train
  labels, logits = _loss_batch(0)
  labels[-1] = 0.0  # no positive: excluded
  loss_fn, _ = train.step_lib.make_loss(parse_hparams(
      'loss=mfom_eer_embed,lsmooth=%s' % lsmooth), 80)
  got = float(loss_fn(labels, logits))
  scores = reference.np_sigmoid(logits)
  want = reference.np_eer_embed(labels[:-1], scores[:-1])
  assert got == pytest.approx(want, rel=1e-5)
  assert abs(got - _np_bce(labels, logits)) > 0.05


@pytest.mark.parametrize('loss,np_fn', [
    ('mfom_microf1', reference.np_microf1),
    ('mfom_eer_normalized', reference.np_eer_normalized),
    ('mfom_cprim', reference.np_cprim),
])
def test_layer_mfom_losses_match_numpy(parse_hparams, loss, np_fn):
  """The layer-based objectives start from alpha = 1, beta = 0 on the
  sigmoid scores."""
  import train
  labels, logits = _loss_batch(1)
  loss_fn, _ = train.step_lib.make_loss(parse_hparams('loss=' + loss), 80)
  got = float(loss_fn(labels, logits))
  y = labels.astype(np.float64)
  want = np_fn(y, reference.np_l(y, reference.np_sigmoid(logits)))
  assert got == pytest.approx(want, rel=1e-5)
  assert abs(got - _np_bce(labels, logits)) > 0.05


def test_bce_loss_matches_numpy(parse_hparams):
  import train
  labels, logits = _loss_batch(2)
  loss_fn, _ = train.step_lib.make_loss(parse_hparams(''), 80)
  assert float(loss_fn(labels, logits)) == pytest.approx(
      _np_bce(labels, logits), rel=1e-6)


# --- the 1000-epoch default -------------------------------------------------

@pytest.fixture(scope='module')
def one_example_clip(tmp_path_factory):
  """A 0.3 s clip: exactly one example, so an epoch is one batch of 1."""
  from conftest import write_pcm_wav
  folder = tmp_path_factory.mktemp('one_example')
  (folder / 'clips').mkdir()
  samples = np.random.default_rng(5).integers(-8000, 8000, int(0.3 * 44100))
  write_pcm_wav(folder / 'clips' / 'one.wav', samples)
  assert reference.np_num_examples(len(samples),
                                   reference.README_DEFAULTS) == 1
  (folder / 'train.csv').write_text('fname,labels\none.wav,Bass_drum\n')
  return {'train_csv': str(folder / 'train.csv'),
          'train_clip_dir': str(folder / 'clips')}


def test_training_runs_the_default_epochs_without_max_steps(
    tmp_path, one_example_clip, monkeypatch):
  """No max_steps (main.py passes None without --max_steps): DEFAULT_EPOCHS
  epochs (1000, asserted below; 30 here, with a checkpoint every 10 steps
  instead of 100, to keep the test short) of one batch each, i.e. 30
  steps. In-process."""
  import train
  monkeypatch.setattr(train, 'DEFAULT_EPOCHS', 30)
  monkeypatch.setattr(checkpoints, 'CHECKPOINT_EVERY', 10)
  train_dir = tmp_path / 'train'
  out = _train(one_example_clip, 'crnn', 'batch_size=1,crnn_filters=1',
               train_dir, None)
  assert [s for s, _ in _losses(out)] == list(range(1, 31))
  assert out.rstrip().endswith('Training finished at step 30')
  steps = sorted(int(m.group(1)) for m in (
      re.fullmatch(r'model\.ckpt-(\d+)\.index', n)
      for n in os.listdir(str(train_dir))) if m)
  assert steps == [0, 10, 20, 30]


def test_epoch_num_batches_sets_the_default_length(tmp_path, dataset,
                                                   monkeypatch):
  """With --epoch_num_batches and no --max_steps, training runs
  DEFAULT_EPOCHS x epoch_num_batches steps (here 3 x 2 = 6 steps, though
  the data hold more batches than that per epoch)."""
  import train
  assert train.DEFAULT_EPOCHS == 1000
  monkeypatch.setattr(train, 'DEFAULT_EPOCHS', 3)
  out = _train(dataset, 'crnn', 'batch_size=4,crnn_filters=2', tmp_path,
               None, epoch_num_batches=2)
  assert [s for s, _ in _losses(out)] == [1, 2, 3, 4, 5, 6]
  assert 'Training finished at step 6' in out


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
      _train(dataset, 'crnn', BASE, train_dir, 20)
  steps_on_disk = sorted(n for n in os.listdir(train_dir)
                         if n.endswith('.index'))
  assert steps_on_disk == ['model.ckpt-0.index', 'model.ckpt-3.index']

  snapshots = []
  _snapshot_first_step(monkeypatch, snapshots)
  out = _train(dataset, 'crnn', BASE, train_dir, 5)
  assert 'Resuming from %s at step 3' % os.path.join(
      train_dir, 'model.ckpt-3') in out
  assert [s for s, _ in _losses(out)] == [4, 5]
  assert all(np.isfinite(l) for _, l in _losses(out))
  (snapshot,) = snapshots
  assert snapshot['step'] == 3 and snapshot['iterations'] == 3
  good = _reader(os.path.join(train_dir, 'model.ckpt-3'))
  assert len(snapshot['weights']) > 20
  for path, value in snapshot['weights'].items():
    np.testing.assert_array_equal(value, _weight(good, path), err_msg=path)
  reader = _reader(os.path.join(train_dir, 'model.ckpt-5'))
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
  out = _train(dataset, 'crnn', 'batch_size=4,lr=2e-5', train_dir, 4)
  assert 'Resuming from' in out
  assert snapshots[0]['learning_rate'] == pytest.approx(2e-5, rel=1e-6)


def test_train_cache_examples_reads_each_clip_once(tmp_path, dataset):
  """Through main.py on one device: with --train_cache_examples the clips
  can be deleted once training has started (the first batch waits for the
  whole first epoch to be cached) and later epochs still train."""
  from conftest import train_args
  from support.cli import Run
  clips = tmp_path / 'clips'
  shutil.copytree(dataset['train_clip_dir'], str(clips))
  train_dir = tmp_path / 'cached'
  run = Run(train_args(
      'crnn', str(clips), dataset['train_csv'], str(train_dir), 30,
      hparams='batch_size=4,crnn_filters=4,' + FEW_BN_BATCHES,
      extra=['--train_cache_examples']))
  run.wait_for(r'step 2 loss')
  shutil.rmtree(str(clips))
  rc, out, err = run.finish(timeout=300)
  assert rc == 0, err[-3000:]
  match = re.search(r'kept in memory after the first epoch '
                    r'\(--train_cache_examples\): (\d+) examples, (\S+) GB',
                    out)
  # Each example: 100 frames x 96 bands and 80 labels, float32.
  from tagger.core import params
  hparams = params.parse_hparams()
  examples = sum(int(reference.np_num_examples(n, hparams))
                 for n in _clip_lengths(dataset))
  assert int(match.group(1)) == examples
  assert float(match.group(2)) == pytest.approx(
      examples * 4 * (100 * 96 + 80) / 1e9, abs=0.006)
  losses = _losses(out)
  # 30 steps of 4 examples are several epochs of the ~20 examples.
  assert [s for s, _ in losses] == list(range(1, 31)) and 30 * 4 > 3 * examples
  assert all(np.isfinite(l) for _, l in losses)
  assert (train_dir / 'model.ckpt-30.index').exists()


def _clip_lengths(dataset):
  from tagger.sound import wav
  from conftest import labeled_rows
  return [wav.read_header(os.path.join(dataset['train_clip_dir'],
                                       fname)).num_frames
          for fname, _ in labeled_rows(dataset['train_csv'])]


def test_a_cache_larger_than_memory_is_refused(tmp_path):
  """Sparse 13.5-hour clips (their samples a hole in the file) whose
  examples would take more memory than the machine has: one line with the
  size, before any training."""
  from conftest import run_main, train_args
  from support.cli import assert_one_error
  from support.signals import write_sparse_wav
  from tagger.core import runtime
  per_clip = int(13.5 * 3600 * 2) * 4 * (100 * 96 + 80)  # ~3.7 GB
  count = runtime.available_memory() // per_clip + 2
  clips = tmp_path / 'clips'
  clips.mkdir()
  with open(str(tmp_path / 'train.csv'), 'w') as f:
    f.write('fname,labels\n')
    for i in range(count):
      write_sparse_wav(str(clips / ('%d.wav' % i)), 13.5)
      f.write('%d.wav,Bark\n' % i)
  train_dir = tmp_path / 'train'
  line = assert_one_error(run_main(train_args(
      'crnn', str(clips), str(tmp_path / 'train.csv'), str(train_dir), 1,
      extra=['--train_cache_examples'])), '--train_cache_examples',
                          'memory available')
  size = float(re.search(r'take (\S+) GB', line).group(1))
  assert size == pytest.approx(count * per_clip / 1e9, rel=0.01)
  assert not list(train_dir.glob('model.ckpt-*'))


@pytest.mark.parametrize('cgroup,expected', [
    (('4294967296', '1073741824'), 3 * 2 ** 30),  # the limit less what is used
    (('max', '1073741824'), 6000 * 1024 ** 2),  # no limit: MemAvailable
    (('17179869184', '1073741824'), 6000 * 1024 ** 2),  # MemAvailable less
    (None, 6000 * 1024 ** 2),  # no cgroup v2 files
])
def test_available_memory_of_the_kernel_and_the_cgroup(monkeypatch, cgroup,
                                                       expected):
  import io
  from tagger.core import runtime
  contents = {'/proc/meminfo': 'MemTotal:       24000000 kB\n'
                               'MemFree:         1000000 kB\n'
                               'MemAvailable:    %d kB\n' % (6000 * 1024)}
  if cgroup:
    contents['/sys/fs/cgroup/memory.max'] = cgroup[0] + '\n'
    contents['/sys/fs/cgroup/memory.current'] = cgroup[1] + '\n'

  def fake_open(path, *args, **kwargs):
    if path not in contents:
      raise FileNotFoundError(path)
    return io.StringIO(contents[path])

  monkeypatch.setattr(runtime, 'open', fake_open, raising=False)
  assert runtime.available_memory() == expected
  contents.pop('/proc/meminfo')
  assert runtime.available_memory() == (
      3 * 2 ** 30 if cgroup and cgroup[0] == '4294967296' else
      15 * 2 ** 30 if cgroup and cgroup[0] == '17179869184' else None)


# --- seeds ------------------------------------------------------------------

SEEDED = ('batch_size=4,crnn_filters=4,crnn_dropout=0.3,bn_stats_batches=2,'
          'specaug_time_masks=1,specaug_time_width=30,mixup=0.4')


def _checkpoint_values(prefix):
  """Every saved value (not the object graph, which names the optimizer by a
  process-wide counter)."""
  reader = _reader(prefix)
  return {key: reader.get_tensor(key)
          for key in reader.get_variable_to_shape_map()
          if key != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def test_a_seed_repeats_a_run_bit_for_bit(tmp_path, dataset):
  """A run without a seed draws one, prints it and records it; a run given
  that seed writes the same checkpoints, every value equal (weights,
  optimizer slots, moving and precise batch-norm statistics), with dropout,
  SpecAugment and mixup on and shuffled data; another seed does not."""
  import json
  from conftest import check_ok, run_main, train_args

  def run(name, hparams):
    train_dir = str(tmp_path / name)
    out = check_ok(run_main(train_args(
        'crnn', dataset['train_clip_dir'], dataset['train_csv'], train_dir,
        3, hparams=hparams))).stdout
    return train_dir, out

  drawn_dir, out = run('drawn', SEEDED)
  seed = int(re.search(r'^Seed (\d+) drawn for this run', out, re.M).group(1))
  with open(os.path.join(drawn_dir, 'hparams.json')) as f:
    assert json.load(f)['hparams']['seed'] == seed
  again_dir, again_out = run('again', SEEDED + ',seed=%d' % seed)
  assert 'drawn' not in again_out
  assert _losses(again_out) == _losses(out)
  # A lossless FLAC copy of the clips is the same run.
  flac_csv = _flac_copy(dataset, tmp_path / 'flac')
  flac_out = check_ok(run_main(train_args(
      'crnn', str(tmp_path / 'flac'), flac_csv, str(tmp_path / 'flac_run'),
      1, hparams=SEEDED + ',seed=%d' % seed))).stdout
  assert [s for s, _ in _losses(flac_out)] == [1]
  assert _losses(flac_out) == _losses(out)[:1]
  for step in (0, 3):
    first = _checkpoint_values(os.path.join(drawn_dir, 'model.ckpt-%d' % step))
    second = _checkpoint_values(os.path.join(again_dir,
                                             'model.ckpt-%d' % step))
    assert sorted(first) == sorted(second) and len(first) > 50
    for key, value in first.items():
      np.testing.assert_array_equal(second[key], value, err_msg=key)
  # Another seed (in this process: the point is the seed, not the process).
  other_out = _train(dataset, 'crnn', SEEDED + ',seed=%d' % (seed % 1000 + 1),
                     tmp_path / 'other', 3)
  assert _losses(other_out) != _losses(out)
  key = checkpoints.checkpoint_key('logits/kernel')
  initial = _checkpoint_values(os.path.join(drawn_dir, 'model.ckpt-0'))
  other = _checkpoint_values(str(tmp_path / 'other' / 'model.ckpt-0'))
  assert np.abs(other[key] - initial[key]).max() > 0.01


def _flac_copy(dataset, folder):
  """The training clips as 16-bit FLAC files in folder; its CSV's path."""
  import soundfile
  from tools import make_demo_data
  from conftest import labeled_rows
  os.makedirs(str(folder))
  rows = []
  for fname, labels in labeled_rows(dataset['train_csv']):
    pcm, rate = soundfile.read(os.path.join(dataset['train_clip_dir'],
                                            fname), dtype='int16')
    rows.append((fname[:-4] + '.flac', labels))
    soundfile.write(str(folder / rows[-1][0]), pcm, rate, subtype='PCM_16')
  make_demo_data.write_csv(str(folder / 'train.csv'), rows)
  return str(folder / 'train.csv')


def test_two_resumes_of_a_checkpoint_are_the_same_run(tmp_path, dataset):
  """A run resumed at step 2 continues with streams seeded by its seed and
  the step: resuming the same checkpoint twice gives the same weights."""
  hparams = SEEDED + ',seed=123'
  first = tmp_path / 'first'
  _train(dataset, 'crnn', hparams, first, 2)
  shutil.copytree(str(first), str(tmp_path / 'second'))
  outs = [_train(dataset, 'crnn', hparams, tmp_path / name, 4)
          for name in ('first', 'second')]
  assert [s for s, _ in _losses(outs[0])] == [3, 4]
  assert _losses(outs[0]) == _losses(outs[1])
  a = _checkpoint_values(str(first / 'model.ckpt-4'))
  b = _checkpoint_values(str(tmp_path / 'second' / 'model.ckpt-4'))
  for key, value in a.items():
    np.testing.assert_array_equal(b[key], value, err_msg=key)


def test_stream_seeds_differ_by_resume_step():
  import train
  assert train.stream_seed(123, 0) == 123
  seeds = {train.stream_seed(123, step) for step in (0, 100, 200, 300)}
  assert len(seeds) == 4 and all(0 < s < 2 ** 31 for s in seeds)
  assert train.stream_seed(124, 100) != train.stream_seed(123, 100)
  assert train.stream_seed(123, 100) == train.stream_seed(123, 100)


# --- warm-up, cosine decay, weight averaging ---------------------------------

@pytest.mark.parametrize('text,max_steps', [
    ('warmup_steps=200,cosine_decay=1,lr_floor=0.1', 1000),
    ('warmup_steps=200,cosine_decay=1,decay_horizon=600', None),
    ('cosine_decay=1', 1000),
    ('warmup_steps=200', None),
])
def test_schedule_against_the_closed_form(text, max_steps):
  """lr(t) = lr * t / W during the warm-up, then lr * (f + (1 - f) *
  (1 + cos(pi * (t - W) / (H - W))) / 2) up to the horizon H and lr * f
  after it; without cosine_decay the warm-up ends at the constant lr. The
  rate the optimizer of a training run applies at each step."""
  import math
  from tagger.core import params
  import train
  hparams = params.parse_hparams('lr=0.003,' + text)
  state = train.state_lib.TrainingState('crnn', hparams, 80, None, max_steps=max_steps)
  # From the text, with the documented defaults: no warm-up, a floor of 0,
  # the horizon at max_steps.
  given = dict(item.split('=') for item in text.split(','))
  warmup = int(given.get('warmup_steps', 0))
  floor = float(given.get('lr_floor', 0))
  horizon = int(given.get('decay_horizon', 0)) or max_steps
  cosine = given.get('cosine_decay') == '1'

  def closed_form(t):
    if t < warmup:
      return 0.003 * t / warmup
    if not cosine:
      return 0.003
    done = min(t, horizon) - warmup
    return 0.003 * (floor + (1 - floor) * 0.5 * (
        1 + math.cos(math.pi * done / (horizon - warmup))))

  for t in (0, 50, 199, 200, 201, 400, 599, 600, 999, 1000, 1500):
    state.optimizer.iterations.assign(t)
    assert float(state.optimizer.learning_rate) == pytest.approx(
        closed_form(t), rel=1e-5, abs=1e-9), t


def test_cosine_decay_needs_a_horizon():
  from tagger.core import params
  import train
  from tagger.core import files
  with pytest.raises(files.UserError, match='decay_horizon or --max_steps'):
    train.state_lib.TrainingState('crnn', params.parse_hparams(
        'cosine_decay=1,warmup_steps=50'), 80, None, max_steps=40)
  with pytest.raises(ValueError, match='not with lrdecay'):
    params.parse_hparams('cosine_decay=1,lrdecay=0.9')


def test_a_resumed_cosine_decay_keeps_its_horizon(tmp_path, dataset):
  """A cosine run records its horizon (decay_horizon: its --max_steps).
  The same command with a larger --max_steps, as a study that grows its
  runs gives, would re-base the decay on the steps taken (from the floor
  back up): it is refused, one line naming the flag and the recorded
  horizon, nothing written. The same --max_steps resumes; with the
  recorded horizon given, the run trains on at lr x lr_floor, the recorded
  schedule's closed form past its horizon."""
  import json
  from conftest import check_ok, run_main, train_args
  from support.cli import assert_one_error
  # Moving statistics: no PreciseBN pass at each save, a shorter test.
  hparams = ('batch_size=2,crnn_filters=2,lr=0.01,cosine_decay=1,'
             'lr_floor=0.25,bn_stats=moving')
  train_dir = tmp_path / 'train'

  def command(max_steps, more=''):
    return train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                      str(train_dir), max_steps, hparams=hparams + more)

  check_ok(run_main(command(3)))
  with open(str(train_dir / 'hparams.json')) as f:
    assert json.load(f)['hparams']['decay_horizon'] == 3
  written = {n: os.stat(str(train_dir / n)).st_mtime_ns
             for n in os.listdir(str(train_dir))}
  result = run_main(command(10))
  assert_one_error(result, '--max_steps 10: %s decays the learning rate to '
                   'step 3' % (train_dir / 'model.ckpt-3'),
                   'decay_horizon=3')
  assert {n: os.stat(str(train_dir / n)).st_mtime_ns
          for n in os.listdir(str(train_dir))} == written
  assert 'Already at step 3' in check_ok(run_main(command(3))).stdout
  out = check_ok(run_main(command(10, ',decay_horizon=3'))).stdout
  assert [s for s, _ in _losses(out)] == list(range(4, 11))
  scalars, _ = _summaries(train_dir)
  assert scalars[('learning_rate', 10)] == pytest.approx(0.01 * 0.25,
                                                         rel=1e-6)


AVERAGED = 'batch_size=4,crnn_filters=4,crnn_dropout=0,lr=0.01,seed=5,' \
    'ema_decay=0.5,bn_stats_batches=2'


@pytest.fixture(scope='session')
def averaged_run(tmp_path_factory, dataset):
  """crnn, 4 steps with a checkpoint after each, weights averaged (made
  once for every test process)."""
  import train

  def make(root):
    patch = pytest.MonkeyPatch()
    patch.setattr(checkpoints, 'CHECKPOINT_EVERY', 1)
    try:
      _train(dataset, 'crnn', AVERAGED, root / 'train', 4)
    finally:
      patch.undo()
    return root / 'train'
  return shared(tmp_path_factory, 'averaged_run', make)


def test_weight_average_is_the_recurrence(averaged_run):
  """ema_t = d_t ema_{t-1} + (1 - d_t) w_t from the initial weights, with
  d_t = min(ema_decay, (1 + t) / (10 + t)), over the raw weights of each
  step's checkpoint, in NumPy."""
  paths = _trainable_paths('crnn', AVERAGED)
  raw = [_reader(str(averaged_run / ('model.ckpt-%d' % t))) for t in range(5)]
  last = raw[-1]
  assert last.get_tensor('ema/updates/.ATTRIBUTES/VARIABLE_VALUE') == 4
  moved = 0
  for path in paths:
    average = _weight(raw[0], path).astype(np.float64)
    for t in range(1, 5):
      d = min(0.5, (1 + t) / (10 + t))
      average = d * average + (1 - d) * _weight(raw[t], path)
    got = last.get_tensor(checkpoints.checkpoint_key(path, 'ema'))
    np.testing.assert_allclose(got, average, rtol=1e-5, atol=1e-7,
                               err_msg=path)
    moved += not np.allclose(got, _weight(last, path), atol=1e-6)
  assert moved > len(paths) // 2  # the average is not the raw weights


def test_scoring_uses_the_averaged_weights_unless_told(averaged_run,
                                                         dataset):
  """A checkpoint with averaged weights is scored with them and their own
  precise statistics; score_averaged=0 scores its raw weights. Each against
  a plain model loaded independently."""
  from tagger.core import files
  from tagger.core import params
  from tagger.engines import scoring
  import tensorflow as tf
  from support import plain_models
  prefix = str(averaged_run / 'model.ckpt-4')
  reader = _reader(prefix)
  clip = os.path.join(dataset['test_clip_dir'],
                      sorted(os.listdir(dataset['test_clip_dir']))[0])
  examples = reference.np_clip_examples(clip, params.parse_hparams(
      AVERAGED)).astype(np.float32)

  def expected(group, statistics):
    net = plain_models.plain_model('crnn', 80, params.parse_hparams(
        AVERAGED))
    plain_models.load_checkpoint(net, prefix, bn_stats='moving')
    for v in net.weights:
      path = plain_models.project_path(v)
      if v.trainable and group:
        v.assign(reader.get_tensor(checkpoints.checkpoint_key(path, group)))
      if path.endswith(('moving_mean', 'moving_variance')):
        v.assign(reader.get_tensor(checkpoints.checkpoint_key(path,
                                                              statistics)))
    return tf.sigmoid(net(examples, training=False)).numpy().mean(axis=0)

  got = {}
  for flag in (1, 0):
    scorer = scoring.Scorer('crnn', 80, params.parse_hparams(
        AVERAGED + ',score_averaged=%d' % flag))
    got[flag] = (scorer.load(prefix),
                 scorer.score([clip], files.check_clips([clip]))[0])
  assert got[1][0] == 'precise of the averaged weights'
  assert got[0][0] == 'precise'
  np.testing.assert_allclose(got[1][1], expected('ema', 'ema_precise_bn'),
                             atol=1e-5)
  np.testing.assert_allclose(got[0][1], expected(None, 'precise_bn'),
                             atol=1e-5)
  assert np.abs(got[1][1] - got[0][1]).max() > 1e-4


def test_averaged_weights_have_their_own_precise_statistics(averaged_run,
                                                            dataset):
  """ema_precise_bn holds the batch-norm statistics of the averaged
  weights over the run's statistics batches, recomputed here; they differ
  from the raw weights' (precise_bn)."""
  from tagger.models import averaging
  from tagger.models import batchnorm
  import inputs
  import model as model_lib
  from tagger.core import params
  hparams = params.parse_hparams(AVERAGED)
  prefix = str(averaged_run / 'model.ckpt-4')
  reader = _reader(prefix)
  ours = model_lib.build_model('crnn', 80, hparams)
  checkpoints.assign_from_checkpoint(ours.weights, reader, prefix)
  averaging.load_average(ours.trainable_variables, reader)
  batches = inputs.statistics_dataset(
      dataset['train_csv'], dataset['train_clip_dir'], read_class_names(),
      hparams, hparams.bn_stats_batches, seed=5)
  expected = batchnorm.PreciseStatistics(ours).compute(batches)
  differ = 0
  for path, value in expected.items():
    saved = reader.get_tensor(checkpoints.checkpoint_key(path,
                                                         'ema_precise_bn'))
    np.testing.assert_allclose(saved, value, rtol=1e-4, atol=1e-5,
                               err_msg=path)
    raw = reader.get_tensor(checkpoints.checkpoint_key(path, 'precise_bn'))
    differ += not np.allclose(raw, value, rtol=1e-4, atol=1e-5)
  assert differ >= 4


def test_progress_line(monkeypatch):
  """Steps 200 to 220 in 10 s, batch 16: 2 steps/s, 32 examples/s, and
  780 steps to step 1000 at that rate take 6 min 30 s."""
  import train
  monkeypatch.setattr(train.time, 'time', lambda: 110.0)
  assert train._progress(220, 0.25, 200, 100.0, 16, 1000) == (
      'step 220 loss 0.250000 (2.00 steps/s, 32.0 examples/s, 0:06:30 left)')
  assert train._progress(220, 0.25, 200, 100.0, 16, None) == (
      'step 220 loss 0.250000 (2.00 steps/s, 32.0 examples/s)')
