"""benchmark.py prints the ratios of what it measured: its arithmetic and
the arguments of each measurement, checked with the measurements replaced
by known figures (the timings themselves belong to the benchmark, not to
a test); --engines_only and --audio_only measure those alone; a failed
measuring child is an error; the header names the machine."""

import os
import re
import sys

import pytest

from tools import benchmark
from tools import benchmark_engines
from tools import benchmark_rates
from tagger.core import params


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


def test_help_prints_no_start_up_notices():
  """`benchmark.py --help` in a fresh process (where TensorFlow and LiteRT
  print their notices on import): the usage on stdout, nothing on stderr."""
  import subprocess
  from support.settings import REPO
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'tools', 'benchmark.py'), '--help'],
      capture_output=True, text=True, timeout=120,
      env={k: v for k, v in os.environ.items()
           if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')})
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith('usage: benchmark.py')
  assert result.stderr == ''
