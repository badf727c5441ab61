"""The TFLite engine's measurements for tools/benchmark.py: --engine tflite
end to end and each TFLite model alone, against the plain model's forward
pass.
"""

import os
import warnings

import numpy as np
import tensorflow as tf

from tagger.core import files
from tagger.engines import scoring
from tagger.engines import tflite_engine
from tools import benchmark_rates as measure


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
      rates[quantize, batch_size], _ = measure.inference_rate(
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
  scorer = scoring.Scorer(measure.MODEL, len(class_names), hparams, engine=(
      tflite_engine.Engine('tflite', calibration_paths=tuple(
          os.path.join(data['train_clip_dir'], f) for f, _ in rows))))
  scorer.load(checkpoint)
  frames = hparams.geometry.example_frames
  batch = np.random.default_rng(0).normal(
      -4, 2, (scoring.BATCH_SIZE, frames, hparams.mel_bands)).astype(
          np.float32)
  rates = {}
  for quantize in ('none', 'dynamic', 'int8'):
    model = scorer.convert(quantize)
    for threads in sorted({1, tflite_engine.default_threads()}):
      runner = tflite_engine.Runner(model, threads)
      rates['%s, %d threads' % (quantize, threads)] = (
          scoring.BATCH_SIZE / measure.timed(lambda: runner(batch), 2, 16))
    # TensorFlow's own (deprecated) interpreter on the same model, beside
    # LiteRT: the reason LiteRT is a requirement.
    runner = _tf_lite_runner(model, tflite_engine.default_threads())
    rates['%s, %d threads, tf.lite.Interpreter' % (
        quantize, tflite_engine.default_threads())] = (
            scoring.BATCH_SIZE / measure.timed(lambda: runner(batch), 2, 16))
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
  plain = {b: measure.plain_forward_rate(len(class_names), hparams, 8, b)
           for b in batch_sizes}
  keras, _ = measure.inference_rate(data, class_names, hparams, checkpoint,
                                    out_csv)
  rates = tflite_rates(data, class_names, hparams, checkpoint, out_csv,
                       batch_sizes)
  alone = tflite_model_rates(class_names, hparams, checkpoint, data)
  print('TFLite models alone (batch %d, random examples): %s; feature '
        'pipeline alone: %.0f examples/s on 2 threads' % (
            scoring.BATCH_SIZE, ', '.join('%s %.1f examples/s' % item
                                          for item in alone.items()),
            measure.feature_rate(data, class_names, hparams, 2)))
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
