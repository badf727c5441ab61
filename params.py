"""Hyperparameters: one frozen dataclass with the original baseline's defaults.

Kept free of TensorFlow so that `main.py` can reject a bad --hparams string
before paying for the TensorFlow import.
"""

import dataclasses

from wav import SAMPLE_RATE

LOSSES = ('bce', 'mfom_eer_embed', 'mfom_microf1', 'mfom_eer_normalized',
          'mfom_cprim')


@dataclasses.dataclass(frozen=True)
class HParams:
  # Window and hop length for the Short-Time Fourier Transform applied to the
  # audio waveform to make the spectrogram.
  stft_window_seconds: float = 0.025
  stft_hop_seconds: float = 0.010
  # Conversion of the spectrogram into a mel spectrogram.
  mel_bands: int = 96
  mel_min_hz: int = 20
  mel_max_hz: int = 20000
  # log mel spectrogram = log(mel spectrogram + mel_log_offset)
  mel_log_offset: float = 0.001
  # Window and hop length used to frame the log mel spectrogram into examples.
  example_window_seconds: float = 1.0
  example_hop_seconds: float = 0.5
  # Number of examples in each batch fed to the model.
  batch_size: int = 64
  # For all CNN classifiers, whether to use global mean or max pooling.
  global_pool: str = 'mean'
  # Dropout KEEP probability (not the drop rate). Zero skips the dropout layer.
  dropout: float = 0.0
  # Label smoothing: a label y becomes (1 - lsmooth) * y + lsmooth * 0.5.
  lsmooth: float = 0.0
  # Stddev of the truncated normal used to initialise weights; zero selects
  # Xavier (Glorot uniform). Biases always start at zero.
  weights_init_stddev: float = 0.0
  # Whether to use batch norm, and its moving-average decay and epsilon.
  bn: int = 1
  bndecay: float = 0.9997
  bneps: float = 0.001
  # Whether to warm-start from --warmstart_checkpoint.
  warmstart: int = 0
  # Optimizer (sgd, adam), learning rate and Adam's epsilon.
  opt: str = 'adam'
  lr: float = 1e-4
  adam_eps: float = 1e-8
  # Exponential staircase decay: the learning rate is multiplied by lrdecay
  # every decay_epochs epochs. Zero disables it.
  lrdecay: float = 0.0
  decay_epochs: float = 2.5
  # Training objective: binary cross-entropy or one of the MFoM objectives.
  loss: str = 'bce'
  # CRNN only: filters of the first conv block (the blocks use 1x, 1x, 2x, 2x)
  # and the DROP RATE after each block and after the GRU (unlike `dropout`,
  # which is a keep probability).
  crnn_filters: int = 32
  crnn_dropout: float = 0.5


_CHOICES = {
    'global_pool': ('mean', 'max'),
    'opt': ('adam', 'sgd'),
    'loss': LOSSES,
}
_UNIT_INTERVAL = ('dropout', 'lsmooth')
_POSITIVE = ('stft_window_seconds', 'stft_hop_seconds', 'mel_bands',
             'mel_log_offset', 'example_window_seconds', 'example_hop_seconds',
             'batch_size', 'lr', 'decay_epochs', 'crnn_filters')


def _convert(text, kind):
  if kind is int:
    return int(text)
  if kind is float:
    value = float(text)
    if value != value or value in (float('inf'), float('-inf')):
      raise ValueError
    return value
  return text


def _check(hparams):
  for name, allowed in _CHOICES.items():
    if getattr(hparams, name) not in allowed:
      raise ValueError('hparam %s=%s: must be one of %s' % (
          name, getattr(hparams, name), ', '.join(allowed)))
  for name in _UNIT_INTERVAL:
    value = getattr(hparams, name)
    if not 0.0 <= value <= 1.0:
      raise ValueError('hparam %s=%s: must be between 0 and 1' % (name, value))
  if not 0.0 <= hparams.crnn_dropout < 1.0:
    raise ValueError('hparam crnn_dropout=%s: must be in [0, 1)' %
                     hparams.crnn_dropout)
  for name in _POSITIVE:
    if getattr(hparams, name) <= 0:
      raise ValueError('hparam %s=%s: must be positive' % (
          name, getattr(hparams, name)))
  nyquist = SAMPLE_RATE // 2
  if not 0 <= hparams.mel_min_hz < hparams.mel_max_hz <= nyquist:
    raise ValueError('hparams mel_min_hz=%s, mel_max_hz=%s: need 0 <= min < '
                     'max <= %d' % (hparams.mel_min_hz, hparams.mel_max_hz,
                                    nyquist))
  if hparams.lrdecay < 0 or hparams.weights_init_stddev < 0:
    raise ValueError('hparams lrdecay and weights_init_stddev must not be '
                     'negative')


def parse_hparams(flag_string=''):
  """Returns HParams with the overrides in 'name=value,name=value' applied.

  Each value is typed by its default's type. Raises ValueError naming an
  unknown name or a value that does not parse.
  """
  defaults = HParams()
  kinds = {f.name: type(getattr(defaults, f.name))
           for f in dataclasses.fields(HParams)}
  overrides = {}
  for item in (flag_string or '').split(','):
    item = item.strip()
    if not item:
      continue
    name, sep, text = item.partition('=')
    name, text = name.strip(), text.strip()
    if not sep:
      raise ValueError('hparam %r: expected name=value' % item)
    if name not in kinds:
      raise ValueError('unknown hparam %r (known: %s)' % (
          name, ', '.join(sorted(kinds))))
    try:
      overrides[name] = _convert(text, kinds[name])
    except ValueError:
      raise ValueError('hparam %s=%s: not a valid %s' % (
          name, text, kinds[name].__name__)) from None
  hparams = dataclasses.replace(defaults, **overrides)
  _check(hparams)
  return hparams
