"""The measurements of tools/benchmark.py: examples/s of the project's
training, scoring and input pipelines on this machine, and of the plain
Keras MobileNet v1 (stock layers, the baseline's layer table, in-memory
tensors) that its ratios are taken against.
"""

import os
import time

import keras
import tensorflow as tf

from tagger.models import batchnorm
from tagger.core import checkpoints
from tagger.sound import features
from tagger.core import files
from tagger.core import machine
import inference
import inputs
from tools import make_demo_data
import model as model_lib
from tagger.models import mobilenet
from tagger.engines import scoring
import train
from tagger.training import state as state_lib
from tagger.training import step as step_lib

CLASS_MAP = os.path.join(machine.REPO, 'class_map.csv')
MODEL = 'mobilenet-v1'


def plain_mobilenet(num_classes, hparams):
  """MobileNet v1 from the layer table with stock Keras layers only."""
  frames = hparams.geometry.example_frames
  x = examples = keras.Input((frames, hparams.mel_bands))
  x = keras.layers.Reshape((frames, hparams.mel_bands, 1))(x)

  def bn_relu(x):
    x = keras.layers.BatchNormalization(momentum=hparams.bndecay,
                                        epsilon=hparams.bneps)(x)
    return keras.layers.ReLU()(x)

  for _, kind, stride, depth in mobilenet.MOBILENET_V1:
    if kind == 'conv':
      x = bn_relu(keras.layers.Conv2D(depth, 3, strides=stride,
                                      padding='same', use_bias=False)(x))
    else:
      x = bn_relu(keras.layers.DepthwiseConv2D(3, strides=stride,
                                               padding='same',
                                               use_bias=False)(x))
      x = bn_relu(keras.layers.Conv2D(depth, 1, use_bias=False)(x))
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(examples, keras.layers.Dense(num_classes)(x))


def timed(fn, warmup, repeats):
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def plain_forward_rate(num_classes, hparams, repeats, batch_size=None):
  batch_size = batch_size or hparams.batch_size
  plain = plain_mobilenet(num_classes, hparams)
  frames = hparams.geometry.example_frames
  batch = tf.random.normal([batch_size, frames, hparams.mel_bands])
  forward = tf.function(lambda x: tf.sigmoid(plain(x, training=False)))
  seconds = timed(lambda: forward(batch).numpy(), 2, repeats)
  return batch_size / seconds


def plain_train_rate(num_classes, hparams, repeats):
  plain = plain_mobilenet(num_classes, hparams)
  frames = hparams.geometry.example_frames
  examples = tf.random.normal([hparams.batch_size, frames, hparams.mel_bands])
  labels = tf.cast(tf.random.uniform([hparams.batch_size, num_classes]) < 0.02,
                   tf.float32)
  loss_fn, _ = step_lib.make_loss(hparams, num_classes)
  optimizer = step_lib.make_optimizer(hparams, 0)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, plain(examples, training=True))
    gradients = tape.gradient(loss, plain.trainable_variables)
    optimizer.apply_gradients(zip(gradients, plain.trainable_variables))
    return loss

  seconds = timed(lambda: step().numpy(), 2, repeats)
  return hparams.batch_size / seconds


def pipeline_train_rate(data, class_names, hparams, warmup, repeats,
                        strategy=None):
  """Examples/s of train.py's step fed by the real WAV pipeline, optionally
  under a distribution strategy."""
  strategy = strategy or tf.distribute.get_strategy()
  dataset = train._dataset(strategy, [inputs.Source(
      data['train_csv'], data['train_clip_dir'])], class_names, hparams, None,
                           seed=1)
  state = state_lib.TrainingState(MODEL, hparams, len(class_names), 0,
                                  strategy)
  train_step = step_lib.make_train_step(state.model, state.loss_fn,
                                     state.variables, state.optimizer,
                                     state.step, strategy)
  batches = iter(dataset)
  seconds = timed(lambda: float(train_step(*next(batches))[0]), warmup,
                   repeats)
  return hparams.batch_size / seconds


def feature_rate(data, class_names, hparams, threads):
  """Examples/s of the input pipeline alone (WAV decoding and log-mel
  examples of every training clip; no model), on `threads` threads: what a
  machine's cores can feed an accelerator."""
  rows = files.read_labeled_csv(data['train_csv'], data['train_clip_dir'],
                                class_names)
  paths = [os.path.join(data['train_clip_dir'], f) for f, _ in rows]
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1

  def run(clips):
    count = 0
    for examples, _ in inputs.scoring_dataset(
        clips, hparams, hparams.batch_size).with_options(options):
      count += int(examples.shape[0])
    return count

  run(paths[:2])  # tracing
  start = time.perf_counter()
  count = run(paths)
  return count / (time.perf_counter() - start)


def pipeline_cpu_per_example(data, class_names, hparams, crops, seed=1,
                             batches=20):
  """CPU seconds (every thread of this process) the training pipeline
  spends per example, with the log-mel examples made on the CPU or, with
  crops, shipped as samples for the device (--features_on device); and its
  examples/s. seed None: the examples in the order parallel reads finish
  (as before runs were seeded)."""
  rows = files.read_labeled_csv(data['train_csv'], data['train_clip_dir'],
                                class_names)
  batches_of = iter(inputs.train_dataset(
      data['train_csv'], data['train_clip_dir'], class_names, hparams,
      len(rows), crops=crops, seed=seed))
  next(batches_of)  # tracing, and the shuffle buffer's first fill
  cpu, wall = time.process_time(), time.perf_counter()
  for _ in range(batches):
    next(batches_of)
  count = batches * hparams.batch_size
  return ((time.process_time() - cpu) / count,
          count / (time.perf_counter() - wall))


def training_data(tmp, train_steps, hparams, num_test):
  # ~13 s training clips: enough examples (about 26 a clip) to fill batches
  # for warm-up and timed steps without wrapping an epoch.
  train_clips = -(-(train_steps + 4) * hparams.batch_size // 24)
  return make_demo_data.make_dataset(
      os.path.join(tmp, 'data'), num_train=train_clips, num_validation=0,
      num_test=num_test, min_seconds=2.0, max_seconds=20.0, seed=1)


def cached_rate(data, class_names, hparams, threads):
  """Examples/s of the training pipeline with --train_cache_examples once
  its first epoch is in memory (shuffling and batching only), on `threads`
  threads: what the CPU does per example after the first epoch."""
  rows = files.read_labeled_csv(data['train_csv'], data['train_clip_dir'],
                                class_names)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  per_epoch = sum(features.num_examples(n, hparams) for n in files.check_clips(
      [os.path.join(data['train_clip_dir'], f) for f, _ in rows]))
  count, start = 0, None
  for examples, _ in inputs.train_dataset(
      data['train_csv'], data['train_clip_dir'], class_names, hparams,
      len(rows), epochs=11, cache_examples=True).with_options(options):
    count += int(examples.shape[0])
    if start is None and count >= per_epoch:  # the first epoch is cached
      start, count = time.perf_counter(), 0
  return count / (time.perf_counter() - start)


def precise_bn_seconds(data, class_names, hparams):
  """Seconds of one PreciseBN update (bn_stats_batches batches) at a
  checkpoint: the first of a run, which also computes the batches' features,
  and a later one, which finds them in memory."""
  batches = inputs.statistics_dataset(
      data['train_csv'], data['train_clip_dir'], class_names, hparams,
      hparams.bn_stats_batches)
  model = model_lib.build_model(MODEL, len(class_names), hparams)
  precise = batchnorm.PreciseStatistics(model)
  times = []
  for _ in range(3):
    start = time.perf_counter()
    precise.update(batches)
    times.append(time.perf_counter() - start)
  return times[0], min(times[1:])


def write_checkpoint(path, num_classes, hparams):
  model = model_lib.build_model(MODEL, num_classes, hparams)
  return tf.train.Checkpoint(
      weights=checkpoints.checkpoint_weights(model)).write(path)


def inference_rate(data, class_names, hparams, checkpoint, out_csv,
                   engine=None, batch_size=None):
  """Examples/s from WAV files to a written submission.csv, with an engine
  (tflite_engine.Engine; default Keras) and batch size (default the
  Scorer's)."""
  fnames = files.list_clips(data['test_clip_dir'])
  paths = [os.path.join(data['test_clip_dir'], f) for f in fnames]
  samples = files.check_clips(paths)
  scorer = scoring.Scorer(MODEL, len(class_names), hparams, engine=engine)
  scorer.load(checkpoint)
  scorer.batch_size = batch_size or scorer.batch_size
  scorer.score(paths[:2], samples[:2], label='warm-up')
  start = time.perf_counter()
  scores = scorer.score(paths, samples, label='inference')
  files.write_atomically(out_csv, inference.submission_csv(
      fnames, class_names, scores))
  seconds = time.perf_counter() - start
  total = sum(features.num_examples(n, hparams) for n in samples)
  return total / seconds, total
