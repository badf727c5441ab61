"""Each option changes what it says it changes: hparams set to values whose
effect is computed here independently (NumPy, closed forms, hand-worked
cases), in-process, with small models. Here: the checks of params.py, the
loss of a noisy source's examples, moving or precise batch-norm statistics,
the feature hparams in scoring and TFLite (and those a --tflite_model file
records), silent calibration clips and the benchmarks' bn_stats_batches;
the flags of main.py are in test_options_flags.py, examples made on the
device from several sources in test_options_device.py and
test_options_device_run.py. docs/tests.md lists, for every option, the
tests that fail when its value is ignored."""

import math

import numpy as np
import pytest

from support import reference
from support.options import FEATURES, hparams_of, np_bce, np_noisy
from support.scores import read_class_names
from support.signals import write_pcm_wav



# --- the checks of params.py ------------------------------------------------

@pytest.mark.parametrize('text,needle', [
    ('crnn_dropout=1.0', 'crnn_dropout'),
    ('ema_decay=1.0', 'ema_decay'),
    ('mel_bands=1100', 'mel_bands'),
    ('mel_bands=1026', 'mel_bands'),  # one band more than the 1025 bins
    ('lr=nan', 'lr'),
    ('lr=-inf', 'lr'),
    ('mel_min_hz=5000,mel_max_hz=4000', 'mel_min_hz'),
    ('mel_max_hz=30000', 'mel_max_hz'),
    ('lq_q=1.5', 'lq_q'),
    ('pcen_s=1.5', 'pcen_s'),
    ('seed=2147483648', 'seed'),
    ('momentum=0.5', 'momentum'),
    ('nesterov=1', 'nesterov'),
    ('lrdecay=0.5,inverse_time_decay=0.1', 'lrdecay'),
    ('cosine_decay=1,lrdecay=0.5', 'cosine_decay'),
    ('warmup_steps=10,inverse_time_decay=0.1', 'warmup_steps'),
    ('mixup=0.2,loss=mfom_cprim', 'mixup'),
    ('noisy_lsmooth=0.1,noisy_loss=lq', 'noisy_lsmooth'),
    ('specaug_after_pcen=1,specaug_time_masks=1', 'specaug_after_pcen'),
    ('frontend=pcen,specaug_after_pcen=1', 'specaug_after_pcen'),
    ('stft_window_seconds=0.01,stft_hop_seconds=0.02', 'stft_hop_seconds'),
    ('example_window_seconds=0.005', 'example_window_seconds'),
    ('example_hop_seconds=0.004', 'example_hop_seconds'),
    ('example_window_seconds=61', 'example_window_seconds'),
])
def test_hparam_combinations_out_of_range_are_refused(text, needle):
  """Each value is refused, by a message naming the hparam; the next test
  shows their neighbours (and the combinations made whole) accepted."""
  from tagger.core import params
  with pytest.raises(ValueError, match=needle):
    params.parse_hparams(text)


@pytest.mark.parametrize('text', [
    'opt=sgd,momentum=0.5,nesterov=1',
    'noisy_lsmooth=0.1',
    'frontend=pcen,specaug_after_pcen=1,specaug_time_masks=1',
    'frontend=pcen,specaug_after_pcen=1,specaug_freq_masks=1',
    'mixup=0.2',
    'lrdecay=0.5', 'inverse_time_decay=0.1', 'cosine_decay=1,warmup_steps=5',
    'mel_min_hz=3000,mel_max_hz=4000',
    'crnn_dropout=0.9', 'ema_decay=0.9', 'lq_q=1.0', 'pcen_s=0.9',
    'seed=2147483647', 'mel_bands=1025',
    'stft_window_seconds=0.04,stft_hop_seconds=0.04',
    'example_window_seconds=60', 'example_hop_seconds=0.01',
    'example_window_seconds=0.01',
])
def test_hparam_combinations_in_range_are_accepted(text):
  """The neighbours of the refused values above pass, with what they
  depend on given."""
  from tagger.core import params
  hparams = params.parse_hparams(text)
  for item in text.split(','):
    name, value = item.split('=')
    assert str(getattr(hparams, name)) == str(type(getattr(
        params.HParams(), name))(value))


def test_stft_and_example_geometry_worked_by_hand():
  """A 50 ms window is 2205 samples (FFT 4096), a 20 ms hop 882; at 50
  frames a second a 2 s example is 100 frames and a 0.3 s hop 15. So a 3 s
  clip has 1 + (132300 - 2205) // 882 = 148 frames and ceil(148 / 15) = 10
  examples."""
  from tagger.sound import features
  from tagger.core import params
  hparams = hparams_of('stft_window_seconds=0.05,stft_hop_seconds=0.02,'
                       'example_window_seconds=2,example_hop_seconds=0.3')
  assert hparams.geometry == params.Geometry(
      window=2205, hop=882, fft_length=4096, example_frames=100,
      example_hop_frames=15)
  assert features.num_frames(3 * 44100, hparams) == 148
  assert features.num_examples(3 * 44100, hparams) == 10
  assert hparams.geometry.crop_length == 99 * 882 + 2205


# --- the loss of a noisy source's examples ----------------------------------

NOISY = [('bce', 'noisy_lsmooth', 0.4), ('lq', 'lq_q', 0.3),
         ('bootstrap_soft', 'bootstrap_soft_beta', 0.4),
         ('bootstrap_hard', 'bootstrap_hard_beta', 0.3)]


@pytest.mark.parametrize('name,hparam,value', NOISY)
def test_noisy_source_loss_follows_its_hparams(name, hparam, value):
  """With several sources, one noisy: the batch's loss is the mean of BCE
  with lsmooth over the curated examples and noisy_loss (with its own
  parameter) over the noisy ones."""
  from tagger.core import params
  import train
  hparams = params.parse_hparams('lsmooth=0.3,noisy_loss=%s,%s=%s' % (
      name, hparam, value))
  rng = np.random.default_rng(1)
  labels = (rng.random((8, 10)) < 0.3).astype(np.float32)
  logits = (2 * rng.standard_normal((8, 10))).astype(np.float32)
  noisy = np.array([0, 1, 1, 0, 1, 0, 1, 1], np.float32)
  loss_fn, head = train.step_lib.make_sources_loss(hparams)
  assert head is None
  got = float(loss_fn((labels, noisy), logits))
  x = logits.astype(np.float64)
  curated = np_bce(labels * 0.7 + 0.15, x)
  expected = np.where(noisy > 0, np_noisy(name, labels, x, value),
                      curated).mean()
  assert got == pytest.approx(expected, rel=1e-5)
  default = getattr(params.HParams(), hparam)
  other = np.where(noisy > 0, np_noisy(name, labels, x, default),
                   curated).mean()
  unsmoothed = np.where(noisy > 0, np_noisy(name, labels, x, value),
                        np_bce(labels, x)).mean()
  assert abs(other - expected) > 1e-3 and abs(unsmoothed - expected) > 1e-3


# --- moving or precise batch-norm statistics --------------------------------

def test_a_moving_statistics_run_saves_no_precise_statistics(tmp_path):
  """bn_stats=moving skips PreciseBN: its checkpoints hold no precise
  statistics, so scoring them (even asking for precise ones) uses the
  moving averages; a bn_stats=precise run's checkpoints hold them."""
  import tensorflow as tf
  from tagger.engines import scoring
  import train
  saved = {}
  for kind in ('moving', 'precise'):
    hparams = hparams_of('crnn_filters=2,bn_stats=%s,seed=1' % kind)
    state = train.state_lib.TrainingState('crnn', hparams, 80, None)
    prefix = str(tmp_path / kind / 'model.ckpt-0')
    state.checkpoint.write(prefix)
    saved[kind] = prefix
    names = [n for n, _ in tf.train.list_variables(prefix)]
    assert any(n.startswith('precise_bn/') for n in names) == (
        kind == 'precise'), kind
  scorer = scoring.Scorer('crnn', 80, hparams_of(
      'crnn_filters=2,bn_stats=precise,seed=1'))
  assert scorer.load(saved['moving']) == 'moving'
  assert scorer.load(saved['precise']) == 'precise'
  # And bn_stats=moving scores with the moving averages when there are
  # precise statistics.
  scorer = scoring.Scorer('crnn', 80, hparams_of(
      'crnn_filters=2,bn_stats=moving,seed=1'))
  assert scorer.load(saved['precise']) == 'moving'


# --- the feature hparams in scoring and TFLite ------------------------------

@pytest.fixture(scope='module')
def converted():
  """A scorer of a tiny CRNN with the FEATURES hparams, and its model part
  converted to TFLite bytes (float32)."""
  from tagger.engines import scoring
  from tagger.engines import tflite_engine
  hparams = hparams_of(FEATURES + ',crnn_filters=2,seed=1')
  # static: the GRU unrolled, as TFLite takes it (the same numbers).
  scorer = scoring.Scorer('crnn', 80, hparams, static=True)
  return {'hparams': hparams, 'scorer': scorer,
          'model': tflite_engine.convert(scorer.inference_model, hparams,
                                         'none')}


def test_scoring_and_tflite_take_the_feature_hparams(converted):
  """With 64 bands from 100 Hz to 8 kHz, offset 0.01, 0.5 s examples: the
  waveform model's log mel is NumPy's, its clip scores the mean sigmoid of
  the model on NumPy's examples; the scorer's batches and a TFLite model
  converted from the same model take such examples."""
  import tensorflow as tf
  from tagger.engines import tflite_engine
  hparams, scorer = converted['hparams'], converted['scorer']
  rng = np.random.default_rng(4)
  samples = np.round(rng.normal(0, 3000, 40000)).astype(np.int16)
  waveform = samples.astype(np.float64) / 32768.0
  examples = reference.np_examples(waveform, hparams).astype(np.float32)
  assert examples.shape[1:] == (50, 64) and len(examples) > 2
  logits = scorer.inference_model(examples, training=False).numpy()
  out = scorer.waveform_model(tf.constant(waveform[None], tf.float32))
  log_mel = out['log_mel'].numpy()[0]
  expected = reference.np_log_mel(waveform, hparams)
  assert log_mel.shape[1] == 64 and len(log_mel) > len(expected) // 2
  np.testing.assert_allclose(log_mel, expected[:len(log_mel)], atol=5e-5)
  sigmoid = 1 / (1 + np.exp(-logits.astype(np.float64)))
  np.testing.assert_allclose(out['clip_scores'].numpy()[0],
                             sigmoid.mean(axis=0), atol=2e-5)
  np.testing.assert_allclose(scorer.score_examples(examples), sigmoid,
                             atol=2e-5)
  runner = tflite_engine.Runner(converted['model'], 1)
  np.testing.assert_allclose(runner.logits(examples), logits, atol=1e-4)


def test_a_model_file_flag_scores_with_the_file_and_its_run(
    cli, converted, dataset, tmp_path):
  """--tflite_model: inference scores with that file, and with the model
  and hparams recorded in it (none given on the command line)."""
  from tagger.engines import tflite_engine
  path = str(tmp_path / 'examples_float32.tflite')
  with open(path, 'wb') as f:
    f.write(tflite_engine.with_metadata(converted['model'], tflite_engine.record(
        'crnn', converted['hparams'], read_class_names(), 'none', 'ckpt',
        'precise')))
  calls = cli(['--mode', 'inference', '--engine', 'tflite',
               '--tflite_model', path, '--tflite_threads', 2,
               '--inference_clip_dir', dataset['test_clip_dir'],
               '--predictions_csv_path', tmp_path / 'submission.csv'])
  given = calls['infer']
  assert given['engine'].model_path == path
  assert given['engine'].threads == 2
  assert given['model_name'] == 'crnn'
  assert given['hparams'] == converted['hparams']


def test_silent_calibration_is_refused_at_any_log_offset(tmp_path):
  """Digital silence gives log(mel_log_offset) everywhere: with an offset
  of 0.01 that is -4.6, and such clips are refused for calibration; a
  quiet noise clip is not."""
  from tagger.core import files
  from tagger.engines import tflite_engine
  hparams = hparams_of('mel_log_offset=0.01')
  silent = str(tmp_path / 'silent.wav')
  write_pcm_wav(silent, np.zeros(30000, np.int16))
  with pytest.raises(files.UserError, match='digital silence.*-4.61'):
    tflite_engine.calibration_examples([silent], hparams)
  noise = str(tmp_path / 'noise.wav')
  write_pcm_wav(noise, np.random.default_rng(1).integers(-30, 30, 30000))
  examples = tflite_engine.calibration_examples([silent, noise], hparams)
  assert examples.max() > math.log(0.01) + 1


# --- the benchmarks ---------------------------------------------------------

def test_benchmarks_precise_bn_timing_uses_bn_stats_batches(monkeypatch):
  from tools import benchmark_rates

  class Measured(Exception):
    pass

  def statistics_dataset(csv_path, clip_dir, class_names, hparams,
                         num_batches, *args, **kwargs):
    raise Measured(num_batches, hparams.batch_size)

  monkeypatch.setattr(benchmark_rates.inputs, 'statistics_dataset',
                      statistics_dataset)
  with pytest.raises(Measured) as measured:
    benchmark_rates.precise_bn_seconds({'train_csv': 'a.csv', 'train_clip_dir': 'a'},
                                 [], hparams_of('bn_stats_batches=5,'
                                                'batch_size=3'))
  assert measured.value.args == (5, 3)
  rates = []
  monkeypatch.setattr(benchmark_rates, 'timed', lambda fn, warmup, repeats: (
      rates.append(repeats) or 0.5))
  assert benchmark_rates.plain_forward_rate(80, hparams_of('batch_size=3'), 2) == 6.0
