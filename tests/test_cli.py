"""train -> eval -> inference from the command line, checked against scores
and metrics computed independently in this process."""

import glob
import math
import os
import re
import shutil

import numpy as np
import pytest

from conftest import (CLASS_MAP, HPARAMS, check_ok, independent_clip_scores,
                      independent_lwlrap, labeled_rows, read_class_names,
                      read_csv_rows, run_main, train_args,
                      truth_matrix)


def _checkpoint_steps(train_dir):
  return sorted(int(m.group(1)) for m in (
      re.fullmatch(r'model\.ckpt-(\d+)\.index', n)
      for n in os.listdir(train_dir)) if m)


def _overall_lwlrap(text):
  values = re.findall(r'^Overall lwlrap = ([0-9.]+)$', text, re.M)
  assert len(values) == 1, text
  return float(values[0])


def _check_eval_report(path, expected_lwlrap):
  with open(path) as f:
    text = f.read()
  assert abs(_overall_lwlrap(text) - expected_lwlrap) < 1e-4
  for prefix in ('Mean EER = ', 'Pooled EER = ', 'Micro-F1 = '):
    assert re.search('^' + re.escape(prefix) + r'\S+', text, re.M), prefix
  micro_f1 = float(re.search(r'^Micro-F1 = ([0-9.]+)$', text, re.M).group(1))
  assert 0.0 <= micro_f1 <= 1.0
  return text


def _check_submission(csv_path, clip_dir, expected_scores):
  rows = read_csv_rows(csv_path)
  class_names = read_class_names()
  assert len(class_names) == 80
  assert rows[0] == ['fname'] + class_names
  fnames = sorted(n for n in os.listdir(clip_dir) if n.endswith('.wav'))
  assert [r[0] for r in rows[1:]] == fnames
  values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
  assert values.shape == (len(fnames), 80)
  assert np.all(np.isfinite(values))
  assert np.all((values >= 0) & (values <= 1))
  np.testing.assert_allclose(values, expected_scores, atol=1e-4, rtol=0)
  return fnames, values


# --- mobilenet-v1 -----------------------------------------------------------

def test_mobilenet_train_writes_checkpoint_state_and_events(mobilenet_train):
  train_dir = mobilenet_train['train_dir']
  names = os.listdir(train_dir)
  assert 'model.ckpt-3.index' in names
  assert any(re.fullmatch(r'model\.ckpt-3\.data-\d+-of-\d+', n)
             for n in names), names
  assert _checkpoint_steps(train_dir) == [3]
  with open(os.path.join(train_dir, 'checkpoint')) as f:
    assert 'model_checkpoint_path: "model.ckpt-3"' in f.read()
  assert glob.glob(os.path.join(train_dir, 'events.out.tfevents.*'))
  steps = [int(s) for s in re.findall(r'^step (\d+) loss',
                                       mobilenet_train['result'].stdout, re.M)]
  assert steps == [1, 2, 3]


def test_mobilenet_train_checkpoint_step_variable(mobilenet_train):
  import tensorflow as tf
  reader = tf.train.load_checkpoint(mobilenet_train['checkpoint'])
  assert reader.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE') == 3


def test_mobilenet_eval_lwlrap_matches_independent(
    mobilenet_train, mobilenet_eval, dataset, parse_hparams):
  eval_dir = mobilenet_eval['eval_dir']
  assert sorted(n for n in os.listdir(eval_dir) if n.startswith('eval-')) == [
      'eval-3.txt']
  rows = labeled_rows(dataset['validation_csv'])
  scores = independent_clip_scores(
      'mobilenet-v1', parse_hparams(HPARAMS), mobilenet_train['checkpoint'],
      dataset['train_clip_dir'], [f for f, _ in rows])
  truth = truth_matrix(rows, read_class_names())
  expected = independent_lwlrap(truth, scores)
  text = _check_eval_report(os.path.join(eval_dir, 'eval-3.txt'), expected)
  # stdout reports the same numbers as the marker file.
  assert abs(_overall_lwlrap(mobilenet_eval['result'].stdout) - expected) < 1e-4
  # Micro-F1 at threshold 0.5, computed independently.
  predicted = scores >= 0.5
  tp = np.sum(predicted & (truth > 0))
  f1 = 2 * tp / (truth.sum() + predicted.sum())
  got = float(re.search(r'^Micro-F1 = ([0-9.]+)$', text, re.M).group(1))
  assert abs(got - f1) < 1e-4
  assert glob.glob(os.path.join(eval_dir, 'events.out.tfevents.*'))


def test_eval_rerun_skips_evaluated_checkpoints(
    mobilenet_train, mobilenet_eval, dataset, parse_hparams, capsys):
  import evaluation
  eval_dir = mobilenet_eval['eval_dir']
  marker = os.path.join(eval_dir, 'eval-3.txt')
  before = sorted(os.listdir(eval_dir))
  stat = os.stat(marker)
  class_names = read_class_names()
  rows = labeled_rows(dataset['validation_csv'])
  import files
  samples = files.check_wavs([os.path.join(dataset['train_clip_dir'], f)
                              for f, _ in rows])
  evaluation.evaluate('mobilenet-v1', parse_hparams(HPARAMS), class_names,
                      rows, dataset['train_clip_dir'], samples,
                      mobilenet_train['train_dir'], eval_dir)
  out = capsys.readouterr().out
  assert '1 checkpoints in %s, 1 already evaluated' % (
      mobilenet_train['train_dir']) in out
  assert 'Overall lwlrap' not in out
  assert sorted(os.listdir(eval_dir)) == before
  assert os.stat(marker).st_mtime_ns == stat.st_mtime_ns


def test_mobilenet_inference_matches_independent(
    mobilenet_train, mobilenet_inference, inference_clips, parse_hparams):
  fnames = sorted(n for n in os.listdir(inference_clips) if n.endswith('.wav'))
  expected = independent_clip_scores(
      'mobilenet-v1', parse_hparams(HPARAMS), mobilenet_train['checkpoint'],
      inference_clips, fnames)
  _check_submission(mobilenet_inference['csv'], inference_clips, expected)
  assert 'Wrote %d clips x 80 classes' % len(fnames) in (
      mobilenet_inference['result'].stdout)


def test_batched_scoring_equals_per_clip_scoring(
    mobilenet_train, dataset, inference_clips, parse_hparams, monkeypatch):
  import files
  import scoring
  monkeypatch.setattr(scoring, 'BATCH_SIZE', 5)  # batches span clips
  hparams = parse_hparams('batch_size=5')
  paths = [os.path.join(dataset['train_clip_dir'], f)
           for f, _ in labeled_rows(dataset['validation_csv'])]
  paths += sorted(glob.glob(os.path.join(inference_clips, '*.wav')))
  samples = files.check_wavs(paths)
  scorer = scoring.Scorer('mobilenet-v1', 80, hparams)
  scorer.load(mobilenet_train['checkpoint'])
  batched = scorer.score(paths, samples)
  assert batched.shape == (len(paths), 80)
  single = np.concatenate([scorer.score([p], [n])
                           for p, n in zip(paths, samples)])
  np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
  # Clips really differ, so the comparison is not trivially satisfied.
  assert np.ptp(batched, axis=0).max() > 1e-4


# --- crnn end to end --------------------------------------------------------

def test_crnn_train_checkpoints_every_100_steps(crnn_train):
  train_dir = crnn_train['train_dir']
  assert _checkpoint_steps(train_dir) == [100, 101]
  out = crnn_train['result'].stdout
  assert re.findall(r'^Saved checkpoint .*model\.ckpt-(\d+)$', out, re.M) == [
      '100', '101']
  assert 'Training finished at step 101' in out


def test_crnn_train_writes_loss_summaries_every_10_steps(crnn_train):
  import tensorflow as tf
  events = glob.glob(os.path.join(crnn_train['train_dir'],
                                  'events.out.tfevents.*'))
  assert len(events) == 1
  loss_steps = []
  for event in tf.compat.v1.train.summary_iterator(events[0]):
    for value in event.summary.value:
      if value.tag == 'loss':
        loss_steps.append(event.step)
        assert math.isfinite(float(tf.make_ndarray(value.tensor)))
  assert loss_steps == list(range(10, 101, 10))


@pytest.fixture(scope='module')
def crnn_eval(tmp_path_factory, crnn_train, dataset):
  eval_dir = str(tmp_path_factory.mktemp('crnn') / 'eval')
  result = check_ok(run_main(
      ['--mode', 'eval', '--model', 'crnn', '--class_map_path', CLASS_MAP,
       '--eval_clip_dir', dataset['train_clip_dir'],
       '--eval_csv_path', dataset['validation_csv'],
       '--train_dir', crnn_train['train_dir'], '--eval_dir', eval_dir,
       '--hparams', crnn_train['hparams']]))
  return {'result': result, 'eval_dir': eval_dir}


def test_crnn_eval_every_checkpoint(crnn_train, crnn_eval, dataset,
                                    parse_hparams):
  eval_dir = crnn_eval['eval_dir']
  assert sorted(n for n in os.listdir(eval_dir) if n.startswith('eval-')) == [
      'eval-100.txt', 'eval-101.txt']
  assert '2 checkpoints in %s, 0 already evaluated' % (
      crnn_train['train_dir']) in crnn_eval['result'].stdout
  rows = labeled_rows(dataset['validation_csv'])
  truth = truth_matrix(rows, read_class_names())
  for step in (100, 101):
    scores = independent_clip_scores(
        'crnn', parse_hparams(crnn_train['hparams']),
        os.path.join(crnn_train['train_dir'], 'model.ckpt-%d' % step),
        dataset['train_clip_dir'], [f for f, _ in rows])
    _check_eval_report(os.path.join(eval_dir, 'eval-%d.txt' % step),
                       independent_lwlrap(truth, scores))


def test_crnn_inference(tmp_path, crnn_train, dataset, parse_hparams):
  csv_path = str(tmp_path / 'submission.csv')
  checkpoint = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  check_ok(run_main(
      ['--mode', 'inference', '--model', 'crnn', '--class_map_path', CLASS_MAP,
       '--inference_clip_dir', dataset['test_clip_dir'],
       '--inference_checkpoint', checkpoint,
       '--predictions_csv_path', csv_path, '--hparams', crnn_train['hparams']]))
  fnames = sorted(os.listdir(dataset['test_clip_dir']))
  expected = independent_clip_scores(
      'crnn', parse_hparams(crnn_train['hparams']), checkpoint,
      dataset['test_clip_dir'], fnames)
  _check_submission(csv_path, dataset['test_clip_dir'], expected)


def test_two_scorers_in_one_process_load_crnn_checkpoint(crnn_train,
                                                         parse_hparams):
  """Eval/inference code used as a library: a second Scorer in the same
  process must load the same checkpoint as the first."""
  import scoring
  hparams = parse_hparams(crnn_train['hparams'])
  checkpoint = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  first = scoring.Scorer('crnn', 80, hparams)
  second = scoring.Scorer('crnn', 80, hparams)
  first.load(checkpoint)
  second.load(checkpoint)


def test_warm_start_flags_from_the_cli(workspace, dataset, mobilenet_train):
  """warmstart=1 with --warmstart_exclude_scopes: the noisy -> curated recipe
  on a small scale. The run restores every trainable variable but the
  classifier's and trains on."""
  train_dir = str(workspace / 'mn_warm')
  result = check_ok(run_main(train_args(
      'mobilenet-v1', dataset['train_clip_dir'], dataset['train_csv'],
      train_dir, 1, hparams=HPARAMS + ',warmstart=1', extra=[
          '--warmstart_checkpoint', mobilenet_train['checkpoint'],
          '--warmstart_exclude_scopes', 'logits'])))
  restored = re.findall(r'^  (\S+)$', result.stdout, re.M)
  assert 'conv0/conv/kernel' in restored
  assert 'sepconv13/pointwise_bn/gamma' in restored
  assert not [n for n in restored if n.startswith('logits')]
  assert not [n for n in restored if 'moving_' in n]
  # 27 batch-normed convolutions (conv0, then 13 depthwise + pointwise
  # pairs): a kernel, a gamma and a beta each.
  assert len(restored) == 27 * 3
  assert os.path.exists(os.path.join(train_dir, 'model.ckpt-1.index'))
