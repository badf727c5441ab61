"""The opt-in improvements: the PCEN front end against a NumPy reading of the
paper's equations, SpecAugment's and mixup's statistics, the width
multiplier's sizes, and what they refuse."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import stats  # noqa: E402

from tagger.training import augment  # noqa: E402
from tagger.sound import features  # noqa: E402
from tagger.core import params  # noqa: E402

from conftest import FEW_BN_BATCHES, run_main, train_args  # noqa: E402
from support.cli import assert_one_error  # noqa: E402


# --- PCEN --------------------------------------------------------------------

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
  import inputs
  from tools import make_demo_data
  samples = np.random.default_rng(2).uniform(-0.5, 0.5, 2 * 44100 + 5000)
  make_demo_data.write_wav(str(tmp_path / 'c.wav'), samples)
  logmel = inputs.clip_to_log_mel_examples(
      'c.wav', str(tmp_path), params.parse_hparams()).numpy()
  energies = inputs.clip_to_log_mel_examples(
      'c.wav', str(tmp_path), params.parse_hparams('frontend=pcen')).numpy()
  real = logmel != 0
  np.testing.assert_allclose(energies[real], np.exp(logmel[real]) - 0.001,
                             rtol=1e-4, atol=1e-5)
  assert np.all(energies[~real] == 0)


# --- SpecAugment -------------------------------------------------------------

def _mask_runs(masked):
  """Start and width of the one run of True in each row (width 0: none)."""
  widths = masked.sum(axis=1)
  starts = np.where(widths > 0, masked.argmax(axis=1), -1)
  for row, start, width in zip(masked, starts, widths):
    if width:
      assert row[start:start + width].all()  # one contiguous run
  return starts, widths


@pytest.mark.parametrize('axis', ['freq', 'time'])
def test_spec_augment_mask_widths_and_positions(axis):
  max_width = 10
  hparams = params.parse_hparams('specaug_%s_masks=1,specaug_%s_width=%d' % (
      axis, axis, max_width))
  rng = np.random.default_rng(3)
  examples = rng.normal(0, 1, (4000, 100, 96)).astype(np.float32)
  got = augment.spec_augment(tf.constant(examples), hparams).numpy()
  mean = examples.mean(axis=(1, 2), keepdims=True)
  changed = got != examples
  # Masked cells hold the example's mean; a mask spans whole bands (frames).
  np.testing.assert_allclose(np.where(changed, got, mean), np.broadcast_to(
      mean, got.shape), rtol=1e-5, atol=1e-6)
  along = changed.any(axis=1) if axis == 'freq' else changed.any(axis=2)
  other = changed.all(axis=1) if axis == 'freq' else changed.all(axis=2)
  np.testing.assert_array_equal(along, other)
  starts, widths = _mask_runs(along)
  length = 96 if axis == 'freq' else 100
  # Widths uniform on 0..max_width (chi-square), masks inside the example.
  counts = np.bincount(widths, minlength=max_width + 1)
  assert len(counts) == max_width + 1
  assert stats.chisquare(counts).pvalue > 1e-3
  assert np.all(starts[widths > 0] + widths[widths > 0] <= length)
  # Starts uniform where the mask fits: for width 5, 0..length-5.
  fives = starts[widths == 5]
  assert fives.min() >= 0 and fives.max() <= length - 5
  assert abs(fives.mean() - (length - 5) / 2) < 6


@pytest.mark.parametrize('axis', ['freq', 'time'])
def test_spec_augment_masks_start_anywhere_they_fit(axis):
  """On a short axis, over many draws: every width from 0 to the largest
  occurs, and for each width every start from the first band (frame) to
  the last where the mask fits, the last band (frame) included, evenly;
  no mask runs past the end."""
  max_width, frames, bands = 3, 12, 8
  length = bands if axis == 'freq' else frames
  hparams = params.parse_hparams('specaug_%s_masks=1,specaug_%s_width=%d' % (
      axis, axis, max_width))
  examples = np.random.default_rng(5).normal(
      size=(20000, frames, bands)).astype(np.float32)
  tf.random.set_seed(5)
  changed = augment.spec_augment(tf.constant(examples), hparams).numpy() \
      != examples
  starts, widths = _mask_runs(changed.all(axis=1) if axis == 'freq'
                              else changed.all(axis=2))
  assert sorted(set(widths)) == list(range(max_width + 1))
  for width in range(1, max_width + 1):
    counts = np.bincount(starts[widths == width])
    assert len(counts) == length - width + 1, width  # none beyond the last
    assert counts.min() > 0, width
    assert stats.chisquare(counts).pvalue > 1e-3, (width, counts)


def test_spec_augment_counts_both_axes():
  # Two frequency masks of at most 40 bands never cover all 96, so a frame
  # changed in every band could only come from a time mask.
  hparams = params.parse_hparams('specaug_freq_masks=2,specaug_freq_width=40,'
                                 'specaug_time_masks=3,specaug_time_width=0')
  examples = np.random.default_rng(4).normal(size=(200, 100, 96)).astype(
      np.float32)
  tf.random.set_seed(4)
  got = augment.spec_augment(tf.constant(examples), hparams).numpy()
  changed = got != examples
  # Time masks of width 0 change nothing; the frequency masks do (both of
  # width 0 has probability 1/41**2).
  assert not changed.all(axis=2).any()
  assert changed.all(axis=1).any(axis=1).mean() > 0.95
  assert changed.all(axis=1).sum(axis=1).max() <= 80


@pytest.mark.parametrize('text, axis', [
    ('specaug_time_masks=2,specaug_time_width=30', 2),
    ('specaug_freq_masks=2,specaug_freq_width=20', 1),
    ('mixup=0.4', None), ('', None)])
def test_the_step_augments_with_either_kind_of_mask_alone(text, axis):
  """augment.make gives the step's augmentation for time masks alone,
  frequency masks alone or mixup alone (whole frames, or whole bands,
  masked: all of an example's bands at once, or all frames); none without
  any of them."""
  hparams = params.parse_hparams(text)
  made = augment.make(hparams)
  if not text:
    assert made is None
    return
  rng = np.random.default_rng(5)
  examples = rng.normal(size=(50, 100, 96)).astype(np.float32)
  labels = (rng.random((50, 80)) < 0.1).astype(np.float32)
  tf.random.set_seed(5)
  got, got_labels = (t.numpy() for t in made(tf.constant(examples),
                                             tf.constant(labels)))
  changed = got != examples
  if axis is None:  # mixup: examples and labels mixed
    assert changed.any() and (got_labels != labels).any()
    return
  np.testing.assert_array_equal(got_labels, labels)
  assert changed.mean() > 0.01
  # A time mask covers every band of its frames; a frequency mask every
  # frame of its bands.
  assert np.array_equal(changed, changed.all(axis=axis, keepdims=True)
                        & np.ones_like(changed))


# --- mixup -------------------------------------------------------------------

def test_mixup_weights_partners_and_labels():
  alpha = 0.4
  batch, classes = 32, 80
  weights, partners_ok = [], []
  for seed in range(60):
    tf.random.set_seed(seed)
    # Example i is one-hot at cell i; its label one-hot at class i.
    examples = np.zeros((batch, 100, 96), np.float32)
    examples[np.arange(batch), 0, np.arange(batch)] = 1.0
    labels = np.eye(batch, classes, dtype=np.float32)
    mixed, mixed_labels = augment.mixup(tf.constant(examples),
                                        tf.constant(labels), alpha)
    mixed = mixed.numpy()[:, 0, :batch]
    mixed_labels = mixed_labels.numpy()[:, :batch]
    # The same weights and partner for example and labels.
    np.testing.assert_allclose(mixed, mixed_labels, atol=1e-6)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
    own = mixed[np.arange(batch), np.arange(batch)]
    others = mixed.copy()
    others[np.arange(batch), np.arange(batch)] = 0
    partner = np.where(others.max(axis=1) > 0, others.argmax(axis=1),
                       np.arange(batch))
    # Each example is someone's partner once: a permutation.
    partners_ok.append(sorted(partner) == list(range(batch)))
    single = partner != np.arange(batch)
    weights.extend(own[single])
  assert all(partners_ok)
  weights = np.array(weights)
  assert stats.kstest(weights, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
  assert abs(weights.mean() - 0.5) < 0.03


# Large initial weights: the first loss then depends clearly on the inputs.
# Seeded: an unlucky draw of the masks and mixup partners (e.g. partners
# with the same labels) would leave nothing for the assertions to tell.
AUGMENTED = ('batch_size=4,lr=0.001,crnn_filters=4,crnn_dropout=0,'
             'crnn_bndecay=0.9,weights_init_stddev=0.3,'
             'specaug_time_masks=2,specaug_time_width=40,'
             'specaug_freq_masks=2,specaug_freq_width=30,mixup=0.4,seed=2,'
             + FEW_BN_BATCHES)


@pytest.fixture(scope='module')
def augmented_run(tmp_path_factory, dataset):
  """One training step with SpecAugment and mixup, the augmentation's
  inputs and outputs captured in variables as the step computes them."""
  import inputs
  import contextlib
  import io
  import train
  from conftest import read_class_names
  seen = {name: tf.Variable(tf.zeros(shape)) for name, shape in (
      ('pipeline', [4, 100, 96]), ('masked', [4, 100, 96]),
      ('mixed', [4, 100, 96]), ('labels', [4, 80]),
      ('mixed_labels', [4, 80]))}
  real_masks, real_mixup = augment.spec_augment, augment.mixup

  def spec_augment(examples, hparams):
    masked = real_masks(examples, hparams)
    seen['pipeline'].assign(examples)
    seen['masked'].assign(masked)
    return masked

  def mixup(examples, labels, alpha):
    mixed, mixed_labels = real_mixup(examples, labels, alpha)
    for name, value in (('mixed', mixed), ('labels', labels),
                        ('mixed_labels', mixed_labels)):
      seen[name].assign(value)
    return mixed, mixed_labels

  train_dir = str(tmp_path_factory.mktemp('augmented') / 'train')
  patch = pytest.MonkeyPatch()
  patch.setattr(augment, 'spec_augment', spec_augment)
  patch.setattr(augment, 'mixup', mixup)
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      train.train('crnn', params.parse_hparams(AUGMENTED),
                  read_class_names(), [inputs.Source(
                      dataset['train_csv'], dataset['train_clip_dir'])],
                  train_dir, max_steps=1)
  finally:
    patch.undo()
  return {'train_dir': train_dir, 'out': out.getvalue(),
          'seen': {k: v.numpy() for k, v in seen.items()}}


def test_the_training_step_trains_on_augmented_examples(augmented_run):
  """The step's loss is the loss of the masked and mixed batch under the
  step-0 weights (a plain model of stock layers), not of the pipeline's."""
  import re
  from conftest import load_model_from_checkpoint
  seen = augmented_run['seen']
  pipeline, masked = seen['pipeline'], seen['masked']
  assert np.abs(pipeline).max() > 1
  changed = pipeline != masked
  assert 0.05 < changed.mean() < 0.9
  # A masked value is its example's mean; the rest is the pipeline's.
  means = pipeline.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(masked[changed],
                             np.broadcast_to(means, masked.shape)[changed],
                             rtol=1e-5)
  assert not np.array_equal(seen['mixed'], masked)
  assert set(np.unique(seen['labels'])) <= {0.0, 1.0}
  assert len(np.unique(seen['mixed_labels'])) > 2
  hparams = params.parse_hparams(AUGMENTED)
  net = load_model_from_checkpoint(
      'crnn', hparams, os.path.join(augmented_run['train_dir'],
                                    'model.ckpt-0'))
  logits = net(seen['mixed'], training=True)
  expected = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
      labels=seen['mixed_labels'], logits=logits))
  (loss,) = re.findall(r'^step 1 loss (\S+) ', augmented_run['out'], re.M)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  plain = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
      labels=seen['labels'], logits=net(pipeline, training=True)))
  assert abs(float(plain) - float(expected)) > 1e-3  # 100x the match


def test_scoring_ignores_the_training_augmentation(augmented_run, dataset):
  """A model trained with masks and mixup is scored on the examples as
  they are: the engine's scores equal a plain model's on NumPy features."""
  from tagger.core import files
  from tagger.engines import scoring
  from conftest import independent_clip_scores
  prefix = os.path.join(augmented_run['train_dir'], 'model.ckpt-1')
  hparams = params.parse_hparams(AUGMENTED)
  fnames = sorted(os.listdir(dataset['test_clip_dir']))
  paths = [os.path.join(dataset['test_clip_dir'], f) for f in fnames]
  scorer = scoring.Scorer('crnn', 80, hparams)
  scorer.load(prefix)
  got = scorer.score(paths, files.check_clips(paths))
  expected = independent_clip_scores('crnn', hparams, prefix,
                                     dataset['test_clip_dir'], fnames)
  np.testing.assert_allclose(got, expected, atol=1e-5)


# --- SpecAugment after PCEN --------------------------------------------------

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


def test_mixup_is_refused_with_mfom():
  with pytest.raises(ValueError, match='mixup=0.2.*loss=bce'):
    params.parse_hparams('mixup=0.2,loss=mfom_microf1')


# --- width multiplier --------------------------------------------------------

TABLE = [(1, 16, 'conv'), (1, 64, 'sep'), (2, 128, 'sep'), (1, 128, 'sep'),
         (2, 256, 'sep'), (1, 256, 'sep'), (2, 512, 'sep')] + [
             (1, 512, 'sep')] * 5 + [(2, 1024, 'sep'), (1, 1024, 'sep')]


def counts(width, classes=80):
  """Kernel weights and multiplies of MobileNet v1 at a width multiplier,
  from the layer table (depths int(d * width), at least 8)."""
  h, w, cin = 100, 96, 1
  weights = multiplies = 0
  for stride, depth, kind in TABLE:
    depth = max(8, int(depth * width))
    h, w = -(-h // stride), -(-w // stride)
    if kind == 'conv':
      weights += 9 * cin * depth
      multiplies += h * w * 9 * cin * depth
    else:
      weights += 9 * cin + cin * depth
      multiplies += h * w * (9 * cin + cin * depth)
    cin = depth
  return weights + cin * classes, multiplies + cin * classes


@pytest.mark.parametrize('width', [0.5, 1.0, 2.0])
def test_width_multiplier_sizes(width):
  import model
  net = model.build_model('mobilenet-v1', 80, params.parse_hparams(
      'width=%s' % width))
  kernels = sum(int(np.prod(v.shape)) for v in net.weights
                if v.path.endswith('/kernel'))
  weights, _ = counts(width)
  assert kernels == weights
  if width == 1.0:
    assert weights == 3265120  # the baseline's table


def test_width_multiplier_readme_figures():
  assert counts(0.5) == (847920, 111494656)
  assert counts(2.0) == (12807360, 1702303744)


def test_warm_start_between_widths_is_refused(tmp_path, dataset,
                                              mobilenet_train):
  """The shared run has the default width, 1.0."""
  assert_one_error(run_main(train_args(
      'mobilenet-v1', dataset['train_clip_dir'], dataset['train_csv'],
      str(tmp_path / 'half'), 1,
      hparams='batch_size=4,width=0.5,warmstart=1',
      extra=['--warmstart_checkpoint', mobilenet_train['checkpoint']])),
                   '--warmstart_checkpoint', 'width=1.0', 'not 0.5')

