"""Plain Keras MobileNet v1 and CRNN, built from stock Keras layers with the
layer tables written out here (not taken from model.py), for comparisons
against the project's models.

Each plain layer that holds variables is named `scope__unit` so that its
variables map onto the project's checkpoint paths (README, "Variable names
for warm-start scopes") by replacing `__` with `/`: the plain Conv2D
`conv0__conv` holds `conv0/conv/kernel`. Weights come from a checkpoint
(read by variable path with checkpoints.checkpoint_key) or from a model's own
variables, matched by path.
"""

import keras
import numpy as np
import tensorflow as tf

# The baseline's MobileNet v1 (README layer table): scope, kind, stride,
# depth. 'conv' is a full 3x3 convolution; 'sep' a 3x3 depthwise convolution
# and a 1x1 pointwise convolution, each followed by batch norm and ReLU.
MOBILENET_V1_TABLE = (
    ('conv0', 'conv', 1, 16),
    ('sepconv1', 'sep', 1, 64),
    ('sepconv2', 'sep', 2, 128),
    ('sepconv3', 'sep', 1, 128),
    ('sepconv4', 'sep', 2, 256),
    ('sepconv5', 'sep', 1, 256),
    ('sepconv6', 'sep', 2, 512),
    ('sepconv7', 'sep', 1, 512),
    ('sepconv8', 'sep', 1, 512),
    ('sepconv9', 'sep', 1, 512),
    ('sepconv10', 'sep', 1, 512),
    ('sepconv11', 'sep', 1, 512),
    ('sepconv12', 'sep', 2, 1024),
    ('sepconv13', 'sep', 1, 1024),
)

# The MFoM seed's CRNN (README): scope, filters as a multiple of
# crnn_filters, max pool (time, frequency).
CRNN_TABLE = (
    ('conv1', 1, (2, 2)),
    ('conv2', 1, (2, 4)),
    ('conv3', 2, (1, 4)),
    ('conv4', 2, (1, 2)),
)
CRNN_GRU_UNITS = 32


def _frames(hparams):
  return int(round(hparams.example_window_seconds / hparams.stft_hop_seconds))


def _bn(hparams, name, axis=-1, momentum=None):
  return keras.layers.BatchNormalization(
      axis=axis, momentum=hparams.bndecay if momentum is None else momentum,
      epsilon=hparams.bneps, name=name)


def keras2_hard_sigmoid(x):
  """Keras 2.0.2's hard_sigmoid, the MFoM project's GRU gate activation."""
  return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def plain_mobilenet(num_classes, hparams):
  frames, bands = _frames(hparams), hparams.mel_bands
  examples = keras.Input((frames, bands))
  x = keras.layers.Reshape((frames, bands, 1))(examples)
  bias = not hparams.bn

  def norm_relu(x, name):
    if hparams.bn:
      x = _bn(hparams, name + '_bn')(x)
    return keras.layers.ReLU()(x)

  for scope, kind, stride, depth in MOBILENET_V1_TABLE:
    if kind == 'conv':
      x = keras.layers.Conv2D(depth, 3, strides=stride, padding='same',
                              use_bias=bias, name=scope + '__conv')(x)
      x = norm_relu(x, scope + '__conv')
    else:
      x = keras.layers.DepthwiseConv2D(3, strides=stride, padding='same',
                                       use_bias=bias,
                                       name=scope + '__depthwise')(x)
      x = norm_relu(x, scope + '__depthwise')
      x = keras.layers.Conv2D(depth, 1, padding='same', use_bias=bias,
                              name=scope + '__pointwise')(x)
      x = norm_relu(x, scope + '__pointwise')
  if hparams.global_pool == 'max':
    x = keras.layers.GlobalMaxPooling2D()(x)
  else:
    x = keras.layers.GlobalAveragePooling2D()(x)
  if hparams.dropout > 0:
    x = keras.layers.Dropout(1.0 - hparams.dropout)(x)  # dropout is a keep
  logits = keras.layers.Dense(num_classes, name='logits')(x)
  return keras.Model(examples, logits)


def plain_crnn(num_classes, hparams):
  frames, bands = _frames(hparams), hparams.mel_bands
  examples = keras.Input((frames, bands))
  x = keras.layers.Reshape((frames, bands, 1))(examples)
  # Keras 2's default batch-norm momentum, crnn_bndecay (README).
  momentum = hparams.crnn_bndecay
  x = _bn(hparams, 'input_bn', axis=2, momentum=momentum)(x)  # frequency
  for scope, multiple, pool in CRNN_TABLE:
    x = keras.layers.Conv2D(multiple * hparams.crnn_filters, 3,
                            padding='same', use_bias=True,
                            name=scope + '__conv')(x)
    x = _bn(hparams, scope + '__conv_bn', momentum=momentum)(x)
    x = keras.layers.ELU()(x)
    x = keras.layers.MaxPooling2D(pool)(x)
    x = keras.layers.Dropout(hparams.crnn_dropout)(x)  # a drop rate
  _, steps, pooled_bands, channels = x.shape
  x = keras.layers.Reshape((steps, pooled_bands * channels))(x)
  x = keras.layers.GRU(CRNN_GRU_UNITS, reset_after=False,
                       recurrent_activation=keras2_hard_sigmoid, name='gru')(x)
  x = keras.layers.Dropout(hparams.crnn_dropout)(x)
  logits = keras.layers.Dense(num_classes, name='logits')(x)
  return keras.Model(examples, logits)


def plain_model(model_name, num_classes, hparams):
  if model_name == 'mobilenet-v1':
    return plain_mobilenet(num_classes, hparams)
  assert model_name == 'crnn', model_name
  return plain_crnn(num_classes, hparams)


def project_path(variable):
  """The project's variable path of a plain model's variable."""
  return variable.path.replace('__', '/')


def load_checkpoint(plain, checkpoint_prefix, bn_stats='precise'):
  """Assigns every plain weight from the checkpoint, by variable path; the
  checkpoint must hold no model weight the plain model lacks. With
  bn_stats='precise', the batch norms' moving statistics are the
  checkpoint's precise ones (`precise_bn/<path>`, README "Batch-norm
  statistics") where it has them, as scoring uses them."""
  from tagger.core import checkpoints  # only for the documented key format
  reader = tf.train.load_checkpoint(checkpoint_prefix)
  keys = reader.get_variable_to_shape_map()
  used = set()
  for v in plain.weights:
    key = checkpoints.checkpoint_key(project_path(v))
    assert key in keys, project_path(v)
    v.assign(reader.get_tensor(key))
    used.add(key)
  model_weights = {k for k in keys if k.startswith('weights/')
                   and not k.startswith('weights/mfom')}
  assert model_weights == used, sorted(model_weights - used)[:5]
  if bn_stats == 'precise':
    for v in plain.weights:
      key = checkpoints.checkpoint_key(project_path(v), 'precise_bn')
      if key in keys:
        assert project_path(v).endswith(('moving_mean', 'moving_variance'))
        v.assign(reader.get_tensor(key))
  return plain


def copy_weights(source, target):
  """Assigns every weight of target from the same-path weight of source
  (either a model of model.build_model or a plain model); both must have the
  same set of paths."""
  by_path = {project_path(v): v for v in source.weights}
  target_paths = [project_path(v) for v in target.weights]
  assert sorted(target_paths) == sorted(by_path), (
      sorted(set(target_paths) ^ set(by_path))[:5])
  for v, path in zip(target.weights, target_paths):
    v.assign(by_path[path])
  return target


def weights_by_path(net, project=False):
  """{project variable path: value} of a model's weights."""
  return {(project_path(v) if project else v.path): np.array(v.numpy())
          for v in net.weights}


def randomize_batch_norm(net, rng):
  """Non-trivial gamma, beta and moving statistics for every batch norm."""
  for v in net.weights:
    name = v.path.rsplit('/', 1)[-1]
    if name == 'gamma':
      v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    elif name in ('beta', 'moving_mean'):
      v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
    elif name == 'moving_variance':
      v.assign(rng.uniform(0.2, 2.0, v.shape).astype(np.float32))


def calibrated(model_name, num_classes, hparams, examples, rng):
  """A plain model with random gamma and beta, and moving statistics that
  are the batch statistics of `examples` (a twin with decay 0 run once in
  training mode), so that inference-mode outputs are well scaled and tell
  examples apart. (With the initial 0 / 1 statistics, or random ones, a
  deep stack of convolutions scales the input away and every example gets
  the same scores.)"""
  import dataclasses
  plain = plain_model(model_name, num_classes, hparams)
  for v in plain.weights:
    if v.path.endswith('/gamma'):
      v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    elif v.path.endswith('/beta'):
      v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
    elif v.path.endswith('/bias'):
      v.assign(rng.normal(0, 0.05, v.shape).astype(np.float32))
  if not any(v.path.endswith('/gamma') for v in plain.weights):
    # Without batch norm, He-normal kernels keep the signal through the
    # ReLUs (Glorot's would shrink it ~1e-10-fold over 27 layers).
    for v in plain.weights:
      if v.path.endswith('/kernel'):
        shape = tuple(v.shape)
        fan_in = (np.prod(shape[:2]) if 'depthwise' in v.path
                  else np.prod(shape[:-1]))
        v.assign(rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(
            np.float32))
  twin = plain_model(model_name, num_classes,
                     dataclasses.replace(hparams, bndecay=0.0,
                                         crnn_bndecay=0.0))
  copy_weights(plain, twin)
  twin(np.asarray(examples, np.float32), training=True)
  return copy_weights(twin, plain)
