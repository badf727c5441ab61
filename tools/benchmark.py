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

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Run as `python tools/benchmark.py`: the project is one folder up.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tagger.core import runtime  # noqa: E402

# TensorFlow's and LiteRT's start-up notices kept off stderr, as main.py
# keeps them (--help included).
with runtime.quiet_stderr():
  import numpy as np  # noqa: E402
  import tensorflow as tf  # noqa: E402

  from tagger.core import checkpoints  # noqa: E402
  from tagger.core import files  # noqa: E402
  from tagger.core import machine  # noqa: E402
  from tagger.core import params  # noqa: E402
  from tagger.sound import synthetic  # noqa: E402
  import inference  # noqa: E402
  from tools import benchmark_audio  # noqa: E402
  from tools import benchmark_engines  # noqa: E402
  from tools import benchmark_rates as measure  # noqa: E402
  from tools import make_demo_data  # noqa: E402

TEST_SET_CLIPS = 4481
TEST_SET_HOURS = 12.9


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
  class_names = files.read_class_map(measure.CLASS_MAP)
  with tempfile.TemporaryDirectory() as tmp:
    data = measure.training_data(tmp, train_steps, hparams, num_test=0)
    print(measure.pipeline_train_rate(data, class_names, hparams, 3,
                                      train_steps))


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
    inference.infer(measure.MODEL, params.HParams(), class_names, clip_dir,
                    fnames, samples, checkpoint,
                    os.path.join(tmp, 'submission.csv'))
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


@dataclasses.dataclass
class _Run:
  """What every measurement reads, and the figures they record."""
  data: dict
  class_names: list
  hparams: params.HParams
  checkpoint: str
  tmp: str
  args: argparse.Namespace
  figures: dict = dataclasses.field(default_factory=dict)


def _inference(run):
  f = run.figures
  f['plain_forward'] = measure.plain_forward_rate(len(run.class_names),
                                                  run.hparams, repeats=8)
  f['engine'], total = measure.inference_rate(
      run.data, run.class_names, run.hparams, run.checkpoint,
      os.path.join(run.tmp, 'submission.csv'))
  return ('Inference: %.1f examples/s end to end (%d examples), plain model '
          'forward %.1f examples/s' % (f['engine'], total, f['plain_forward']))


def _training(run):
  f, steps = run.figures, run.args.train_steps
  f['plain_train'] = measure.plain_train_rate(len(run.class_names),
                                              run.hparams, steps)
  f['pipeline_train'] = measure.pipeline_train_rate(
      run.data, run.class_names, run.hparams, 3, steps)
  return ('Training: %.1f examples/s with the WAV pipeline, plain model '
          '%.1f examples/s on in-memory tensors' % (f['pipeline_train'],
                                                    f['plain_train']))


def _distributed(run):
  f, steps = run.figures, run.args.train_steps
  one_device = tf.distribute.MirroredStrategy(['/cpu:0'])
  f['mirrored_train'] = measure.pipeline_train_rate(
      run.data, run.class_names, run.hparams, 3, steps, one_device)
  f['bfloat16_train'] = measure.pipeline_train_rate(
      run.data, run.class_names, dataclasses.replace(
          run.hparams, precision='mixed_bfloat16'), 3, steps)
  return ('Training: %.1f examples/s under MirroredStrategy on one device, '
          '%.1f examples/s with mixed_bfloat16' % (f['mirrored_train'],
                                                   f['bfloat16_train']))


def _features(run):
  f = run.figures
  f['features'] = {n: measure.feature_rate(run.data, run.class_names,
                                           run.hparams, n) for n in (1, 2)}
  return ('Feature pipeline alone: %.0f examples/s on 1 thread, %.0f on 2' %
          (f['features'][1], f['features'][2]))


def _pipeline_cpu(run):
  f = run.figures
  args = (run.data, run.class_names, run.hparams)
  f['on_cpu'] = measure.pipeline_cpu_per_example(*args, False)
  f['on_device'] = measure.pipeline_cpu_per_example(*args, True)
  f['unordered'] = measure.pipeline_cpu_per_example(*args, False, seed=None)
  return ('Training pipeline CPU time per example: %.2f ms with the examples '
          'made on the CPU, %.2f ms with --features_on device (%.0f and %.0f '
          'examples/s); unseeded order %.0f examples/s' % (
              1e3 * f['on_cpu'][0], 1e3 * f['on_device'][0], f['on_cpu'][1],
              f['on_device'][1], f['unordered'][1]))


def _determinism(run):
  run.figures['determinism_train'] = op_determinism_train_rate(run.args)
  return ('Training with TensorFlow op determinism on: %.1f examples/s' %
          run.figures['determinism_train'])


def _cached(run):
  cached = {n: measure.cached_rate(run.data, run.class_names, run.hparams, n)
            for n in (1, 2)}
  return ('With --train_cache_examples, after the first epoch: %.0f '
          'examples/s on 1 thread, %.0f on 2' % (cached[1], cached[2]))


def _precise_bn(run):
  f, hparams = run.figures, run.hparams
  first, f['later_update'] = measure.precise_bn_seconds(
      run.data, run.class_names, hparams)
  f['cadence'] = (checkpoints.CHECKPOINT_EVERY * hparams.batch_size /
                  f['pipeline_train'])
  return ('PreciseBN: %.1f s at the first checkpoint, %.1f s at later ones '
          '(%d batches); %d training steps take %.0f s' % (
              first, f['later_update'], hparams.bn_stats_batches,
              checkpoints.CHECKPOINT_EVERY, f['cadence']))


def _peak_rss(run):
  rss = run.figures['rss'] = {}
  for name, seconds in (('5 s', 5), ('10 min', 600)):
    clip_dir = os.path.join(run.tmp, 'one_clip_%d' % seconds)
    os.makedirs(clip_dir)
    make_demo_data.write_wav(
        os.path.join(clip_dir, 'clip.wav'),
        synthetic.make_clip(['Hiss'], seconds,
                            np.random.default_rng(seconds)))
    rss[name] = peak_rss_mib(clip_dir, run.checkpoint, measure.CLASS_MAP)
  return 'Peak RSS: %.0f MiB for a 5 s clip, %.0f MiB for a 10 min clip' % (
      rss['5 s'], rss['10 min'])


# Each measurement records its figures and returns its line, in this order.
MEASUREMENTS = (_inference, _training, _distributed, _features,
                _pipeline_cpu, _determinism, _cached, _precise_bn, _peak_rss)


def _ratios(f, formats):
  """The ratio lines of the figures (f) and the formats' rates."""
  test_examples = TEST_SET_HOURS * 3600 * 2 + TEST_SET_CLIPS * 0.5
  return [
      'ratio 1, inference end to end / plain forward: %.2f (target >= 1.0)'
      % (f['engine'] / f['plain_forward']),
      'ratio 2, training with WAV pipeline / plain train step: %.2f '
      '(target >= 0.95)' % (f['pipeline_train'] / f['plain_train']),
      'ratio 3, peak RSS 10 min clip / 5 s clip: %.2f (target <= 1.3)' % (
          f['rss']['10 min'] / f['rss']['5 s']),
      'ratio 4, PreciseBN at a checkpoint / training between checkpoints: '
      '%.3f (target < 0.10)' % (f['later_update'] / f['cadence']),
      'ratio 5, training under MirroredStrategy on one device / plain '
      'loop: %.2f (target >= 0.95)' % (f['mirrored_train'] /
                                       f['pipeline_train']),
      'ratio 6, training with mixed_bfloat16 / float32: %.2f' % (
          f['bfloat16_train'] / f['pipeline_train']),
      'Feature pipeline per thread: %.0f examples/s (%.2f x from 1 to 2 '
      'threads)' % (f['features'][1], f['features'][2] / f['features'][1]),
      'ratio 7, pipeline CPU per example, --features_on device / cpu: %.2f'
      % (f['on_device'][0] / f['on_cpu'][0]),
      'ratio 8, seeded (ordered) / unseeded training pipeline: %.2f; '
      'training with op determinism / without: %.2f' % (
          f['on_cpu'][1] / f['unordered'][1],
          f['determinism_train'] / f['pipeline_train']),
      'ratio 9, decoding and examples of FLAC, Ogg Vorbis, MP3 / WAV: '
      '%s' % ', '.join('%.2f' % (formats[name] / formats['WAV'])
                       for name in ('FLAC', 'Ogg Vorbis', 'MP3')),
      'Estimated time to score the FSDKaggle2019 test set (%d clips, %.1f '
      'h, ~%d examples): %.1f min' % (TEST_SET_CLIPS, TEST_SET_HOURS,
                                      test_examples,
                                      test_examples / f['engine'] / 60)]


def _parse_args():
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
  return parser.parse_args()


def main():
  args = _parse_args()
  if args.rss_child:
    rss_child(*args.rss_child)
    return
  if args.determinism_child:
    determinism_child(args.determinism_child)
    return
  runtime.use_one_inter_op_thread()  # as main.py does, for both sides
  hparams = params.HParams()  # the baseline's defaults, batch size 64
  class_names = files.read_class_map(measure.CLASS_MAP)
  print(header())
  with tempfile.TemporaryDirectory() as tmp:
    data = measure.training_data(tmp, args.train_steps, hparams,
                                 args.test_clips)
    checkpoint = measure.write_checkpoint(os.path.join(tmp, 'model.ckpt-0'),
                                          len(class_names), hparams)
    run = _Run(data, class_names, hparams, checkpoint, tmp, args)
    if args.engines_only:
      benchmark_engines.engine_ratios(data, class_names, hparams, checkpoint,
                                      tmp)
      return
    formats = benchmark_audio.report(data['test_clip_dir'],
                                     os.path.join(tmp, 'formats'), hparams)
    if args.audio_only:
      return
    for measurement in MEASUREMENTS:
      print(measurement(run))
    print()
    benchmark_engines.engine_ratios(data, class_names, hparams, checkpoint,
                                    tmp)
  print()
  for line in _ratios(run.figures, formats):
    print(line)


if __name__ == '__main__':
  main()
