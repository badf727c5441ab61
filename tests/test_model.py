"""Model architecture against the seeds' tables, batch-norm folding and the
checkpoint helpers."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras
import numpy as np
import pytest
import tensorflow as tf

from tagger.models import batchnorm
from tagger.core import checkpoints
from tagger.core import files
import model
from tagger.core import params

# The seed's MobileNet table (000_*.txt): (scope, kind, depth, stride,
# activation shape, weights as printed, multiplies as printed).
TABLE = [
    ('conv0', 'C', 16, 1, (100, 96, 16), '144', '1.4M'),
    ('sepconv1', 'SC', 64, 1, (100, 96, 64), '1.2K', '11.2M'),
    ('sepconv2', 'SC', 128, 2, (50, 48, 128), '8.8K', '21M'),
    ('sepconv3', 'SC', 128, 1, (50, 48, 128), '17.5K', '42.1M'),
    ('sepconv4', 'SC', 256, 2, (25, 24, 256), '33.9K', '20.4M'),
    ('sepconv5', 'SC', 256, 1, (25, 24, 256), '67.8K', '40.7M'),
    ('sepconv6', 'SC', 512, 2, (13, 12, 512), '133.4K', '20.8M'),
    ('sepconv7', 'SC', 512, 1, (13, 12, 512), '266.8K', '41.6M'),
    ('sepconv8', 'SC', 512, 1, (13, 12, 512), '266.8K', '41.6M'),
    ('sepconv9', 'SC', 512, 1, (13, 12, 512), '266.8K', '41.6M'),
    ('sepconv10', 'SC', 512, 1, (13, 12, 512), '266.8K', '41.6M'),
    ('sepconv11', 'SC', 512, 1, (13, 12, 512), '266.8K', '41.6M'),
    ('sepconv12', 'SC', 1024, 2, (7, 6, 1024), '528.9K', '22.2M'),
    ('sepconv13', 'SC', 1024, 1, (7, 6, 1024), '1.1M', '44.4M'),
]


def parse_count(text):
  """'8.8K' -> 8800.0, '1.1M' -> 1.1e6, '144' -> 144."""
  scale = {'K': 1e3, 'M': 1e6}.get(text[-1], 1)
  return float(text.rstrip('KM')) * scale


def half_unit(text):
  """Rounding slack of a printed count: half of its last digit's unit."""
  scale = {'K': 1e3, 'M': 1e6}.get(text[-1], 1)
  digits = text.rstrip('KM')
  decimals = len(digits.split('.')[1]) if '.' in digits else 0
  return 0.5 * scale * 10 ** -decimals + 1e-9


@pytest.fixture(scope='module')
def mobilenet():
  return model.build_model('mobilenet-v1', 80, params.parse_hparams())


@pytest.fixture(scope='module')
def trained_mobilenet():
  """A separate model whose batch-norm statistics tests may randomize."""
  return model.build_model('mobilenet-v1', 80, params.parse_hparams())


def kernels(layer):
  return [v for v in layer.variables if v.path.endswith('/kernel')]


def test_mobilenet_layer_table(mobilenet):
  cin = 1
  total_weights = 0
  total_multiplies = 0
  for scope, kind, depth, stride, shape, weights_text, mults_text in TABLE:
    layer = mobilenet.get_layer(scope)
    assert tuple(layer.output.shape[1:]) == shape, scope
    if kind == 'C':
      expected_weights = 9 * cin * depth
    else:
      expected_weights = 9 * cin + cin * depth
    # Independently from the table, and as the seed printed it.
    assert abs(expected_weights - parse_count(weights_text)) <= \
        half_unit(weights_text), scope
    got_weights = sum(int(np.prod(v.shape)) for v in kernels(layer))
    assert got_weights == expected_weights, scope
    # Multiplies from the Keras output shape.
    h, w = layer.output.shape[1:3]
    if kind == 'C':
      mults = h * w * 3 * 3 * cin * depth
    else:
      mults = h * w * 9 * cin + h * w * cin * depth
    assert abs(mults - parse_count(mults_text)) <= half_unit(mults_text), \
        scope
    total_weights += got_weights
    total_multiplies += mults
    cin = depth
  logits_kernel = mobilenet.get_layer('logits').kernel
  assert tuple(logits_kernel.shape) == (1024, 80)
  total_weights += 1024 * 80
  total_multiplies += 1024 * 80
  # Exactly, from the seed table: conv0 9*1*16, each SC 9*cin + cin*depth,
  # logits 1024*80.
  seed_total = 9 * 1 * 16
  cin = 16
  for depth in (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024,
                1024):
    seed_total += 9 * cin + cin * depth
    cin = depth
  seed_total += 1024 * 80
  assert seed_total == 3265120
  assert total_weights == 3265120
  assert abs(total_multiplies - 432.4e6) <= 0.1e6
  # The model holds no other kernels than the ones counted.
  all_kernels = sum(int(np.prod(v.shape)) for v in mobilenet.variables
                    if v.path.endswith('/kernel'))
  assert all_kernels == total_weights


def test_mobilenet_variable_names_and_no_conv_bias(mobilenet):
  paths = {v.path for v in mobilenet.variables}
  for name in ('conv0/conv/kernel', 'sepconv1/depthwise/kernel',
               'sepconv13/pointwise_bn/moving_mean', 'logits/kernel',
               'logits/bias'):
    assert name in paths, name
  biases = sorted(p for p in paths if p.endswith('/bias'))
  assert biases == ['logits/bias']
  assert mobilenet.get_layer('logits').bias.shape == (80,)
  assert isinstance(mobilenet.get_layer('global_pool'),
                    keras.layers.GlobalAveragePooling2D)
  assert not [l for l in mobilenet.layers
              if isinstance(l, keras.layers.Dropout)]


def test_mobilenet_without_batch_norm_has_biases():
  m = model.build_model('mobilenet-v1', 80, params.parse_hparams('bn=0'))
  paths = {v.path for v in m.variables}
  assert not [p for p in paths if '_bn/' in p]
  for scope, kind, depth, _, _, _, _ in TABLE:
    units = ['conv'] if kind == 'C' else ['depthwise', 'pointwise']
    for unit in units:
      assert '%s/%s/bias' % (scope, unit) in paths
    bias = m.get_layer(scope).variables
    assert [tuple(v.shape) for v in bias if v.path.endswith('pointwise/bias')
            or v.path.endswith('conv/bias')] == [(depth,)]
  assert not [v for v in m.variables if 'moving' in v.path]


def test_pool_dropout_and_initializer_options():
  m = model.build_model('mobilenet-v1', 80, params.parse_hparams(
      'global_pool=max,dropout=0.8,weights_init_stddev=0.01'))
  assert isinstance(m.get_layer('global_pool'),
                    keras.layers.GlobalMaxPooling2D)
  dropouts = [l for l in m.layers if isinstance(l, keras.layers.Dropout)]
  assert len(dropouts) == 1
  assert dropouts[0].rate == pytest.approx(0.2)
  conv = m.get_layer('conv0').units[0][0]
  assert isinstance(conv.kernel_initializer, keras.initializers.TruncatedNormal)
  # Truncated at two standard deviations.
  logits = m.get_layer('logits').kernel.numpy()
  assert np.abs(logits).max() <= 0.02 + 1e-7
  assert 0.007 < logits.std() < 0.0095
  # Every kernel (conv, depthwise, pointwise, logits) uses it.
  for v in m.variables:
    if v.path.endswith('/kernel'):
      assert np.abs(v.numpy()).max() <= 0.02 + 1e-7, v.path
  depthwise = m.get_layer('sepconv13').units[0][0]
  assert isinstance(depthwise.depthwise_initializer,
                    keras.initializers.TruncatedNormal)


def test_glorot_initializer_by_default(mobilenet):
  conv = mobilenet.get_layer('sepconv5').units[1][0]
  assert isinstance(conv.kernel_initializer, keras.initializers.GlorotUniform)
  logits = mobilenet.get_layer('logits').kernel.numpy()
  limit = np.sqrt(6.0 / (1024 + 80))
  assert np.abs(logits).max() <= limit + 1e-7
  assert np.abs(logits).max() > 0.95 * limit
  # Uniform on [-limit, limit]: std limit / sqrt(3).
  assert logits.std() == pytest.approx(limit / np.sqrt(3), rel=0.03)
  assert np.all(mobilenet.get_layer('logits').bias.numpy() == 0)


@pytest.mark.parametrize('name', ['mobilenet-v1', 'crnn'])
def test_output_shape(name):
  num_classes = 7
  m = model.build_model(name, num_classes, params.parse_hparams())
  x = np.random.default_rng(0).normal(size=(3, 100, 96)).astype(np.float32)
  y = m(x, training=False).numpy()
  assert y.shape == (3, num_classes)
  assert np.all(np.isfinite(y))


def test_unknown_model_name():
  with pytest.raises(ValueError):
    model.build_model('resnet', 80, params.parse_hparams())


def test_crnn_seed_table_parameter_counts():
  m = model.build_model('crnn', 8, params.parse_hparams('mel_bands=64'))
  assert m.count_params() == 75592
  non_trainable = sum(int(np.prod(v.shape)) for v in m.non_trainable_weights
                      if 'seed_generator' not in v.path)
  assert non_trainable == 512
  trainable = sum(int(np.prod(v.shape)) for v in m.trainable_weights)
  assert trainable == 75080


def crnn_expected_weights(bands, classes, filters=32):
  widths = [filters, filters, 2 * filters, 2 * filters]
  total = 4 * bands  # input batch norm over frequency
  cin = 1
  for cout in widths:
    total += 9 * cin * cout + cout + 4 * cout
    cin = cout
  gru_in = widths[-1]  # frequency pooled down to 1
  total += 3 * (gru_in * 32 + 32 * 32 + 32)
  total += 32 * classes + classes
  return total


def test_crnn_96_bands_80_classes():
  m = model.build_model('crnn', 80, params.parse_hparams())
  assert m.count_params() == crnn_expected_weights(96, 80)
  gru = m.get_layer('gru')
  assert tuple(gru.input.shape[1:]) == (25, 64)
  assert [tuple(k.shape) for k in
          (m.get_layer('conv%d' % i).units[0][0].kernel
           for i in range(1, 5))] == [(3, 3, 1, 32), (3, 3, 32, 32),
                                      (3, 3, 32, 64), (3, 3, 64, 64)]


def test_crnn_filters_16_halves_conv_widths():
  m = model.build_model('crnn', 80, params.parse_hparams('crnn_filters=16'))
  widths = [m.get_layer('conv%d' % i).units[0][0].kernel.shape[-1]
            for i in range(1, 5)]
  assert widths == [16, 16, 32, 32]
  assert m.count_params() == crnn_expected_weights(96, 80, filters=16)
  assert tuple(m.get_layer('gru').input.shape[1:]) == (25, 32)


def randomize_batch_norm(m, rng):
  for v in m.variables:
    name = v.path.rsplit('/', 1)[-1]
    if '_bn/' not in v.path and not v.path.startswith('input_bn/'):
      continue
    n = v.shape
    if name == 'gamma':
      v.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
    elif name == 'beta':
      v.assign(rng.normal(0, 0.2, n).astype(np.float32))
    elif name == 'moving_mean':
      v.assign(rng.normal(0, 0.2, n).astype(np.float32))
    elif name == 'moving_variance':
      v.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))


def all_sublayers(m):
  found = []
  def walk(layer):
    for sub in getattr(layer, '_layers', []) or []:
      found.append(sub)
      walk(sub)
  walk(m)
  return found


def test_fold_batch_norm_matches_inference_mode(trained_mobilenet):
  mobilenet = trained_mobilenet
  rng = np.random.default_rng(3)
  hparams = params.parse_hparams()
  randomize_batch_norm(mobilenet, rng)
  # Also give the logits a bias so that it is copied too.
  mobilenet.get_layer('logits').bias.assign(
      rng.normal(0, 0.5, 80).astype(np.float32))
  inference = batchnorm.build_inference_model('mobilenet-v1', 80, hparams)
  batchnorm.fold_batch_norm(mobilenet, inference)
  bn_layers = [l for l in all_sublayers(inference)
               if isinstance(l, keras.layers.BatchNormalization)]
  assert bn_layers == []
  assert not [v for v in inference.variables if 'moving' in v.path]
  assert [l for l in all_sublayers(mobilenet)
          if isinstance(l, keras.layers.BatchNormalization)]
  x = rng.normal(size=(2, 100, 96)).astype(np.float32)
  want = mobilenet(x, training=False).numpy()
  got = inference(x, training=False).numpy()
  # Logits are not saturated, so the sigmoid comparison is meaningful.
  assert np.std(want) > 0.01
  np.testing.assert_allclose(tf.sigmoid(got).numpy(),
                             tf.sigmoid(want).numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(got, want, atol=1e-4 * max(1, np.abs(want).max()),
                             rtol=1e-4)


def test_crnn_inference_model_is_same_architecture():
  hparams = params.parse_hparams()
  rng = np.random.default_rng(4)
  trained = model.build_model('crnn', 5, hparams)
  randomize_batch_norm(trained, rng)
  inference = batchnorm.build_inference_model('crnn', 5, hparams)
  batchnorm.fold_batch_norm(trained, inference)
  x = rng.normal(size=(2, 100, 96)).astype(np.float32)
  np.testing.assert_allclose(inference(x, training=False).numpy(),
                             trained(x, training=False).numpy(), atol=1e-5)


def test_checkpoint_key_escaping_matches_tf(tmp_path):
  variables = {'a.b/c': tf.Variable([1.0, 2.0]),
               'plain': tf.Variable(3.0)}
  prefix = str(tmp_path / 'esc')
  tf.train.Checkpoint(weights=variables).write(prefix)
  keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  assert checkpoints.checkpoint_key('a.b/c') in keys
  assert checkpoints.checkpoint_key('plain') in keys
  assert checkpoints.checkpoint_key('a.b/c') == \
      'weights/a..b.Sc/.ATTRIBUTES/VARIABLE_VALUE'


def save(m, prefix, *extra):
  tf.train.Checkpoint(weights=checkpoints.checkpoint_weights(m, *extra)).write(
      prefix)
  return prefix


def test_checkpoint_round_trip_mobilenet(tmp_path, trained_mobilenet):
  mobilenet = trained_mobilenet
  hparams = params.parse_hparams()
  rng = np.random.default_rng(5)
  randomize_batch_norm(mobilenet, rng)
  prefix = save(mobilenet, str(tmp_path / 'model.ckpt-7'))
  reader = checkpoints.open_checkpoint(prefix)
  keys = reader.get_variable_to_shape_map()
  for v in mobilenet.variables:
    assert checkpoints.checkpoint_key(v.path) in keys, v.path
  other = model.build_model('mobilenet-v1', 80, hparams)
  assigned = checkpoints.assign_from_checkpoint(other.variables, reader, prefix)
  assert sorted(assigned) == sorted(v.path for v in mobilenet.variables)
  for a, b in zip(mobilenet.variables, other.variables):
    assert a.path == b.path
    np.testing.assert_array_equal(a.numpy(), b.numpy())

  # A model for another number of classes: the logits don't fit.
  wrong = model.build_model('mobilenet-v1', 41, hparams)
  with pytest.raises(files.UserError) as e:
    checkpoints.assign_from_checkpoint(wrong.variables, reader, prefix)
  assert str(e.value) == (
      '%s: variable logits/kernel has shape [1024, 80] there but [1024, 41] '
      'in this model: trained for 80 classes, and --class_map_path names 41'
      % prefix)
  # Another width: no word of classes where the classifier is not the
  # difference.
  narrow = model.build_model('mobilenet-v1', 80,
                             params.parse_hparams('width=0.5'))
  with pytest.raises(files.UserError) as e:
    checkpoints.assign_from_checkpoint(narrow.variables, reader, prefix)
  assert str(e.value).startswith('%s: variable ' % prefix)
  assert str(e.value).endswith(' in this model'), str(e.value)

  # A checkpoint of part of the model: missing variables.
  partial = save(mobilenet.get_layer('conv0'), str(tmp_path / 'model.ckpt-8'))
  partial_reader = checkpoints.open_checkpoint(partial)
  with pytest.raises(files.UserError) as e:
    checkpoints.assign_from_checkpoint(other.variables, partial_reader, partial)
  assert partial in str(e.value)
  assigned = checkpoints.assign_from_checkpoint(other.variables, partial_reader,
                                          partial, missing_ok=True)
  assert sorted(assigned) == sorted(
      v.path for v in mobilenet.get_layer('conv0').variables)


def test_checkpoint_round_trip_crnn_in_same_process(tmp_path):
  # Two identically built CRNNs in one process (e.g. two Scorers): a
  # checkpoint of the first must load into the second.
  hparams = params.parse_hparams()
  first = model.build_model('crnn', 6, hparams)
  prefix = save(first, str(tmp_path / 'model.ckpt-1'))
  second = model.build_model('crnn', 6, hparams)
  reader = checkpoints.open_checkpoint(prefix)
  checkpoints.assign_from_checkpoint(second.weights, reader, prefix)
  x = np.random.default_rng(0).normal(size=(2, 100, 96)).astype(np.float32)
  np.testing.assert_allclose(second(x, training=False).numpy(),
                             first(x, training=False).numpy(), atol=1e-6)


def test_open_checkpoint_missing(tmp_path):
  with pytest.raises(files.UserError) as e:
    checkpoints.open_checkpoint(str(tmp_path / 'model.ckpt-3'))
  assert 'model.ckpt-3' in str(e.value)
