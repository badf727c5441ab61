"""The checks of an HParams: each value's choices, range or sign, the
combinations that do not go together, and the bounds of the feature
geometry. Plain Python, as params.py, whose parsers run them.
"""

from tagger.sound.wav import SAMPLE_RATE

LOSSES = ('bce', 'mfom_eer_embed', 'mfom_microf1', 'mfom_eer_normalized',
          'mfom_cprim')
NOISY_LOSSES = ('bce', 'lq', 'bootstrap_soft', 'bootstrap_hard')

_CHOICES = {
    'global_pool': ('mean', 'max'),
    'opt': ('adam', 'sgd'),
    'loss': LOSSES,
    'bn_stats': ('precise', 'moving'),
    'precision': ('float32', 'mixed_float16', 'mixed_bfloat16'),
    'frontend': ('logmel', 'pcen'),
    'noisy_loss': NOISY_LOSSES,
}
_UNIT_INTERVAL = ('dropout', 'lsmooth', 'bndecay', 'crnn_bndecay', 'momentum',
                  'lr_floor', 'noisy_lsmooth', 'bootstrap_soft_beta',
                  'bootstrap_hard_beta')
_POSITIVE = ('stft_window_seconds', 'stft_hop_seconds', 'mel_bands',
             'mel_log_offset', 'example_window_seconds', 'example_hop_seconds',
             'batch_size', 'lr', 'decay_epochs', 'crnn_filters',
             'bn_stats_batches', 'width', 'pcen_s', 'pcen_alpha',
             'pcen_delta', 'pcen_r', 'pcen_eps')

# Bounds of the feature geometry: beyond them a run would fail deep inside
# TensorFlow (or crash) instead of doing anything useful.
_STFT_WINDOW_SECONDS = (0.001, 1.0)
_MAX_EXAMPLE_WINDOW_SECONDS = 60.0


def _check_geometry(hparams):
  low, high = _STFT_WINDOW_SECONDS
  if not low <= hparams.stft_window_seconds <= high:
    raise ValueError('hparam stft_window_seconds=%s: must be between %s and '
                     '%s' % (hparams.stft_window_seconds, low, high))
  geometry = hparams.geometry
  window, hop, fft_length = geometry.window, geometry.hop, geometry.fft_length
  if not 1 <= hop <= window:
    raise ValueError('hparam stft_hop_seconds=%s: the hop must be between one '
                     'sample and the STFT window (%d samples)' % (
                         hparams.stft_hop_seconds, window))
  if hparams.mel_bands > fft_length // 2 + 1:
    raise ValueError('hparam mel_bands=%s: more bands than the STFT has '
                     'frequency bins (%d)' % (hparams.mel_bands,
                                              fft_length // 2 + 1))
  example_window, example_hop = (geometry.example_frames,
                                 geometry.example_hop_frames)
  if example_window < 1 or example_hop < 1:
    name = ('example_window_seconds' if example_window < 1 else
            'example_hop_seconds')
    raise ValueError('hparam %s=%s: shorter than one STFT hop (%s s)' % (
        name, getattr(hparams, name), hparams.stft_hop_seconds))
  if hparams.example_window_seconds > _MAX_EXAMPLE_WINDOW_SECONDS:
    raise ValueError('hparam example_window_seconds=%s: must be at most %s' % (
        hparams.example_window_seconds, _MAX_EXAMPLE_WINDOW_SECONDS))


def check(hparams):
  """Raises ValueError naming the first hparam out of its range, or the
  first combination that does not go together."""
  _check_values(hparams)
  _check_combinations(hparams)
  _check_geometry(hparams)


def _check_values(hparams):
  """Each hparam alone: its choices, range or sign."""
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
  for name in ('lrdecay', 'weights_init_stddev', 'inverse_time_decay'):
    if getattr(hparams, name) < 0:
      raise ValueError('hparam %s=%s: must not be negative' % (
          name, getattr(hparams, name)))


def _check_combinations(hparams):
  """Schedules, optimizers, losses and front ends that do not go together,
  then the rest of the single values."""
  if hparams.lrdecay > 0 and hparams.inverse_time_decay > 0:
    raise ValueError('hparams lrdecay and inverse_time_decay: choose one '
                     'learning-rate decay')
  if (hparams.cosine_decay or hparams.warmup_steps) and (
      hparams.lrdecay > 0 or hparams.inverse_time_decay > 0):
    raise ValueError('hparams warmup_steps and cosine_decay: not with '
                     'lrdecay or inverse_time_decay (choose one schedule)')
  for name in ('warmup_steps', 'decay_horizon'):
    if getattr(hparams, name) < 0:
      raise ValueError('hparam %s=%s: must not be negative' % (
          name, getattr(hparams, name)))
  if not 0.0 <= hparams.ema_decay < 1.0:
    raise ValueError('hparam ema_decay=%s: must be in [0, 1) (0 is off)' %
                     hparams.ema_decay)
  if hparams.opt != 'sgd' and (hparams.momentum or hparams.nesterov):
    raise ValueError('hparams momentum and nesterov apply to opt=sgd only')
  for name in ('specaug_freq_masks', 'specaug_freq_width',
               'specaug_time_masks', 'specaug_time_width', 'mixup'):
    if getattr(hparams, name) < 0:
      raise ValueError('hparam %s=%s: must not be negative' % (
          name, getattr(hparams, name)))
  if hparams.mixup > 0 and hparams.loss != 'bce':
    raise ValueError('hparam mixup=%s: mixed labels are not 0/1, which the '
                     'MFoM objectives need; use loss=bce' % hparams.mixup)
  if not 0.0 < hparams.lq_q <= 1.0:
    raise ValueError('hparam lq_q=%s: must be in (0, 1]' % hparams.lq_q)
  if hparams.noisy_lsmooth > 0 and hparams.noisy_loss != 'bce':
    raise ValueError('hparam noisy_lsmooth=%s: smooths noisy_loss=bce only'
                     % hparams.noisy_lsmooth)
  if not 0 <= hparams.seed < 2 ** 31:
    raise ValueError('hparam seed=%s: must be between 0 and 2**31 - 1' %
                     hparams.seed)
  if hparams.specaug_after_pcen and (hparams.frontend != 'pcen' or
                                     not hparams.has_masks):
    raise ValueError('hparam specaug_after_pcen=1: needs frontend=pcen and '
                     'specaug_freq_masks or specaug_time_masks')
  if hparams.pcen_s >= 1:
    raise ValueError('hparam pcen_s=%s: must be below 1' % hparams.pcen_s)
  for name in ('nesterov', 'bn_sync', 'bn', 'warmstart', 'pcen_trainable',
               'cosine_decay', 'score_averaged', 'specaug_after_pcen'):
    if getattr(hparams, name) not in (0, 1):
      raise ValueError('hparam %s=%s: must be 0 or 1' % (
          name, getattr(hparams, name)))
