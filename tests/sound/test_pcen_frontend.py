"""The PCEN front end (frontend=pcen; features.PCEN) against a NumPy
reading of the paper's equations, with fixed and per-band trainable
parameters, on the mel energies the pipeline gives; and SpecAugment after
PCEN (specaug_after_pcen=1): masks set on PCEN's output in training, the
step left to mixup alone, and what the option needs."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tagger.training import augment  # noqa: E402
from tagger.sound import features  # noqa: E402
from tagger.core import params  # noqa: E402
from support.signals import pipeline_examples  # noqa: E402


# --- PCEN -------------------------------------------------------------------

def np_pcen(energies, s, alpha, delta, r, eps):
  """Wang et al. (2017), eq. 1-2, frame by frame, per example; the smoother
  starts from the example's first frame."""
  out = np.zeros_like(energies)
  for b, example in enumerate(energies):
    m = example[0]
    for t, e in enumerate(example):
      m = (1 - s) * m + s * e
      out[b, t] = (e / (eps + m) ** alpha + delta) ** r - delta ** r
  return out


@pytest.mark.parametrize('text', ['', 'pcen_s=0.1,pcen_alpha=0.8,'
                                  'pcen_delta=0.5,pcen_r=0.25,pcen_eps=1e-3'])
def test_pcen_matches_the_paper(text):
  hparams = params.parse_hparams('frontend=pcen,' + text)
  rng = np.random.default_rng(0)
  # Mel energies with loud and quiet stretches, as the pipeline gives.
  energies = rng.gamma(0.5, 2.0, (3, 100, 96)) * np.repeat(
      [1e-3, 1.0, 30.0, 0.01], 25)[None, :, None]
  layer = features.PCEN(hparams)
  got = layer(tf.constant(energies, tf.float32)).numpy()
  expected = np_pcen(energies, hparams.pcen_s, hparams.pcen_alpha,
                     hparams.pcen_delta, hparams.pcen_r, hparams.pcen_eps)
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_pcen_per_band_parameters_in_log_space():
  hparams = params.parse_hparams('frontend=pcen,pcen_trainable=1')
  rng = np.random.default_rng(1)
  energies = rng.gamma(0.5, 2.0, (2, 100, 96))
  layer = features.PCEN(hparams)
  layer(tf.constant(energies, tf.float32))
  alpha = rng.uniform(0.5, 1.0, 96)
  delta = rng.uniform(0.5, 3.0, 96)
  r = rng.uniform(0.2, 0.8, 96)
  layer.log_alpha.assign(np.log(alpha))
  layer.log_delta.assign(np.log(delta))
  layer.log_r.assign(np.log(r))
  assert len(layer.trainable_weights) == 3
  got = layer(tf.constant(energies, tf.float32)).numpy()
  expected = np_pcen(energies, 0.025, alpha, delta, r, 1e-6)
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
  fixed = features.PCEN(params.parse_hparams('frontend=pcen'))
  fixed(tf.constant(energies, tf.float32))
  assert not fixed.trainable_weights and len(fixed.weights) == 3


def test_pcen_pipeline_gives_mel_energies(tmp_path):
  """With frontend=pcen the pipeline's examples are the mel energies (the
  model compresses them): the exponential of the log-mel examples, less the
  offset, where the clip has frames; zero padding stays zero."""
  from tools import make_demo_data
  samples = np.random.default_rng(2).uniform(-0.5, 0.5, 2 * 44100 + 5000)
  make_demo_data.write_wav(str(tmp_path / 'c.wav'), samples)
  logmel = pipeline_examples('c.wav', str(tmp_path), params.parse_hparams())
  energies = pipeline_examples(
      'c.wav', str(tmp_path), params.parse_hparams('frontend=pcen'))
  real = logmel != 0
  np.testing.assert_allclose(energies[real], np.exp(logmel[real]) - 0.001,
                             rtol=1e-4, atol=1e-5)
  assert np.all(energies[~real] == 0)


# --- SpecAugment after PCEN -------------------------------------------------

AFTER_PCEN = ('frontend=pcen,specaug_time_masks=2,specaug_time_width=30,'
              'specaug_freq_masks=2,specaug_freq_width=20,'
              'specaug_after_pcen=1')


def test_masks_after_pcen_are_set_on_its_output():
  """In training, the model's features are PCEN of the energies as given
  (NumPy), with whole frames and whole bands set to the example's mean of
  them; in scoring, PCEN's output unmasked."""
  import keras
  import model
  hparams = params.parse_hparams(AFTER_PCEN + ',width=0.25')
  net = model.build_model('mobilenet-v1', 80, hparams)
  pcen = keras.Model(net.input, net.get_layer('pcen').output)
  masked = keras.Model(net.input, net.get_layer('specaug').output)
  rng = np.random.default_rng(6)
  energies = (rng.gamma(0.5, 2.0, (64, 100, 96)) * np.repeat(
      [1e-3, 1.0, 30.0, 0.01], 25)[None, :, None]).astype(np.float32)
  compressed = pcen(energies).numpy()
  np.testing.assert_allclose(compressed, np_pcen(
      energies, hparams.pcen_s, hparams.pcen_alpha, hparams.pcen_delta,
      hparams.pcen_r, hparams.pcen_eps), rtol=2e-4, atol=2e-5)
  np.testing.assert_array_equal(masked(energies, training=False).numpy(),
                                compressed)
  tf.random.set_seed(6)
  got = masked(energies, training=True).numpy()
  changed = got != compressed
  means = np.broadcast_to(compressed.mean(axis=(1, 2), keepdims=True),
                          got.shape)
  np.testing.assert_allclose(got[changed], means[changed], rtol=1e-5)
  frames, bands = changed.all(axis=2), changed.all(axis=1)
  np.testing.assert_array_equal(changed, frames[:, :, None] |
                                bands[:, None, :])
  assert frames.any(axis=1).mean() > 0.8 and bands.any(axis=1).mean() > 0.8
  assert frames.sum(axis=1).max() <= 60 and bands.sum(axis=1).max() <= 40


@pytest.mark.parametrize('text', ['', ',mixup=0.3'])
def test_masks_after_pcen_leave_the_step_to_mixup_alone(text):
  """The step's augmentation does not mask the energies again: mixup
  alone (the same draws as augment.mixup's), or nothing."""
  hparams = params.parse_hparams(AFTER_PCEN + text)
  made = augment.make(hparams)
  if not text:
    assert made is None
    return
  rng = np.random.default_rng(7)
  examples = tf.constant(rng.gamma(0.5, 2.0, (16, 100, 96)), tf.float32)
  labels = tf.constant((rng.random((16, 80)) < 0.1).astype(np.float32))
  tf.random.set_seed(7)
  got = [t.numpy() for t in made(examples, labels)]
  tf.random.set_seed(7)
  expected = [t.numpy() for t in augment.mixup(examples, labels, 0.3)]
  np.testing.assert_array_equal(got[0], expected[0])
  np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize('text', [
    'specaug_time_masks=2,specaug_time_width=30,specaug_after_pcen=1',
    'frontend=pcen,specaug_after_pcen=1',
    'frontend=pcen,specaug_freq_width=20,specaug_after_pcen=1'])
def test_masks_after_pcen_need_pcen_and_masks(text):
  with pytest.raises(ValueError, match='specaug_after_pcen=1: needs '
                     'frontend=pcen and specaug_freq_masks or '
                     'specaug_time_masks'):
    params.parse_hparams(text)


def test_masks_after_pcen_is_0_or_1():
  with pytest.raises(ValueError, match='specaug_after_pcen=2: must be 0 '
                     'or 1'):
    params.parse_hparams(AFTER_PCEN.replace('after_pcen=1', 'after_pcen=2'))
