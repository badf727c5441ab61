"""benchmark_rates.py's measurements: their arithmetic and arguments,
checked with a clock that moves by set amounts; the plain MobileNet the
ratios are taken against is the baseline's network; inference_rate scores
every example into a submission."""

import dataclasses
import math

import pytest

from tools import benchmark
from tools import benchmark_rates
from tagger.core import params
from tagger.engines import scoring
from support.clocks import Clock


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
