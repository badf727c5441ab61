"""The MFoM project's CRNN as a layer table and a loop over it."""

import keras
from keras import ops

from tagger.models.layers import BatchNorm, ConvBlock, initializer, synchronized

# On [time, frequency]: (scope, width as a multiple of crnn_filters, max-pool
# (time, frequency)). Frequency pools 2, 4, 4, 2 take 96 (or the seed's 64)
# bands down to 1; time pools 2, 2, 1, 1 leave 25 steps.
CRNN = (
    ('conv1', 1, (2, 2)),
    ('conv2', 1, (2, 4)),
    ('conv3', 2, (1, 4)),
    ('conv4', 2, (1, 2)),
)
GRU_UNITS = 32

# Its convolutions keep their bias in front of batch norm: scoring runs the
# model as trained.
FOLDS_BATCH_NORM = False
# No other names for its scopes (see mobilenet.SCOPE_ALIASES).
SCOPE_ALIASES = {}


def keras2_hard_sigmoid(x):
  """The GRU gates' activation in the MFoM project: Keras 2's hard sigmoid,
  clip(0.2 x + 0.5, 0, 1) (Keras 3's is clip(x / 6 + 0.5, 0, 1))."""
  return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def build(x, hparams, static=False):
  """[batch, frames, bands, 1] -> [batch, GRU_UNITS] GRU output. static:
  the GRU unrolled over its 25 steps (same numbers), for converters that
  cannot take a loop over a batch of unknown size (TFLite)."""
  # Batch norm over the frequency axis of the input, as the seed's bn_0_freq.
  # Batch norm momentum crnn_bndecay: Keras 2's default 0.99 in the seed.
  x = BatchNorm(axis=2, momentum=hparams.crnn_bndecay, epsilon=hparams.bneps,
                synchronized=synchronized(hparams), name='input_bn')(x)
  for scope, width, pool in CRNN:
    conv = keras.layers.Conv2D(
        width * hparams.crnn_filters, 3, padding='same', use_bias=True,
        kernel_initializer=initializer(hparams), name='conv')
    # Batch norm whatever the `bn` hparam says: the seed's CRNN has it.
    x = ConvBlock([('conv', conv)], 'elu', hparams.crnn_bndecay,
                  hparams.bneps, synchronized(hparams), name=scope)(x)
    x = keras.layers.MaxPooling2D(pool, name=scope + '_pool')(x)
    x = keras.layers.Dropout(hparams.crnn_dropout, name=scope + '_dropout')(x)
  _, steps, bands, channels = x.shape
  x = keras.layers.Reshape((steps, bands * channels), name='to_sequence')(x)
  # reset_after=False is the Keras 2 GRU of the seed (9,312 weights).
  x = keras.layers.GRU(GRU_UNITS, reset_after=False, unroll=static,
                       recurrent_activation=keras2_hard_sigmoid,
                       kernel_initializer=initializer(hparams), name='gru')(x)
  return keras.layers.Dropout(hparams.crnn_dropout, name='gru_dropout')(x)
