"""benchmark.py prints the ratios of what it measured: its arithmetic and
the arguments of each measurement, checked with the measurements replaced
by known figures and a clock that moves by set amounts (the timings
themselves belong to the benchmark, not to a test)."""

import dataclasses
import math
import os
import re
import sys

import numpy as np
import pytest

from tools import benchmark
from tools import benchmark_engines
from tools import benchmark_rates
from tagger.core import params
from tagger.engines import scoring


class Clock:
  """time.perf_counter / process_time giving these readings in turn."""

  def __init__(self, *readings):
    self.readings = list(readings)

  def __call__(self):
    return self.readings.pop(0)


def test_timed_is_the_mean_of_the_repeats_after_the_warmup(monkeypatch):
  calls = []
  # Warm-up calls happen before the first reading: 3 repeats in 6 s.
  monkeypatch.setattr(benchmark_rates.time, 'perf_counter', Clock(100.0, 106.0))
  assert benchmark_rates.timed(lambda: calls.append(1), 2, 3) == 2.0
  assert len(calls) == 5


def test_training_data_fills_the_timed_steps(monkeypatch):
  made = {}
  monkeypatch.setattr(benchmark.make_demo_data, 'make_dataset',
                      lambda folder, **kw: made.update(kw) or {})
  hparams = params.HParams()
  benchmark_rates.training_data('/nowhere', 16, hparams, 7)
  # ~24 examples a clip; the warm-up and timed steps (16 + 4) without an
  # epoch's wrap.
  assert made['num_train'] == math.ceil(20 * hparams.batch_size / 24) == 54
  assert (made['num_validation'], made['num_test']) == (0, 7)
  assert (made['min_seconds'], made['max_seconds']) == (2.0, 20.0)


def test_pipeline_cpu_per_example(monkeypatch):
  hparams = dataclasses.replace(params.HParams(), batch_size=8)
  taken, asked = [], {}

  def train_dataset(csv, clip_dir, class_names, hp, shuffle, **kw):
    asked.update(kw, shuffle=shuffle)
    return iter(lambda: taken.append(1), 'never')

  monkeypatch.setattr(benchmark.files, 'read_labeled_csv',
                      lambda *a: [('a.wav', ()), ('b.wav', ()), ('c.wav', ())])
  monkeypatch.setattr(benchmark_rates.inputs, 'train_dataset', train_dataset)
  monkeypatch.setattr(benchmark_rates.time, 'process_time', Clock(10.0, 13.0))
  monkeypatch.setattr(benchmark_rates.time, 'perf_counter', Clock(100.0, 104.0))
  data = {'train_csv': 'train.csv', 'train_clip_dir': 'clips'}
  cpu, rate = benchmark_rates.pipeline_cpu_per_example(data, [], hparams, True,
                                                 seed=None, batches=20)
  assert len(taken) == 21  # one untimed batch first
  assert asked == {'crops': True, 'seed': None, 'shuffle': 3}
  assert cpu == pytest.approx(3.0 / 160)
  assert rate == pytest.approx(160 / 4.0)


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


def _fake_measurements(monkeypatch, default, seen):
  """Every measurement of benchmark.main replaced by a figure of its own;
  what they were given goes into `seen`."""

  def pipeline_train_rate(data, class_names, hp, warmup, repeats,
                          strategy=None):
    assert (warmup, repeats) == (3, 5)
    if hp.precision == 'mixed_bfloat16':
      return 60.0
    assert hp == default
    return 38.0 if strategy is not None else 40.0

  def pipeline_cpu(data, class_names, hp, crops, seed=1):
    return {(False, 1): (0.004, 250.0), (True, 1): (0.003, 300.0),
            (False, None): (0.005, 200.0)}[crops, seed]

  def plain_forward_rate(n, hp, repeats, batch_size=None):
    assert (n, batch_size) == (80, None)
    return 200.0

  def inference_rate(data, class_names, hp, checkpoint, out_csv):
    seen['checkpoint'] = checkpoint
    return 250.0, 1000

  def make_clip(labels, seconds, rng):
    seen.setdefault('clips', []).append(seconds)

  def peak_rss(clip_dir, checkpoint, class_map_path):
    return {'one_clip_5': 400.0, 'one_clip_600': 480.0}[
        clip_dir.rsplit('/', 1)[1]]

  for name, value in dict(
      training_data=lambda tmp, steps, hp, clips: {'clips': clips,
                                                   'test_clip_dir': None},
      write_checkpoint=lambda path, n, hp: 'ckpt',
      plain_forward_rate=plain_forward_rate,
      inference_rate=inference_rate,
      plain_train_rate=lambda n, hp, repeats: 50.0,
      pipeline_train_rate=pipeline_train_rate,
      feature_rate=lambda data, cn, hp, threads: {1: 300.0, 2: 500.0}[threads],
      pipeline_cpu_per_example=pipeline_cpu,
      op_determinism_train_rate=lambda args: 36.0,
      cached_rate=lambda data, cn, hp, threads: 1000.0 * threads,
      precise_bn_seconds=lambda data, cn, hp: (5.0, 16.0),
      peak_rss_mib=peak_rss,
      engine_ratios=lambda *a: seen.update(engines=a)).items():
    owner = next(m for m in (benchmark, benchmark_rates, benchmark_engines)
                 if hasattr(m, name))
    monkeypatch.setattr(owner, name, value)
  monkeypatch.setattr(benchmark.runtime, 'use_one_inter_op_thread',
                      lambda: None)
  monkeypatch.setattr(benchmark.synthetic, 'make_clip', make_clip)
  monkeypatch.setattr(benchmark.make_demo_data, 'write_wav', lambda *a: None)
  monkeypatch.setattr(benchmark, 'header', lambda: 'the machine')
  monkeypatch.setattr(benchmark.benchmark_audio, 'report', lambda *a: (
      seen.update(formats=a[0]) or {'WAV': 100.0, 'FLAC': 90.0,
                                    'Ogg Vorbis': 50.0, 'MP3': 40.0}))


def test_main_prints_the_ratios_of_its_measurements(monkeypatch, capsys):
  """Every measurement replaced by a figure of its own; the ratios
  worked by hand."""
  default = params.HParams()
  seen = {}
  _fake_measurements(monkeypatch, default, seen)
  monkeypatch.setattr(sys, 'argv', ['benchmark.py', '--train_steps', '5'])
  benchmark.main()
  out = capsys.readouterr().out
  assert out.startswith('the machine\n')  # ratios are read beside it
  engines = seen.pop('engines')
  assert seen.pop('formats') is None  # the data's test_clip_dir
  assert seen == {'checkpoint': 'ckpt', 'clips': [5, 600]}
  assert engines[0] == {'clips': 60, 'test_clip_dir': None}
  assert engines[2:4] == (default, 'ckpt')
  ratios = dict(re.findall(r'^(ratio \d), [^:]*: ([\d.]+)', out, re.M))
  # PreciseBN: 100 steps of 64 examples at 40 examples/s take 160 s.
  assert ratios == {'ratio 1': '1.25', 'ratio 2': '0.80', 'ratio 3': '1.20',
                    'ratio 4': '0.100', 'ratio 5': '0.95', 'ratio 6': '1.50',
                    'ratio 7': '0.75', 'ratio 8': '1.25', 'ratio 9': '0.90'}
  assert 'MP3 / WAV: 0.90, 0.50, 0.40\n' in out
  assert 'training with op determinism / without: 0.90' in out
  assert ('Training pipeline CPU time per example: 4.00 ms with the examples '
          'made on the CPU, 3.00 ms with --features_on device (250 and 300 '
          'examples/s); unseeded order 200 examples/s') in out
  assert 'Feature pipeline per thread: 300 examples/s (1.67 x' in out
  assert 'after the first epoch: 1000 examples/s on 1 thread, 2000 on 2' in out
  assert 'PreciseBN: 5.0 s at the first checkpoint, 16.0 s at later' in out
  assert '100 training steps take 160 s' in out
  # 12.9 h as 2 examples a second plus half an example a clip, at 250/s.
  examples = 12.9 * 3600 * 2 + 4481 * 0.5
  assert '~%d examples): %.1f min' % (examples, examples / 250 / 60) in out


@pytest.mark.parametrize('overrides', ['', 'mel_bands=64,bneps=0.25,bndecay=0.5'])
def test_plain_mobilenet_is_the_baselines_network(overrides):
  """Stock Keras layers, the same network: with the same (random) weights,
  the same logits as model.py's MobileNet v1 in inference, and the same
  moving statistics after a training call, with the defaults and with the
  hparams it reads set otherwise."""
  import numpy as np
  import model as model_lib
  hparams = params.parse_hparams(overrides)
  ours = model_lib.build_model(benchmark_rates.MODEL, 80, hparams)
  plain = benchmark_rates.plain_mobilenet(80, hparams)
  rng = np.random.default_rng(0)
  # 1-D weights (batch norm's, the bias) positive: variances among them.
  weights = [rng.uniform(0.5, 1.5, w.shape) if w.ndim == 1 else
             rng.normal(0, 0.3, w.shape) for w in ours.get_weights()]
  ours.set_weights(weights)
  plain.set_weights(weights)
  frames = hparams.geometry.example_frames
  batch = rng.normal(-4, 2, (2, frames, hparams.mel_bands)).astype(np.float32)
  expected = np.asarray(ours(batch, training=False))
  assert np.abs(expected).max() > 1
  np.testing.assert_allclose(np.asarray(plain(batch, training=False)),
                             expected, rtol=1e-4, atol=1e-4 * np.abs(
                                 expected).max())
  ours(batch, training=True)
  plain(batch, training=True)
  for a, b in zip(ours.get_weights(), plain.get_weights()):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
  # The training call moved the first moving mean from the weights set.
  assert not np.allclose(ours.get_weights()[3], weights[3], atol=1e-3)


def test_plain_forward_rate(monkeypatch):
  timed = []

  def once(fn, warmup, repeats):
    timed.append(fn().shape)  # the probabilities of one batch
    return 0.25

  monkeypatch.setattr(benchmark_rates, 'timed', once)
  hparams = dataclasses.replace(params.HParams(), batch_size=3)
  assert benchmark_rates.plain_forward_rate(80, hparams, 8) == 3 / 0.25
  assert benchmark_rates.plain_forward_rate(80, hparams, 8, batch_size=2) == 8.0
  assert timed == [(3, 80), (2, 80)]


def test_inference_rate_scores_every_example_into_a_submission(
    tmp_path, monkeypatch):
  import csv
  from tagger.sound import features
  from tagger.core import files
  from tagger.sound import wav
  hparams = params.HParams()
  data = benchmark.make_demo_data.make_dataset(
      str(tmp_path / 'data'), num_train=0, num_validation=0, num_test=3,
      min_seconds=1.0, max_seconds=4.0, seed=3)
  class_names = files.read_class_map(benchmark_rates.CLASS_MAP)
  checkpoint = benchmark_rates.write_checkpoint(str(tmp_path / 'model.ckpt-0'), 80,
                                          hparams)
  sizes = []
  score = scoring.Scorer.score

  def spy(self, *args, **kw):
    sizes.append(self.batch_size)
    return score(self, *args, **kw)

  monkeypatch.setattr(scoring.Scorer, 'score', spy)
  out_csv = str(tmp_path / 'submission.csv')
  rate, total = benchmark_rates.inference_rate(data, class_names, hparams,
                                         checkpoint, out_csv, batch_size=5)
  clips = sorted(files.list_clips(data['test_clip_dir']))
  assert total == sum(features.num_examples(wav.read_header(
      benchmark.os.path.join(data['test_clip_dir'], f)).num_frames, hparams)
                      for f in clips)
  assert total > 3 and rate > 0
  assert sizes == [5, 5]  # warm-up, then the timed run
  with open(out_csv) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['fname'] + class_names
  assert sorted(r[0] for r in rows[1:]) == clips


def test_engines_only_measures_the_engines_alone(monkeypatch, capsys):
  called = []
  monkeypatch.setattr(benchmark_rates, 'training_data',
                      lambda tmp, steps, hp, clips: {'clips': clips})
  monkeypatch.setattr(benchmark_rates, 'write_checkpoint', lambda *a: 'ckpt')
  monkeypatch.setattr(benchmark_engines, 'engine_ratios',
                      lambda *a: called.append(a[::3]))
  monkeypatch.setattr(benchmark_rates, 'plain_forward_rate',
                      lambda *a: pytest.fail('measured more than the engines'))
  monkeypatch.setattr(benchmark.runtime, 'use_one_inter_op_thread',
                      lambda: None)
  monkeypatch.setattr(sys, 'argv', ['benchmark.py', '--engines_only',
                                    '--test_clips', '7'])
  monkeypatch.setattr(benchmark, 'header', lambda: 'the machine')
  benchmark.main()
  assert called == [({'clips': 7}, 'ckpt')]
  out = capsys.readouterr().out
  assert out.startswith('the machine\n') and 'ratio' not in out


def test_audio_only_measures_the_formats_and_resamplers_alone(monkeypatch,
                                                              capsys):
  called = []
  monkeypatch.setattr(benchmark_rates, 'training_data',
                      lambda tmp, steps, hp, clips: {'test_clip_dir': 'd'})
  monkeypatch.setattr(benchmark_rates, 'write_checkpoint', lambda *a: 'ckpt')
  monkeypatch.setattr(benchmark.benchmark_audio, 'report',
                      lambda *a: called.append(a[0]))
  monkeypatch.setattr(benchmark_rates, 'plain_forward_rate',
                      lambda *a: pytest.fail('measured more than audio'))
  monkeypatch.setattr(benchmark.runtime, 'use_one_inter_op_thread',
                      lambda: None)
  monkeypatch.setattr(sys, 'argv', ['benchmark.py', '--audio_only'])
  monkeypatch.setattr(benchmark, 'header', lambda: 'the machine')
  benchmark.main()
  assert called == ['d']
  assert 'ratio' not in capsys.readouterr().out


def test_resampler_rows_rank_the_resamplers(monkeypatch):
  """On 2 s of tones: soxr's errors far below resample_poly's (whose
  filter is -6 dB at the lower Nyquist frequency), aliases removed; and
  the time per minute is the mean of the repeats scaled to 60 s."""
  from tools import benchmark_audio
  rows = benchmark_audio.resampler_rows(seconds=3.0, repeats=1)
  by = {(name, rate): (error, alias) for name, rate, error, alias, _ in rows}
  assert len(rows) == 6 and all(r[4] > 0 for r in rows)
  for rate in (48000, 22050):
    assert by['soxr VHQ', rate][0] < by['soxr HQ', rate][0] + 1
    assert by['soxr HQ', rate][0] < by['scipy resample_poly', rate][0] - 20
    assert by['scipy resample_poly', rate][0] < -25
  assert by['soxr VHQ', 48000][1] < -100 < by['scipy resample_poly',
                                               48000][1] < -5
  assert by['soxr VHQ', 22050][1] is None
  # The figures of its fixed tones (seed 0), as docs/audio-formats.md
  # shows them for 10 s.
  assert round(by['soxr VHQ', 48000][0], 1) == -84.8
  assert round(by['scipy resample_poly', 22050][0], 1) == -41.1
  # A clock that does not start at 0: a time is a difference of two readings.
  monkeypatch.setattr(benchmark_audio.time, 'perf_counter', Clock(
      *[100.0, 100.5] * 6))
  rows = benchmark_audio.resampler_rows(seconds=2.0, repeats=2)
  assert [r[4] for r in rows] == [7.5] * 6  # 0.25 s per 2 s of audio
  # By default 10 s, 3 repeats: 3 s for 3 repeats, 6 s per minute.
  monkeypatch.setattr(benchmark_audio, '_resamplers', lambda: {
      'fake': lambda x, rate: np.ones(441000)})
  monkeypatch.setattr(benchmark_audio.time, 'perf_counter', Clock(
      *[50.0, 53.0] * 2))
  assert [r[4] for r in benchmark_audio.resampler_rows()] == [6.0, 6.0]
  np.testing.assert_allclose(benchmark_audio._db(np.full(8, 0.1),
                                                 np.ones(3)), -20.0)
  np.testing.assert_allclose(benchmark_audio._tones(8, 1.0, [1.0, 2.0],
                                                    [0.0, 0.5]),
                             0.02 * (np.sin(np.pi * np.arange(8) / 4) +
                                     np.sin(np.pi * np.arange(8) / 2 + 0.5)))
  lines = benchmark_audio.resampler_lines([('r', 48000, -70.04, -130.0, 0.25),
                                           ('r', 22050, -50.0, None, 1.0)])
  assert lines == [
      'r, 48000 Hz to 44.1 kHz: error -70.0 dB, aliases -130.0 dB, 0.250 s '
      'per minute of audio',
      'r, 22050 Hz to 44.1 kHz: error -50.0 dB, 1.000 s per minute of audio']


def test_format_rates_decode_copies_of_the_same_clips(tmp_path, monkeypatch,
                                                      capsys):
  from tools import benchmark_audio
  from tools import make_demo_data
  clip_dir = tmp_path / 'clips'
  clip_dir.mkdir()
  rng = np.random.default_rng(0)
  for i, seconds in enumerate((1.0, 9.0)):
    make_demo_data.write_wav(str(clip_dir / ('c%d.wav' % i)),
                             make_demo_data.make_clip(['Hiss'], seconds, rng))
  monkeypatch.setattr(benchmark_audio, 'resampler_rows', lambda: [])
  hparams = params.HParams()
  rates = benchmark_audio.report(str(clip_dir), str(tmp_path / 'out'),
                                 hparams)
  assert list(rates) == ['WAV', 'FLAC', 'Ogg Vorbis', 'MP3']
  assert all(rate > 0 for rate in rates.values())
  assert sorted(os.listdir(str(tmp_path / 'out'))) == ['flac', 'mp3', 'ogg']
  assert sorted(os.listdir(str(tmp_path / 'out' / 'mp3'))) == ['c0.mp3',
                                                               'c1.mp3']
  out = capsys.readouterr().out
  assert out.startswith('Decoding and examples (no model), 2 clips: WAV ')
  assert 'examples/s (1.00 x WAV), FLAC ' in out
  # Every example of every copy, each pass: 2 + 18 examples, timed by a
  # clock that moves 40 s a format in the first pass, 80 s in the second:
  # the best pass counts (0.5 examples/s, below any starting guess of 1).
  monkeypatch.setattr(benchmark_audio.time, 'perf_counter',
                      Clock(*[10.0, 50.0] * 4 + [10.0, 90.0] * 4))
  copies = benchmark_audio.format_copies(
      [str(clip_dir / 'c0.wav'), str(clip_dir / 'c1.wav')],
      str(tmp_path / 'again'))
  assert benchmark_audio.format_rates(copies, hparams) == {
      'WAV': 0.5, 'FLAC': 0.5, 'Ogg Vorbis': 0.5, 'MP3': 0.5}


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


def test_a_failed_measuring_child_is_an_error(tmp_path, monkeypatch):
  """The op-determinism timing runs in a child process: one that fails
  stops the benchmark with its status, not with a figure read from
  whatever it printed."""
  import subprocess
  child = tmp_path / 'child.py'
  child.write_text('import sys\nprint(sys.argv[1:])\nprint(12.5)\n'
                   'sys.exit(int(sys.argv[2]) % 7)\n')
  monkeypatch.setattr(benchmark, '__file__', str(child))
  args = benchmark.argparse.Namespace(train_steps=14)
  assert benchmark.op_determinism_train_rate(args) == 12.5
  args.train_steps = 15
  with pytest.raises(subprocess.CalledProcessError):
    benchmark.op_determinism_train_rate(args)


def test_the_header_names_the_machine_and_its_gpus(monkeypatch):
  """The first line says where the ratios were measured: the machine as
  study logs name it, and the GPUs TensorFlow sees (none on a CPU-only
  machine, their names otherwise)."""
  from tagger.core import machine
  import tensorflow as tf
  monkeypatch.setattr(machine, 'describe', lambda: 'Some CPU, avx2, 2 cores')
  monkeypatch.setattr(tf.config, 'list_physical_devices',
                      lambda kind: [] if kind == 'GPU' else ['cpu'])
  assert benchmark.header() == 'Some CPU, avx2, 2 cores; GPUs: none'

  class Device:
    def __init__(self, name):
      self.name = name

  monkeypatch.setattr(tf.config, 'list_physical_devices', lambda kind: [
      Device('/physical_device:GPU:%d' % i) for i in range(3)
  ] if kind == 'GPU' else [])
  assert benchmark.header() == (
      'Some CPU, avx2, 2 cores; GPUs: /physical_device:GPU:0, '
      '/physical_device:GPU:1, /physical_device:GPU:2')
