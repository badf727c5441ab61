"""The fast paths give the plain paths' numbers.

Training: train.py's compiled step on the model of model.py matches a plain
Keras MobileNet of stock layers (tests/support/plain_models.py, its layer table
written out there) trained with a textbook step, loss for loss, from the
same weights on the same batches; afterwards their batch-norm moving
statistics and inference-mode outputs agree too.
Scoring: the folded-batch-norm engine matches the plain model's mean sigmoid
score per clip (on NumPy features).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from support.settings import REPO
from tagger.core import files  # noqa: E402
import inputs  # noqa: E402
from tools import make_demo_data  # noqa: E402
import model as model_lib  # noqa: E402
from tagger.core import params  # noqa: E402
from support import plain_models  # noqa: E402
from support.signals import pipeline_examples  # noqa: E402
from tagger.engines import scoring  # noqa: E402
import train  # noqa: E402

NUM_CLASSES = 80


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  return make_demo_data.make_dataset(
      str(tmp_path_factory.mktemp('equiv')), num_train=4, num_validation=0,
      num_test=5, min_seconds=0.3, max_seconds=3.0, seed=7)


def _same_start(hparams):
  ours = model_lib.build_model('mobilenet-v1', NUM_CLASSES, hparams)
  plain = plain_models.plain_mobilenet(NUM_CLASSES, hparams)
  # Matched by variable path: every weight of one is a weight of the other.
  plain_models.copy_weights(ours, plain)
  return ours, plain


def test_training_step_matches_plain_model(data):
  # The baseline's lr (1e-4) with adam_eps=1e-3 in both optimizers: with the
  # default 1e-8, Adam's first steps move a weight by about +-lr whatever
  # the size of its gradient, so float rounding in near-zero gradients
  # becomes lr-sized weight differences between the two models (scores then
  # differed by up to 7e-3 after 3 steps); a larger epsilon keeps updates of
  # tiny gradients proportional to them.
  hparams = params.parse_hparams('batch_size=4,bndecay=0.1,adam_eps=1e-3')
  class_names = files.read_class_map(os.path.join(
      REPO, 'class_map.csv'))
  batches = list(inputs.train_dataset(
      data['train_csv'], data['train_clip_dir'], class_names, hparams,
      num_clips=4).take(3))
  ours, plain = _same_start(hparams)

  loss_fn, _ = train.step_lib.make_loss(hparams, NUM_CLASSES)
  optimizer = train.step_lib.make_optimizer(hparams, 0)
  optimizer.build(ours.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  fast_step = train.step_lib.make_train_step(
      ours, loss_fn, ours.trainable_variables, optimizer, step)

  plain_optimizer = tf.keras.optimizers.Adam(1e-4, epsilon=1e-3)

  def plain_step(examples, labels):
    with tf.GradientTape() as tape:
      logits = plain(examples, training=True)
      loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
          labels=labels, logits=logits))
    grads = tape.gradient(loss, plain.trainable_variables)
    plain_optimizer.apply_gradients(zip(grads, plain.trainable_variables))
    return float(loss)

  for examples, labels in batches:
    fast_loss, finite = fast_step(examples, labels)
    assert bool(finite)
    np.testing.assert_allclose(float(fast_loss), plain_step(examples, labels),
                               rtol=1e-4)
  assert int(step) == 3

  _check_statistics_and_scores(ours, plain, batches)


def _check_statistics_and_scores(ours, plain, batches):
  """After the same steps: the moving statistics of both models, and the
  inference-mode scores that use them."""
  # Training-mode losses never see the moving statistics: compare them, and
  # the inference-mode outputs that use them. With bndecay=0.1, three steps
  # from 0 / 1 leave 0.001 of the initial values (0.729 if the decay were
  # used as 1 - decay), so the moving statistics are the batches' and the
  # inference-mode scores tell examples apart.
  ours_weights = plain_models.weights_by_path(ours)
  plain_weights = plain_models.weights_by_path(plain, project=True)
  moving = [p for p in ours_weights if p.endswith(('moving_mean',
                                                   'moving_variance'))]
  assert len(moving) == 2 * 27
  for path in moving:
    # Within 1% of the layer's largest statistic: rounding noise (below)
    # reaches the batch statistics of the deeper layers (measured up
    # to 0.2%); a decay used as 1 - decay would be off by ~70%.
    scale = max(np.abs(plain_weights[path]).max(), 0.01)
    np.testing.assert_allclose(ours_weights[path], plain_weights[path],
                               rtol=0, atol=1e-2 * scale, err_msg=path)
  conv0_mean = ours_weights['conv0/conv_bn/moving_mean']
  assert np.abs(conv0_mean).max() > 0.05  # moved away from the initial 0
  examples = tf.concat([e for e, _ in batches], 0)
  want = tf.sigmoid(plain(examples, training=False)).numpy()
  got = tf.sigmoid(ours(examples, training=False)).numpy()
  # Float rounding still differs between the two models (the losses above
  # agree to 1e-4): the scores differed by 4e-4 to 7e-4 in repeated runs.
  np.testing.assert_allclose(got, want, atol=5e-3, rtol=0)
  assert np.ptp(want, axis=0).max() > 0.05  # examples are told apart


@pytest.mark.parametrize('flags', ['', 'bneps=0.02,global_pool=max'])
def test_engine_matches_plain_model_per_clip(data, tmp_path, monkeypatch,
                                             flags):
  """The engine's folded model and batching across clips give each clip the
  plain model's mean score on the same (the pipeline's) examples; features
  are checked against NumPy in test_features.py (NumPy features would add
  their ~1e-5 differences, amplified by max pooling)."""
  monkeypatch.setattr(scoring, 'BATCH_SIZE', 5)  # batches span clips
  hparams = params.parse_hparams(flags)
  clip_dir = data['test_clip_dir']
  names = files.list_clips(clip_dir)
  examples = {n: pipeline_examples(n, clip_dir, hparams)
              for n in names}
  # Non-trivial batch-norm parameters and statistics, so that folding has
  # work to do and clips get different scores.
  plain = plain_models.calibrated(
      'mobilenet-v1', NUM_CLASSES, hparams,
      np.concatenate([examples[n] for n in names[:3]]),
      np.random.default_rng(0))
  ours = model_lib.build_model('mobilenet-v1', NUM_CLASSES, hparams)
  plain_models.copy_weights(plain, ours)
  # A checkpoint as training writes it: every weight under its variable path.
  prefix = tf.train.Checkpoint(
      weights={v.path: v for v in ours.weights}).write(
          str(tmp_path / 'model.ckpt-1'))

  paths = [os.path.join(clip_dir, n) for n in names]
  scorer = scoring.Scorer('mobilenet-v1', NUM_CLASSES, hparams)
  scorer.load(prefix)
  batched = scorer.score(paths, files.check_clips(paths))
  for name, row in zip(names, batched):
    expected = tf.reduce_mean(tf.sigmoid(plain(examples[name],
                                               training=False)), 0)
    np.testing.assert_allclose(row, expected.numpy(), atol=1e-5, rtol=0)
  assert np.ptp(batched, axis=0).max() > 1e-3
