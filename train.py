"""Training loop: one compiled step, checkpoints every 100 steps, resume,
warm start, TensorBoard summaries, and a clean stop on SIGINT / SIGTERM."""

import datetime
import os
import signal
import time

import keras
import tensorflow as tf

import checkpoints
import inputs
import mfom
import model as model_lib
import summary
from files import UserError

CHECKPOINT_EVERY = 100
SUMMARY_EVERY = 10
DEFAULT_EPOCHS = 1000  # the original's limit when --max_steps is not given


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
  if hparams.opt == 'sgd':
    return keras.optimizers.SGD(learning_rate)
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


def warm_start(variables, checkpoint_path, include_scopes, exclude_scopes):
  """Loads the named trainable variables from another run's checkpoint.

  Includes are applied before excludes; variables the checkpoint lacks are
  left as initialised. Returns the restored names.
  """
  reader = checkpoints.open_checkpoint(checkpoint_path)
  chosen = checkpoints.select(variables, include_scopes, exclude_scopes)
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
  (if any), the optimizer and the step, and the loss that drives them."""

  def __init__(self, model_name, hparams, num_classes, epoch_num_batches):
    self.model = model_lib.build_model(model_name, num_classes, hparams)
    self.loss_fn, self.head = make_loss(hparams, num_classes)
    self.variables = self.model.trainable_variables + (
        self.head.trainable_variables if self.head else [])
    self.optimizer = make_optimizer(hparams, epoch_num_batches or 0)
    self.optimizer.build(self.variables)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False,
                            name='global_step')
    self.checkpoint = tf.train.Checkpoint(
        step=self.step, optimizer=self.optimizer,
        weights=checkpoints.checkpoint_weights(self.model, self.head))


def restore_or_warm_start(state, manager, model_name, hparams,
                          warmstart_checkpoint=None,
                          warmstart_include_scopes=(),
                          warmstart_exclude_scopes=()):
  """Resumes from the run's latest checkpoint if it has one, else warm
  starts if asked to; otherwise the state keeps its initial values."""
  if manager.latest_checkpoint:
    try:
      state.checkpoint.restore(
          manager.latest_checkpoint).assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
      raise UserError(
          '%s: cannot resume from it with --model %s and these hparams (%s); '
          'use the run\'s own settings or a new --train_dir' % (
              manager.latest_checkpoint, model_name,
              str(e).splitlines()[0][:200])) from None
    print('Resuming from %s at step %d' % (manager.latest_checkpoint,
                                          int(state.step)))
  elif hparams.warmstart:
    warm_start(state.variables, warmstart_checkpoint,
               warmstart_include_scopes, warmstart_exclude_scopes)


def run_loop(state, dataset, manager, train_dir, batch_size, max_steps):
  """Steps through the dataset until max_steps (or its end), saving every
  CHECKPOINT_EVERY steps, at the end, and when a signal stops the run."""
  train_step = make_train_step(state.model, state.loss_fn, state.variables,
                               state.optimizer, state.step)

  def save():
    path = manager.save(checkpoint_number=int(state.step))
    print('Saved checkpoint %s' % path)

  writer = tf.summary.create_file_writer(train_dir)
  current = saved = int(state.step)
  if max_steps is not None and current >= max_steps:
    print('Already at step %d of --max_steps=%d; nothing to do' % (
        current, max_steps))
    return
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
    if saved != current:
      save()
  writer.flush()
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
  manager = tf.train.CheckpointManager(
      state.checkpoint, train_dir, max_to_keep=None,
      checkpoint_name=checkpoints.NAME)
  restore_or_warm_start(state, manager, model_name, hparams,
                        warmstart_checkpoint, warmstart_include_scopes,
                        warmstart_exclude_scopes)
  run_loop(state, dataset, manager, train_dir, hparams.batch_size, max_steps)
