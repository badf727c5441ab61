"""Odd but valid inputs work, runs remember their hparams, and damaged or
unwritable files fail cleanly: one line, nothing half-written."""

import csv
import errno
import io
import os
import re
import shutil
import signal
import stat
import struct

import numpy as np
import pytest

import main  # noqa: F401  (run as a subprocess by these tests)

from conftest import (CLASS_MAP, FEW_BN_BATCHES, REPO, check_ok,
                      independent_clip_scores,
                      labeled_rows, read_class_names,
                      read_csv_rows, run_main, shared, train_args,
                      truth_matrix, write_pcm_wav)
from support.scores import lwlrap_bounds, within
from support.cli import Run, assert_one_error
from support.signals import write_sparse_wav

# A tiny CRNN with the seed's 64 bands: features and architecture differ
# from the defaults, so scoring it with the defaults would be wrong.
RUN_HPARAMS = ('batch_size=4,lr=0.001,mel_bands=64,crnn_filters=4,' +
               FEW_BN_BATCHES)


def _eval_args(train_dir, eval_dir, dataset, extra=()):
  return ['--mode', 'eval', '--class_map_path', CLASS_MAP,
          '--eval_clip_dir', dataset['train_clip_dir'],
          '--eval_csv_path', dataset['validation_csv'],
          '--train_dir', train_dir, '--eval_dir', eval_dir] + list(extra)


def _inference_args(checkpoint, clip_dir, csv_path, extra=()):
  return ['--mode', 'inference', '--class_map_path', CLASS_MAP,
          '--inference_clip_dir', clip_dir,
          '--inference_checkpoint', checkpoint,
          '--predictions_csv_path', csv_path] + list(extra)


@pytest.fixture(scope='session')
def remembered(tmp_path_factory, dataset):
  """crnn trained 1 step with RUN_HPARAMS in a folder whose name has glob
  characters (TensorFlow reads checkpoint prefixes as patterns); read-only
  for the tests, made once for every test process."""
  def make(root):
    train_dir = str(root / 'runs' / 't d[1]')
    result = check_ok(run_main(train_args(
        'crnn', dataset['train_clip_dir'], dataset['train_csv'], train_dir, 1,
        hparams=RUN_HPARAMS)))
    return {'train_dir': train_dir, 'result': result,
            'checkpoint': os.path.join(train_dir, 'model.ckpt-1')}
  return shared(tmp_path_factory, 'remembered', make)


def _plain_copy(prefix, folder):
  """The checkpoint copied to a folder whose name TensorFlow's reader takes
  literally, for the independent computations (which read it directly)."""
  os.makedirs(folder, exist_ok=True)
  base = os.path.basename(prefix)
  for name in os.listdir(os.path.dirname(prefix)):
    if name.startswith(base + '.'):
      shutil.copy(os.path.join(os.path.dirname(prefix), name), folder)
  return os.path.join(folder, base)


# --- runs remember their model and hparams ----------------------------------

def test_run_record_in_train_dir(remembered):
  import json
  with open(os.path.join(remembered['train_dir'], 'hparams.json')) as f:
    record = json.load(f)
  assert record['model'] == 'crnn'
  assert record['hparams']['mel_bands'] == 64
  assert record['hparams']['crnn_filters'] == 4
  assert record['hparams']['lr'] == 0.001


def test_eval_and_inference_use_the_recorded_hparams(remembered, dataset,
                                                     parse_hparams, tmp_path):
  eval_dir = str(tmp_path / 'eval')
  result = check_ok(run_main(_eval_args(remembered['train_dir'], eval_dir,
                                        dataset)))
  assert 'Using --model crnn and the hparams recorded in' in result.stdout
  assert 'mel_bands=64' in result.stdout
  rows = labeled_rows(dataset['validation_csv'])
  hparams = parse_hparams(RUN_HPARAMS)
  truth = truth_matrix(rows, read_class_names())
  for step in (0, 1):
    scores = independent_clip_scores(
        'crnn', hparams, _plain_copy(
            os.path.join(remembered['train_dir'], 'model.ckpt-%d' % step),
            str(tmp_path / 'plain')),
        dataset['train_clip_dir'], [f for f, _ in rows])
    with open(os.path.join(eval_dir, 'eval-%d.txt' % step)) as f:
      overall = float(f.read().rsplit(' = ', 1)[1])
    # Near-tied scores may rank either way (features differ by ~1e-5).
    assert within(overall, lwlrap_bounds(truth, scores))

  # Inference, given the checkpoint by its .index file; a training-only
  # hparam may differ.
  csv_path = str(tmp_path / 'submission.csv')
  check_ok(run_main(_inference_args(
      remembered['checkpoint'] + '.index', dataset['test_clip_dir'], csv_path,
      ['--hparams', 'lr=0.5'])))
  fnames = sorted(os.listdir(dataset['test_clip_dir']))
  expected = independent_clip_scores(
      'crnn', hparams, _plain_copy(remembered['checkpoint'],
                                   str(tmp_path / 'plain')),
      dataset['test_clip_dir'], fnames)
  got = np.array([[float(v) for v in row[1:]]
                  for row in read_csv_rows(csv_path)[1:]])
  np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize('extra,needles', [
    (['--hparams', 'mel_bands=96'], ['mel_bands=96', 'mel_bands=64']),
    (['--hparams', 'crnn_filters=32'], ['crnn_filters=32', 'crnn_filters=4']),
    (['--model', 'mobilenet-v1'], ['--model mobilenet-v1', '--model crnn']),
])
def test_contradicting_the_checkpoint_is_an_error(remembered, dataset, extra,
                                                  needles, tmp_path):
  csv_path = str(tmp_path / 'refused.csv')
  assert_one_error(run_main(_inference_args(
      remembered['checkpoint'], dataset['test_clip_dir'], csv_path, extra)),
                   remembered['checkpoint'], *needles)
  assert not os.path.exists(csv_path)
  eval_dir = str(tmp_path / 'refused_eval')
  assert_one_error(run_main(_eval_args(remembered['train_dir'], eval_dir,
                                       dataset, extra)), *needles)
  assert not [n for n in os.listdir(eval_dir) if n.startswith('eval-')]


def test_resume_keeps_features_and_may_change_training_hparams(
    remembered, dataset, tmp_path):
  train_dir = str(tmp_path / 'copy [2]')
  shutil.copytree(remembered['train_dir'], train_dir)
  args = ['--mode', 'train', '--class_map_path', CLASS_MAP,
          '--train_clip_dir', dataset['train_clip_dir'],
          '--train_csv_path', dataset['train_csv'], '--train_dir', train_dir]
  assert_one_error(run_main(args + ['--hparams', 'mel_bands=96',
                                    '--max_steps', '2']),
                   'mel_bands=96', 'mel_bands=64')
  result = check_ok(run_main(args + ['--hparams', 'lr=0.0005',
                                     '--max_steps', '2']))
  assert 'Resuming from %s at step 1' % os.path.join(
      train_dir, 'model.ckpt-1') in result.stdout
  assert os.path.exists(os.path.join(train_dir, 'model.ckpt-2.index'))


def test_checkpoint_from_before_records_works_with_explicit_hparams(
    remembered, dataset, tmp_path, parse_hparams):
  """A checkpoint without the `run` record (as written before runs were
  recorded) is scored with the hparams given."""
  import tensorflow as tf
  from tagger.core import checkpoints
  import model
  from tagger.core import params
  net = model.build_model('crnn', 80, params.parse_hparams(RUN_HPARAMS))
  source = _plain_copy(remembered['checkpoint'], str(tmp_path / 'source'))
  checkpoints.assign_from_checkpoint(
      net.weights, tf.train.load_checkpoint(source), source)
  prefix = tf.train.Checkpoint(
      weights=checkpoints.checkpoint_weights(net)).write(
          str(tmp_path / 'old' / 'model.ckpt-1'))
  assert 'run/.ATTRIBUTES/VARIABLE_VALUE' not in (
      tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
  csv_path = str(tmp_path / 'submission.csv')
  check_ok(run_main(_inference_args(prefix, dataset['test_clip_dir'],
                                    csv_path, ['--model', 'crnn',
                                               '--hparams', RUN_HPARAMS])))
  fnames = sorted(os.listdir(dataset['test_clip_dir']))
  expected = independent_clip_scores('crnn', parse_hparams(RUN_HPARAMS),
                                     prefix, dataset['test_clip_dir'], fnames)
  got = np.array([[float(v) for v in row[1:]]
                  for row in read_csv_rows(csv_path)[1:]])
  np.testing.assert_allclose(got, expected, atol=1e-4)


def _rerecorded(remembered, folder, **changes):
  """The remembered checkpoint's weights under a record with `changes` to
  its training hparams (a run as if trained with them)."""
  import dataclasses
  import tensorflow as tf
  from tagger.core import checkpoints
  import model
  from tagger.core import params
  hparams = params.parse_hparams(RUN_HPARAMS)
  net = model.build_model('crnn', 80, hparams)
  source = _plain_copy(remembered['checkpoint'], str(folder / 'source'))
  checkpoints.assign_from_checkpoint(
      net.weights, tf.train.load_checkpoint(source), source)
  record = params.to_json('crnn', dataclasses.replace(hparams, **changes))
  return tf.train.Checkpoint(
      run=tf.Variable(record), weights=checkpoints.checkpoint_weights(
          net)).write(str(folder / 'sgd' / 'model.ckpt-1'))


def test_overrides_are_checked_on_the_recorded_hparams(remembered, dataset,
                                                       tmp_path):
  """--hparams applies on top of the record: momentum is valid on a run
  recorded with opt=sgd, though not on the defaults (opt=adam); the merged
  values are still range-checked."""
  prefix = _rerecorded(remembered, tmp_path, opt='sgd')
  csv_path = str(tmp_path / 'submission.csv')
  result = check_ok(run_main(_inference_args(
      prefix, dataset['test_clip_dir'], csv_path,
      ['--hparams', 'momentum=0.5'])))
  assert 'opt=sgd' in result.stdout and 'momentum=0.5' in result.stdout
  assert len(read_csv_rows(csv_path)) == 4
  assert_one_error(run_main(_inference_args(
      prefix, dataset['test_clip_dir'], str(tmp_path / 'no.csv'),
      ['--hparams', 'momentum=1.5'])), 'momentum=1.5', 'between 0 and 1')
  assert_one_error(run_main(_inference_args(
      prefix, dataset['test_clip_dir'], str(tmp_path / 'no.csv'),
      ['--hparams', 'momentun=0.5'])), 'unknown hparam', 'momentun')
  assert not os.path.exists(str(tmp_path / 'no.csv'))


def test_every_hparam_is_classified_as_model_defining_or_not():
  """MODEL_DEFINING decides which hparams a checkpoint must be scored,
  exported and resumed with. Every hparam is either in it or below, with
  the reason it cannot change what a trained model computes from a
  waveform; a new hparam must be placed before this passes."""
  import dataclasses
  from tagger.core import params
  steering = {
      # Training only.
      'batch_size', 'dropout', 'lsmooth', 'weights_init_stddev', 'bndecay',
      'crnn_dropout', 'crnn_bndecay', 'bn_sync', 'precision', 'warmstart',
      'opt', 'lr', 'adam_eps', 'momentum', 'nesterov', 'lrdecay',
      'decay_epochs', 'inverse_time_decay', 'loss', 'specaug_freq_masks',
      'specaug_freq_width', 'specaug_time_masks', 'specaug_time_width',
      'specaug_after_pcen',
      'mixup', 'bn_stats_batches', 'seed', 'warmup_steps', 'cosine_decay',
      'lr_floor', 'decay_horizon', 'ema_decay', 'noisy_loss', 'noisy_lsmooth',
      'lq_q', 'bootstrap_soft_beta', 'bootstrap_hard_beta',
      # Initial values of weights the checkpoint holds, or whether they
      # train.
      'pcen_alpha', 'pcen_delta', 'pcen_r', 'pcen_trainable',
      # Which of the checkpoint's batch-norm statistics and weights scoring
      # uses.
      'bn_stats', 'score_averaged',
  }
  names = {f.name for f in dataclasses.fields(params.HParams)}
  assert not steering & set(params.MODEL_DEFINING)
  assert names == steering | set(params.MODEL_DEFINING), (
      names ^ (steering | set(params.MODEL_DEFINING)))


def test_every_hparam_is_set_to_another_value_by_some_test():
  """README's claim about the suite: each hparam appears in a test's
  hparams string with a value other than its default (a new hparam needs
  its test)."""
  import dataclasses
  import glob
  from tagger.core import params
  text = ''.join(open(path).read() for path in glob.glob(
      os.path.join(REPO, 'tests', '**', '*.py'), recursive=True))
  defaults = params.HParams()
  untested = []
  for field in dataclasses.fields(params.HParams):
    values = re.findall(r'\b%s=([-\w.]+)' % field.name, text)
    kind = type(getattr(defaults, field.name))
    others = []
    for value in values:
      try:
        others.append(kind(value) != getattr(defaults, field.name))
      except ValueError:
        pass
    if not any(others):
      untested.append(field.name)
  assert not untested


@pytest.mark.parametrize('override', ['pcen_s=0.5', 'pcen_eps=0.01'])
def test_pcen_smoother_and_eps_are_part_of_the_model(override):
  """They change the scores of the same weights on the same waveform, so a
  run can only be scored (or exported, or resumed) with its own."""
  import dataclasses
  import tensorflow as tf
  from tagger.sound import features
  from tagger.core import params
  trained = params.parse_hparams('frontend=pcen')
  other = params.parse_hparams('frontend=pcen,' + override)
  rng = np.random.default_rng(5)
  # Loud, then quiet: eps matters where the energies are small.
  waveform = tf.constant(rng.uniform(-0.5, 0.5, 44100) * np.repeat(
      [1.0, 1e-3], 22050), tf.float32)
  outputs = []
  for hparams in (trained, other):
    examples = features.waveform_to_examples(waveform, hparams)
    outputs.append(features.PCEN(hparams)(examples).numpy())
  assert np.abs(outputs[0] - outputs[1]).max() > 0.01
  with pytest.raises(ValueError, match=override.split('=')[0]):
    params.merge(dataclasses.asdict(trained), override, 'model.ckpt-1')


# --- CSVs and class maps ----------------------------------------------------

@pytest.mark.parametrize('newline,bom', [('\r', ''), ('\r\n', ''),
                                         ('\n', '\ufeff'), ('\r', '\ufeff')])
def test_line_endings_and_bom(tmp_path, dataset, newline, bom):
  from tagger.core import files
  import inputs
  from tagger.core import params
  rows = labeled_rows(dataset['train_csv'])
  text = bom + newline.join(['fname,labels'] + [
      '%s,"%s"' % (f, ','.join(labels)) for f, labels in rows]) + newline
  csv_path = tmp_path / 'train.csv'
  csv_path.write_bytes(text.encode('utf-8'))
  class_map = tmp_path / 'class_map.csv'
  with open(CLASS_MAP, encoding='utf-8') as f:
    class_map.write_bytes((bom + f.read().replace('\n', newline)).encode())
  class_names = files.read_class_map(str(class_map))
  assert class_names == read_class_names()
  assert files.read_labeled_csv(str(csv_path), dataset['train_clip_dir'],
                                class_names) == rows
  batch = next(iter(inputs.train_dataset(
      str(csv_path), dataset['train_clip_dir'], class_names,
      params.parse_hparams('batch_size=4'), len(rows))))
  assert tuple(batch[0].shape) == (4, 100, 96)


def test_clip_names_with_commas_survive_the_submission():
  import inference
  names = ['a,b.wav', 'quote"d.wav', 'plain.wav']
  text = inference.submission_csv(names, read_class_names(),
                                  np.full((3, 80), 0.25))
  rows = list(csv.reader(io.StringIO(text)))
  assert [len(r) for r in rows] == [81] * 4
  assert [r[0] for r in rows[1:]] == names


def test_absolute_fname_is_refused_before_any_work(tmp_path, dataset):
  clip = os.path.join(dataset['train_clip_dir'], 'c0000.wav')
  csv_path = tmp_path / 'train.csv'
  csv_path.write_text('fname,labels\nc0001.wav,Hiss\n%s,Hiss\n' % clip)
  train_dir = tmp_path / 'train'
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], str(csv_path), str(train_dir), 1)),
                   str(csv_path), 'line 3', clip, 'absolute path')
  assert not train_dir.exists()


# --- damaged checkpoints ----------------------------------------------------

def _damage(prefix, what):
  folder, base = os.path.split(prefix)
  if what == 'data':
    data = [n for n in os.listdir(folder) if n.startswith(base + '.data')][0]
    with open(os.path.join(folder, data), 'r+b') as f:
      f.truncate(64)
  else:
    with open(prefix + '.index', 'wb') as f:
      f.write(b'\x00' * 200)


@pytest.fixture
def damaged_run(tmp_path, remembered):
  train_dir = str(tmp_path / 'train')
  shutil.copytree(remembered['train_dir'], train_dir)
  return train_dir


@pytest.mark.parametrize('what', ['data', 'index'])
def test_damaged_checkpoint_is_one_line(damaged_run, dataset, tmp_path,
                                        what):
  prefix = os.path.join(damaged_run, 'model.ckpt-1')
  _damage(prefix, what)
  csv_path = str(tmp_path / 'submission.csv')
  assert_one_error(run_main(_inference_args(prefix, dataset['test_clip_dir'],
                                            csv_path)),
                   prefix, 'unreadable checkpoint')
  assert not os.path.exists(csv_path)


@pytest.mark.parametrize('what', ['data', 'index'])
def test_resume_falls_back_to_the_newest_readable_checkpoint(
    damaged_run, dataset, what):
  """Three checkpoints, the newest damaged: resume takes the next newest by
  step, not by name (model.ckpt-1000 sorts before model.ckpt-200 as text)
  and not the oldest."""
  for step, source in ((200, 1), (1000, 1)):
    for name in os.listdir(damaged_run):
      if name.startswith('model.ckpt-%d.' % source):
        shutil.copy(os.path.join(damaged_run, name), os.path.join(
            damaged_run, name.replace('ckpt-%d.' % source, 'ckpt-%d.' % step)))
  os.mkdir(os.path.join(damaged_run, 'model.ckpt-9_temp'))  # a failed save
  _damage(os.path.join(damaged_run, 'model.ckpt-1000'), what)
  result = check_ok(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'], damaged_run, 2,
      hparams=RUN_HPARAMS)))
  warning = [l for l in result.stdout.splitlines()
             if l.startswith('warning:')]
  assert len(warning) == 1 and 'model.ckpt-1000' in warning[0]
  assert 'unreadable checkpoint' in warning[0]
  # model.ckpt-200 holds step 1 (a copy of model.ckpt-1).
  assert 'Resuming from %s at step 1' % os.path.join(
      damaged_run, 'model.ckpt-200') in result.stdout
  assert re.findall(r'^step (\d+) loss', result.stdout, re.M) == ['2']
  assert not os.path.exists(os.path.join(damaged_run, 'model.ckpt-9_temp'))


def test_checkpoints_are_listed_by_step(tmp_path):
  from tagger.core import checkpoints
  for step in (1000, 30, 200, 4):
    (tmp_path / ('model.ckpt-%d.index' % step)).write_bytes(b'')
  (tmp_path / 'model.ckpt-7_temp.index').write_bytes(b'')
  assert checkpoints.list_checkpoints(str(tmp_path)) == [
      (step, str(tmp_path / ('model.ckpt-%d' % step)))
      for step in (4, 30, 200, 1000)]


def test_resume_with_every_checkpoint_damaged_is_an_error(damaged_run,
                                                          dataset):
  for step in (0, 1):
    _damage(os.path.join(damaged_run, 'model.ckpt-%d' % step), 'data')
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'], damaged_run, 2,
      hparams=RUN_HPARAMS)), damaged_run, 'none of its 2 checkpoints')


# --- audio ------------------------------------------------------------------

def test_dangling_link_among_inference_clips(tmp_path, remembered):
  folder = tmp_path / 'clips'
  folder.mkdir()
  write_pcm_wav(folder / 'a.wav', np.zeros(5000, np.int16))
  os.symlink(str(tmp_path / 'gone.wav'), str(folder / 'b.wav'))
  assert_one_error(run_main(_inference_args(
      remembered['checkpoint'], str(folder), str(tmp_path / 'p.csv'))),
                   str(folder / 'b.wav'), 'cannot read')


def test_byte_offsets_of_a_seven_hour_clip(tmp_path):
  """Past 6.8 hours a 16-bit file's byte offsets pass 2**31: the last
  chunk of a 7-hour clip is read where the header says it is."""
  import tensorflow as tf
  from tagger.sound import features
  import inputs
  from tagger.core import params
  path = str(tmp_path / 'long.wav')
  frames = write_sparse_wav(path, 7)
  offsets, counts = inputs._clip_headers([path])
  assert (offsets[0], counts[0]) == (44, frames)
  hparams = params.parse_hparams()
  starts, ends, _ = features.chunk_bounds(tf.constant(counts[0]), hparams)
  position, length = inputs.byte_range(tf.constant(offsets[0]), starts[-1],
                                       ends[-1])
  assert int(ends[-1]) == frames
  assert int(position) == 44 + 2 * int(starts[-1]) > 2 ** 31
  assert int(position) + int(length) == 44 + 2 * frames


def test_streamed_wav_is_read_to_the_end(tmp_path):
  """Written through a pipe: the data chunk's size is 0xFFFFFFFF."""
  import inputs
  from tagger.core import params
  from support import reference
  samples = np.random.default_rng(0).integers(-9000, 9000, 30000)
  write_pcm_wav(tmp_path / 'piped.wav', samples)
  raw = bytearray((tmp_path / 'piped.wav').read_bytes())
  raw[40:44] = struct.pack('<I', 0xFFFFFFFF)
  raw[4:8] = struct.pack('<I', 0xFFFFFFFF)
  (tmp_path / 'piped.wav').write_bytes(bytes(raw))
  hparams = params.parse_hparams()
  got = inputs.clip_to_log_mel_examples('piped.wav', str(tmp_path), hparams)
  expected = reference.np_examples(samples / 32768.0, hparams)
  np.testing.assert_allclose(got.numpy(), expected, atol=5e-5, rtol=0)


# --- hparams and flags ------------------------------------------------------

@pytest.mark.parametrize('text,needle', [
    ('example_window_seconds=0.001', 'example_window_seconds=0.001'),
    ('stft_window_seconds=0.00001', 'stft_window_seconds=1e-05'),
    ('stft_hop_seconds=0.00001', 'stft_hop_seconds=1e-05'),
    ('example_hop_seconds=0.001', 'example_hop_seconds=0.001'),
    ('stft_window_seconds=5', 'stft_window_seconds=5.0'),
    ('mel_bands=4000', 'mel_bands=4000'),
])
def test_feature_hparams_out_of_range(dataset, tmp_path, text, needle):
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'],
      str(tmp_path / 'train'), 1, hparams=text)), '--hparams', needle)


def test_epoch_num_batches_must_be_positive(dataset, tmp_path):
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'],
      str(tmp_path / 'train'), 1, extra=['--epoch_num_batches=0'])),
                   'epoch_num_batches')


# --- outputs ----------------------------------------------------------------

def test_output_path_ending_in_a_slash(tmp_path, remembered, dataset):
  output = str(tmp_path / 'out') + '/'
  assert_one_error(run_main(_inference_args(
      remembered['checkpoint'], dataset['test_clip_dir'], output)),
                   '--predictions_csv_path', output, 'is a folder')


def test_unwritable_output_folder_is_named_before_work(tmp_path,
                                                       monkeypatch):
  from tagger.core import files
  folder = tmp_path / 'locked'
  folder.mkdir()
  real_access = os.access
  # Tests may run as root, who may write anywhere: deny like a read-only
  # folder would.
  monkeypatch.setattr(os, 'access', lambda path, mode: False if str(
      path) == str(folder) else real_access(path, mode))
  with pytest.raises(files.UserError) as e:
    files.check_writable(str(folder / 'sub.csv'), '--predictions_csv_path')
  assert str(folder) in str(e.value) and 'cannot write' in str(e.value)


def test_disk_full_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
  from tagger.core import files
  path = str(tmp_path / 'submission.csv')
  with open(path, 'w') as f:
    f.write('old')

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'fsync', full)
  with pytest.raises(OSError) as e:
    files.write_atomically(path, 'new')
  assert e.value.filename == path and e.value.errno == errno.ENOSPC
  assert os.listdir(str(tmp_path)) == ['submission.csv']
  with open(path) as f:
    assert f.read() == 'old'


def test_replaced_file_keeps_its_mode_and_links_are_written_through(
    tmp_path):
  from tagger.core import files
  path = tmp_path / 'submission.csv'
  path.write_text('old')
  os.chmod(str(path), 0o640)
  files.write_atomically(str(path), 'new')
  assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o640
  assert path.read_text() == 'new'
  fresh = tmp_path / 'fresh.csv'
  files.write_atomically(str(fresh), 'x')
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(str(fresh)).st_mode) == 0o666 & ~umask
  target = tmp_path / 'elsewhere' / 'real.csv'
  target.parent.mkdir()
  target.write_text('old')
  link = tmp_path / 'link.csv'
  os.symlink(str(target), str(link))
  files.write_atomically(str(link), 'through')
  assert os.path.islink(str(link))
  assert target.read_text() == 'through'


# --- Ctrl-C in eval and inference -------------------------------------------

def test_ctrl_c_in_eval_stops_cleanly(tmp_path, remembered, dataset):
  """Many copies of one checkpoint keep eval busy; SIGINT after its first
  line stops it with one line and exit 130, leaving only whole markers."""
  train_dir = tmp_path / 'train'
  train_dir.mkdir()
  for name in os.listdir(remembered['train_dir']):
    if name.startswith('model.ckpt-1.'):
      for step in range(1, 41):
        shutil.copy(os.path.join(remembered['train_dir'], name),
                    str(train_dir / name.replace('ckpt-1.', 'ckpt-%d.' %
                                                 step)))
  eval_dir = tmp_path / 'eval'
  run = Run(_eval_args(str(train_dir), str(eval_dir), dataset))
  # After the first checkpoint's report: the model is built and eval is in
  # its loop (a signal during start-up could land where Python drops it).
  run.wait_for(r'Checkpoint ')
  rc, out, err = run.finish(signal.SIGINT)
  assert rc == 130, (out[-2000:], err)
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('main.py: stopped: '), err
  assert 'Traceback' not in out + err
  markers = [n for n in os.listdir(str(eval_dir)) if n.startswith('eval-')]
  assert len(markers) < 40
  for name in markers:
    text = (eval_dir / name).read_text()
    assert re.search(r'\nOverall lwlrap = [0-9.]+$', text)
  assert not [n for n in os.listdir(str(eval_dir)) if n.endswith('.tmp')]


def test_another_model_than_the_recorded_one_is_refused(mobilenet_train,
                                                         tmp_path):
  """--model contradicting the checkpoint's record: one line naming both."""
  write_pcm_wav(str(tmp_path / 'a.wav'), np.zeros(4410, np.int16))
  result = run_main(
      ['--mode', 'inference', '--model', 'crnn', '--class_map_path',
       CLASS_MAP, '--inference_clip_dir', str(tmp_path),
       '--inference_checkpoint', mobilenet_train['checkpoint'],
       '--predictions_csv_path', str(tmp_path / 'out.csv')])
  assert_one_error(result, '--model crnn: %s was trained with --model '
                   'mobilenet-v1' % mobilenet_train['checkpoint'])
  assert not os.path.exists(str(tmp_path / 'out.csv'))
