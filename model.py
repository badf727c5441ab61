"""Models: MobileNet v1 (the baseline) and the MFoM project's CRNN.

Both map [batch, example_frames, mel_bands] log-mel examples to
[batch, num_classes] logits; the sigmoid of the logits gives the scores.
Each architecture is a table of layer definitions and a loop over it.
"""

import dataclasses

import keras
import tensorflow as tf

import inputs
from files import UserError
from params import HParams, parse_hparams  # noqa: F401  (model.parse_hparams)

MODELS = ('mobilenet-v1', 'crnn')

# MobileNet v1 as in the baseline's table: (scope, kind, stride, depth). 'conv'
# is a full 3x3 convolution; 'sep' a 3x3 depthwise convolution followed by a
# 1x1 pointwise convolution, each with its own batch norm and ReLU.
MOBILENET_V1 = (
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

# The MFoM seed's CRNN on [time, frequency]: (scope, width as a multiple of
# crnn_filters, max-pool (time, frequency)). Frequency pools 2, 4, 4, 2 take
# 96 (or the seed's 64) bands down to 1; time pools 2, 2, 1, 1 leave 25 steps.
CRNN = (
    ('conv1', 1, (2, 2)),
    ('conv2', 1, (2, 4)),
    ('conv3', 2, (1, 4)),
    ('conv4', 2, (1, 2)),
)
CRNN_GRU_UNITS = 32


def _initializer(hparams):
  if hparams.weights_init_stddev == 0.0:
    return keras.initializers.GlorotUniform()
  return keras.initializers.TruncatedNormal(stddev=hparams.weights_init_stddev)


class ConvBlock(keras.layers.Layer):
  """One scope of convolutions, each followed by optional batch norm and an
  activation. Sub-layers are named so variables read `scope/unit/kernel` and
  `scope/unit_bn/gamma`, which is what the warm-start scope flags match."""

  def __init__(self, units, activation, hparams, use_bias=None, **kwargs):
    super().__init__(**kwargs)
    bn = bool(hparams.bn)
    self.units = []
    for unit_name, conv in units:
      norm = (keras.layers.BatchNormalization(
          momentum=hparams.bndecay, epsilon=hparams.bneps,
          name=unit_name + '_bn') if bn else None)
      self.units.append((conv, norm))
    self.activation = keras.activations.get(activation)

  def call(self, x, training=None):
    for conv, norm in self.units:
      x = conv(x)
      if norm is not None:
        x = norm(x, training=training)
      x = self.activation(x)
    return x


def _mobilenet_v1(x, hparams):
  bias = not hparams.bn  # batch norm's beta makes a conv bias redundant
  for scope, kind, stride, depth in MOBILENET_V1:
    if kind == 'conv':
      units = [('conv', keras.layers.Conv2D(
          depth, 3, strides=stride, padding='same', use_bias=bias,
          kernel_initializer=_initializer(hparams), name='conv'))]
    else:
      units = [
          ('depthwise', keras.layers.DepthwiseConv2D(
              3, strides=stride, padding='same', use_bias=bias,
              depthwise_initializer=_initializer(hparams), name='depthwise')),
          ('pointwise', keras.layers.Conv2D(
              depth, 1, padding='same', use_bias=bias,
              kernel_initializer=_initializer(hparams), name='pointwise'))]
    x = ConvBlock(units, 'relu', hparams, name=scope)(x)
  pool = (keras.layers.GlobalMaxPooling2D if hparams.global_pool == 'max'
          else keras.layers.GlobalAveragePooling2D)
  x = pool(name='global_pool')(x)
  if hparams.dropout > 0:
    x = keras.layers.Dropout(1.0 - hparams.dropout, name='dropout')(x)
  return x


def _crnn(x, hparams):
  # Batch norm over the frequency axis of the input, as the seed's bn_0_freq.
  x = keras.layers.BatchNormalization(
      axis=2, momentum=hparams.bndecay, epsilon=hparams.bneps,
      name='input_bn')(x)
  crnn_hparams = dataclasses.replace(hparams, bn=1)
  for scope, width, pool in CRNN:
    # The seed's convolutions keep their bias in front of batch norm.
    conv = keras.layers.Conv2D(
        width * hparams.crnn_filters, 3, padding='same', use_bias=True,
        kernel_initializer=_initializer(hparams), name='conv')
    x = ConvBlock([('conv', conv)], 'elu', crnn_hparams, name=scope)(x)
    x = keras.layers.MaxPooling2D(pool, name=scope + '_pool')(x)
    x = keras.layers.Dropout(hparams.crnn_dropout, name=scope + '_dropout')(x)
  _, steps, bands, channels = x.shape
  x = keras.layers.Reshape((steps, bands * channels), name='to_sequence')(x)
  # reset_after=False is the Keras 2 GRU of the seed (9,312 weights).
  x = keras.layers.GRU(CRNN_GRU_UNITS, reset_after=False,
                       kernel_initializer=_initializer(hparams), name='gru')(x)
  return keras.layers.Dropout(hparams.crnn_dropout, name='gru_dropout')(x)


def build_model(model_name, num_classes, hparams):
  """Keras model: [batch, frames, bands] log-mel examples -> [batch, classes]
  logits."""
  if model_name not in MODELS:
    raise ValueError('unknown model %r (known: %s)' % (
        model_name, ', '.join(MODELS)))
  frames, _ = inputs.example_geometry(hparams)
  examples = keras.Input((frames, hparams.mel_bands), name='log_mel')
  x = keras.layers.Reshape((frames, hparams.mel_bands, 1), name='to_image')(
      examples)
  x = (_mobilenet_v1 if model_name == 'mobilenet-v1' else _crnn)(x, hparams)
  logits = keras.layers.Dense(num_classes, kernel_initializer=_initializer(
      hparams), name='logits')(x)
  return keras.Model(examples, logits, name=model_name)


def build_inference_model(model_name, num_classes, hparams):
  """A model for scoring only. For MobileNet with batch norm, a twin without
  batch norm whose convolutions carry the folded scale and shift (see
  fold_batch_norm); otherwise the model itself."""
  if model_name == 'mobilenet-v1' and hparams.bn:
    return build_model(model_name, num_classes,
                       dataclasses.replace(hparams, bn=0, dropout=0.0))
  return build_model(model_name, num_classes, hparams)


def fold_batch_norm(trained, inference):
  """Copies `trained` into `inference` (from build_inference_model).

  Inference-mode batch norm is y = (x - mean) * gamma / sqrt(var + eps) +
  beta, so a convolution followed by it equals one with its kernel scaled per
  output channel and a bias of beta - mean * scale.
  """
  if len(trained.weights) == len(inference.weights):
    inference.set_weights(trained.get_weights())
    return
  for layer in trained.layers:
    twin = inference.get_layer(layer.name)
    if not isinstance(layer, ConvBlock):
      twin.set_weights(layer.get_weights())
      continue
    for (conv, norm), (twin_conv, _) in zip(layer.units, twin.units):
      kernel = conv.kernel
      scale = norm.gamma / tf.sqrt(norm.moving_variance + norm.epsilon)
      if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = kernel * scale[None, None, :, None]
      else:
        kernel = kernel * scale
      twin_conv.kernel.assign(kernel)
      twin_conv.bias.assign(norm.beta - norm.moving_mean * scale)


# Checkpoints hold every variable under `weights/<variable path>`, so that
# warm start and scoring can select variables by name, as TF1 scopes did.
def checkpoint_weights(*layers):
  """{variable path: variable} of the given layers, for tf.train.Checkpoint.

  `weights`, not `variables`: Keras 3 also counts each dropout layer's RNG
  state, named by a process-wide counter, which would not match across runs.
  """
  return {v.path: v for layer in layers if layer is not None
          for v in layer.weights}


def checkpoint_key(path):
  """The key tf.train.Checkpoint gives the variable at `path` in the dict
  above ('/' and '.' escaped as the object-graph format does)."""
  escaped = path.replace('.', '..').replace('/', '.S')
  return 'weights/%s/.ATTRIBUTES/VARIABLE_VALUE' % escaped


def open_checkpoint(checkpoint_path):
  """A reader for a `model.ckpt-N` prefix; UserError naming it if unusable."""
  if not tf.io.gfile.exists(checkpoint_path + '.index'):
    raise UserError('%s: checkpoint not found (expected %s.index)' % (
        checkpoint_path, checkpoint_path))
  try:
    return tf.train.load_checkpoint(checkpoint_path)
  except (tf.errors.OpError, ValueError) as e:
    raise UserError('%s: unreadable checkpoint (%s)' % (
        checkpoint_path, getattr(e, 'message', e))) from None


def assign_from_checkpoint(variables, reader, checkpoint_path,
                           missing_ok=False):
  """Assigns each variable its value in the checkpoint; returns the paths
  assigned. A shape mismatch, or (unless missing_ok) an absent variable,
  raises UserError naming the variable."""
  shapes = reader.get_variable_to_shape_map()
  assigned, missing = [], []
  for variable in variables:
    key = checkpoint_key(variable.path)
    if key not in shapes:
      missing.append(variable.path)
      continue
    if list(shapes[key]) != list(variable.shape):
      raise UserError(
          '%s: variable %s has shape %s there but %s in this model' % (
              checkpoint_path, variable.path, shapes[key],
              list(variable.shape)))
    try:
      variable.assign(reader.get_tensor(key))
    except tf.errors.OpError as e:
      raise UserError('%s: unreadable checkpoint (%s)' % (
          checkpoint_path, e.message.splitlines()[0])) from None
    assigned.append(variable.path)
  if missing and not missing_ok:
    raise UserError(
        '%s: %d variables of this model are not in the checkpoint (e.g. %s);'
        ' was it trained with another --model or other hparams?' % (
            checkpoint_path, len(missing), missing[0]))
  return assigned
