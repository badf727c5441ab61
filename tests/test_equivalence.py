"""The fast paths give the plain paths' numbers.

Training: train.py's compiled step on the model of model.py matches a plain
Keras MobileNet of stock layers (benchmark.plain_mobilenet) trained with a
textbook step, loss for loss, from the same weights on the same batches.
Scoring: the folded-batch-norm engine matches the plain model's mean sigmoid
score per clip.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import benchmark  # noqa: E402
import checkpoints  # noqa: E402
import files  # noqa: E402
import inputs  # noqa: E402
import make_demo_data  # noqa: E402
import model as model_lib  # noqa: E402
import params  # noqa: E402
import scoring  # noqa: E402
import train  # noqa: E402

NUM_CLASSES = 80


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  return make_demo_data.make_dataset(
      str(tmp_path_factory.mktemp('equiv')), num_train=4, num_validation=0,
      num_test=5, min_seconds=0.3, max_seconds=3.0, seed=7)


def _same_start(hparams):
  ours = model_lib.build_model('mobilenet-v1', NUM_CLASSES, hparams)
  plain = benchmark.plain_mobilenet(NUM_CLASSES, hparams)
  # Both list their weights in layer order: kernel, then gamma, beta, moving
  # mean and variance, for each convolution; then the classifier.
  assert [w.shape for w in ours.weights] == [w.shape for w in plain.weights]
  plain.set_weights(ours.get_weights())
  return ours, plain


def test_training_step_matches_plain_model(data):
  # The baseline's default Adam (lr 1e-4): a large lr lets Adam's first steps
  # amplify float rounding in near-zero gradients.
  hparams = params.parse_hparams('batch_size=4,bndecay=0.9')
  class_names = files.read_class_map(os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      'class_map.csv'))
  batches = list(inputs.train_dataset(
      data['train_csv'], data['train_clip_dir'], class_names, hparams,
      num_clips=4).take(3))
  ours, plain = _same_start(hparams)

  loss_fn, _ = train.make_loss(hparams, NUM_CLASSES)
  optimizer = train.make_optimizer(hparams, 0)
  optimizer.build(ours.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  fast_step = train.make_train_step(ours, loss_fn, ours.trainable_variables,
                                    optimizer, step)

  plain_optimizer = tf.keras.optimizers.Adam(1e-4, epsilon=1e-8)

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


def test_engine_matches_plain_model_per_clip(data, tmp_path, monkeypatch):
  monkeypatch.setattr(scoring, 'BATCH_SIZE', 5)  # batches span clips
  hparams = params.parse_hparams()
  ours, plain = _same_start(hparams)
  # Non-trivial batch-norm statistics, so that folding has work to do.
  rng = np.random.default_rng(0)
  for v in ours.weights:
    if v.path.endswith(('moving_mean', 'beta')):
      v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
    elif v.path.endswith(('moving_variance', 'gamma')):
      v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
  plain.set_weights(ours.get_weights())
  prefix = tf.train.Checkpoint(
      weights=checkpoints.checkpoint_weights(ours)).write(
          str(tmp_path / 'model.ckpt-1'))

  clip_dir = data['test_clip_dir']
  names = files.list_wavs(clip_dir)
  paths = [os.path.join(clip_dir, n) for n in names]
  scorer = scoring.Scorer('mobilenet-v1', NUM_CLASSES, hparams)
  scorer.load(prefix)
  batched = scorer.score(paths, files.check_wavs(paths))
  for name, row in zip(names, batched):
    examples = inputs.clip_to_log_mel_examples(name, clip_dir, hparams)
    expected = tf.reduce_mean(tf.sigmoid(plain(examples, training=False)), 0)
    np.testing.assert_allclose(row, expected.numpy(), atol=1e-5)
