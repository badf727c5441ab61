"""train -> eval -> inference of mobilenet-v1 from the command line, checked
against scores and metrics computed independently in this process: what a
run writes (checkpoints, state, events), eval's reports and scalars and a
rerun that skips what is done, the submission, and a warm start from the
command line."""

import glob
import os
import re

from support.cli import check_ok, run_main, train_args
from support.scores import (independent_clip_scores, labeled_rows,
                            read_class_names, truth_matrix)
from support.settings import HPARAMS
from support.run_outputs import (check_eval_report, check_eval_scalars,
                                 check_submission, checkpoint_steps,
                                 eval_scalars)


def test_mobilenet_train_writes_checkpoint_state_and_events(mobilenet_train):
  train_dir = mobilenet_train['train_dir']
  names = os.listdir(train_dir)
  assert 'model.ckpt-3.index' in names
  assert any(re.fullmatch(r'model\.ckpt-3\.data-\d+-of-\d+', n)
             for n in names), names
  assert checkpoint_steps(train_dir) == [0, 3]  # the start, and the end
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
      'eval-0.txt', 'eval-3.txt']
  rows = labeled_rows(dataset['validation_csv'])
  scores = independent_clip_scores(
      'mobilenet-v1', parse_hparams(HPARAMS), mobilenet_train['checkpoint'],
      dataset['train_clip_dir'], [f for f, _ in rows])
  class_names = read_class_names()
  truth = truth_matrix(rows, class_names)
  text = check_eval_report(os.path.join(eval_dir, 'eval-3.txt'), truth,
                            scores, class_names)
  # stdout reports the same text as the marker file.
  assert text in mobilenet_eval['result'].stdout
  check_eval_scalars(eval_scalars(eval_dir), 3, truth, scores)
  assert sorted(eval_scalars(eval_dir)) == sorted(
      (tag, step) for step in (0, 3) for tag in (
          'EER-mean', 'EER-pooled', 'Lwlrap', 'Lwlrap-5%', 'Micro-F1'))


def test_eval_rerun_skips_evaluated_checkpoints(
    mobilenet_train, mobilenet_eval, dataset, parse_hparams, capsys):
  import evaluation
  eval_dir = mobilenet_eval['eval_dir']
  marker = os.path.join(eval_dir, 'eval-3.txt')
  before = sorted(os.listdir(eval_dir))
  stat = os.stat(marker)
  class_names = read_class_names()
  rows = labeled_rows(dataset['validation_csv'])
  from tagger.core import files
  samples = files.check_clips([os.path.join(dataset['train_clip_dir'], f)
                              for f, _ in rows])
  evaluation.evaluate('mobilenet-v1', parse_hparams(HPARAMS), class_names,
                      rows, dataset['train_clip_dir'], samples,
                      mobilenet_train['train_dir'], eval_dir)
  out = capsys.readouterr().out
  assert '2 checkpoints in %s, 2 already evaluated' % (
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
  check_submission(mobilenet_inference['csv'], inference_clips, expected)
  out = mobilenet_inference['result'].stdout
  assert 'Wrote %d clips x 80 classes' % len(fnames) in out
  # The Keras engine: no engine note after the statistics.
  assert 'Scoring %s (batch-norm statistics: precise)\n' % (
      mobilenet_train['checkpoint']) in out


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
