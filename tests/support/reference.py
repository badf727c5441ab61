"""Independent NumPy references shared by the tests: the baseline's log-mel
features (parametrised by hparams), a brute-force EER, the MFoM formulas and
the Adam / SGD update rules.

Nothing here imports the project's code: each function is written from the
README's definitions, so that a test comparing the code against it fails when
the code's behaviour moves.
"""

import math
import types
import wave

import numpy as np

SR = 44100

# The README's feature definition ("Features" and the hyperparameter table),
# written out here rather than read from params.py, so that a moved default
# fails the comparisons.
README_DEFAULTS = types.SimpleNamespace(
    stft_window_seconds=0.025, stft_hop_seconds=0.010, mel_bands=96,
    mel_min_hz=20, mel_max_hz=20000, mel_log_offset=0.001,
    example_window_seconds=1.0, example_hop_seconds=0.5)


# ------------------------------------------------------------------ features


def read_wav_samples(path):
  """A 16-bit mono WAV file as float64 samples in [-1, 1) (int16 / 32768)."""
  with wave.open(str(path), 'rb') as w:
    assert w.getframerate() == SR and w.getnchannels() == 1
    assert w.getsampwidth() == 2
    data = w.readframes(w.getnframes())
  return np.frombuffer(data, dtype='<i2').astype(np.float64) / 32768.0


def stft_window(hparams):
  """STFT window in samples: round(44100 x seconds), e.g. 1102 for 25 ms."""
  return int(round(SR * hparams.stft_window_seconds))


def stft_hop(hparams):
  return int(round(SR * hparams.stft_hop_seconds))


def fft_length(hparams):
  """The next power of two at or above the window."""
  window = stft_window(hparams)
  n = 1
  while n < window:
    n *= 2
  return n


def example_window(hparams):
  """Frames of one example (1 s / 10 ms = 100 by default)."""
  return int(round(hparams.example_window_seconds / hparams.stft_hop_seconds))


def example_hop(hparams):
  return int(round(hparams.example_hop_seconds / hparams.stft_hop_seconds))


def np_mel_matrix(hparams):
  """tf.signal.linear_to_mel_weight_matrix's definition, in float64 NumPy:
  HTK mel scale, triangles between equally spaced mel edges, no DC."""
  num_bins = fft_length(hparams) // 2 + 1
  bands = hparams.mel_bands

  def hz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)

  bin_mel = hz_to_mel(np.linspace(0.0, SR / 2.0, num_bins))[:, None]
  edges = np.linspace(hz_to_mel(float(hparams.mel_min_hz)),
                      hz_to_mel(float(hparams.mel_max_hz)), bands + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  lower_slope = (bin_mel - lower) / (center - lower)
  upper_slope = (upper - bin_mel) / (upper - center)
  weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
  weights[0, :] = 0.0  # the DC bin contributes nothing
  return weights


def np_num_frames(num_samples, hparams):
  window, hop = stft_window(hparams), stft_hop(hparams)
  num_samples = max(num_samples, window)  # a short clip is padded to a window
  return 1 + (num_samples - window) // hop


def np_num_examples(num_samples, hparams):
  return -(-np_num_frames(num_samples, hparams) // example_hop(hparams))


def np_log_mel(samples, hparams):
  """[frames, bands] float64 log(mel + offset) of the STFT magnitude with a
  periodic Hann window."""
  window, hop, fft = stft_window(hparams), stft_hop(hparams), \
      fft_length(hparams)
  samples = np.asarray(samples, np.float64)
  if len(samples) < window:
    samples = np.pad(samples, (0, window - len(samples)))
  n = np.arange(window)
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / window)  # periodic Hann
  num_frames = np_num_frames(len(samples), hparams)
  index = hop * np.arange(num_frames)[:, None] + n[None, :]
  magnitude = np.abs(np.fft.rfft(samples[index] * hann, n=fft, axis=1))
  return np.log(magnitude @ np_mel_matrix(hparams) + hparams.mel_log_offset)


def np_examples(samples, hparams):
  """[examples, example_window, bands]: the log mel framed with the example
  hop, the end padded with zeros (in log-mel space)."""
  log_mel = np_log_mel(samples, hparams)
  num_frames, bands = log_mel.shape
  window, hop = example_window(hparams), example_hop(hparams)
  count = -(-num_frames // hop)
  padded = np.zeros((count * hop + window, bands))
  padded[:num_frames] = log_mel
  return np.stack([padded[i * hop:i * hop + window] for i in range(count)])


def np_clip_examples(path, hparams):
  return np_examples(read_wav_samples(path), hparams)


# ------------------------------------------------------------------- metrics


def brute_force_eer(truth, scores):
  """Sweep thresholds from high to low (positive = score >= threshold),
  starting above every score, and interpolate where FNR - FPR first drops
  to zero or below. None without positives or negatives."""
  truth = np.asarray(truth) > 0
  if truth.all() or not truth.any():
    return None
  scores = np.asarray(scores, np.float64)
  thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
  fpr = np.array([np.mean(scores[~truth] >= t) for t in thresholds])
  fnr = np.array([np.mean(scores[truth] < t) for t in thresholds])
  gap = fnr - fpr
  for i in range(len(gap)):
    if gap[i] == 0:
      return fpr[i]
    if gap[i] < 0:
      # Linear interpolation of both rates between points i-1 and i.
      t = gap[i - 1] / (gap[i - 1] - gap[i])
      return fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
  raise AssertionError('unreachable')


def eer_bounds(truth, scores, delta):
  """(lowest, highest) EER over every way of ordering the positive/negative
  pairs whose scores are within delta of each other: raising every positive
  by delta can only lower the EER, lowering it can only raise it. Equal
  bounds when no pair is that close."""
  truth = np.asarray(truth) > 0
  scores = np.asarray(scores, np.float64)
  return (brute_force_eer(truth, scores + delta * truth),
          brute_force_eer(truth, scores - delta * truth))


def np_micro_f1(truth, predicted):
  truth = np.asarray(truth) > 0
  predicted = np.asarray(predicted) > 0
  tp = np.sum(truth & predicted)
  return 2.0 * tp / (truth.sum() + predicted.sum())


# ---------------------------------------------------------------------- MFoM

MFOM_EPS = 1e-7


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_d(y, s):
  """Units-vs-zeros misclassification measure, row by row."""
  y = np.asarray(y, np.float64)
  s = np.clip(np.asarray(s, np.float64), MFOM_EPS, 1 - MFOM_EPS)
  d = np.zeros_like(s)
  for r in range(len(s)):
    pos, neg = y[r] == 1, y[r] == 0
    lme_pos = np.log(np.mean(np.exp(s[r, pos])))
    lme_neg = np.log(np.mean(np.exp(s[r, neg])))
    d[r] = -s[r] + (1 - y[r]) * lme_pos + y[r] * lme_neg
  return d


def np_l(y, s, alpha=1.0, beta=0.0):
  return np_sigmoid(alpha * np_d(y, s) + beta)


def np_rates(y, l):
  fnr = np.sum(l * y) / np.sum(y)
  fpr = np.sum((1 - l) * (1 - y)) / np.sum(1 - y)
  return fnr, fpr


def np_eer_normalized(y, l):
  fnr, fpr = np_rates(y, l)
  return fpr + 4 * abs(fnr - fpr)


def np_cprim(y, l):
  fnr, fpr = np_rates(y, l)
  return 0.5 * fnr + 10 * fpr


def np_microf1(y, l):
  return 1 - 2 * np.sum((1 - l) * y) / np.sum((1 - l) + y)


def np_eer_embed(y, s):
  """README: l from alpha = 3, beta = 0 on the scores, applied twice more to
  1 - l; the loss is the cross-entropy of the scores against 1 - l,
  averaged over classes and then over rows (rows with both classes only)."""
  l = np_sigmoid(3 * np_d(y, s))
  for _ in range(2):
    l = np_sigmoid(3 * np_d(y, 1 - l))
  t = 1 - l
  s = np.clip(np.asarray(s, np.float64), MFOM_EPS, 1 - MFOM_EPS)
  bce = -(t * np.log(s) + (1 - t) * np.log(1 - s))
  return np.mean(np.mean(bce, axis=1))


# ---------------------------------------------------------------- optimizers


def np_adam(w, gradients, lr, eps, beta1=0.9, beta2=0.999):
  """Adam as Keras (and TF1) apply it: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),
  w -= lr_t m / (sqrt(v) + eps). Returns w after each gradient in turn."""
  w = np.asarray(w, np.float64).copy()
  m = np.zeros_like(w)
  v = np.zeros_like(w)
  out = []
  for t, g in enumerate(gradients, start=1):
    g = np.asarray(g, np.float64)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    lr_t = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    w = w - lr_t * m / (np.sqrt(v) + eps)
    out.append(w.copy())
  return out
