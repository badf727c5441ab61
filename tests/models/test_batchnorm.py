"""PreciseBN: the batch-norm statistics each checkpoint carries equal a NumPy
computation of every batch norm's input statistics over the statistics
batches, training stores them next to untouched moving averages, and scoring
uses them (or, with bn_stats=moving, the moving averages exactly as
before)."""

import dataclasses
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tagger.models import batchnorm  # noqa: E402
from tagger.core import checkpoints  # noqa: E402
import model as model_lib  # noqa: E402
from tagger.core import params  # noqa: E402
from support import plain_models  # noqa: E402

NUM_CLASSES = 6


def random_batches(rng, count=3, size=4):
  return [rng.normal(-2.0, 1.5, (size, 100, 96)).astype(np.float32)
          for _ in range(count)]


def bn_inputs_numpy(plain, batches, layer_names):
  """{plain BN layer name: [values, channels]} of each batch norm's inputs,
  from the plain model run in training mode (batch norms normalise with the
  batch's statistics), all batches stacked, in float64."""
  inputs = [plain.get_layer(name).input for name in layer_names]
  probe = keras.Model(plain.input, inputs)
  gathered = {name: [] for name in layer_names}
  for batch in batches:
    outputs = probe(batch, training=True)
    for name, value, layer_input in zip(layer_names, outputs, inputs):
      axis = plain.get_layer(name).axis
      axis = axis[0] if isinstance(axis, (list, tuple)) else axis
      value = np.moveaxis(value.numpy().astype(np.float64), axis, -1)
      gathered[name].append(value.reshape(-1, value.shape[-1]))
  return {name: np.concatenate(values) for name, values in gathered.items()}


def check_statistics(statistics, plain, batches):
  bn_names = [l.name for l in plain.layers
              if isinstance(l, keras.layers.BatchNormalization)]
  assert len(statistics) == 2 * len(bn_names)
  values = bn_inputs_numpy(plain, batches, bn_names)
  for name in bn_names:
    path = name.replace('__', '/')
    mean, variance = values[name].mean(axis=0), values[name].var(axis=0)
    scale = max(np.abs(mean).max(), np.sqrt(variance.max()), 1e-3)
    np.testing.assert_allclose(statistics[path + '/moving_mean'], mean,
                               atol=1e-4 * scale, rtol=1e-4, err_msg=path)
    np.testing.assert_allclose(statistics[path + '/moving_variance'],
                               variance, atol=1e-4 * scale ** 2, rtol=1e-3,
                               err_msg=path)


@pytest.mark.parametrize('model_name,text', [
    ('mobilenet-v1', ''),
    ('crnn', 'crnn_filters=8'),
])
def test_statistics_equal_numpy_over_the_batches(model_name, text):
  rng = np.random.default_rng(0)
  hparams = params.parse_hparams(text)
  ours = model_lib.build_model(model_name, NUM_CLASSES, hparams)
  plain_models.randomize_batch_norm(ours, rng)  # moving stats irrelevant
  batches = random_batches(rng)
  statistics = batchnorm.PreciseStatistics(ours).compute(batches)
  # The plain CRNN without dropout: the statistics pass runs dropout in
  # inference mode (an identity), a training-mode plain model with rate 0
  # does the same.
  plain = plain_models.plain_model(
      model_name, NUM_CLASSES, dataclasses.replace(hparams, crnn_dropout=0.0))
  plain_models.copy_weights(ours, plain)
  check_statistics(statistics, plain, batches)
  # Nothing of the model changed: the moving averages are untouched.
  before = plain_models.weights_by_path(ours)
  batchnorm.PreciseStatistics(ours).compute(batches)
  for path, value in plain_models.weights_by_path(ours).items():
    np.testing.assert_array_equal(value, before[path], err_msg=path)


def test_crnn_input_statistics_are_the_examples_per_band():
  rng = np.random.default_rng(1)
  hparams = params.parse_hparams()
  ours = model_lib.build_model('crnn', NUM_CLASSES, hparams)
  batches = random_batches(rng, count=2, size=3)
  statistics = batchnorm.PreciseStatistics(ours).compute(batches)
  stacked = np.concatenate(batches).astype(np.float64)  # [n, time, bands]
  np.testing.assert_allclose(statistics['input_bn/moving_mean'],
                             stacked.mean(axis=(0, 1)), rtol=1e-5)
  np.testing.assert_allclose(statistics['input_bn/moving_variance'],
                             stacked.var(axis=(0, 1)), rtol=1e-4)
  # Dropout (rate 0.5 between the blocks) is off: the pass is repeatable.
  again = batchnorm.PreciseStatistics(ours).compute(batches)
  for path, value in statistics.items():
    np.testing.assert_array_equal(again[path], value, err_msg=path)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, dataset):
  """mobilenet-v1, 2 steps with a checkpoint at 0 and 2, its statistics
  computed over fixed batches."""
  import contextlib
  import io
  import inputs
  import train
  from support.scores import read_class_names
  rng = np.random.default_rng(2)
  batches = random_batches(rng, count=2)
  train_dir = str(tmp_path_factory.mktemp('precise') / 'train')
  hparams = params.parse_hparams('batch_size=4,lr=0.01,bn_stats_batches=2')
  patch = pytest.MonkeyPatch()
  patch.setattr(inputs, 'statistics_dataset',
                lambda *args, **kwargs: [tf.constant(b) for b in batches])
  patch.setattr(checkpoints, 'CHECKPOINT_EVERY', 2)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      train.train('mobilenet-v1', hparams, read_class_names(),
                  [inputs.Source(dataset['train_csv'],
                                 dataset['train_clip_dir'])],
                  train_dir, max_steps=2)
  finally:
    patch.undo()
  return {'train_dir': train_dir, 'batches': batches, 'hparams': hparams}


@pytest.mark.parametrize('step', [0, 2])
def test_checkpoints_store_precise_statistics(trained, step):
  from support.scores import read_class_names
  prefix = os.path.join(trained['train_dir'], 'model.ckpt-%d' % step)
  reader = tf.train.load_checkpoint(prefix)
  keys = reader.get_variable_to_shape_map()
  plain = plain_models.plain_model('mobilenet-v1', len(read_class_names()),
                                   trained['hparams'])
  plain_models.load_checkpoint(plain, prefix, bn_stats='moving')
  loaded = plain_models.weights_by_path(plain, project=True)
  statistics, moved = {}, 0
  for v in plain.weights:
    path = plain_models.project_path(v)
    if path.endswith(('moving_mean', 'moving_variance')):
      statistics[path] = reader.get_tensor(
          checkpoints.checkpoint_key(path, 'precise_bn'))
      moved += not np.allclose(statistics[path], v.numpy())
  assert len([k for k in keys if k.startswith('precise_bn/')]) == 2 * 27
  # (check_statistics runs the plain model in training mode.)
  check_statistics(statistics, plain, trained['batches'])
  # The moving averages are the original's: at step 0 their initial 0 and
  # 1, then two updates with decay 0.9997; far from the precise ones.
  if step == 0:
    for path, v in loaded.items():
      if path.endswith('moving_mean'):
        np.testing.assert_array_equal(v, 0.0)
      elif path.endswith('moving_variance'):
        np.testing.assert_array_equal(v, 1.0)
  assert moved > 40


def _scores(model_name, hparams, prefix, examples):
  from tagger.engines import scoring
  scorer = scoring.Scorer(model_name, NUM_CLASSES, hparams)
  used = scorer.load(prefix)
  return used, tf.sigmoid(scorer.inference_model(examples)).numpy()


def test_scoring_uses_precise_statistics_unless_told_otherwise(tmp_path):
  rng = np.random.default_rng(3)
  hparams = params.parse_hparams()
  ours = model_lib.build_model('mobilenet-v1', NUM_CLASSES, hparams)
  plain_models.randomize_batch_norm(ours, rng)
  batches = random_batches(rng)
  precise = batchnorm.PreciseStatistics(ours)
  precise.update(batches)
  with_precise = tf.train.Checkpoint(
      weights=checkpoints.checkpoint_weights(ours),
      precise_bn=precise.variables).write(str(tmp_path / 'model.ckpt-1'))
  without = tf.train.Checkpoint(
      weights=checkpoints.checkpoint_weights(ours)).write(
          str(tmp_path / 'model.ckpt-2'))
  examples = batches[0]
  plain = plain_models.plain_model('mobilenet-v1', NUM_CLASSES, hparams)

  def expected(prefix, bn_stats):
    plain_models.load_checkpoint(plain, prefix, bn_stats=bn_stats)
    return tf.sigmoid(plain(examples, training=False)).numpy()

  used, got = _scores('mobilenet-v1', hparams, with_precise, examples)
  assert used == 'precise'
  np.testing.assert_allclose(got, expected(with_precise, 'precise'),
                             atol=1e-5)
  moving = dataclasses.replace(hparams, bn_stats='moving')
  used, got_moving = _scores('mobilenet-v1', moving, with_precise, examples)
  assert used == 'moving'
  np.testing.assert_allclose(got_moving, expected(with_precise, 'moving'),
                             atol=1e-5)
  assert np.abs(got - got_moving).max() > 1e-3
  # A checkpoint without precise statistics falls back to the moving ones;
  # so does one with only part of them (no layer mixes the two kinds).
  used, got_fallback = _scores('mobilenet-v1', hparams, without, examples)
  assert used == 'moving'
  np.testing.assert_array_equal(got_fallback, got_moving)
  part = dict(list(precise.variables.items())[:-1])
  partial = tf.train.Checkpoint(
      weights=checkpoints.checkpoint_weights(ours),
      precise_bn=part).write(str(tmp_path / 'model.ckpt-3'))
  used, got_partial = _scores('mobilenet-v1', hparams, partial, examples)
  assert used == 'moving'
  np.testing.assert_array_equal(got_partial, got_moving)


def _statistics_examples(dataset, hparams, count, seed=0):
  import inputs
  from support.scores import read_class_names
  return [b.numpy() for b in inputs.statistics_dataset(
      dataset['train_csv'], dataset['train_clip_dir'], read_class_names(),
      hparams, count, seed)]


def test_statistics_batches_are_fixed_training_examples(dataset):
  """bn_stats_batches batches of batch_size examples of the training clips,
  as the pipeline makes them (no SpecAugment or mixup even when training
  uses them), the same in every process: a fixed shuffle. 7 batches of 4
  are more than the 26 examples: the set repeats, shuffled in a buffer of
  the 28 examples taken."""
  from support import reference
  from support.scores import labeled_rows
  hparams = params.parse_hparams(
      'batch_size=4,specaug_time_masks=2,specaug_time_width=60,mixup=1')
  batches = _statistics_examples(dataset, hparams, 7)
  assert [b.shape for b in batches] == [(4, 100, 96)] * 7
  per_clip = [reference.np_clip_examples(
      os.path.join(dataset['train_clip_dir'], f), hparams)
               for f, _ in labeled_rows(dataset['train_csv'])]
  reference_examples = np.concatenate(per_clip)
  clip_of = np.repeat(np.arange(len(per_clip)), [len(e) for e in per_clip])
  found = []
  for example in np.concatenate(batches):
    distance = np.abs(reference_examples - example).max(axis=(1, 2))
    assert distance.min() < 1e-3
    found.append(int(distance.argmin()))
  assert len(set(found)) > 15 and found[:8] != sorted(found[:8])
  # Batches mix clips as training's do (in clip order, two neighbours
  # would mostly share a clip: ~3 examples each).
  same = np.mean(clip_of[found[1:]] == clip_of[found[:-1]])
  assert same < 0.35
  again = _statistics_examples(dataset, hparams, 7)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a, b)


def test_training_saves_the_statistics_of_those_batches(crnn_train, dataset):
  """The precise statistics a CLI training run saved (another process)
  are those of the model's weights over inputs.statistics_dataset with the
  run's bn_stats_batches and seed (drawn by the run and recorded), here
  recomputed."""
  import json
  from support.scores import read_class_names
  with open(os.path.join(crnn_train['train_dir'], 'hparams.json')) as f:
    seed = json.load(f)['hparams']['seed']
  hparams = params.parse_hparams(crnn_train['hparams'])
  assert seed
  prefix = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  ours = model_lib.build_model('crnn', len(read_class_names()), hparams)
  reader = tf.train.load_checkpoint(prefix)
  checkpoints.assign_from_checkpoint(ours.weights, reader, prefix)
  expected = batchnorm.PreciseStatistics(ours).compute(_statistics_examples(
      dataset, hparams, hparams.bn_stats_batches, seed))
  assert len(expected) == 10
  for path, value in expected.items():
    np.testing.assert_allclose(
        reader.get_tensor(checkpoints.checkpoint_key(path, 'precise_bn')),
        value, rtol=1e-4, atol=1e-5, err_msg=path)
