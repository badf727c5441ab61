"""Hyperparameters: one frozen dataclass with the original baseline's defaults.

Kept free of TensorFlow so that `main.py` can reject a bad --hparams string
before paying for the TensorFlow import.
"""

import dataclasses
import functools
import json
import math

from tagger.core import param_checks
from tagger.sound.wav import SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The STFT and example geometry that an HParams defines, derived once
  (HParams.geometry)."""
  window: int  # STFT window, in samples
  hop: int  # STFT hop, in samples
  fft_length: int  # the window rounded up to a power of 2
  example_frames: int  # an example's window, in STFT frames
  example_hop_frames: int  # the hop between examples, in STFT frames

  @classmethod
  def of(cls, hparams):
    window = int(round(SAMPLE_RATE * hparams.stft_window_seconds))
    frames_per_second = 1.0 / hparams.stft_hop_seconds
    return cls(
        window=window,
        hop=int(round(SAMPLE_RATE * hparams.stft_hop_seconds)),
        fft_length=2 ** int(math.ceil(math.log2(max(window, 1)))),
        example_frames=int(round(frames_per_second *
                                 hparams.example_window_seconds)),
        example_hop_frames=int(round(frames_per_second *
                                     hparams.example_hop_seconds)))

  @property
  def crop_length(self):
    """The samples one example is made of: its frames' hops and a window."""
    return (self.example_frames - 1) * self.hop + self.window

  @property
  def example_hop_samples(self):
    return self.example_hop_frames * self.hop


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
  # The batch-norm statistics scoring uses: 'precise' (recomputed with each
  # checkpoint's own weights over bn_stats_batches training batches when it
  # is saved; PreciseBN) or 'moving' (the moving averages, as the original).
  bn_stats: str = 'precise'
  bn_stats_batches: int = 20
  # With several replicas (--distribution), batch norm in training uses the
  # statistics of the whole batch (1), as one device would, or each
  # replica's share of it (0: faster, not the single-device numbers).
  bn_sync: int = 1
  # Training arithmetic: float32 (the original's), or Keras mixed precision
  # (float16 with loss scaling, or bfloat16); weights, checkpoints and
  # scores stay float32.
  precision: str = 'float32'
  # Whether to warm-start from --warmstart_checkpoint.
  warmstart: int = 0
  # Seeds everything random in training: weight initialisation, clip and
  # example shuffling, the PreciseBN batches, SpecAugment and mixup draws,
  # dropout. 0: a seed is drawn, printed and recorded with the run's
  # hparams, so that any run can be repeated.
  seed: int = 0
  # Optimizer (sgd, adam), learning rate and Adam's epsilon.
  opt: str = 'adam'
  lr: float = 1e-4
  adam_eps: float = 1e-8
  # SGD only: momentum, and Nesterov's form of it (1) as Keras 2's SGD.
  momentum: float = 0.0
  nesterov: int = 0
  # Exponential staircase decay: the learning rate is multiplied by lrdecay
  # every decay_epochs epochs. Zero disables it.
  lrdecay: float = 0.0
  decay_epochs: float = 2.5
  # Keras 2's inverse-time decay: lr / (1 + inverse_time_decay * step).
  inverse_time_decay: float = 0.0
  # A linear warm-up of the learning rate from 0 over warmup_steps; then,
  # with cosine_decay=1, a cosine decay to lr_floor x lr at decay_horizon
  # steps (0: --max_steps). Neither with lrdecay or inverse_time_decay.
  warmup_steps: int = 0
  cosine_decay: int = 0
  lr_floor: float = 0.0
  decay_horizon: int = 0
  # Weight averaging: an exponential moving average of the weights with
  # this decay, kept in training and saved in every checkpoint (0: off);
  # scoring uses a checkpoint's averaged weights when it has them, unless
  # score_averaged=0.
  ema_decay: float = 0.0
  score_averaged: int = 1
  # Training objective: binary cross-entropy or one of the MFoM objectives.
  loss: str = 'bce'
  # CRNN only: filters of the first conv block (the blocks use 1x, 1x, 2x, 2x)
  # and the DROP RATE after each block and after the GRU (unlike `dropout`,
  # which is a keep probability).
  crnn_filters: int = 32
  crnn_dropout: float = 0.5
  # CRNN only: its batch norms' moving-average decay, Keras 2's default
  # momentum as in the MFoM project (MobileNet uses bndecay).
  crnn_bndecay: float = 0.99

  # --- Beyond the baseline (all off by default) ---
  # The front end: 'logmel' (the baseline's log(mel + mel_log_offset)) or
  # 'pcen', per-channel energy normalisation of the mel energies (Wang et
  # al., ICASSP 2017) as the model's first layer, with the paper's smoother
  # coefficient s and initial alpha, delta, r, eps; pcen_trainable=1 learns
  # per-band alpha, delta and r (in log space, as in the paper).
  frontend: str = 'logmel'
  pcen_s: float = 0.025
  pcen_alpha: float = 0.98
  pcen_delta: float = 2.0
  pcen_r: float = 0.5
  pcen_eps: float = 1e-6
  pcen_trainable: int = 0
  # SpecAugment in training: this many frequency (time) masks per example,
  # each of a width drawn uniformly from 0 to the maximum, in bands (frames).
  specaug_freq_masks: int = 0
  specaug_freq_width: int = 0
  specaug_time_masks: int = 0
  specaug_time_width: int = 0
  # With frontend=pcen, 1 sets the masks on PCEN's output (to its example
  # mean), inside the model, instead of on the mel energies before it, where
  # a mask is a loud flat block whose edges PCEN turns into onsets.
  specaug_after_pcen: int = 0
  # mixup in training: examples and labels mixed within the batch with
  # weights drawn from Beta(mixup, mixup); 0 is off. BCE only.
  mixup: float = 0.0
  # MobileNet's width multiplier: every layer's depth times this (at least
  # 8), as TF-Slim's depth_multiplier.
  width: float = 1.0
  # The loss of the examples of a training source marked noisy (see
  # noisy_labels.py; these change nothing in a run without one): 'bce' with
  # its own label smoothing noisy_lsmooth; 'lq', the generalized
  # cross-entropy with exponent lq_q (Zhang and Sabuncu's 0.7); or Reed et
  # al.'s 'bootstrap_soft' / 'bootstrap_hard', whose weights of the given
  # labels are two hparams so that each defaults to the paper's value for
  # its variant (0.95, 0.8) and choosing a variant alone runs it as
  # published.
  noisy_loss: str = 'bce'
  noisy_lsmooth: float = 0.0
  lq_q: float = 0.7
  bootstrap_soft_beta: float = 0.95
  bootstrap_hard_beta: float = 0.8

  @property
  def has_masks(self):
    """Whether any SpecAugment mask is asked for."""
    return bool(self.specaug_freq_masks or self.specaug_time_masks)

  @functools.cached_property
  def geometry(self):
    """The Geometry these hparams define, derived on first use and kept."""
    return Geometry.of(self)


# The hparams that define what a trained model computes from a waveform: its
# features and its architecture (PCEN's alpha, delta and r are weights of the
# checkpoint; its smoother s and eps are not). A checkpoint can only be resumed, scored or
# exported with its own values of these; the others (lr, dropout, lsmooth,
# bn_stats, ...) only steer training or scoring and may change between runs.
MODEL_DEFINING = ('stft_window_seconds', 'stft_hop_seconds', 'mel_bands',
                  'mel_min_hz', 'mel_max_hz', 'mel_log_offset',
                  'example_window_seconds', 'example_hop_seconds',
                  'global_pool', 'bn', 'bneps', 'crnn_filters', 'frontend',
                  'pcen_s', 'pcen_eps', 'width')

# The hparams that choose which of a checkpoint's batch-norm statistics and
# weights scoring uses: a model file (--tflite_model) has them folded in.
SCORING = ('bn_stats', 'score_averaged')

# The original's training length when --max_steps is not given: this many
# epochs.
DEFAULT_EPOCHS = 1000


def default_max_steps(max_steps, epoch_num_batches, epochs=DEFAULT_EPOCHS):
  """The steps a run trains for: max_steps, else `epochs` epochs of
  epoch_num_batches batches; None when neither is given (the pipeline then
  ends after `epochs` epochs of its own)."""
  if max_steps is None and epoch_num_batches:
    return epochs * epoch_num_batches
  return max_steps


def cosine_horizon(hparams, max_steps):
  """The step at which cosine_decay=1 reaches its floor: decay_horizon, else
  max_steps. Raises ValueError when there is none past the warm-up."""
  horizon = hparams.decay_horizon or max_steps
  if not horizon or horizon <= hparams.warmup_steps:
    raise ValueError('hparam cosine_decay=1: the decay needs a horizon past '
                     'the warm-up (warmup_steps=%d): set decay_horizon or '
                     '--max_steps' % hparams.warmup_steps)
  return horizon


def check_schedule(hparams, max_steps):
  """Raises ValueError for a schedule a run of max_steps cannot follow."""
  if hparams.cosine_decay:
    cosine_horizon(hparams, max_steps)


def _convert(text, kind):
  if kind is int:
    return int(text)
  if kind is float:
    value = float(text)
    if value != value or value in (float('inf'), float('-inf')):
      raise ValueError
    return value
  return text


def _kinds():
  defaults = HParams()
  return {f.name: type(getattr(defaults, f.name))
          for f in dataclasses.fields(HParams)}


def parse_overrides(flag_string):
  """{name: value} of a 'name=value,name=value' string, each value typed by
  its default's type. Raises ValueError naming an unknown name or a value
  that does not parse."""
  kinds = _kinds()
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
  return overrides


def parse_hparams(flag_string=''):
  """Returns HParams with the overrides in 'name=value,name=value' applied
  to the defaults. Raises ValueError naming an unknown name, a value that
  does not parse or a value out of its range."""
  hparams = dataclasses.replace(HParams(), **parse_overrides(flag_string))
  param_checks.check(hparams)
  return hparams


def to_json(model_name, hparams):
  """A run's record: its model and every hparam, as JSON text."""
  return json.dumps({'model': model_name,
                     'hparams': dataclasses.asdict(hparams)}, sort_keys=True)


def from_json(text):
  """(model name, {hparam: value}) of a record from to_json. Hparams the
  record lacks (added since) keep their defaults; unknown ones are ignored."""
  record = json.loads(text)
  kinds = _kinds()
  values = {name: kinds[name](value)
            for name, value in record['hparams'].items() if name in kinds}
  return record['model'], values


def describe(hparams):
  """'name=value,...' of the hparams that differ from the defaults."""
  defaults = HParams()
  return ','.join('%s=%s' % (f.name, getattr(hparams, f.name))
                  for f in dataclasses.fields(HParams)
                  if getattr(hparams, f.name) != getattr(defaults, f.name))


def merge(recorded, flag_string, source, fixed=MODEL_DEFINING,
          made='trained'):
  """HParams for a run on a checkpoint whose record holds `recorded`
  ({hparam: value}, from from_json): the recorded values with the explicit
  --hparams overrides applied. An override of a `fixed` hparam (those the
  source was `made` with and keeps) with another value than the recorded
  one raises ValueError naming both."""
  overrides = parse_overrides(flag_string)
  for name, value in overrides.items():
    if name in fixed and name in recorded and recorded[name] != value:
      raise ValueError('hparam %s=%s contradicts %s, %s with %s=%s' % (
          name, value, source, made, name, recorded[name]))
  hparams = dataclasses.replace(HParams(), **dict(recorded, **overrides))
  param_checks.check(hparams)
  return hparams
