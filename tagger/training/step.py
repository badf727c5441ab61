"""The training step: the loss of each source, the optimizer and its
learning-rate schedule, and one compiled step (train.py runs it)."""

import dataclasses

import keras
import tensorflow as tf

from tagger.training import mfom
from tagger.training import noisy_labels
from tagger.core import params
from tagger.core.files import UserError


def make_loss(hparams, num_classes):
  """Returns (loss_fn(labels, logits) -> scalar, training-only head layer or
  None). The head holds the MFoM layers' alpha and beta."""
  if hparams.loss == 'bce':
    def bce(labels, logits):
      # Label smoothing toward 0.5, as in the original.
      labels = labels * (1.0 - hparams.lsmooth) + 0.5 * hparams.lsmooth
      return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
          labels=labels, logits=logits))
    return bce, None
  if hparams.loss == 'mfom_eer_embed':
    return (lambda labels, logits: mfom.mfom_eer_embed(
        labels, tf.sigmoid(logits))), None
  head = mfom.MFoMObjective(hparams.loss, name='mfom')
  zeros = tf.zeros([1, num_classes])
  head(zeros, zeros)  # creates alpha and beta under the 'mfom/' scope
  return (lambda labels, logits: head(labels, tf.sigmoid(logits))), head


def make_sources_loss(hparams):
  """The loss of a run with a noisy source: labels are (multi-hot labels,
  1.0 for an example of a noisy source); each example's loss is the
  configured BCE (with lsmooth) or, for a noisy one, noisy_loss; the batch's
  loss is their mean. (No head: the MFoM objectives are refused with
  several sources.)"""
  noisy_loss = noisy_labels.make_noisy_loss(hparams)

  def loss(labels, logits):
    multi_hot, noisy = labels
    curated = noisy_labels.bce(multi_hot, logits, hparams.lsmooth)
    return tf.reduce_mean(tf.where(noisy > 0, noisy_loss(multi_hot, logits),
                                   curated))
  return loss, None


def learning_rate(hparams, epoch_num_batches, max_steps=None):
  """The learning rate or its schedule: constant; the original's staircase
  decay every decay_epochs epochs; Keras 2's inverse-time decay; or a linear
  warm-up from 0 over warmup_steps, then (cosine_decay=1) a cosine decay to
  lr_floor x lr at decay_horizon (default: max_steps)."""
  if hparams.lrdecay > 0:
    return keras.optimizers.schedules.ExponentialDecay(
        hparams.lr, decay_steps=max(1, int(epoch_num_batches *
                                           hparams.decay_epochs)),
        decay_rate=hparams.lrdecay, staircase=True)
  if hparams.inverse_time_decay > 0:
    # Keras 2's `decay`: lr / (1 + decay * iterations), every step.
    return keras.optimizers.schedules.InverseTimeDecay(
        hparams.lr, decay_steps=1, decay_rate=hparams.inverse_time_decay)
  if not (hparams.cosine_decay or hparams.warmup_steps):
    return hparams.lr
  warmup = hparams.warmup_steps
  decay_steps, floor = 1, 1.0  # warm-up alone: then the constant lr
  if hparams.cosine_decay:
    decay_steps = _cosine_horizon(hparams, max_steps) - warmup
    floor = hparams.lr_floor
  return keras.optimizers.schedules.CosineDecay(
      0.0 if warmup else hparams.lr, decay_steps, alpha=floor,
      warmup_target=hparams.lr if warmup else None, warmup_steps=warmup)


def _cosine_horizon(hparams, max_steps):
  try:
    return params.cosine_horizon(hparams, max_steps)
  except ValueError as e:
    raise UserError(str(e)) from None


def with_horizon(hparams, max_steps):
  """The hparams with cosine_decay's horizon in decay_horizon (the given
  one, else max_steps), so that the run records it: resumed with another
  --max_steps, the run still knows its schedule (main.py refuses another
  horizon rather than re-basing the decay on the steps taken)."""
  if not hparams.cosine_decay or hparams.decay_horizon:
    return hparams
  return dataclasses.replace(hparams, decay_horizon=_cosine_horizon(
      hparams, max_steps))


def make_optimizer(hparams, epoch_num_batches, max_steps=None):
  rate = learning_rate(hparams, epoch_num_batches, max_steps)
  if hparams.opt == 'sgd':
    return keras.optimizers.SGD(rate, momentum=hparams.momentum,
                                nesterov=bool(hparams.nesterov))
  return keras.optimizers.Adam(rate, epsilon=hparams.adam_eps)


def _replica_gradients(model, loss_fn, variables, optimizer, replicas,
                       augment):
  """One replica's part of the step: (examples, labels) -> (its loss, its
  gradients, 1 where its loss or gradients are not finite)."""
  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

  def replica_gradients(examples, labels):
    if augment is not None:
      examples, labels = augment(examples, labels)
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(examples, training=True))
      # Gradients are summed over replicas: each contributes its share of
      # the mean over the whole batch.
      scaled = loss / replicas
      if loss_scaling:
        scaled = optimizer.scale_loss(scaled)
    gradients = tape.gradient(scaled, variables)
    finite = tf.math.is_finite(loss)
    if not loss_scaling:
      # (With float16 loss scaling, overflowing gradients are expected now
      # and then: the optimizer skips the update and lowers the scale.)
      finite &= tf.math.is_finite(tf.linalg.global_norm(gradients))
    return loss, gradients, tf.cast(~finite, tf.int32)

  return replica_gradients


def make_train_step(model, loss_fn, variables, optimizer, step,
                    strategy=None, augment=None, after_apply=None):
  """The training step: (examples, labels) -> (loss, finite). Under a
  distribution strategy, examples and labels are a distributed batch (a
  replica's share each); loss is the mean over the whole batch, and finite
  whether every replica's loss and gradients were. augment (from
  augment.make) transforms each replica's examples and labels first;
  after_apply() runs after each applied update (the weight average)."""
  strategy = strategy or tf.distribute.get_strategy()
  replica_gradients = _replica_gradients(
      model, loss_fn, variables, optimizer, strategy.num_replicas_in_sync,
      augment)

  def replica_apply(gradients):
    # Copies made on this replica's device: a multi-worker strategy's
    # all-reduce needs tensors placed on one.
    gradients = [tf.identity(g) for g in gradients]
    optimizer.apply_gradients(zip(gradients, variables))
    if after_apply is not None:
      after_apply()
    step.assign_add(1)

  # autograph=False (here and at every tf.function of the project): no
  # Python control flow on tensors inside, so AutoGraph's conversion would
  # only add start-up time (~1 s of a short training run's 8).
  @tf.function(autograph=False)
  def forward_backward(examples, labels):
    loss, gradients, bad = strategy.run(replica_gradients,
                                        args=(examples, labels))
    sum_ = tf.distribute.ReduceOp.SUM
    return (strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None),
            gradients, strategy.reduce(sum_, bad, axis=None) == 0)

  @tf.function(autograph=False)
  def apply(gradients):
    strategy.run(replica_apply, args=(gradients,))

  def train_step(examples, labels):
    loss, gradients, finite = forward_backward(examples, labels)
    # A non-finite step is not applied, so the weights stay those of the last
    # good step and no NaN ever reaches a checkpoint. (The decision is taken
    # here, between two compiled functions, because a distribution strategy
    # cannot branch around the optimizer's cross-replica update inside one.)
    if finite:
      apply(gradients)
    return loss, finite

  return train_step
