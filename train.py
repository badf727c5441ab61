"""Training loop: one compiled step (tagger/training/step.py) on the run's
state (tagger/training/state.py: resume, warm start, saving), checkpoints
every 100 steps, TensorBoard summaries, and a clean stop on SIGINT /
SIGTERM."""

import contextlib
import dataclasses
import datetime
import os
import random
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from tagger.core import checkpoints
from tagger.training import distribution
import inputs
from tagger.core import params
from tagger.core import files
from tagger.core import runtime
from tagger.core import stopping
from tagger.core.files import UserError
from tagger.training import state as state_lib
from tagger.training import step as step_lib

SUMMARY_EVERY = 10
# The original's limit when --max_steps is not given (here, so that a test
# can shorten it).
DEFAULT_EPOCHS = params.DEFAULT_EPOCHS
RECORD_FILE = 'hparams.json'  # the run's --model and hparams, in train_dir


def make_stop_agreement(strategy):
  """A function (stop wanted here) -> (stop wanted by any worker), so that
  the workers of a cluster stop at the same step; None on one worker."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return None

  @tf.function(autograph=False)
  def agree(flag):
    wanted = strategy.run(lambda: tf.identity(flag))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, wanted, axis=None) > 0

  return lambda wanted: bool(agree(tf.constant(float(wanted))))


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
  train_step = step_lib.make_train_step(
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
  hparams = draw_seed(step_lib.with_horizon(hparams, max_steps))
  # Python's, NumPy's and TensorFlow's global seeds: the initial weights,
  # dropout's seed generators, the augmentation ops' seeds.
  keras.utils.set_random_seed(hparams.seed)
  state = state_lib.TrainingState(model_name, hparams, len(class_names),
                        epoch_num_batches, strategy, features_on, max_steps,
                        noisy=any(s.noisy for s in sources))
  manager = tf.train.CheckpointManager(
      state.checkpoint, distribution.worker_save_dir(strategy, train_dir),
      max_to_keep=None, checkpoint_name=checkpoints.NAME)
  resumed = state_lib.restore_or_warm_start(state, train_dir, model_name, hparams,
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
  checkpointer = state_lib.Checkpointer(state, manager, train_dir, _statistics_batches(
      state, sources, class_names, hparams), chief)
  run_loop(state, dataset, checkpointer, hparams.batch_size, max_steps,
           save_first=not resumed)
