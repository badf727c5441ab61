"""Runs remember their model and hparams (tagger/modes/records.py): eval,
inference and resume use the recorded ones, with --hparams applied on top
and checked there; contradicting the record is one line; a checkpoint from
before records works with explicit hparams; and every hparam is classified
as defining the model or not, and set to another value by some test."""

import os
import re
import shutil

import numpy as np
import pytest

from support.cli import assert_one_error, check_ok, run_main
from support.scores import (independent_clip_scores, labeled_rows,
                            lwlrap_bounds, read_class_names, read_csv_rows,
                            truth_matrix, within)
from support.settings import CLASS_MAP, REPO
from support.signals import write_pcm_wav
from support.remembered_run import RUN_HPARAMS, eval_args, inference_args




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
  result = check_ok(run_main(eval_args(remembered['train_dir'], eval_dir,
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
  check_ok(run_main(inference_args(
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
  assert_one_error(run_main(inference_args(
      remembered['checkpoint'], dataset['test_clip_dir'], csv_path, extra)),
                   remembered['checkpoint'], *needles)
  assert not os.path.exists(csv_path)
  eval_dir = str(tmp_path / 'refused_eval')
  assert_one_error(run_main(eval_args(remembered['train_dir'], eval_dir,
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
  check_ok(run_main(inference_args(prefix, dataset['test_clip_dir'],
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
  result = check_ok(run_main(inference_args(
      prefix, dataset['test_clip_dir'], csv_path,
      ['--hparams', 'momentum=0.5'])))
  assert 'opt=sgd' in result.stdout and 'momentum=0.5' in result.stdout
  assert len(read_csv_rows(csv_path)) == 4
  assert_one_error(run_main(inference_args(
      prefix, dataset['test_clip_dir'], str(tmp_path / 'no.csv'),
      ['--hparams', 'momentum=1.5'])), 'momentum=1.5', 'between 0 and 1')
  assert_one_error(run_main(inference_args(
      prefix, dataset['test_clip_dir'], str(tmp_path / 'no.csv'),
      ['--hparams', 'momentun=0.5'])), 'unknown hparam', 'momentun')
  assert not os.path.exists(str(tmp_path / 'no.csv'))


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


# --- which hparams a record fixes -------------------------------------------

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
