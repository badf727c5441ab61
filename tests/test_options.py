"""Each option changes what it says it changes: hparams set to values whose
effect is computed here independently (NumPy, closed forms, hand-worked
cases), in-process, with small models; the training-time options also with
examples made on the device (--features_on device) and with several
training sources; and every flag of main.py reaching the work it steers.

docs/tests.md lists, for every option, the tests that fail when its value is
ignored."""

import contextlib
import inspect
import io
import math
import os
import re

import numpy as np
import pytest

from tagger.core import checkpoints
from support import reference
from conftest import CLASS_MAP, read_class_names, write_pcm_wav


def _hparams(text=''):
  from tagger.core import params
  return params.parse_hparams(text)


# --- the checks of params.py -------------------------------------------------

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
  hparams = _hparams('stft_window_seconds=0.05,stft_hop_seconds=0.02,'
                     'example_window_seconds=2,example_hop_seconds=0.3')
  assert hparams.geometry == params.Geometry(
      window=2205, hop=882, fft_length=4096, example_frames=100,
      example_hop_frames=15)
  assert features.num_frames(3 * 44100, hparams) == 148
  assert features.num_examples(3 * 44100, hparams) == 10
  assert hparams.geometry.crop_length == 99 * 882 + 2205


# --- the loss of a noisy source's examples -----------------------------------

def _np_bce(targets, logits):
  p = 1 / (1 + np.exp(-logits))
  return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(axis=1)


def _np_noisy(name, labels, logits, value):
  """The per-example loss of docs/model.md's 'Noisy labels', in NumPy."""
  p = 1 / (1 + np.exp(-logits))
  if name == 'bce':
    return _np_bce(labels * (1 - value) + 0.5 * value, logits)
  if name == 'lq':
    return (labels * (1 - p ** value) / value +
            (1 - labels) * (1 - (1 - p) ** value) / value).mean(axis=1)
  if name == 'bootstrap_soft':
    return _np_bce(value * labels + (1 - value) * p, logits)
  return _np_bce(value * labels + (1 - value) * (p > 0.5), logits)


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
  curated = _np_bce(labels * 0.7 + 0.15, x)
  expected = np.where(noisy > 0, _np_noisy(name, labels, x, value),
                      curated).mean()
  assert got == pytest.approx(expected, rel=1e-5)
  default = getattr(params.HParams(), hparam)
  other = np.where(noisy > 0, _np_noisy(name, labels, x, default),
                   curated).mean()
  unsmoothed = np.where(noisy > 0, _np_noisy(name, labels, x, value),
                        _np_bce(labels, x)).mean()
  assert abs(other - expected) > 1e-3 and abs(unsmoothed - expected) > 1e-3


# --- every flag of main.py reaches the work it steers ------------------------

@pytest.fixture(scope='module')
def recorded_checkpoint(tmp_path_factory):
  """A train_dir holding model.ckpt-3 of a tiny CRNN with its run record,
  written in-process."""
  import keras
  import train
  train_dir = tmp_path_factory.mktemp('recorded') / 'train'
  train_dir.mkdir()
  hparams = _hparams('crnn_filters=2,mel_bands=64,batch_size=2,seed=3')
  keras.utils.set_random_seed(3)
  state = train.state_lib.TrainingState('crnn', hparams, len(read_class_names()), None)
  state.step.assign(3)
  prefix = str(train_dir / 'model.ckpt-3')
  state.checkpoint.write(prefix)
  return {'train_dir': str(train_dir), 'prefix': prefix}


@pytest.fixture
def cli(monkeypatch):
  """run(args): main.run() in this process with the work of each mode
  replaced by a recorder; returns {function name: {parameter: value}} of
  what the mode was given. The flags are reset afterwards."""
  from tagger.training import distribution
  import evaluation
  from tagger.modes import export
  import inference
  import main
  from tagger.modes import relabel
  from tagger.core import runtime
  from tagger.modes import tagging
  import train
  calls = {}

  def record(module, name, result=None):
    signature = inspect.signature(getattr(module, name))

    def recorder(*args, **kwargs):
      calls[name] = signature.bind(*args, **kwargs).arguments
      return result
    monkeypatch.setattr(module, name, recorder)

  for module, name, result in (
      (train, 'train', None), (evaluation, 'evaluate', None),
      (evaluation, 'wait_for_first_checkpoint', None),
      (inference, 'infer', None), (export, 'export', None),
      (tagging, 'tag', 0), (relabel, 'relabel', None),
      (distribution, 'make_strategy', None)):
    record(module, name, result)
  # TensorFlow has run ops in this process: its thread pools are set.
  monkeypatch.setattr(runtime, 'use_one_inter_op_thread', lambda: None)

  def run(args):
    main.FLAGS.unparse_flags()
    try:
      main.FLAGS(['main.py', '--class_map_path', CLASS_MAP] +
                 [str(a) for a in args])
      with contextlib.redirect_stdout(io.StringIO()):
        main.run()
    finally:
      main.FLAGS.unparse_flags()
    return calls
  yield run
  main.FLAGS.unparse_flags()


def test_training_flags_reach_the_training_run(cli, dataset, tmp_path,
                                               recorded_checkpoint):
  """Every training flag, set to a value other than its default, is what
  the training run and the distribution strategy are given."""
  csvs = [dataset['train_csv'], dataset['validation_csv']]
  calls = cli([
      '--mode', 'train', '--model', 'crnn',
      '--train_csv_path', ','.join(csvs),
      '--train_clip_dir', ','.join([dataset['train_clip_dir']] * 2),
      '--train_source_weights', '3,1', '--train_source_kinds', 'curated,noisy',
      '--train_dir', tmp_path / 'train', '--epoch_num_batches', 5,
      '--max_steps', 9, '--train_cache_examples', '--features_on', 'device',
      '--distribution', 'none', '--cluster_start_timeout_seconds', 33,
      '--hparams', 'batch_size=2,warmstart=1,lrdecay=0.5',
      '--warmstart_checkpoint', recorded_checkpoint['prefix'] + '.index',
      '--warmstart_include_scopes', 'conv1,gru',
      '--warmstart_exclude_scopes', 'logits'])
  assert list(calls['make_strategy'].values()) == ['none', 33.0]
  given = calls['train']
  assert given['model_name'] == 'crnn'
  assert (given['hparams'].batch_size, given['hparams'].warmstart,
          given['hparams'].lrdecay) == (2, 1, 0.5)
  assert given['class_names'] == read_class_names()
  assert [(s.csv_path, s.clip_dir, s.weight, s.noisy)
          for s in given['sources']] == [
              (csvs[0], dataset['train_clip_dir'], 3.0, False),
              (csvs[1], dataset['train_clip_dir'], 1.0, True)]
  assert given['train_dir'] == str(tmp_path / 'train')
  assert (given['epoch_num_batches'], given['max_steps']) == (5, 9)
  assert given['warmstart_checkpoint'] == recorded_checkpoint['prefix']
  assert list(given['warmstart_include_scopes']) == ['conv1', 'gru']
  assert list(given['warmstart_exclude_scopes']) == ['logits']
  assert given['cache_examples'] is True
  assert given['features_on'] == 'device'


def test_eval_flags_reach_the_eval_loop(cli, dataset, tmp_path,
                                        recorded_checkpoint):
  """The eval flags (continuous, its timings, the claim timeout) and the
  engine flags reach the eval loop, which scores the run's recorded model
  and hparams with --hparams on top."""
  from tagger.core import files
  calls = cli([
      '--mode', 'eval', '--eval_csv_path', dataset['validation_csv'],
      '--eval_clip_dir', dataset['train_clip_dir'],
      '--train_dir', recorded_checkpoint['train_dir'],
      '--eval_dir', tmp_path / 'eval', '--eval_continuous',
      '--eval_poll_seconds', 7, '--eval_idle_timeout_seconds', 11,
      '--eval_claim_timeout_seconds', 13, '--engine', 'tflite',
      '--tflite_threads', 3, '--quantize', 'dynamic',
      '--hparams', 'lr=0.5'])
  waited = calls['wait_for_first_checkpoint']
  assert list(waited.values()) == [recorded_checkpoint['train_dir'], 7.0,
                                   11.0]
  given = calls['evaluate']
  # The model and hparams of the run's record, --hparams on top.
  assert given['model_name'] == 'crnn'
  assert (given['hparams'].crnn_filters, given['hparams'].lr) == (2, 0.5)
  assert given['rows'] == files.read_labeled_csv(
      dataset['validation_csv'], dataset['train_clip_dir'],
      read_class_names())
  assert given['clip_dir'] == dataset['train_clip_dir']
  assert given['train_dir'] == recorded_checkpoint['train_dir']
  assert given['eval_dir'] == str(tmp_path / 'eval')
  assert given['continuous'] is True
  assert (given['poll_seconds'], given['claim_timeout_seconds'],
          given['idle_timeout_seconds']) == (7.0, 13.0, 11.0)
  engine = given['engine']
  assert (engine.kind, engine.threads, engine.quantize) == (
      'tflite', 3, 'dynamic')


def test_inference_and_export_flags_reach_their_work(cli, dataset, tmp_path,
                                                     recorded_checkpoint):
  """Inference gets its clips, checkpoint, output and an int8 engine
  calibrated on the --calibration_* clips; export its checkpoint, folder
  and --quantize."""
  from tagger.core import files
  prefix = recorded_checkpoint['prefix']
  calls = cli([
      '--mode', 'inference', '--inference_clip_dir', dataset['test_clip_dir'],
      '--inference_checkpoint', prefix,
      '--predictions_csv_path', tmp_path / 'submission.csv',
      '--engine', 'tflite', '--quantize', 'int8',
      '--calibration_csv_path', dataset['train_csv'],
      '--calibration_clip_dir', dataset['train_clip_dir']])
  given = calls['infer']
  assert given['clip_dir'] == dataset['test_clip_dir']
  assert given['fnames'] == sorted(os.listdir(dataset['test_clip_dir']))
  assert given['checkpoint_path'] == prefix
  assert given['predictions_csv_path'] == str(tmp_path / 'submission.csv')
  assert (given['engine'].kind, given['engine'].quantize) == ('tflite',
                                                              'int8')
  rows = files.read_labeled_csv(dataset['train_csv'],
                                dataset['train_clip_dir'],
                                read_class_names())
  assert list(given['engine'].calibration_paths) == [
      os.path.join(dataset['train_clip_dir'], f) for f, _ in rows]
  calls = cli(['--mode', 'export', '--inference_checkpoint', prefix,
               '--export_dir', tmp_path / 'export', '--quantize', 'dynamic'])
  given = calls['export']
  assert given['class_map_path'] == CLASS_MAP
  assert given['checkpoint_path'] == prefix
  assert given['export_dir'] == str(tmp_path / 'export')
  assert given['quantize'] == 'dynamic'


def test_tag_and_relabel_flags_reach_their_work(cli, dataset, tmp_path,
                                                recorded_checkpoint):
  """Tag gets its files, --top_k and the timeline's path; relabel its
  CSV's rows, clips, output and both thresholds."""
  from tagger.core import files
  prefix = recorded_checkpoint['prefix']
  clips = sorted(os.listdir(dataset['test_clip_dir']))
  paths = [os.path.join(dataset['test_clip_dir'], f) for f in clips[:2]]
  calls = cli(['--mode', 'tag', '--inference_checkpoint', prefix,
               '--tag_paths', ','.join(paths), '--top_k', 5,
               '--timeline_csv_path', tmp_path / 'timeline.csv'])
  given = calls['tag']
  assert given['paths'] == paths
  assert given['checkpoint_path'] == prefix
  assert given['top_k'] == 5
  assert given['timeline_csv_path'] == str(tmp_path / 'timeline.csv')
  calls = cli(['--mode', 'relabel', '--inference_checkpoint', prefix,
               '--relabel_csv_path', dataset['train_csv'],
               '--relabel_clip_dir', dataset['train_clip_dir'],
               '--relabeled_csv_path', tmp_path / 'relabelled.csv',
               '--relabel_keep_threshold', 0.3,
               '--relabel_add_threshold', 0.9])
  given = calls['relabel']
  assert given['rows'] == files.read_labeled_csv(
      dataset['train_csv'], dataset['train_clip_dir'], read_class_names())
  assert given['clip_dir'] == dataset['train_clip_dir']
  assert given['checkpoint_path'] == prefix
  assert given['output_path'] == str(tmp_path / 'relabelled.csv')
  assert (given['keep_threshold'], given['add_threshold']) == (0.3, 0.9)


# --- training: examples made on the device, several sources ------------------

def _clips(folder, name, labels, seconds, seed):
  """A source: one noise clip per entry of labels (a class name each), with
  a CSV; returns (csv path, clip folder)."""
  clips = folder / name
  clips.mkdir()
  rng = np.random.default_rng(seed)
  lines = ['fname,labels']
  for i, (label, length) in enumerate(zip(labels, seconds)):
    # Loud and quiet stretches: the examples differ within and between clips.
    samples = rng.normal(0, 1, int(length * 44100)) * np.repeat(
        rng.uniform(300, 9000, 8), -(-int(length * 44100) // 8))[
            :int(length * 44100)]
    write_pcm_wav(clips / ('%s%d.wav' % (name, i)),
                  np.clip(samples, -32768, 32767))
    lines.append('%s%d.wav,%s' % (name, i, label))
  (folder / (name + '.csv')).write_text('\n'.join(lines) + '\n')
  return str(folder / (name + '.csv')), str(clips)


@pytest.fixture(scope='module')
def two_sources(tmp_path_factory):
  """A curated source of 4 clips and a noisy one of 3, of other classes."""
  folder = tmp_path_factory.mktemp('two_sources')
  return [_clips(folder, 'curated', ['Bark', 'Purr', 'Hiss', 'Bark'],
                 [0.9, 1.3, 0.6, 1.1], seed=1),
          _clips(folder, 'noisy', ['Buzz', 'Gong', 'Buzz'], [1.2, 0.7, 1.0],
                 seed=2)]


# Feature hparams moved from their defaults, as a run may set them; the CRNN
# pools 64 bands down to one.
FEATURES = ('mel_bands=64,mel_min_hz=100,mel_max_hz=8000,mel_log_offset=0.01,'
            'stft_window_seconds=0.02,stft_hop_seconds=0.01,'
            'example_window_seconds=0.5,example_hop_seconds=0.3')


def _np_crop_examples(crops, frames, hparams):
  """NumPy examples of 16-bit crops: the log mel of each crop's samples
  (exactly an example's frames), frames past the clip's end zero."""
  out = []
  for crop, count in zip(np.asarray(crops), np.asarray(frames)):
    log_mel = reference.np_log_mel(crop.astype(np.float64) / 32768.0,
                                   hparams)
    assert log_mel.shape[0] == reference.example_window(hparams)
    log_mel[count:] = 0.0
    out.append(log_mel)
  return np.stack(out)


def _device_batch(two_sources, hparams, seed=5):
  """The first batch (crops, frames), (labels, noisy) of the two sources
  as --features_on device trains on them."""
  import inputs
  sources = [inputs.Source(*two_sources[0], weight=1.0),
             inputs.Source(*two_sources[1], weight=1.0, noisy=True)]
  return next(iter(inputs.sources_dataset(
      sources, read_class_names(), hparams, seed=seed, crops=True)))


def test_device_examples_follow_the_feature_hparams(two_sources):
  """With several sources and --features_on device, a batch holds
  batch_size crops; the step makes from them the examples NumPy makes
  with the feature hparams given (64 bands, 100 Hz to 8 kHz, offset 0.01,
  20 ms windows, 0.5 s examples)."""
  import train
  hparams = _hparams(FEATURES + ',batch_size=5')
  (crops, frames), (labels, noisy) = _device_batch(two_sources, hparams)
  assert crops.shape == (5, (50 - 1) * 441 + 882)
  assert labels.shape == (5, 80) and noisy.shape == (5,)
  got = train.state_lib.device_features(hparams)((crops, frames)).numpy()
  expected = _np_crop_examples(crops, frames, hparams)
  assert got.shape == expected.shape == (5, 50, 64)
  np.testing.assert_allclose(got, expected, atol=5e-5, rtol=0)
  # The offset shows in quiet bands: log(0.01), not log(0.001).
  assert expected[expected != 0].min() > math.log(0.01) - 1e-9


def _device_state(hparams):
  import train
  return train.state_lib.TrainingState('crnn', hparams, 80, None, features_on='device')


def test_device_step_sets_spec_augment_masks(two_sources):
  """--features_on device with SpecAugment: the examples the step trains
  on are the NumPy examples of the crops with whole frames and whole bands
  set to each example's mean, no more of them than the masks' counts times
  their widths."""
  import tensorflow as tf
  hparams = _hparams(FEATURES + ',batch_size=8,crnn_filters=2,'
                     'specaug_time_masks=2,specaug_time_width=6,'
                     'specaug_freq_masks=3,specaug_freq_width=5')
  state = _device_state(hparams)
  (crops, frames), (labels, _) = _device_batch(two_sources, hparams)
  tf.random.set_seed(1)
  got, got_labels = (t.numpy() for t in state.prepare((crops, frames),
                                                      labels))
  np.testing.assert_array_equal(got_labels, labels.numpy())
  expected = _np_crop_examples(crops, frames, hparams)
  means = expected.mean(axis=(1, 2), keepdims=True)
  kept = np.abs(got - expected) < 1e-4
  masked = np.abs(got - means) < 1e-3
  assert np.all(kept | masked)
  masked &= ~kept
  whole_frames = masked.all(axis=2)
  whole_bands = masked.all(axis=1)
  # Every masked cell lies in a masked frame or band.
  assert np.array_equal(masked, masked & (whole_frames[:, :, None] |
                                          whole_bands[:, None, :]))
  assert whole_frames.sum(axis=1).max() <= 2 * 6
  assert whole_bands.sum(axis=1).max() <= 3 * 5
  assert whole_frames.any(axis=1).mean() > 0.5
  assert whole_bands.any(axis=1).mean() > 0.5


def test_device_step_mixes_examples_and_labels(two_sources):
  """--features_on device with mixup: each example the step trains on is
  w x + (1 - w) x' of the NumPy examples x and x' of two crops, with the
  same w and partner as its labels (one class each here, so that both can
  be read off the labels)."""
  import tensorflow as tf
  hparams = _hparams(FEATURES + ',batch_size=8,crnn_filters=2,mixup=0.5')
  state = _device_state(hparams)
  (crops, frames), _ = _device_batch(two_sources, hparams)
  labels = np.eye(8, 80, dtype=np.float32)
  tf.random.set_seed(2)
  got, got_labels = (t.numpy() for t in state.prepare((crops, frames),
                                                      tf.constant(labels)))
  expected = _np_crop_examples(crops, frames, hparams)
  mixed = 0
  for i in range(8):
    weights = got_labels[i, :8]
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    others = [j for j in np.flatnonzero(weights > 1e-6) if j != i]
    partner = others[0] if others else i
    w = weights[i] if others else 1.0
    np.testing.assert_allclose(
        got[i], w * expected[i] + (1 - w) * expected[partner], atol=2e-4)
    mixed += 0.05 < w < 0.95
  assert mixed >= 2


# A run of two steps on both sources, examples made on the device and kept
# in memory, with a checkpoint after each step: the noisy source trained
# with lq, the curated one with smoothed BCE, by SGD; seeded; weights
# averaged; PreciseBN over one batch. Large initial weights make the first
# loss depend clearly on the examples.
RUN = (FEATURES + ',batch_size=6,crnn_filters=2,crnn_dropout=0,opt=sgd,lr=2.0,'
       'crnn_bndecay=0.5,weights_init_stddev=0.5,seed=7,ema_decay=0.1,'
       'bn_stats_batches=1,lsmooth=0.2,noisy_loss=lq,lq_q=0.4')


@pytest.fixture(scope='module')
def device_run(tmp_path_factory, two_sources):
  import inputs
  import train
  train_dir = tmp_path_factory.mktemp('device_run') / 'train'
  sources = [inputs.Source(*two_sources[0], weight=1.0),
             inputs.Source(*two_sources[1], weight=1.0, noisy=True)]
  patch = pytest.MonkeyPatch()
  patch.setattr(checkpoints, 'CHECKPOINT_EVERY', 1)
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      train.train('crnn', _hparams(RUN), read_class_names(), sources,
                  str(train_dir), max_steps=2, cache_examples=True,
                  features_on='device')
  finally:
    patch.undo()
  return {'train_dir': train_dir, 'out': out.getvalue(), 'sources': sources}


def _reader(run, step):
  import tensorflow as tf
  return tf.train.load_checkpoint(str(run['train_dir'] /
                                      ('model.ckpt-%d' % step)))


def _raw(reader, path):
  from tagger.core import checkpoints
  return reader.get_tensor(checkpoints.checkpoint_key(path)).astype(
      np.float64)


def test_first_step_trains_each_source_with_its_loss_on_device_examples(
    device_run):
  """The first step's loss (printed) is the NumPy loss of its batch under
  the step-0 weights: the NumPy examples of the batch's crops through a
  plain model of stock layers; smoothed BCE (lsmooth=0.2) for the curated
  examples, lq with q=0.4 for the noisy ones. The step's update is SGD's
  with lr=2 on that loss, and the input batch norm's moving mean moved
  with crnn_bndecay=0.5 toward the batch's. The batch is rebuilt as the run
  built it (the pipeline is deterministic for a seed)."""
  import inputs
  import keras
  import tensorflow as tf
  from conftest import load_model_from_checkpoint
  hparams = _hparams(RUN)
  keras.utils.set_random_seed(7)
  (crops, frames), (labels, noisy) = next(iter(inputs.sources_dataset(
      device_run['sources'], read_class_names(), hparams, seed=7,
      cache_examples=True, crops=True)))
  labels, noisy = labels.numpy().astype(np.float64), noisy.numpy()
  assert 0 < noisy.sum() < len(noisy)
  examples = _np_crop_examples(crops, frames, hparams).astype(np.float32)
  net = load_model_from_checkpoint('crnn', hparams, str(
      device_run['train_dir'] / 'model.ckpt-0'))
  logits = net(examples, training=True).numpy().astype(np.float64)

  def batch_loss(lsmooth, q):
    curated = _np_bce(labels * (1 - lsmooth) + 0.5 * lsmooth, logits)
    return np.where(noisy > 0, _np_noisy('lq', labels, logits, q),
                    curated).mean()

  (loss,) = re.findall(r'^step 1 loss (\S+) ', device_run['out'], re.M)
  assert float(loss) == pytest.approx(batch_loss(0.2, 0.4), rel=1e-4)
  for other in (batch_loss(0.0, 0.4), batch_loss(0.2, 0.7)):
    assert abs(other - batch_loss(0.2, 0.4)) > 1e-3
  # The update: w - lr * dloss/dw, the gradient of the same loss (written
  # with TensorFlow ops) through the plain model.
  kernel = net.get_layer('logits').kernel
  with tf.GradientTape() as tape:
    z = tf.cast(net(examples, training=True), tf.float64)
    p = tf.sigmoid(z)
    smooth = labels * 0.8 + 0.1
    curated = -tf.reduce_mean(smooth * tf.math.log(p) + (1 - smooth) *
                              tf.math.log(1 - p), axis=1)
    lq = tf.reduce_mean(labels * (1 - p ** 0.4) / 0.4 + (1 - labels) *
                        (1 - (1 - p) ** 0.4) / 0.4, axis=1)
    loss = tf.reduce_mean(tf.where(noisy > 0, lq, curated))
  gradient = tape.gradient(loss, kernel).numpy()
  before, after = (_raw(_reader(device_run, t), 'logits/kernel')
                   for t in (0, 1))
  np.testing.assert_allclose(after, before - 2.0 * gradient, atol=2e-5)
  assert np.abs(2.0 * gradient).max() > 1e-3
  # Input batch norm: moving mean 0.5 * 0 + (1 - 0.5) * the batch's.
  np.testing.assert_allclose(
      _raw(_reader(device_run, 1), 'input_bn/moving_mean'),
      0.5 * examples.astype(np.float64).mean(axis=(0, 1)), atol=1e-4)


def test_seed_is_recorded_and_draws_the_initial_weights(device_run):
  """seed=7 is the run's (none drawn, recorded as given), and the step-0
  weights are those a model built after seeding everything with 7 starts
  from."""
  import json
  import keras
  import model as model_lib
  assert 'drawn' not in device_run['out']
  with open(str(device_run['train_dir'] / 'hparams.json')) as f:
    assert json.load(f)['hparams']['seed'] == 7
  keras.utils.set_random_seed(7)
  fresh = model_lib.build_model('crnn', 80, _hparams(RUN))
  reader = _reader(device_run, 0)
  for v in fresh.trainable_variables:
    np.testing.assert_array_equal(_raw(reader, v.path), v.numpy(),
                                  err_msg=v.path)
  keras.utils.set_random_seed(8)
  other = model_lib.build_model('crnn', 80, _hparams(RUN))
  assert not np.array_equal(other.get_layer('logits').kernel.numpy(),
                            fresh.get_layer('logits').kernel.numpy())


def test_weight_average_uses_ema_decay(device_run):
  """ema_decay=0.1: a_t = d a_(t-1) + (1 - d) w_t from the step-0 weights,
  d = min(0.1, (1 + t) / (10 + t)) = 0.1 at steps 1 and 2, over the raw
  weights of each step's checkpoint."""
  from tagger.core import checkpoints
  import model as model_lib
  readers = [_reader(device_run, t) for t in range(3)]
  paths = [v.path for v in model_lib.build_model(
      'crnn', 80, _hparams(RUN)).trainable_variables]
  for path in paths:
    average = _raw(readers[0], path)
    for t in (1, 2):
      average = 0.1 * average + 0.9 * _raw(readers[t], path)
    saved = readers[2].get_tensor(checkpoints.checkpoint_key(path, 'ema'))
    np.testing.assert_allclose(saved, average, rtol=1e-5, atol=1e-6,
                               err_msg=path)
  raw = _raw(readers[2], 'logits/kernel')
  saved = readers[2].get_tensor(checkpoints.checkpoint_key('logits/kernel',
                                                           'ema'))
  assert np.abs(saved - raw).max() > 1e-4  # an average, not the weights


def test_precise_statistics_cover_bn_stats_batches_of_every_source(
    device_run):
  """The precise statistics of the CRNN's input batch norm are each band's
  mean and variance over the examples of bn_stats_batches=1 batch of 6
  examples drawn (with the run's seed) from the clips of both sources."""
  from tagger.core import checkpoints
  import inputs
  hparams = _hparams(RUN)
  sources = device_run['sources']
  (batch,) = list(inputs.statistics_dataset(
      sources[0].csv_path, sources[0].clip_dir, read_class_names(), hparams,
      1, seed=7, more_sources=sources[1:]))
  examples = batch.numpy().astype(np.float64)
  assert examples.shape == (6, 50, 64)
  reader = _reader(device_run, 2)
  for name, expected in (('moving_mean', examples.mean(axis=(0, 1))),
                         ('moving_variance', examples.var(axis=(0, 1)))):
    saved = reader.get_tensor(checkpoints.checkpoint_key(
        'input_bn/' + name, 'precise_bn'))
    np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-4)
  # Two batches would give other statistics.
  two = np.concatenate([b.numpy() for b in inputs.statistics_dataset(
      sources[0].csv_path, sources[0].clip_dir, read_class_names(), hparams,
      2, seed=7, more_sources=sources[1:])])
  assert np.abs(two.mean(axis=(0, 1)) - examples.mean(axis=(0, 1))).max() > (
      1e-2)


def test_progress_counts_batch_size_examples_a_step(device_run):
  """Each step's line gives examples/s as batch_size (6) times steps/s."""
  found = re.findall(r'^step \d+ loss \S+ \((\S+) steps/s, (\S+) examples/s',
                     device_run['out'], re.M)
  assert len(found) == 2
  for steps, examples in found:
    assert float(examples) == pytest.approx(6 * float(steps), abs=0.1)


def test_a_moving_statistics_run_saves_no_precise_statistics(tmp_path):
  """bn_stats=moving skips PreciseBN: its checkpoints hold no precise
  statistics, so scoring them (even asking for precise ones) uses the
  moving averages; a bn_stats=precise run's checkpoints hold them."""
  import tensorflow as tf
  from tagger.engines import scoring
  import train
  saved = {}
  for kind in ('moving', 'precise'):
    hparams = _hparams('crnn_filters=2,bn_stats=%s,seed=1' % kind)
    state = train.state_lib.TrainingState('crnn', hparams, 80, None)
    prefix = str(tmp_path / kind / 'model.ckpt-0')
    state.checkpoint.write(prefix)
    saved[kind] = prefix
    names = [n for n, _ in tf.train.list_variables(prefix)]
    assert any(n.startswith('precise_bn/') for n in names) == (
        kind == 'precise'), kind
  scorer = scoring.Scorer('crnn', 80, _hparams(
      'crnn_filters=2,bn_stats=precise,seed=1'))
  assert scorer.load(saved['moving']) == 'moving'
  assert scorer.load(saved['precise']) == 'precise'
  # And bn_stats=moving scores with the moving averages when there are
  # precise statistics.
  scorer = scoring.Scorer('crnn', 80, _hparams(
      'crnn_filters=2,bn_stats=moving,seed=1'))
  assert scorer.load(saved['precise']) == 'moving'


@pytest.fixture(scope='module')
def converted():
  """A scorer of a tiny CRNN with the FEATURES hparams, and its model part
  converted to TFLite bytes (float32)."""
  from tagger.engines import scoring
  from tagger.engines import tflite_engine
  hparams = _hparams(FEATURES + ',crnn_filters=2,seed=1')
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
  hparams = _hparams('mel_log_offset=0.01')
  silent = str(tmp_path / 'silent.wav')
  write_pcm_wav(silent, np.zeros(30000, np.int16))
  with pytest.raises(files.UserError, match='digital silence.*-4.61'):
    tflite_engine.calibration_examples([silent], hparams)
  noise = str(tmp_path / 'noise.wav')
  write_pcm_wav(noise, np.random.default_rng(1).integers(-30, 30, 30000))
  examples = tflite_engine.calibration_examples([silent, noise], hparams)
  assert examples.max() > math.log(0.01) + 1


def test_score_averaged_chooses_the_weights_that_score(device_run):
  """A checkpoint with averaged weights scores with them (and their own
  precise statistics) unless score_averaged=0: the scores of the two
  differ, each equal to the model holding those weights."""
  from tagger.core import checkpoints
  from tagger.engines import scoring
  prefix = str(device_run['train_dir'] / 'model.ckpt-2')
  reader = _reader(device_run, 2)
  examples = np.random.default_rng(6).normal(-3, 2, (4, 50, 64)).astype(
      np.float32)
  got = {}
  for flag in (1, 0):
    scorer = scoring.Scorer('crnn', 80, _hparams(RUN + ',score_averaged=%d'
                                                 % flag))
    used = scorer.load(prefix)
    kernel = scorer.model.get_layer('logits').kernel.numpy()
    group = 'ema' if flag else 'weights'
    np.testing.assert_array_equal(kernel, reader.get_tensor(
        checkpoints.checkpoint_key('logits/kernel', group)))
    got[flag] = used, scorer.score_examples(examples)
  assert got[1][0] == 'precise of the averaged weights'
  assert got[0][0] == 'precise'
  assert np.abs(got[1][1] - got[0][1]).max() > 1e-4


def test_warm_start_loads_the_included_scopes(recorded_checkpoint):
  """warmstart=1: a new run starts from the checkpoint's weights of the
  scopes included and not excluded; the others keep their initial
  values."""
  import keras
  import train
  hparams = _hparams('crnn_filters=2,mel_bands=64,batch_size=2,seed=4,'
                     'warmstart=1')
  keras.utils.set_random_seed(4)
  state = train.state_lib.TrainingState('crnn', hparams, len(read_class_names()), None)
  initial = {v.path: v.numpy() for v in state.variables}
  with contextlib.redirect_stdout(io.StringIO()):
    resumed = train.state_lib.restore_or_warm_start(
        state, os.path.join(recorded_checkpoint['train_dir'], 'none'),
        'crnn', hparams, recorded_checkpoint['prefix'], ['conv1', 'gru'],
        ['gru'])
  assert not resumed
  import tensorflow as tf
  reader = tf.train.load_checkpoint(recorded_checkpoint['prefix'])
  moved = 0
  for v in state.variables:
    saved = _raw(reader, v.path)
    if v.path.startswith('conv1/'):
      np.testing.assert_array_equal(v.numpy(), saved, err_msg=v.path)
    else:
      np.testing.assert_array_equal(v.numpy(), initial[v.path])
    # The runs' seeds differ: their kernels tell the two apart.
    if v.path.endswith('kernel'):
      assert not np.array_equal(initial[v.path], saved), v.path
      moved += v.path.startswith('conv1/')
  assert moved == 1


def test_training_needs_what_its_hparams_ask_for(cli, dataset, tmp_path,
                                                 recorded_checkpoint):
  """lrdecay needs --epoch_num_batches, warmstart=1 a checkpoint and
  cosine_decay=1 a horizon past the warm-up (decay_horizon, --max_steps, or
  1000 epochs of --epoch_num_batches); MFoM refuses several sources and
  mixup a noisy one: each refused before any work, and accepted with what
  it needs."""
  from tagger.core import files
  base = ['--mode', 'train', '--model', 'crnn',
          '--train_csv_path', dataset['train_csv'],
          '--train_clip_dir', dataset['train_clip_dir'],
          '--train_dir', tmp_path / 'train']
  two = ['--train_csv_path', dataset['train_csv'] + ',' +
         dataset['validation_csv'], '--train_clip_dir',
         dataset['train_clip_dir'] + ',' + dataset['train_clip_dir']]
  for args, needle in (
      (['--hparams', 'lrdecay=0.5'], '--epoch_num_batches'),
      (['--hparams', 'warmstart=1'], '--warmstart_checkpoint'),
      (two + ['--hparams', 'loss=mfom_microf1'], 'loss=mfom_microf1'),
      (two + ['--train_source_kinds', 'curated,noisy', '--hparams',
              'mixup=0.3'], 'mixup=0.3'),
      (['--hparams', 'cosine_decay=1'], 'decay_horizon or --max_steps'),
      (['--hparams', 'cosine_decay=1,warmup_steps=50', '--max_steps', 40],
       'warmup_steps=50')):
    with pytest.raises(files.UserError, match=needle):
      cli(base + args)
  for args in (['--hparams', 'lrdecay=0.5', '--epoch_num_batches', 3],
               ['--hparams', 'warmstart=1', '--warmstart_checkpoint',
                recorded_checkpoint['prefix']],
               ['--hparams', 'loss=mfom_microf1'],
               two + ['--hparams', 'mixup=0.3'],
               ['--hparams', 'cosine_decay=1', '--max_steps', 40],
               ['--hparams', 'cosine_decay=1', '--epoch_num_batches', 2],
               ['--hparams', 'cosine_decay=1,decay_horizon=60'],
               ['--hparams', 'cosine_decay=1,warmup_steps=50,'
                'decay_horizon=60', '--max_steps', 40]):
    assert 'train' in cli(base + args)


def test_example_cache_size_counts_the_bands(two_sources):
  """--train_cache_examples holds per example 50 frames x 64 bands of
  float32 and 80 float32 labels: 13,120 bytes; the examples are those of
  the clips' lengths, counted in NumPy."""
  import inputs
  hparams = _hparams(FEATURES)
  sources = [inputs.Source(*s) for s in two_sources]
  count = sum(reference.np_num_examples(len(reference.read_wav_samples(
      os.path.join(clip_dir, f))), hparams)
              for csv_path, clip_dir in two_sources
              for f in sorted(os.listdir(clip_dir)))
  assert inputs.example_cache_size(sources, read_class_names(), hparams) == (
      count, count * (4 * 50 * 64 + 4 * 80))


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
                                 [], _hparams('bn_stats_batches=5,'
                                              'batch_size=3'))
  assert measured.value.args == (5, 3)
  rates = []
  monkeypatch.setattr(benchmark_rates, 'timed', lambda fn, warmup, repeats: (
      rates.append(repeats) or 0.5))
  assert benchmark_rates.plain_forward_rate(80, _hparams('batch_size=3'), 2) == 6.0
