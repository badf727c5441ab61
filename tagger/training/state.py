"""What a run trains and keeps: the model, optimizer, step and averages
(TrainingState), resumed from a checkpoint or warm-started, and saved
(Checkpointer)."""

import contextlib
import glob
import os
import shutil

import keras
import tensorflow as tf

from tagger.training import augment
from tagger.models import averaging
from tagger.models import batchnorm
from tagger.core import checkpoints
from tagger.sound import features
from tagger.sound import pcm
import model as model_lib
from tagger.core import params
from tagger.core import files
from tagger.core.files import UserError
from tagger.training import step as step_lib


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


def _chain(first, then):
  """The step's per-replica preparation: first(examples) (None: as they
  are), then then(examples, labels) (None: as they are)."""
  if first is None:
    return then
  if then is None:
    return lambda examples, labels: (first(examples), labels)
  return lambda examples, labels: then(first(examples), labels)


def device_features(hparams):
  """With --features_on device, the step's inputs are (16-bit crops, frame
  counts) batches: this makes the examples from them on the device."""
  def examples(batch):
    crops, frames = batch
    return features.crops_to_examples(pcm.to_float(crops), frames,
                                      hparams)
  return examples


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
    self.loss_fn, self.head = (step_lib.make_sources_loss(hparams) if noisy else
                               step_lib.make_loss(hparams, num_classes))
    self.variables = self.model.trainable_variables + (
        self.head.trainable_variables if self.head else [])

  def _build_optimizer(self, hparams, epoch_num_batches, max_steps):
    self.optimizer = step_lib.make_optimizer(hparams, epoch_num_batches or 0,
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
