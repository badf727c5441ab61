"""Training loop: one compiled step, checkpoints every 100 steps, resume,
warm start, TensorBoard summaries, and a clean stop on SIGINT / SIGTERM."""

import datetime
import glob
import os
import shutil
import signal
import time

import keras
import tensorflow as tf

import batchnorm
import checkpoints
import inputs
import mfom
import model as model_lib
import params
import files
import summary
from files import UserError

CHECKPOINT_EVERY = 100
SUMMARY_EVERY = 10
DEFAULT_EPOCHS = 1000  # the original's limit when --max_steps is not given
RECORD_FILE = 'hparams.json'  # the run's --model and hparams, in train_dir
# Present in train_dir (holding the final step) once a run has finished, so
# that a continuous eval knows no checkpoint will follow; removed when a run
# (re)starts.
FINISHED_FILE = 'training_finished'


class Interrupted(UserError):
  """Training was stopped by a signal after saving a checkpoint."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_code = 128 + signum


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


def make_optimizer(hparams, epoch_num_batches):
  learning_rate = hparams.lr
  if hparams.lrdecay > 0:
    learning_rate = keras.optimizers.schedules.ExponentialDecay(
        hparams.lr, decay_steps=max(1, int(epoch_num_batches *
                                           hparams.decay_epochs)),
        decay_rate=hparams.lrdecay, staircase=True)
  elif hparams.inverse_time_decay > 0:
    # Keras 2's `decay`: lr / (1 + decay * iterations), every step.
    learning_rate = keras.optimizers.schedules.InverseTimeDecay(
        hparams.lr, decay_steps=1, decay_rate=hparams.inverse_time_decay)
  if hparams.opt == 'sgd':
    return keras.optimizers.SGD(learning_rate, momentum=hparams.momentum,
                                nesterov=bool(hparams.nesterov))
  return keras.optimizers.Adam(learning_rate, epsilon=hparams.adam_eps)


def make_train_step(model, loss_fn, variables, optimizer, step):
  """The compiled training step: (examples, labels) -> (loss, finite)."""

  @tf.function
  def train_step(examples, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(examples, training=True))
    gradients = tape.gradient(loss, variables)
    finite = tf.math.is_finite(loss) & tf.math.is_finite(
        tf.linalg.global_norm(gradients))
    # A non-finite step is not applied, so the weights stay those of the last
    # good step and no NaN ever reaches a checkpoint.
    if finite:
      optimizer.apply_gradients(zip(gradients, variables))
      step.assign_add(1)
    return loss, finite

  return train_step


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


class _StopSignals:
  """Turns SIGINT / SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.signum = None

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle)
                      for s in (signal.SIGINT, signal.SIGTERM)}
    return self

  def _handle(self, signum, frame):
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _duration(seconds):
  return str(datetime.timedelta(seconds=int(seconds)))


class TrainingState:
  """What a training run updates and checkpoints: the model, the MFoM head
  (if any), the optimizer and the step, and the loss that drives them; and,
  unless bn_stats=moving, the precise batch-norm statistics saved with each
  checkpoint."""

  def __init__(self, model_name, hparams, num_classes, epoch_num_batches):
    self.model = model_lib.build_model(model_name, num_classes, hparams)
    self.loss_fn, self.head = make_loss(hparams, num_classes)
    self.variables = self.model.trainable_variables + (
        self.head.trainable_variables if self.head else [])
    self.optimizer = make_optimizer(hparams, epoch_num_batches or 0)
    # The constant rate to train with (None with a decay schedule).
    self.learning_rate = None if isinstance(
        self.optimizer._learning_rate,
        keras.optimizers.schedules.LearningRateSchedule) else hparams.lr
    self.optimizer.build(self.variables)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False,
                            name='global_step')
    saved = dict(step=self.step, optimizer=self.optimizer,
                 weights=checkpoints.checkpoint_weights(self.model, self.head))
    # The run's --model and hparams, so that eval, inference and a resumed
    # run use the ones the weights were trained with.
    self.record = tf.Variable(params.to_json(model_name, hparams),
                              trainable=False)
    # What a resumed run restores; the precise statistics are recomputed
    # before every save, so a checkpoint without them resumes all the same.
    self.restorable = tf.train.Checkpoint(**saved)
    self.precise = None
    if hparams.bn_stats == 'precise':
      self.precise = batchnorm.PreciseStatistics(self.model)
      if self.precise.layers:
        saved[batchnorm.PRECISE] = self.precise.variables
      else:
        self.precise = None
    self.checkpoint = tf.train.Checkpoint(run=self.record, **saved)


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
    print('Resuming from %s at step %d' % (prefix, int(state.step)))
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


def run_loop(state, dataset, manager, train_dir, batch_size, max_steps,
             statistics_batches=None, save_first=False):
  """Steps through the dataset until max_steps (or its end), saving every
  CHECKPOINT_EVERY steps, at the end, and when a signal stops the run; first
  too if save_first (a fresh run's starting point, as the original's step-0
  checkpoint). Each save first recomputes the precise batch-norm statistics
  over statistics_batches, if the state keeps them."""
  train_step = make_train_step(state.model, state.loss_fn, state.variables,
                               state.optimizer, state.step)

  def save():
    if state.precise is not None:
      state.precise.update(statistics_batches)
    # What a save killed half-way left behind.
    for leftover in glob.glob(os.path.join(glob.escape(train_dir),
                                           checkpoints.NAME + '-*_temp*')):
      shutil.rmtree(leftover, ignore_errors=True)
    path = manager.save(checkpoint_number=int(state.step))
    print('Saved checkpoint %s' % path)

  writer = tf.summary.create_file_writer(train_dir)
  current = saved = int(state.step)
  if max_steps is not None and current >= max_steps:
    print('Already at step %d of --max_steps=%d; nothing to do' % (
        current, max_steps))
    files.write_atomically(os.path.join(train_dir, FINISHED_FILE),
                           '%d\n' % current)
    return
  if save_first:
    save()
  start_time, start_step = time.time(), current
  with _StopSignals() as stop, writer.as_default():
    for examples, labels in dataset:
      loss, finite = train_step(examples, labels)
      loss = float(loss)
      if not finite:
        raise UserError(
            'training diverged at step %d: loss %s or its gradients are not '
            'finite; the last good checkpoint in %s is kept (try a lower lr)'
            % (current + 1, loss, train_dir))
      current = int(state.step)
      rate = (current - start_step) / max(time.time() - start_time, 1e-9)
      left = ('' if max_steps is None else ', %s left' % _duration(
          (max_steps - current) / max(rate, 1e-9)))
      print('step %d loss %.6f (%.2f steps/s, %.1f examples/s%s)' % (
          current, loss, rate, rate * batch_size, left), flush=True)
      if current % SUMMARY_EVERY == 0:
        summary.scalar('loss', loss, current)
        summary.scalar('learning_rate', state.optimizer.learning_rate,
                       current)
      if current % CHECKPOINT_EVERY == 0:
        save()
        saved = current
      if stop.signum is not None:
        if saved != current:
          save()
        raise Interrupted(
            'stopped by %s at step %d; run the same command to resume' % (
                signal.Signals(stop.signum).name, current), stop.signum)
      if max_steps is not None and current >= max_steps:
        break
    if current == start_step:
      raise UserError('no training examples: the training data gave not one '
                      'batch of %d examples' % batch_size)
    if saved != current:
      save()
  writer.flush()
  files.write_atomically(os.path.join(train_dir, FINISHED_FILE),
                         '%d\n' % current)
  print('Training finished at step %d' % current)


def train(model_name, hparams, class_names, train_csv_path, train_clip_dir,
          num_clips, train_dir, epoch_num_batches=None, max_steps=None,
          warmstart_checkpoint=None, warmstart_include_scopes=(),
          warmstart_exclude_scopes=()):
  """Trains until max_steps (counting a resumed run's steps) or, without it,
  for the original's 1000 epochs."""
  if max_steps is None and epoch_num_batches:
    max_steps = DEFAULT_EPOCHS * epoch_num_batches
  dataset = inputs.train_dataset(
      train_csv_path, train_clip_dir, class_names, hparams, num_clips,
      epochs=None if max_steps else DEFAULT_EPOCHS)
  state = TrainingState(model_name, hparams, len(class_names),
                        epoch_num_batches)
  os.makedirs(train_dir, exist_ok=True)
  finished = os.path.join(train_dir, FINISHED_FILE)
  if os.path.exists(finished):
    os.remove(finished)
  # The run's record, readable without TensorFlow (each checkpoint holds it
  # too, under `run`).
  files.write_atomically(os.path.join(train_dir, RECORD_FILE),
                         params.to_json(model_name, hparams) + '\n')
  manager = tf.train.CheckpointManager(
      state.checkpoint, train_dir, max_to_keep=None,
      checkpoint_name=checkpoints.NAME)
  resumed = restore_or_warm_start(state, train_dir, model_name, hparams,
                                  warmstart_checkpoint,
                                  warmstart_include_scopes,
                                  warmstart_exclude_scopes)
  statistics_batches = None
  if state.precise is not None:
    statistics_batches = inputs.statistics_dataset(
        train_csv_path, train_clip_dir, class_names, hparams,
        hparams.bn_stats_batches)
  run_loop(state, dataset, manager, train_dir, hparams.batch_size, max_steps,
           statistics_batches, save_first=not resumed)
