"""train -> eval -> inference of the CRNN from the command line, checked
against scores and metrics computed independently in this process:
checkpoints every 100 steps and loss summaries every 10, eval of every
checkpoint (reports, scalars, progress lines; on 41 clips the 5% subset and
the per-class scalars and table), and the submission."""

import glob
import math
import os
import re

import pytest

from conftest import shared
from support.cli import check_ok, run_main
from support.scores import (independent_clip_scores, labeled_rows,
                            overall_lwlrap, read_class_names, truth_matrix)
from support.settings import CLASS_MAP
from support.run_outputs import (check_eval_report, check_eval_scalars,
                                 check_submission, checkpoint_steps,
                                 eval_scalars)


def _eval_per_class(eval_dir, step):
  """({class: lwlrap} scalars, table text) at `step` from the event files."""
  import tensorflow as tf
  per_class, text = {}, None
  for path in glob.glob(os.path.join(eval_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if event.step != step:
          continue
        if value.tag.startswith('Lwlrap/'):
          per_class[value.tag[len('Lwlrap/'):]] = float(
              tf.make_ndarray(value.tensor))
        elif value.metadata.plugin_data.plugin_name == 'text':
          text = tf.make_ndarray(value.tensor).item().decode()
  return per_class, text


def test_crnn_train_checkpoints_every_100_steps(crnn_train):
  train_dir = crnn_train['train_dir']
  assert checkpoint_steps(train_dir) == [0, 100, 101]
  out = crnn_train['result'].stdout
  assert re.findall(r'^Saved checkpoint .*model\.ckpt-(\d+)$', out, re.M) == [
      '0', '100', '101']
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


@pytest.fixture(scope='session')
def crnn_eval(tmp_path_factory, crnn_train, dataset):
  """eval of the shared CRNN run (made once for every test process)."""
  def make(root):
    eval_dir = str(root / 'eval')
    result = check_ok(run_main(
        ['--mode', 'eval', '--model', 'crnn', '--class_map_path', CLASS_MAP,
         '--eval_clip_dir', dataset['train_clip_dir'],
         '--eval_csv_path', dataset['validation_csv'],
         '--train_dir', crnn_train['train_dir'], '--eval_dir', eval_dir,
         '--hparams', crnn_train['hparams']]))
    return {'result': result, 'eval_dir': eval_dir}
  return shared(tmp_path_factory, 'crnn_eval', make)


def test_crnn_eval_every_checkpoint(crnn_train, crnn_eval, dataset,
                                    parse_hparams):
  eval_dir = crnn_eval['eval_dir']
  assert sorted(n for n in os.listdir(eval_dir) if n.startswith('eval-')) == [
      'eval-0.txt', 'eval-100.txt', 'eval-101.txt']
  assert '3 checkpoints in %s, 0 already evaluated' % (
      crnn_train['train_dir']) in crnn_eval['result'].stdout
  rows = labeled_rows(dataset['validation_csv'])
  class_names = read_class_names()
  truth = truth_matrix(rows, class_names)
  scalars = eval_scalars(eval_dir)
  for step in (100, 101):
    scores = independent_clip_scores(
        'crnn', parse_hparams(crnn_train['hparams']),
        os.path.join(crnn_train['train_dir'], 'model.ckpt-%d' % step),
        dataset['train_clip_dir'], [f for f, _ in rows])
    text = check_eval_report(os.path.join(eval_dir, 'eval-%d.txt' % step),
                              truth, scores, class_names)
    assert text in crnn_eval['result'].stdout
    check_eval_scalars(scalars, step, truth, scores)
    # Its last progress line: every clip and example scored, and the running
    # lwlrap over the finished clips is now the overall one.
    prefix = os.path.join(crnn_train['train_dir'], 'model.ckpt-%d' % step)
    last = re.findall(r'^eval %s: (\d+)/(\d+) clips, (\d+)/(\d+) examples, '
                      r'.* left, running lwlrap (\S+)$' % re.escape(prefix),
                      crnn_eval['result'].stdout, re.M)[-1]
    assert last[:2] == (str(len(rows)),) * 2 and last[2] == last[3], last
    assert float(last[4]) == pytest.approx(overall_lwlrap(text), abs=1e-4)


@pytest.fixture(scope='module')
def crnn_eval_41_clips(tmp_path_factory, crnn_train, parse_hparams):
  """evaluation.evaluate, in-process, on 41 short clips: the first 5% of the
  clips are ceil(2.05) = 3 of them."""
  from tagger.core import files
  import evaluation
  from tools import make_demo_data
  root = tmp_path_factory.mktemp('eval41')
  data = make_demo_data.make_dataset(
      str(root / 'data'), num_train=0, num_validation=41, num_test=0,
      min_seconds=0.3, max_seconds=0.8, seed=41)
  class_names = read_class_names()
  rows = labeled_rows(data['validation_csv'])
  assert len(rows) == 41
  samples = files.check_clips([os.path.join(data['train_clip_dir'], f)
                              for f, _ in rows])
  eval_dir = str(root / 'eval')
  evaluation.evaluate('crnn', parse_hparams(crnn_train['hparams']),
                      class_names, rows, data['train_clip_dir'], samples,
                      crnn_train['train_dir'], eval_dir)
  return {'eval_dir': eval_dir, 'rows': rows,
          'clip_dir': data['train_clip_dir']}


def test_eval_scalars_on_41_clips(crnn_train, crnn_eval_41_clips,
                                  parse_hparams):
  rows = crnn_eval_41_clips['rows']
  class_names = read_class_names()
  truth = truth_matrix(rows, class_names)
  scalars = eval_scalars(crnn_eval_41_clips['eval_dir'])
  assert sorted({tag for tag, _ in scalars}) == [
      'EER-mean', 'EER-pooled', 'Lwlrap', 'Lwlrap-5%', 'Micro-F1']
  assert sorted({step for _, step in scalars}) == [0, 100, 101]
  for step in (100, 101):
    scores = independent_clip_scores(
        'crnn', parse_hparams(crnn_train['hparams']),
        os.path.join(crnn_train['train_dir'], 'model.ckpt-%d' % step),
        crnn_eval_41_clips['clip_dir'], [f for f, _ in rows])
    check_eval_scalars(scalars, step, truth, scores)
    text = check_eval_report(
        os.path.join(crnn_eval_41_clips['eval_dir'], 'eval-%d.txt' % step),
        truth, scores, class_names)
    assert 'Overall lwlrap' in text
    # Each class with labels as a scalar, equal to its line in the report
    # (checked independently above), and the report's table as text.
    per_class, table = _eval_per_class(crnn_eval_41_clips['eval_dir'], step)
    reported = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^Lwlrap\((.+)\) = ([0-9.]+)$', text, re.M)}
    with_labels = [c for i, c in enumerate(class_names) if truth[:, i].any()]
    assert sorted(per_class) == sorted(with_labels)
    for name, value in per_class.items():
      assert abs(value - reported[name]) <= 5e-7 + 1e-7, name
    assert [l.strip() for l in table.split('\n\n')] == text.split('\n')


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
  check_submission(csv_path, dataset['test_clip_dir'], expected)
