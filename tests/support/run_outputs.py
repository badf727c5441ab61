"""What main.py's runs write, checked against independent computations from
the plain model's clip scores: the checkpoints' steps on disk, an
eval-N.txt report and its metrics-N.txt, eval's TensorBoard scalars, and a
submission CSV."""

import glob
import os
import re

import numpy as np

from support import reference
from support.scores import (TIE, lwlrap_bounds, overall_lwlrap,
                            read_class_names, read_csv_rows, within)


def checkpoint_steps(train_dir):
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


def check_eval_report(path, truth, scores, class_names):
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


def eval_scalars(eval_dir):
  """{(tag, step): value} from the eval TensorBoard event files."""
  import tensorflow as tf
  scalars = {}
  for path in glob.glob(os.path.join(eval_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if '/' in value.tag or value.metadata.plugin_data.plugin_name == (
            'text'):
          continue  # per class: test_main_crnn.py's _eval_per_class
        key = (value.tag, event.step)
        assert key not in scalars, key
        scalars[key] = float(tf.make_ndarray(value.tensor))
  return scalars


def check_eval_scalars(scalars, step, truth, scores):
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


def check_submission(csv_path, clip_dir, expected_scores):
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
