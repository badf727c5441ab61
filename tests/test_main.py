"""train -> eval -> inference from the command line, checked against scores
and metrics computed independently in this process."""

import glob
import math
import os
import re

import numpy as np
import pytest

from support import reference
from conftest import (CLASS_MAP, HPARAMS, check_ok, independent_clip_scores,
                      labeled_rows, read_class_names, read_csv_rows, run_main,
                      shared, train_args, truth_matrix)
from support.scores import TIE, lwlrap_bounds, overall_lwlrap, within


def _checkpoint_steps(train_dir):
  return sorted(int(m.group(1)) for m in (
      re.fullmatch(r'model\.ckpt-(\d+)\.index', n)
      for n in os.listdir(train_dir)) if m)


def _micro_f1_bounds(truth, scores, delta=TIE):
  """Micro-F1 at 0.5 with scores within delta of the threshold counted
  either way (all on one side, then all on the other)."""
  sure = np.abs(scores - 0.5) >= delta
  values = [reference.np_micro_f1(truth, np.where(sure, scores >= 0.5, side))
            for side in (False, True)]
  return min(values), max(values)


def _check_eval_report(path, truth, scores, class_names):
  """Every line of an eval-N.txt report (the original's: per-class lwlrap,
  then overall lwlrap as the last line) and of its metrics-N.txt (each
  class's EER, mean and pooled EER, micro-F1) against independent
  computations from the plain model's clip scores."""
  with open(path) as f:
    text = f.read()
  lines = text.split('\n')
  assert len(lines) == len(class_names) + 1  # no trailing newline either
  with open(path.replace('eval-', 'metrics-')) as f:
    lines += f.read().rstrip('\n').split('\n')
  num_classes = len(class_names)
  # Per-class lwlrap lines: one per class, in decreasing order.
  lwlrap_lines = [re.fullmatch(r'Lwlrap\((.+)\) = ([0-9.]+)', l)
                  for l in lines[:num_classes]]
  assert all(lwlrap_lines), lines[:num_classes]
  per_class = {m.group(1): float(m.group(2)) for m in lwlrap_lines}
  assert sorted(per_class) == sorted(class_names)
  # Decreasing lwlrap, ties in decreasing order of name (the original's
  # sorted((lwlrap, name), reverse=True)).
  pairs = [(float(m.group(2)), m.group(1)) for m in lwlrap_lines]
  assert pairs == sorted(pairs, reverse=True)
  for c, name in enumerate(class_names):
    positives = truth[:, c] > 0
    if not positives.any():
      assert per_class[name] == 0.0, name
      continue
    # Class lwlrap: mean precision of the class's positive labels.
    lo = hi = 0.0
    for sign, bound in ((-1, 'lo'), (1, 'hi')):
      shifted = scores + sign * TIE * truth
      precisions = []
      for r in np.flatnonzero(positives):
        at_or_above = shifted[r] >= shifted[r, c]
        precisions.append(np.sum(at_or_above & (truth[r] > 0)) /
                          np.sum(at_or_above))
      if bound == 'lo':
        lo = np.mean(precisions)
      else:
        hi = np.mean(precisions)
    assert within(per_class[name], (lo, hi)), (name, per_class[name], lo, hi)
  assert lines[num_classes].startswith('Overall lwlrap = ')
  assert within(overall_lwlrap(text), lwlrap_bounds(truth, scores))

  _check_metrics_lines(lines[num_classes + 1:], truth, scores, class_names)
  assert len(lines) == 2 * num_classes + 4
  return text


def _check_metrics_lines(lines, truth, scores, class_names):
  """The lines of a metrics-N.txt: each class's EER in class-map order,
  the mean and pooled EER and micro-F1, against bounds from the plain
  model's clip scores."""
  num_classes = len(class_names)
  eer_lines = [re.fullmatch(r'EER\((.+)\) = (\S+)', l)
               for l in lines[:num_classes]]
  assert all(eer_lines), lines[:num_classes]
  # One line per class, in class-map order.
  assert [m.group(1) for m in eer_lines] == list(class_names)
  lows, highs = [], []
  for c, m in enumerate(eer_lines):
    bounds = reference.eer_bounds(truth[:, c], scores[:, c], TIE)
    if bounds[0] is None:
      assert m.group(2) == 'undefined', m.group(0)
      continue
    lows.append(bounds[0])
    highs.append(bounds[1])
    assert within(float(m.group(2)), bounds), (m.group(0), bounds)
  assert lows, 'no class with positive and negative clips'
  mean = re.fullmatch(r'Mean EER = ([0-9.]+) \(over (\d+) classes with '
                      r'positive and negative clips\)',
                      lines[num_classes])
  assert mean, lines[num_classes]
  assert int(mean.group(2)) == len(lows)
  assert within(float(mean.group(1)), (np.mean(lows), np.mean(highs)))
  pooled = re.fullmatch(r'Pooled EER = ([0-9.]+)', lines[num_classes + 1])
  assert pooled, lines[num_classes + 1]
  assert within(float(pooled.group(1)), reference.eer_bounds(
      truth.ravel(), scores.ravel(), TIE))
  f1 = re.fullmatch(r'Micro-F1 = ([0-9.]+)', lines[num_classes + 2])
  assert f1, lines[num_classes + 2]
  assert within(float(f1.group(1)), _micro_f1_bounds(truth, scores))


def _eval_scalars(eval_dir):
  """{(tag, step): value} from the eval TensorBoard event files."""
  import tensorflow as tf
  scalars = {}
  for path in glob.glob(os.path.join(eval_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if '/' in value.tag or value.metadata.plugin_data.plugin_name == (
            'text'):
          continue  # per class, see _eval_per_class
        key = (value.tag, event.step)
        assert key not in scalars, key
        scalars[key] = float(tf.make_ndarray(value.tensor))
  return scalars


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


def _check_eval_scalars(scalars, step, truth, scores):
  """Lwlrap, Lwlrap-5% (README: int(0.05 N) + 1 clips, the first of the
  CSV rows permuted by numpy.random.default_rng(2019)), EER-mean,
  EER-pooled and Micro-F1 at `step` against independent computations.
  Scalars are float32: 1e-6 on values in [0, 1]."""
  slack = 1e-6
  assert within(scalars[('Lwlrap', step)], lwlrap_bounds(truth, scores),
                 slack)
  chosen = np.random.default_rng(2019).permutation(len(truth))[
      :int(0.05 * len(truth)) + 1]
  assert within(scalars[('Lwlrap-5%', step)],
                 lwlrap_bounds(truth[chosen], scores[chosen]), slack)
  lows, highs = zip(*[reference.eer_bounds(truth[:, c], scores[:, c], TIE)
                      for c in range(truth.shape[1])
                      if 0 < truth[:, c].sum() < len(truth)])
  assert within(scalars[('EER-mean', step)],
                 (np.mean(lows), np.mean(highs)), slack)
  assert within(scalars[('EER-pooled', step)], reference.eer_bounds(
      truth.ravel(), scores.ravel(), TIE), slack)
  assert within(scalars[('Micro-F1', step)],
                 _micro_f1_bounds(truth, scores), slack)


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
  assert _checkpoint_steps(train_dir) == [0, 3]  # the start, and the end
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
  text = _check_eval_report(os.path.join(eval_dir, 'eval-3.txt'), truth,
                            scores, class_names)
  # stdout reports the same text as the marker file.
  assert text in mobilenet_eval['result'].stdout
  _check_eval_scalars(_eval_scalars(eval_dir), 3, truth, scores)
  assert sorted(_eval_scalars(eval_dir)) == sorted(
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
  _check_submission(mobilenet_inference['csv'], inference_clips, expected)
  out = mobilenet_inference['result'].stdout
  assert 'Wrote %d clips x 80 classes' % len(fnames) in out
  # The Keras engine: no engine note after the statistics.
  assert 'Scoring %s (batch-norm statistics: precise)\n' % (
      mobilenet_train['checkpoint']) in out


def test_batched_scoring_equals_per_clip_scoring(
    mobilenet_train, dataset, inference_clips, parse_hparams, monkeypatch):
  from tagger.core import files
  from tagger.engines import scoring
  monkeypatch.setattr(scoring, 'BATCH_SIZE', 5)  # batches span clips
  hparams = parse_hparams('batch_size=5')
  paths = [os.path.join(dataset['train_clip_dir'], f)
           for f, _ in labeled_rows(dataset['validation_csv'])]
  paths += sorted(glob.glob(os.path.join(inference_clips, '*.wav')))
  samples = files.check_clips(paths)
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
  assert _checkpoint_steps(train_dir) == [0, 100, 101]
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
  scalars = _eval_scalars(eval_dir)
  for step in (100, 101):
    scores = independent_clip_scores(
        'crnn', parse_hparams(crnn_train['hparams']),
        os.path.join(crnn_train['train_dir'], 'model.ckpt-%d' % step),
        dataset['train_clip_dir'], [f for f, _ in rows])
    text = _check_eval_report(os.path.join(eval_dir, 'eval-%d.txt' % step),
                              truth, scores, class_names)
    assert text in crnn_eval['result'].stdout
    _check_eval_scalars(scalars, step, truth, scores)
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
  scalars = _eval_scalars(crnn_eval_41_clips['eval_dir'])
  assert sorted({tag for tag, _ in scalars}) == [
      'EER-mean', 'EER-pooled', 'Lwlrap', 'Lwlrap-5%', 'Micro-F1']
  assert sorted({step for _, step in scalars}) == [0, 100, 101]
  for step in (100, 101):
    scores = independent_clip_scores(
        'crnn', parse_hparams(crnn_train['hparams']),
        os.path.join(crnn_train['train_dir'], 'model.ckpt-%d' % step),
        crnn_eval_41_clips['clip_dir'], [f for f, _ in rows])
    _check_eval_scalars(scalars, step, truth, scores)
    text = _check_eval_report(
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
  _check_submission(csv_path, dataset['test_clip_dir'], expected)


def test_two_scorers_in_one_process_load_crnn_checkpoint(
    crnn_train, dataset, parse_hparams):
  """Eval/inference code used as a library: a second Scorer in the same
  process must load the same checkpoint as the first and score alike."""
  from tagger.core import files
  from tagger.engines import scoring
  hparams = parse_hparams(crnn_train['hparams'])
  checkpoint = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  fnames = [f for f, _ in labeled_rows(dataset['validation_csv'])]
  paths = [os.path.join(dataset['train_clip_dir'], f) for f in fnames]
  samples = files.check_clips(paths)
  first = scoring.Scorer('crnn', 80, hparams)
  second = scoring.Scorer('crnn', 80, hparams)
  first.load(checkpoint)
  second.load(checkpoint)
  first_scores = first.score(paths, samples)
  second_scores = second.score(paths, samples)
  np.testing.assert_allclose(second_scores, first_scores, atol=1e-6, rtol=0)
  expected = independent_clip_scores('crnn', hparams, checkpoint,
                                     dataset['train_clip_dir'], fnames)
  # NumPy and TensorFlow features differ by ~1e-5, which the CRNN's input
  # batch norm may amplify; elsewhere engine scores are held to 1e-4 too.
  np.testing.assert_allclose(first_scores, expected, atol=1e-4, rtol=0)


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
