"""The models: each --model name's architecture, and the Keras model around
it that maps [batch, example_frames, mel_bands] log-mel examples to
[batch, num_classes] logits (the sigmoid of the logits gives the scores).

Each architecture lives in its own module as a table of layer definitions
and a loop. The registry below is plain Python so that main.py can offer its
names before importing TensorFlow; an architecture's module (and Keras) is
imported when a model is built.
"""

import importlib

# model.parse_hparams, as in the original.
from tagger.core.params import HParams, parse_hparams  # noqa: F401

# --model name -> the module holding that architecture.
ARCHITECTURES = {
    'mobilenet-v1': 'tagger.models.mobilenet',
    'crnn': 'tagger.models.crnn',
}
MODELS = tuple(ARCHITECTURES)


def architecture(model_name):
  """The module of a --model name's architecture."""
  if model_name not in ARCHITECTURES:
    raise ValueError('unknown model %r (known: %s)' % (
        model_name, ', '.join(MODELS)))
  return importlib.import_module(ARCHITECTURES[model_name])


def build_model(model_name, num_classes, hparams, static=False):
  """Keras model: [batch, frames, bands] log-mel examples -> [batch, classes]
  logits. static: no loops over the batch (for TFLite; same numbers)."""
  import keras
  from tagger.training import augment
  from tagger.sound import features
  from tagger.models.layers import initializer
  build = architecture(model_name).build
  frames = hparams.geometry.example_frames
  examples = keras.Input((frames, hparams.mel_bands), name='log_mel')
  x = examples
  if hparams.frontend == 'pcen':
    # The model owns the compression of the mel energies.
    x = features.PCEN(hparams, name='pcen')(x)
    if hparams.specaug_after_pcen:
      x = augment.SpecAugmentLayer(hparams, name='specaug')(x)
  x = keras.layers.Reshape((frames, hparams.mel_bands, 1), name='to_image')(x)
  # float32 logits whatever the precision policy: the sigmoid and the loss
  # need its range.
  logits = keras.layers.Dense(num_classes, kernel_initializer=initializer(
      hparams), dtype='float32', name='logits')(build(x, hparams, static))
  return keras.Model(examples, logits, name=model_name)
