"""The training-time augmentation (tagger/training/augment.py):
SpecAugment's masks and mixup's weights, partners and labels against their
distributions, the step's augmentation with either alone, a training step
that trains on the augmented examples, scoring that ignores them, and mixup
refused with the MFoM losses."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import stats  # noqa: E402

from tagger.training import augment  # noqa: E402
from tagger.core import params  # noqa: E402

from support.settings import FEW_BN_BATCHES


# --- SpecAugment ------------------------------------------------------------

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


# --- mixup ------------------------------------------------------------------

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
  from support.scores import read_class_names
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
  from support.scores import load_model_from_checkpoint
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
  from support.scores import independent_clip_scores
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


def test_mixup_is_refused_with_mfom():
  with pytest.raises(ValueError, match='mixup=0.2.*loss=bce'):
    params.parse_hparams('mixup=0.2,loss=mfom_microf1')
