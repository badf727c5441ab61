"""benchmark_engines.py: the TFLite engine's ratios against the plain
model's forward pass, and each TFLite model timed alone, checked with the
measurements replaced by known figures."""

import dataclasses

from tools import benchmark
from tools import benchmark_engines
from tools import benchmark_rates
from tagger.core import params
from tagger.engines import scoring


def test_engine_ratios(monkeypatch, capsys):
  hparams = dataclasses.replace(params.HParams(), batch_size=32)
  assert hparams.batch_size != scoring.BATCH_SIZE
  calls = []
  speed = {'none': 2.0, 'dynamic': 3.0, 'int8': 5.0}

  def inference_rate(data, class_names, hp, checkpoint, out_csv, engine=None,
                     batch_size=None):
    calls.append((engine and engine.quantize, batch_size))
    if engine is None:
      return 700.0, 1
    assert engine.kind == 'tflite'
    assert engine.calibration_paths == ('clips/a.wav', 'clips/b.wav')
    return speed[engine.quantize] * batch_size, 1

  monkeypatch.setattr(benchmark.files, 'read_labeled_csv',
                      lambda *a: [('a.wav', ()), ('b.wav', ())])
  monkeypatch.setattr(benchmark_rates, 'plain_forward_rate',
                      lambda n, hp, repeats, b: 4.0 * b)
  monkeypatch.setattr(benchmark_rates, 'inference_rate', inference_rate)
  monkeypatch.setattr(benchmark_engines, 'tflite_model_rates',
                      lambda *a: {'int8, 2 threads': 9.0})
  monkeypatch.setattr(benchmark_rates, 'feature_rate', lambda *a: 123.0)
  data = {'train_csv': 'train.csv', 'train_clip_dir': 'clips'}
  rates, plain = benchmark_engines.engine_ratios(data, ['x'] * 80, hparams, 'ckpt',
                                         '/tmp')
  sizes = (scoring.BATCH_SIZE, 32)
  assert plain == {b: 4.0 * b for b in sizes}
  assert rates == {(q, b): speed[q] * b for q in speed for b in sizes}
  assert calls[0] == (None, None)  # the Keras engine at its own batch size
  assert sorted(calls[1:]) == sorted(rates)
  out = capsys.readouterr().out
  for b in sizes:
    assert ('TFLite float32 end to end / plain forward, batch %d: 0.50 '
            '(target >= 1.3)' % b) in out
    assert ('TFLite dynamic end to end / plain forward, batch %d: 0.75\n'
            % b) in out
    assert ('TFLite int8 end to end / plain forward, batch %d: 1.25 '
            '(target >= 3.0)' % b) in out
  assert 'int8, 2 threads 9.0 examples/s' in out
  assert 'feature pipeline alone: 123 examples/s' in out
  assert 'Keras engine end to end (batch %d): 700.0' % scoring.BATCH_SIZE in out


def test_tflite_model_rates_time_each_model_alone(monkeypatch):
  """Each quantization of the loaded checkpoint (int8 calibrated on the
  training clips), on 1 thread and every core with LiteRT and on every
  core with tf.lite.Interpreter, timed on one batch of the Scorer's size."""
  made = {}

  class Scorer:
    def __init__(self, model_name, num_classes, hp, engine):
      made['engine'] = engine

    def load(self, checkpoint):
      made['checkpoint'] = checkpoint

    def convert(self, quantize):
      return 'model-' + quantize

  ran = []  # (model, threads, batch shape) of each call, in order

  def runner(model, threads):
    return lambda batch: ran.append((model, threads, batch.shape))

  seconds = {('model-none', 1): 0.5, ('model-none', 2): 0.25,
             ('model-dynamic', 1): 0.4, ('model-dynamic', 2): 0.2,
             ('model-int8', 1): 0.1, ('model-int8', 2): 0.05}

  def timed(fn, warmup, repeats):
    assert (warmup, repeats) == (2, 16)
    before = len(ran)
    fn()
    assert len(ran) == before + 1  # one model's call
    return seconds.get(ran[-1][:2], 0.8)

  monkeypatch.setattr(scoring, 'Scorer', Scorer)
  monkeypatch.setattr(benchmark_engines.tflite_engine, 'Runner', runner)
  monkeypatch.setattr(benchmark_engines.tflite_engine, 'default_threads', lambda: 2)
  monkeypatch.setattr(benchmark_engines, '_tf_lite_runner',
                      lambda model, threads: runner(model + ' (tf)', threads))
  monkeypatch.setattr(benchmark_rates, 'timed', timed)
  monkeypatch.setattr(benchmark.files, 'read_labeled_csv',
                      lambda csv, clip_dir, names: [('a.wav', 0),
                                                    ('b.wav', 1)])
  rates = benchmark_engines.tflite_model_rates(
      ['x', 'y'], params.HParams(), 'ckpt',
      {'train_csv': 'train.csv', 'train_clip_dir': '/clips'})
  batch = scoring.BATCH_SIZE
  assert made['engine'] == benchmark_engines.tflite_engine.Engine(
      'tflite', calibration_paths=('/clips/a.wav', '/clips/b.wav'))
  assert made['checkpoint'] == 'ckpt'
  assert rates == {
      'none, 1 threads': batch / 0.5, 'none, 2 threads': batch / 0.25,
      'none, 2 threads, tf.lite.Interpreter': batch / 0.8,
      'dynamic, 1 threads': batch / 0.4, 'dynamic, 2 threads': batch / 0.2,
      'dynamic, 2 threads, tf.lite.Interpreter': batch / 0.8,
      'int8, 1 threads': batch / 0.1, 'int8, 2 threads': batch / 0.05,
      'int8, 2 threads, tf.lite.Interpreter': batch / 0.8}
  assert ran[2][:2] == ('model-none (tf)', 2)
  frames = params.HParams().geometry.example_frames
  assert {shape for _, _, shape in ran} == {(batch, frames, 96)}
