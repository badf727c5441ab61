"""Training loop: one compiled step, checkpoints every 100 steps, resume,
warm start, TensorBoard summaries, and a clean stop on SIGINT / SIGTERM."""

import contextlib
import dataclasses
import datetime
import glob
import os
import random
import shutil
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from tagger.training import augment
from tagger.models import averaging
from tagger.models import batchnorm
from tagger.core import checkpoints
from tagger.training import distribution
from tagger.sound import features
import inputs
from tagger.training import mfom
import model as model_lib
from tagger.training import noisy_labels
from tagger.core import params
from tagger.core import files
from tagger.core import runtime
from tagger.core import stopping
from tagger.core.files import UserError

SUMMARY_EVERY = 10
# The original's limit when --max_steps is not given (here, so that a test
# can shorten it).
DEFAULT_EPOCHS = params.DEFAULT_EPOCHS
RECORD_FILE = 'hparams.json'  # the run's --model and hparams, in train_dir


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


def make_train_step(model, loss_fn, variables, optimizer, step,
                    strategy=None, augment=None, after_apply=None):
  """The training step: (examples, labels) -> (loss, finite). Under a
  distribution strategy, examples and labels are a distributed batch (a
  replica's share each); loss is the mean over the whole batch, and finite
  whether every replica's loss and gradients were. augment (from
  augment.make) transforms each replica's examples and labels first;
  after_apply() runs after each applied update (the weight average)."""
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
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

  def replica_apply(gradients):
    # Copies made on this replica's device: a multi-worker strategy's
    # all-reduce needs tensors placed on one.
    gradients = [tf.identity(g) for g in gradients]
    optimizer.apply_gradients(zip(gradients, variables))
    if after_apply is not None:
      after_apply()
    step.assign_add(1)

  @tf.function
  def forward_backward(examples, labels):
    loss, gradients, bad = strategy.run(replica_gradients,
                                        args=(examples, labels))
    sum_ = tf.distribute.ReduceOp.SUM
    return (strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None),
            gradients, strategy.reduce(sum_, bad, axis=None) == 0)

  @tf.function
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


def make_stop_agreement(strategy):
  """A function (stop wanted here) -> (stop wanted by any worker), so that
  the workers of a cluster stop at the same step; None on one worker."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return None

  @tf.function
  def agree(flag):
    wanted = strategy.run(lambda: tf.identity(flag))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, wanted, axis=None) > 0

  return lambda wanted: bool(agree(tf.constant(float(wanted))))


def warm_start(variables, checkpoint_path, include_scopes, exclude_scopes,
               aliases=None):
  """Loads the named trainable variables from another run's checkpoint.

  Includes are applied before excludes (see checkpoints.select, which also
  takes the architecture's aliases of scope names); variables the checkpoint
  lacks are left as initialised. Returns the restored names.
  """
  chosen = checkpoints.select(variables, include_scopes, exclude_scopes,
                              aliases)
  reader = checkpoints.open_checkpoint(checkpoint_path)
  restored = checkpoints.assign_from_checkpoint(chosen, reader,
                                                checkpoint_path,
                                                missing_ok=True)
  if not restored:
    raise UserError(
        '%s: no variable matched for warm start (include scopes: %s; exclude '
        'scopes: %s)' % (checkpoint_path, ','.join(include_scopes) or 'all',
                         ','.join(exclude_scopes) or 'none'))
  print('Warm-started %d variables from %s:' % (len(restored),
                                                 checkpoint_path))
  for name in restored:
    print('  ' + name)
  return restored


def device_features(hparams):
  """With --features_on device, the step's inputs are (16-bit crops, frame
  counts) batches: this makes the examples from them on the device."""
  def examples(batch):
    crops, frames = batch
    return features.crops_to_examples(inputs.to_float(crops), frames,
                                      hparams)
  return examples


def _chain(first, then):
  """The step's per-replica preparation: first(examples) (None: as they
  are), then then(examples, labels) (None: as they are)."""
  if first is None:
    return then
  if then is None:
    return lambda examples, labels: (first(examples), labels)
  return lambda examples, labels: then(first(examples), labels)


def _first_share(batch):
  """A distributed batch's first replica's share (the batch itself on one
  device)."""
  return tf.nest.map_structure(
      lambda t: t.values[0] if hasattr(t, 'values') else t, batch)


def _log_mel_images(examples, step, count=3):
  """The first examples of a run's first batch as TensorBoard images (what
  the model sees): frequency upwards, time to the right, each scaled to its
  own range."""
  images = tf.reverse(tf.transpose(examples[:count], [0, 2, 1]), [1])
  low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
  high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
  images = (images - low) / tf.maximum(high - low, 1e-6)
  tf.summary.image('log_mel_examples', images[..., None], step=step,
                   max_outputs=count)


def _describe_batch(strategy, examples):
  """Says how a distributed step's batch is shared out, as the data
  pipeline gives it: batch_size examples in all, an equal share each."""
  if strategy.num_replicas_in_sync == 1:
    return
  replicas = strategy.num_replicas_in_sync
  first = tf.nest.flatten(examples)[0]  # the examples, or the crops
  sizes = sorted({int(local.shape[0]) for local in
                  strategy.experimental_local_results(first)})
  print('Each step takes %s examples: %s on each of the %d replicas' % (
      sizes[0] * replicas if len(sizes) == 1 else 'unequal shares of',
      ' or '.join(map(str, sizes)), replicas))


def _duration(seconds):
  return str(datetime.timedelta(seconds=int(seconds)))


@contextlib.contextmanager
def _precision(policy):
  """Layers built within take the Keras dtype policy for the precision
  hparam ('float32' is the default policy)."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


class TrainingState:
  """What a training run updates and checkpoints: the model, the MFoM head
  (if any), the optimizer and the step, and the loss that drives them; the
  weight average (ema_decay > 0); and, unless bn_stats=moving, the precise
  batch-norm statistics saved with each checkpoint. Built in the
  distribution strategy's scope (variables mirrored on every replica) and
  with the precision hparam's policy."""

  def __init__(self, model_name, hparams, num_classes, epoch_num_batches,
               strategy=None, features_on='cpu', max_steps=None,
               noisy=False):
    self.strategy = strategy or tf.distribute.get_strategy()
    # The run's --model and hparams, so that eval, inference and a resumed
    # run use the ones the weights were trained with. (Outside the strategy:
    # a multi-worker strategy cannot broadcast a string variable.)
    self.record = tf.Variable(params.to_json(model_name, hparams),
                              trainable=False)
    self.to_examples = (device_features(hparams) if features_on == 'device'
                        else None)
    with self.strategy.scope(), _precision(hparams.precision):
      self._build_model(model_name, hparams, num_classes, noisy)
      self._build_optimizer(hparams, epoch_num_batches, max_steps)
      self._build_averages(hparams)
    # What each replica does to a batch before the model: examples from
    # crops (on the device), then augmentation.
    self.prepare = _chain(self.to_examples, self.augment)
    self._checkpoint_layout()

  def _build_model(self, model_name, hparams, num_classes, noisy):
    self.model = model_lib.build_model(model_name, num_classes, hparams)
    self.augment = augment.make(hparams)
    self.loss_fn, self.head = (make_sources_loss(hparams) if noisy else
                               make_loss(hparams, num_classes))
    self.variables = self.model.trainable_variables + (
        self.head.trainable_variables if self.head else [])

  def _build_optimizer(self, hparams, epoch_num_batches, max_steps):
    self.optimizer = make_optimizer(hparams, epoch_num_batches or 0,
                                    max_steps)
    # The constant rate to train with (None with a schedule).
    self.learning_rate = None if isinstance(
        self.optimizer._learning_rate,
        keras.optimizers.schedules.LearningRateSchedule) else hparams.lr
    if hparams.precision == 'mixed_float16':
      # float16 gradients underflow without it.
      self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
    self.optimizer.build(self.variables)
    self.step = tf.Variable(
        0, dtype=tf.int64, trainable=False, name='global_step',
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _build_averages(self, hparams):
    """The weight average and the precise statistics (of the raw weights,
    and of the averaged ones)."""
    self.average = (averaging.WeightAverage(self.model.trainable_variables,
                                            hparams.ema_decay)
                    if hparams.ema_decay > 0 else None)
    self.precise = self.precise_average = None
    if hparams.bn_stats == 'precise' and batchnorm.batch_norm_layers(
        self.model):
      self.precise = batchnorm.PreciseStatistics(self.model)
      if self.average is not None:
        self.precise_average = batchnorm.PreciseStatistics(self.model)

  def _checkpoint_layout(self):
    saved = dict(step=self.step, optimizer=self.optimizer,
                 weights=checkpoints.checkpoint_weights(self.model, self.head))
    if self.average is not None:
      saved[averaging.GROUP] = self.average.saved()
    # What a resumed run restores; the precise statistics are recomputed
    # before every save, so a checkpoint without them resumes all the same.
    self.restorable = tf.train.Checkpoint(**saved)
    if self.precise is not None:
      saved[batchnorm.PRECISE] = self.precise.variables
    if self.precise_average is not None:
      saved[averaging.PRECISE_GROUP] = self.precise_average.variables
    self.checkpoint = tf.train.Checkpoint(run=self.record, **saved)

  def update_statistics(self, batches):
    """The precise statistics of the current weights (and of their average)
    over `batches`."""
    if self.precise is not None:
      self.precise.update(batches)
    if self.precise_average is not None:
      with self.average.swapped_in():
        self.precise_average.update(batches)


def _resume(state, prefix, model_name, hparams):
  """Restores the state from a checkpoint of this run. Raises
  DamagedCheckpoint if it cannot be read, UserError if it belongs to another
  model or hparams."""
  import tensorflow as tf
  reader = checkpoints.open_checkpoint(prefix)
  mismatch = checkpoints.record_mismatch(reader, prefix, model_name, hparams)
  try:
    if mismatch:
      raise ValueError(mismatch)
    state.restorable.restore(checkpoints.readable(
        prefix)).assert_existing_objects_matched()
    if isinstance(state.learning_rate, float):
      # The checkpoint holds the optimizer's rate too; a resumed run trains
      # with the lr it is given (e.g. a lower one after a divergence).
      state.optimizer.learning_rate = state.learning_rate
  except (AssertionError, ValueError) as e:
    raise UserError(
        '%s: cannot resume from it with --model %s and these hparams (%s); '
        'use the run\'s own settings or a new --train_dir' % (
            prefix, model_name, str(e).splitlines()[0][:200])) from None
  except (tf.errors.OpError, IndexError) as e:
    raise checkpoints.damaged(prefix, e) from None


def restore_or_warm_start(state, train_dir, model_name, hparams,
                          warmstart_checkpoint=None,
                          warmstart_include_scopes=(),
                          warmstart_exclude_scopes=()):
  """Resumes from the run's newest readable checkpoint if it has any
  (returns True), else warm starts if asked to; otherwise the state keeps
  its initial values. A damaged checkpoint is reported and the one before
  it tried; a run whose checkpoints are all damaged is an error, never a
  silent restart from step 0."""
  found = checkpoints.list_checkpoints(train_dir)
  for _, prefix in reversed(found):
    try:
      _resume(state, prefix, model_name, hparams)
    except checkpoints.DamagedCheckpoint as e:
      print('warning: %s; resuming from an earlier checkpoint' % e)
      continue
    print('Resuming from %s at step %d' % (prefix, int(state.step.numpy())))
    return True
  if found:
    raise UserError('%s: none of its %d checkpoints can be read; move them '
                    'away to start again from step 0' % (train_dir,
                                                         len(found)))
  if hparams.warmstart:
    reader = checkpoints.open_checkpoint(warmstart_checkpoint)
    mismatch = checkpoints.record_mismatch(reader, warmstart_checkpoint,
                                           model_name, hparams)
    if mismatch:
      raise UserError('--warmstart_checkpoint %s: %s' % (
          warmstart_checkpoint, mismatch))
    warm_start(state.variables, warmstart_checkpoint,
               warmstart_include_scopes, warmstart_exclude_scopes,
               model_lib.architecture(model_name).SCOPE_ALIASES)
  return False


class Checkpointer:
  """The work at each checkpoint: the precise batch-norm statistics of the
  weights being saved (and of their average) recomputed, what a save killed
  half-way left removed, then the save. Only the chief writes into
  train_dir: another worker of a cluster saves into a folder of its own,
  emptied after each save (saving takes every worker)."""

  def __init__(self, state, manager, train_dir, statistics_batches=None,
               chief=True):
    self.state, self.manager, self.train_dir = state, manager, train_dir
    self.statistics_batches = statistics_batches
    self.chief = chief
    self.saved_step = None

  def save(self):
    if self.statistics_batches is not None:
      self.state.update_statistics(self.statistics_batches)
    if self.chief:
      for leftover in glob.glob(os.path.join(glob.escape(self.train_dir),
                                             checkpoints.NAME + '-*_temp*')):
        shutil.rmtree(leftover, ignore_errors=True)
    step = int(self.state.step.numpy())
    path = self.manager.save(checkpoint_number=step)
    if self.chief:
      print('Saved checkpoint %s' % path)
    else:
      shutil.rmtree(self.manager.directory, ignore_errors=True)
    self.saved_step = step

  def save_unless_saved(self):
    if self.saved_step != int(self.state.step.numpy()):
      self.save()

  def finish(self, step):
    """Marks the run finished (for a continuous eval)."""
    if self.chief:
      files.write_atomically(os.path.join(self.train_dir,
                                              checkpoints.FINISHED_FILE),
                             '%d\n' % step)


def _progress(step, loss, start_step, start_time, batch_size, max_steps):
  """The line each step prints: loss, rate and time left."""
  rate = (step - start_step) / max(time.time() - start_time, 1e-9)
  left = ('' if max_steps is None else ', %s left' % _duration(
      (max_steps - step) / max(rate, 1e-9)))
  return 'step %d loss %.6f (%.2f steps/s, %.1f examples/s%s)' % (
      step, loss, rate, rate * batch_size, left)


def _summaries(state, step, loss):
  tf.summary.scalar('loss', loss, step=step)
  tf.summary.scalar('learning_rate', state.optimizer.learning_rate, step=step)


def _leave_together(agree):
  """In a cluster, every worker waits here until all have saved: one that
  ends first is reported as crashed by the others' coordination service,
  from TensorFlow's threads, whose stderr is silenced from here on."""
  if agree is not None:
    distribution.silence_native_stderr()
    agree(False)


def _stop_if_asked(agree, checkpointer, step):
  """Saves and raises Stopped if a stop was asked for here (or, in a
  cluster, on any worker: every worker then stops at the same step)."""
  signum = stopping.requested()
  stop = signum is not None
  if agree is not None:
    stop = agree(stop)
  if stop:
    checkpointer.save_unless_saved()
    _leave_together(agree)
    raise stopping.Stopped(
        'stopped by %s at step %d; run the same command to resume' % (
            stopping.name(signum) if signum else 'another worker', step),
        signum or signal.SIGTERM)


def run_loop(state, dataset, checkpointer, batch_size, max_steps,
             save_first=False):
  """Steps through the dataset until max_steps (or its end), saving every
  checkpoints.CHECKPOINT_EVERY steps, at the end, and when a signal stops
  the run; first too if save_first (a fresh run's starting point, as the
  original's step-0 checkpoint)."""
  train_step = make_train_step(
      state.model, state.loss_fn, state.variables, state.optimizer,
      state.step, state.strategy, state.prepare,
      state.average.update if state.average is not None else None)
  agree = make_stop_agreement(state.strategy)
  writer = (tf.summary.create_file_writer(checkpointer.train_dir)
            if checkpointer.chief else tf.summary.create_noop_writer())
  current = start_step = int(state.step.numpy())
  if max_steps is not None and current >= max_steps:
    print('Already at step %d of --max_steps=%d; nothing to do' % (
        current, max_steps))
    checkpointer.finish(current)
    return
  if save_first:
    checkpointer.save()
  start_time = time.time()
  # Closed (so flushed) however the loop ends: a cluster's worker ends
  # without the interpreter's clean-up (see distribution.leave).
  with contextlib.closing(writer), stopping.requests(), writer.as_default():
    for examples, labels in dataset:
      if current == start_step:
        first = _first_share(examples)
        _log_mel_images(state.to_examples(first) if state.to_examples
                        else first, current)
        _describe_batch(state.strategy, examples)
      loss, finite = train_step(examples, labels)
      if not finite:
        _leave_together(agree)
        raise UserError(
            'training diverged at step %d: loss %s or its gradients are not '
            'finite; the last good checkpoint in %s is kept (try a lower lr)'
            % (current + 1, float(loss), checkpointer.train_dir))
      current = int(state.step.numpy())
      print(_progress(current, float(loss), start_step, start_time,
                      batch_size, max_steps), flush=True)
      if current % SUMMARY_EVERY == 0:
        _summaries(state, current, float(loss))
      if current % checkpoints.CHECKPOINT_EVERY == 0:
        checkpointer.save()
      _stop_if_asked(agree, checkpointer, current)
      if max_steps is not None and current >= max_steps:
        break
    if current == start_step:
      raise UserError('no training examples: the training data gave not one '
                      'batch of %d examples' % batch_size)
    checkpointer.save_unless_saved()
    _leave_together(agree)
  checkpointer.finish(current)
  print('Training finished at step %d' % current)


def _dataset(strategy, sources, class_names, hparams, epochs,
             cache_examples=False, seed=None, features_on='cpu'):
  """The training batches: on one device the pipeline itself; under a
  strategy with several replicas or workers, each worker reads its share
  of the clips (of every source) and each replica gets batch_size /
  replicas examples."""
  def worker_dataset(context=None):
    options = dict(epochs=epochs, cache_examples=cache_examples,
                   crops=features_on == 'device', seed=seed)
    if context is not None:
      options['shard'] = ((context.num_input_pipelines,
                           context.input_pipeline_id)
                          if context.num_input_pipelines > 1 else None)
      options['batch_size'] = context.get_per_replica_batch_size(
          hparams.batch_size)
      if seed is not None:
        options['seed'] = seed + 2 * context.input_pipeline_id
    if len(sources) == 1 and not sources[0].noisy:
      source = sources[0]
      rows = files.read_labeled_csv(source.csv_path, None, class_names)
      return inputs.train_dataset(source.csv_path, source.clip_dir,
                                  class_names, hparams, len(rows), **options)
    return inputs.sources_dataset(sources, class_names, hparams, **options)

  if strategy.num_replicas_in_sync == 1 and distribution.is_chief(strategy):
    return worker_dataset()
  return strategy.distribute_datasets_from_function(worker_dataset)


def _check_cache_fits(sources, class_names, hparams, workers, crops):
  """Says what --train_cache_examples will hold; refuses before training
  when this worker's share is more than the memory available now (the
  model, the pipeline and TensorFlow need more on top, so even a cache
  that passes can be too much, but one that fails surely is)."""
  count, size = inputs.example_cache_size(sources, class_names, hparams,
                                          crops)
  share = size // workers
  available = runtime.available_memory()
  print('Training examples are kept in memory after the first epoch '
        '(--train_cache_examples): %d examples, %.2f GB%s' % (
            count, share / 1e9, ' on this worker' if workers > 1 else ''))
  if available is not None and share > available:
    raise UserError(
        '--train_cache_examples: the %d training examples take %.1f GB%s, '
        'more than the %.1f GB of memory available; train without it' % (
            count, share / 1e9, ' on this worker' if workers > 1 else '',
            available / 1e9))


def _describe_sources(sources, class_names, hparams):
  shares = inputs.source_weights(sources, class_names, hparams)
  for i, (source, share) in enumerate(zip(sources, shares)):
    rows = files.read_labeled_csv(source.csv_path, None, class_names)
    print('Source %d (%s): %s, %d clips, %d labels, %.1f%% of the examples'
          % (i + 1, 'noisy' if source.noisy else 'curated', source.csv_path,
             len(rows), sum(len(labels) for _, labels in rows), 100 * share))


def draw_seed(hparams):
  """The hparams with a seed: the given one, or one drawn now and printed
  (a run records its hparams, so the drawn seed repeats it)."""
  if hparams.seed:
    return hparams
  seed = random.SystemRandom().randrange(1, 2 ** 31)
  print('Seed %d drawn for this run (recorded with its hparams; '
        '--hparams seed=%d repeats it)' % (seed, seed))
  return dataclasses.replace(hparams, seed=seed)


def stream_seed(seed, start_step):
  """The seed of a run's data order and augmentation draws from
  start_step on: the run's seed for a fresh run; for a run resumed at step
  N another one, so that a resumed run does not repeat its first steps'
  order (and two resumes of the same checkpoint give the same run)."""
  if not start_step:
    return seed
  return int(np.random.SeedSequence([seed, start_step]).generate_state(1)[0]
             % (2 ** 31 - 1)) + 1


def _check_strategy(strategy, hparams):
  """The run's strategy (default: this device), checked against the batch;
  whether this worker is the chief."""
  replicas = strategy.num_replicas_in_sync
  if hparams.batch_size % replicas:
    raise UserError('hparam batch_size=%d: must be a multiple of the %d '
                    'replicas training it' % (hparams.batch_size, replicas))
  chief = distribution.is_chief(strategy)
  if replicas > 1 or not chief:
    print('Training on %s' % distribution.describe(strategy))
  return chief


def _start_run_dir(train_dir, model_name, hparams, chief):
  """The run is not finished (yet), and records its model and hparams,
  readable without TensorFlow (each checkpoint holds them too, under
  `run`)."""
  os.makedirs(train_dir, exist_ok=True)
  if chief:
    finished = os.path.join(train_dir, checkpoints.FINISHED_FILE)
    if os.path.exists(finished):
      os.remove(finished)
    files.write_atomically(os.path.join(train_dir, RECORD_FILE),
                           params.to_json(model_name, hparams) + '\n')


def _statistics_batches(state, sources, class_names, hparams):
  """The PreciseBN batches, from the run's seed whatever the step, so that
  every checkpoint's statistics come from the same examples."""
  if state.precise is None:
    return None
  return inputs.statistics_dataset(
      sources[0].csv_path, sources[0].clip_dir, class_names, hparams,
      hparams.bn_stats_batches, seed=hparams.seed, more_sources=sources[1:])


def train(model_name, hparams, class_names, sources, train_dir,
          epoch_num_batches=None, max_steps=None,
          warmstart_checkpoint=None, warmstart_include_scopes=(),
          warmstart_exclude_scopes=(), strategy=None, cache_examples=False,
          features_on='cpu'):
  """Trains on the clips of `sources` (inputs.Source, one or more) until
  max_steps (counting a resumed run's steps) or, without it, for the
  original's 1000 epochs; on the devices of `strategy` (a
  tf.distribute strategy, default: this device); cache_examples: see
  inputs.train_dataset; features_on 'device': the pipeline ships crops of
  waveform and the training step makes the examples."""
  strategy = strategy or tf.distribute.get_strategy()
  chief = _check_strategy(strategy, hparams)
  max_steps = params.default_max_steps(max_steps, epoch_num_batches,
                                       DEFAULT_EPOCHS)
  if len(sources) > 1 or sources[0].noisy:
    _describe_sources(sources, class_names, hparams)
  if cache_examples:
    _check_cache_fits(sources, class_names, hparams,
                      distribution.num_workers(strategy),
                      features_on == 'device')
  hparams = draw_seed(with_horizon(hparams, max_steps))
  # Python's, NumPy's and TensorFlow's global seeds: the initial weights,
  # dropout's seed generators, the augmentation ops' seeds.
  keras.utils.set_random_seed(hparams.seed)
  state = TrainingState(model_name, hparams, len(class_names),
                        epoch_num_batches, strategy, features_on, max_steps,
                        noisy=any(s.noisy for s in sources))
  manager = tf.train.CheckpointManager(
      state.checkpoint, distribution.worker_save_dir(strategy, train_dir),
      max_to_keep=None, checkpoint_name=checkpoints.NAME)
  resumed = restore_or_warm_start(state, train_dir, model_name, hparams,
                                  warmstart_checkpoint,
                                  warmstart_include_scopes,
                                  warmstart_exclude_scopes)
  # Once the checkpoints to start from are checked: a warm start refused
  # (another model's checkpoint, a scope matching nothing) writes nothing.
  _start_run_dir(train_dir, model_name, hparams, chief)
  seed = stream_seed(hparams.seed, int(state.step.numpy()))
  keras.utils.set_random_seed(seed)
  dataset = _dataset(strategy, sources, class_names, hparams,
                     None if max_steps else DEFAULT_EPOCHS, cache_examples,
                     seed, features_on)
  checkpointer = Checkpointer(state, manager, train_dir, _statistics_batches(
      state, sources, class_names, hparams), chief)
  run_loop(state, dataset, checkpointer, hparams.batch_size, max_steps,
           save_first=not resumed)
