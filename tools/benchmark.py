"""Speed and memory, measured side by side on this machine.

  python tools/benchmark.py

Generates WAV clips in a temporary folder, then prints four ratios, three of
them against a plain Keras MobileNet v1 built from the baseline's layer table with stock
layers and timed on in-memory random tensors:

1. inference, WAV files to submission.csv, examples/s over the plain model's
   forward pass on batches of 64 (target >= 1.0);
2. training with the real WAV pipeline, examples/s over the plain model's
   train step on in-memory tensors (target >= 0.95);
3. peak resident memory of inference on one 10-minute clip over that on one
   5-second clip (target <= 1.3);
4. the PreciseBN update at a checkpoint over the training time between two
   checkpoints (target < 0.10);

then ratios 5 and 6 (distributed and mixed-precision training), ratio 9
(the decoding speed of FLAC, Ogg Vorbis and MP3 against WAV, with the
resamplers compared: benchmark_audio.py; `--audio_only` measures these
alone), and the
TFLite engine (--engine tflite) end to end, WAV files through the Scorer
with its features, for float32, dynamic and int8 models converted in
memory, over the plain model's forward pass at the Scorer's batch size
(targets: float32 >= 1.3, int8 >= 3.0; `--engines_only` measures these
alone), and the estimated time to score the FSDKaggle2019 test set (4,481 clips,
12.9 hours of audio). Timings start after a warm-up (tracing, buffers).
"""

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Run as `python tools/benchmark.py`: the project is one folder up.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CLASS_MAP = os.path.join(REPO, 'class_map.csv')

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tagger.models import batchnorm  # noqa: E402
from tools import benchmark_audio  # noqa: E402
from tagger.core import checkpoints  # noqa: E402
from tagger.sound import features  # noqa: E402
from tagger.core import files  # noqa: E402
import inference  # noqa: E402
import inputs  # noqa: E402
from tagger.core import machine  # noqa: E402
from tools import make_demo_data  # noqa: E402
import model as model_lib  # noqa: E402
from tagger.models import mobilenet  # noqa: E402
from tagger.core import params  # noqa: E402
from tagger.core import runtime  # noqa: E402
from tagger.engines import scoring  # noqa: E402
from tagger.sound import synthetic  # noqa: E402
from tagger.engines import tflite_engine  # noqa: E402
import train  # noqa: E402
from tagger.training import state as state_lib  # noqa: E402
from tagger.training import step as step_lib  # noqa: E402

TEST_SET_CLIPS = 4481
TEST_SET_HOURS = 12.9
MODEL = 'mobilenet-v1'


def plain_mobilenet(num_classes, hparams):
  """MobileNet v1 from the layer table with stock Keras layers only."""
  frames, _ = features.example_geometry(hparams)
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


def _timed(fn, warmup, repeats):
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def plain_forward_rate(num_classes, hparams, repeats, batch_size=None):
  batch_size = batch_size or hparams.batch_size
  plain = plain_mobilenet(num_classes, hparams)
  frames, _ = features.example_geometry(hparams)
  batch = tf.random.normal([batch_size, frames, hparams.mel_bands])
  forward = tf.function(lambda x: tf.sigmoid(plain(x, training=False)))
  seconds = _timed(lambda: forward(batch).numpy(), 2, repeats)
  return batch_size / seconds


def tflite_rates(data, class_names, hparams, checkpoint, out_csv,
                 batch_sizes):
  """{(quantization, batch size): examples/s end to end} of --engine
  tflite with the checkpoint converted in memory (int8 calibrated on the
  training clips), on every core."""
  rows = files.read_labeled_csv(data['train_csv'], data['train_clip_dir'],
                                class_names)
  calibration = tuple(os.path.join(data['train_clip_dir'], f)
                      for f, _ in rows)
  rates = {}
  for quantize in ('none', 'dynamic', 'int8'):
    engine = tflite_engine.Engine('tflite', quantize=quantize,
                            calibration_paths=calibration)
    for batch_size in batch_sizes:
      rates[quantize, batch_size], _ = inference_rate(
          data, class_names, hparams, checkpoint, out_csv, engine,
          batch_size)
      print('TFLite %s, batch %d: %.1f examples/s end to end' % (
          quantize, batch_size, rates[quantize, batch_size]), flush=True)
  return rates


def tflite_model_rates(class_names, hparams, checkpoint, data):
  """{'quantization, N threads': examples/s} of each TFLite model alone on
  in-memory examples at the Scorer's batch size, on 1 thread and on every
  core: the model's share of the end-to-end time."""
  rows = files.read_labeled_csv(data['train_csv'], data['train_clip_dir'],
                                class_names)
  scorer = scoring.Scorer(MODEL, len(class_names), hparams, engine=(
      tflite_engine.Engine('tflite', calibration_paths=tuple(
          os.path.join(data['train_clip_dir'], f) for f, _ in rows))))
  scorer.load(checkpoint)
  frames, _ = features.example_geometry(hparams)
  batch = np.random.default_rng(0).normal(
      -4, 2, (scoring.BATCH_SIZE, frames, hparams.mel_bands)).astype(
          np.float32)
  rates = {}
  for quantize in ('none', 'dynamic', 'int8'):
    model = scorer.convert(quantize)
    for threads in sorted({1, tflite_engine.default_threads()}):
      runner = tflite_engine.Runner(model, threads)
      rates['%s, %d threads' % (quantize, threads)] = (
          scoring.BATCH_SIZE / _timed(lambda: runner(batch), 2, 16))
    # TensorFlow's own (deprecated) interpreter on the same model, beside
    # LiteRT: the reason LiteRT is a requirement.
    runner = _tf_lite_runner(model, tflite_engine.default_threads())
    rates['%s, %d threads, tf.lite.Interpreter' % (
        quantize, tflite_engine.default_threads())] = (
            scoring.BATCH_SIZE / _timed(lambda: runner(batch), 2, 16))
  return rates


def _tf_lite_runner(model, threads):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # its deprecation notice
    interpreter = tf.lite.Interpreter(model_content=bytes(model),
                                      num_threads=threads)
  interpreter.allocate_tensors()
  run = interpreter.get_signature_runner('serving_default')
  return lambda examples: run(examples=examples)['logits']


def engine_ratios(data, class_names, hparams, checkpoint, tmp):
  """The TFLite engine's end-to-end rates over the plain model's forward
  pass at the same batch size, measured here; prints and returns them."""
  out_csv = os.path.join(tmp, 'tflite_submission.csv')
  batch_sizes = (scoring.BATCH_SIZE, hparams.batch_size)
  plain = {b: plain_forward_rate(len(class_names), hparams, 8, b)
           for b in batch_sizes}
  keras, _ = inference_rate(data, class_names, hparams, checkpoint, out_csv)
  rates = tflite_rates(data, class_names, hparams, checkpoint, out_csv,
                       batch_sizes)
  alone = tflite_model_rates(class_names, hparams, checkpoint, data)
  print('TFLite models alone (batch %d, random examples): %s; feature '
        'pipeline alone: %.0f examples/s on 2 threads' % (
            scoring.BATCH_SIZE, ', '.join('%s %.1f examples/s' % item
                                          for item in alone.items()),
            feature_rate(data, class_names, hparams, 2)))
  print('Plain model forward: %s; Keras engine end to end (batch %d): %.1f '
        'examples/s' % (', '.join('%.1f examples/s at batch %d' % (
            plain[b], b) for b in batch_sizes), scoring.BATCH_SIZE, keras))
  targets = {'none': 1.3, 'int8': 3.0}
  for (quantize, batch_size), rate in rates.items():
    target = targets.get(quantize)
    print('TFLite %s end to end / plain forward, batch %d: %.2f%s' % (
        {'none': 'float32'}.get(quantize, quantize), batch_size,
        rate / plain[batch_size],
        ' (target >= %.1f)' % target if target else ''))
  return rates, plain


def plain_train_rate(num_classes, hparams, repeats):
  plain = plain_mobilenet(num_classes, hparams)
  frames, _ = features.example_geometry(hparams)
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

  seconds = _timed(lambda: step().numpy(), 2, repeats)
  return hparams.batch_size / seconds


def pipeline_train_rate(data, class_names, hparams, warmup, repeats,
                        strategy=None):
  """Examples/s of train.py's step fed by the real WAV pipeline, optionally
  under a distribution strategy."""
  strategy = strategy or tf.distribute.get_strategy()
  dataset = train._dataset(strategy, [inputs.Source(
      data['train_csv'], data['train_clip_dir'])], class_names, hparams, None,
                           seed=1)
  state = state_lib.TrainingState(MODEL, hparams, len(class_names), 0, strategy)
  train_step = step_lib.make_train_step(state.model, state.loss_fn,
                                     state.variables, state.optimizer,
                                     state.step, strategy)
  batches = iter(dataset)
  seconds = _timed(lambda: float(train_step(*next(batches))[0]), warmup,
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


def op_determinism_train_rate(args):
  """Examples/s of training with TensorFlow's op determinism on, in a
  process of its own (it cannot be turned off again)."""
  out = subprocess.run([sys.executable, __file__, '--determinism_child',
                        str(args.train_steps)], check=True,
                       capture_output=True, text=True).stdout
  return float(out.strip().splitlines()[-1])


def determinism_child(train_steps):
  runtime.use_one_inter_op_thread()
  tf.config.experimental.enable_op_determinism()
  hparams = params.HParams()
  class_names = files.read_class_map(CLASS_MAP)
  with tempfile.TemporaryDirectory() as tmp:
    data = _training_data(tmp, train_steps, hparams, num_test=0)
    print(pipeline_train_rate(data, class_names, hparams, 3, train_steps))


def _training_data(tmp, train_steps, hparams, num_test):
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
  (tflite_engine.Engine; default Keras) and batch size (default the Scorer's)."""
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


def peak_rss_mib(clip_dir, checkpoint, class_map_path):
  """Peak resident memory of a separate process running inference."""
  out = subprocess.run(
      [sys.executable, __file__, '--rss_child', clip_dir, checkpoint,
       class_map_path], check=True, capture_output=True, text=True).stdout
  return float(out.strip().splitlines()[-1])


def rss_child(clip_dir, checkpoint, class_map_path):
  runtime.use_one_inter_op_thread()
  class_names = files.read_class_map(class_map_path)
  fnames = files.list_clips(clip_dir)
  samples = files.check_clips([os.path.join(clip_dir, f) for f in fnames])
  with tempfile.TemporaryDirectory() as tmp:
    inference.infer(MODEL, params.HParams(), class_names, clip_dir, fnames,
                    samples, checkpoint, os.path.join(tmp, 'submission.csv'))
  # VmHWM is this process's own peak; ru_maxrss would carry over the parent's
  # peak from before the fork.
  with open('/proc/self/status') as status:
    peak_kib = next(int(line.split()[1]) for line in status
                    if line.startswith('VmHWM:'))
  print(peak_kib / 1024.0)


def header():
  """The machine the ratios were measured on: they depend on the CPU's
  vector instructions as much as on its cores."""
  gpus = [d.name for d in tf.config.list_physical_devices('GPU')]
  return '%s; GPUs: %s' % (machine.describe(), ', '.join(gpus) or 'none')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--test_clips', type=int, default=60,
                      help='clips (2-20 s) scored by the inference timing')
  parser.add_argument('--train_steps', type=int, default=16,
                      help='timed training steps, after 3 warm-up steps')
  parser.add_argument('--rss_child', nargs=3, help=argparse.SUPPRESS)
  parser.add_argument('--determinism_child', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--engines_only', action='store_true',
                      help='measure only the scoring engines (Keras and '
                      'TFLite) against the plain forward pass')
  parser.add_argument('--audio_only', action='store_true',
                      help='measure only the decoding of each format '
                      '(WAV, FLAC, Ogg, MP3) and the resamplers')
  args = parser.parse_args()
  if args.rss_child:
    rss_child(*args.rss_child)
    return
  if args.determinism_child:
    determinism_child(args.determinism_child)
    return

  runtime.use_one_inter_op_thread()  # as main.py does, for both sides
  hparams = params.HParams()  # the baseline's defaults, batch size 64
  class_map_path = CLASS_MAP
  class_names = files.read_class_map(class_map_path)
  num_classes = len(class_names)
  print(header())
  with tempfile.TemporaryDirectory() as tmp:
    data = _training_data(tmp, args.train_steps, hparams, args.test_clips)
    checkpoint = write_checkpoint(os.path.join(tmp, 'model.ckpt-0'),
                                  num_classes, hparams)
    if args.engines_only:
      engine_ratios(data, class_names, hparams, checkpoint, tmp)
      return
    formats = benchmark_audio.report(data['test_clip_dir'],
                                     os.path.join(tmp, 'formats'), hparams)
    if args.audio_only:
      return

    plain_forward = plain_forward_rate(num_classes, hparams, repeats=8)
    engine, total = inference_rate(data, class_names, hparams, checkpoint,
                                   os.path.join(tmp, 'submission.csv'))
    print('Inference: %.1f examples/s end to end (%d examples), plain model '
          'forward %.1f examples/s' % (engine, total, plain_forward))

    plain_train = plain_train_rate(num_classes, hparams, args.train_steps)
    pipeline_train = pipeline_train_rate(data, class_names, hparams, 3,
                                         args.train_steps)
    print('Training: %.1f examples/s with the WAV pipeline, plain model '
          '%.1f examples/s on in-memory tensors' % (pipeline_train,
                                                    plain_train))
    one_device = tf.distribute.MirroredStrategy(['/cpu:0'])
    mirrored_train = pipeline_train_rate(data, class_names, hparams, 3,
                                         args.train_steps, one_device)
    bfloat16_train = pipeline_train_rate(
        data, class_names, dataclasses.replace(
            hparams, precision='mixed_bfloat16'), 3, args.train_steps)
    print('Training: %.1f examples/s under MirroredStrategy on one device, '
          '%.1f examples/s with mixed_bfloat16' % (mirrored_train,
                                                   bfloat16_train))
    features = {n: feature_rate(data, class_names, hparams, n)
                for n in (1, 2)}
    print('Feature pipeline alone: %.0f examples/s on 1 thread, %.0f on 2' %
          (features[1], features[2]))
    on_cpu = pipeline_cpu_per_example(data, class_names, hparams, False)
    on_device = pipeline_cpu_per_example(data, class_names, hparams, True)
    unordered = pipeline_cpu_per_example(data, class_names, hparams, False,
                                         seed=None)
    print('Training pipeline CPU time per example: %.2f ms with the examples '
          'made on the CPU, %.2f ms with --features_on device (%.0f and %.0f '
          'examples/s); unseeded order %.0f examples/s' % (
              1e3 * on_cpu[0], 1e3 * on_device[0], on_cpu[1], on_device[1],
              unordered[1]))
    determinism_train = op_determinism_train_rate(args)
    print('Training with TensorFlow op determinism on: %.1f examples/s' %
          determinism_train)
    cached = {n: cached_rate(data, class_names, hparams, n) for n in (1, 2)}
    print('With --train_cache_examples, after the first epoch: %.0f '
          'examples/s on 1 thread, %.0f on 2' % (cached[1], cached[2]))
    first_update, later_update = precise_bn_seconds(data, class_names,
                                                    hparams)
    cadence = (checkpoints.CHECKPOINT_EVERY * hparams.batch_size /
               pipeline_train)
    print('PreciseBN: %.1f s at the first checkpoint, %.1f s at later ones '
          '(%d batches); %d training steps take %.0f s' % (
              first_update, later_update, hparams.bn_stats_batches,
              checkpoints.CHECKPOINT_EVERY, cadence))

    rss = {}
    for name, seconds in (('5 s', 5), ('10 min', 600)):
      clip_dir = os.path.join(tmp, 'one_clip_%d' % seconds)
      os.makedirs(clip_dir)
      make_demo_data.write_wav(
          os.path.join(clip_dir, 'clip.wav'),
          synthetic.make_clip(['Hiss'], seconds,
                              np.random.default_rng(seconds)))
      rss[name] = peak_rss_mib(clip_dir, checkpoint, class_map_path)
    print('Peak RSS: %.0f MiB for a 5 s clip, %.0f MiB for a 10 min clip' % (
        rss['5 s'], rss['10 min']))
    print()
    engine_ratios(data, class_names, hparams, checkpoint, tmp)

  test_examples = TEST_SET_HOURS * 3600 * 2 + TEST_SET_CLIPS * 0.5
  print()
  print('ratio 1, inference end to end / plain forward: %.2f (target >= 1.0)'
        % (engine / plain_forward))
  print('ratio 2, training with WAV pipeline / plain train step: %.2f '
        '(target >= 0.95)' % (pipeline_train / plain_train))
  print('ratio 3, peak RSS 10 min clip / 5 s clip: %.2f (target <= 1.3)' % (
      rss['10 min'] / rss['5 s']))
  print('ratio 4, PreciseBN at a checkpoint / training between checkpoints: '
        '%.3f (target < 0.10)' % (later_update / cadence))
  print('ratio 5, training under MirroredStrategy on one device / plain '
        'loop: %.2f (target >= 0.95)' % (mirrored_train / pipeline_train))
  print('ratio 6, training with mixed_bfloat16 / float32: %.2f' % (
      bfloat16_train / pipeline_train))
  print('Feature pipeline per thread: %.0f examples/s (%.2f x from 1 to 2 '
        'threads)' % (features[1], features[2] / features[1]))
  print('ratio 7, pipeline CPU per example, --features_on device / cpu: %.2f'
        % (on_device[0] / on_cpu[0]))
  print('ratio 8, seeded (ordered) / unseeded training pipeline: %.2f; '
        'training with op determinism / without: %.2f' % (
            on_cpu[1] / unordered[1], determinism_train / pipeline_train))
  print('ratio 9, decoding and examples of FLAC, Ogg Vorbis, MP3 / WAV: '
        '%s' % ', '.join('%.2f' % (formats[name] / formats['WAV'])
                         for name in ('FLAC', 'Ogg Vorbis', 'MP3')))
  print('Estimated time to score the FSDKaggle2019 test set (%d clips, %.1f '
        'h, ~%d examples): %.1f min' % (TEST_SET_CLIPS, TEST_SET_HOURS,
                                        test_examples,
                                        test_examples / engine / 60))


if __name__ == '__main__':
  main()
