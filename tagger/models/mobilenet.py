"""MobileNet v1 as the baseline's layer table and a loop over it."""

import keras

from tagger.models.layers import ConvBlock, initializer, synchronized

# (scope, kind, stride, depth). 'conv' is a full 3x3 convolution; 'sep' a 3x3
# depthwise convolution followed by a 1x1 pointwise convolution, each with
# its own batch norm and ReLU. The first layer has stride 1 (TF-Slim's has
# 2) for more time-frequency resolution, as in the baseline.
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

# Scoring may fold each batch norm into the convolution before it.
FOLDS_BATCH_NORM = True


def _slim_scopes():
  """The original's TF-Slim scope names, for warm-start scope flags: its
  first slim.conv2d is `Conv`, the depthwise halves (slim.separable_conv2d)
  `SeparableConv2d`, `SeparableConv2d_1`, ..., the pointwise halves (more
  slim.conv2d) `Conv_1`, `Conv_2`, ..., and the classifier
  `fully_connected`. Each batch norm sat inside its convolution's scope."""
  aliases = {'Conv': ['conv0'], 'fully_connected': ['logits']}
  for k, (scope, kind, _, _) in enumerate(MOBILENET_V1):
    if kind == 'sep':
      depthwise = 'SeparableConv2d' + ('_%d' % (k - 1) if k > 1 else '')
      aliases[depthwise] = [scope + '/depthwise', scope + '/depthwise_bn']
      aliases['Conv_%d' % k] = [scope + '/pointwise', scope + '/pointwise_bn']
  return aliases


SCOPE_ALIASES = _slim_scopes()


def scaled_depth(depth, width):
  """A layer's depth under the width multiplier, as TF-Slim's MobileNet
  scales it: int(depth * width), at least 8."""
  return max(8, int(depth * width))


def build(x, hparams, static=False):
  """[batch, frames, bands, 1] -> [batch, 1024] pooled features. (static:
  see crnn.build; nothing to do here.)"""
  bias = not hparams.bn  # batch norm's beta makes a conv bias redundant
  for scope, kind, stride, depth in MOBILENET_V1:
    depth = scaled_depth(depth, hparams.width)
    if kind == 'conv':
      units = [('conv', keras.layers.Conv2D(
          depth, 3, strides=stride, padding='same', use_bias=bias,
          kernel_initializer=initializer(hparams), name='conv'))]
    else:
      units = [
          ('depthwise', keras.layers.DepthwiseConv2D(
              3, strides=stride, padding='same', use_bias=bias,
              depthwise_initializer=initializer(hparams), name='depthwise')),
          ('pointwise', keras.layers.Conv2D(
              depth, 1, padding='same', use_bias=bias,
              kernel_initializer=initializer(hparams), name='pointwise'))]
    x = ConvBlock(units, 'relu', hparams.bndecay if hparams.bn else None,
                  hparams.bneps, synchronized(hparams), name=scope)(x)
  pool = (keras.layers.GlobalMaxPooling2D if hparams.global_pool == 'max'
          else keras.layers.GlobalAveragePooling2D)
  x = pool(name='global_pool')(x)
  if hparams.dropout > 0:
    # The hparam is the original's keep probability.
    x = keras.layers.Dropout(1.0 - hparams.dropout, name='dropout')(x)
  return x
