"""Comparing the scores and lwlrap main.py reports with independent ones:
the truth read from CSVs, clip scores and lwlrap computed apart from the
product, bounds over the orders of near-tied scores, and the printed
figures."""

import os
import re

import numpy as np

from support.settings import CLASS_MAP


# Scores from the engine (batch norm folded) and from the plain model differ
# by float32 rounding, well below this; score pairs closer than this may
# rank either way, so metrics are checked against bounds over both orders.
TIE = 2e-5
# Reports print 6 decimals.
PRINTED = 6e-7


def lwlrap_bounds(truth, scores, delta=TIE):
  """Raising every positive's score can only raise lwlrap; lowering it can
  only lower it: (low, high) over every order of near-tied pairs."""
  return (independent_lwlrap(truth, scores - delta * truth),
          independent_lwlrap(truth, scores + delta * truth))


def within(value, bounds, slack=PRINTED + 1e-9):
  low, high = bounds
  return low - slack <= value <= high + slack


def overall_lwlrap(text):
  values = re.findall(r'^Overall lwlrap = ([0-9.]+)$', text, re.M)
  assert len(values) == 1, text
  return float(values[0])


def read_class_names():
  from tagger.core import files
  return files.read_class_map(CLASS_MAP)


def read_csv_rows(path):
  import csv
  with open(path, newline='') as f:
    return list(csv.reader(f))


def labeled_rows(csv_path):
  """[(fname, [labels])] of a fname,labels CSV, read with the csv module."""
  rows = read_csv_rows(csv_path)
  assert rows[0] == ['fname', 'labels']
  return [(r[0], r[1].split(',')) for r in rows[1:] if r]


def load_model_from_checkpoint(model_name, hparams, checkpoint_prefix):
  """A plain Keras model of stock layers (tests/support/plain_models.py,
  its layer tables written out there) with every variable read from the
  checkpoint by its variable path (not through model.py or
  scoring.Scorer)."""
  from support import plain_models
  net = plain_models.plain_model(model_name, len(read_class_names()), hparams)
  return plain_models.load_checkpoint(net, checkpoint_prefix)


def scorer_scores(model_name, hparams, checkpoint, paths, engine=None):
  """[clips, classes] clip scores as eval, inference and relabel make them
  (scoring.Scorer, the Keras engine unless another is given)."""
  from tagger.core import files
  from tagger.engines import scoring
  scorer = scoring.Scorer(model_name, 80, hparams, engine=engine)
  scorer.load(checkpoint)
  return scorer.score(paths, files.check_clips(paths))


def independent_clip_scores(model_name, hparams, checkpoint_prefix, clip_dir,
                            fnames):
  """[clips, classes] mean sigmoid score over each clip's examples, from the
  plain model in inference mode on NumPy log-mel examples
  (tests/support/reference.py)."""
  import tensorflow as tf
  from support import reference
  net = load_model_from_checkpoint(model_name, hparams, checkpoint_prefix)
  examples = [reference.np_clip_examples(os.path.join(clip_dir, fname),
                                         hparams).astype(np.float32)
              for fname in fnames]
  everything = np.concatenate(examples)
  example_scores = np.concatenate([
      tf.sigmoid(net(everything[i:i + 32], training=False)).numpy()
      for i in range(0, len(everything), 32)]).astype(np.float64)
  ends = np.cumsum([len(e) for e in examples])
  scores = np.array([example_scores[end - len(e):end].mean(axis=0)
                     for e, end in zip(examples, ends)])
  # The model must tell clips apart, or comparisons against it prove little.
  assert np.ptp(scores, axis=0).max() > 1e-4, 'scores equal for all clips'
  return scores


def independent_lwlrap(truth, scores):
  from sklearn.metrics import label_ranking_average_precision_score
  truth = np.asarray(truth)
  return label_ranking_average_precision_score(
      truth, scores, sample_weight=truth.sum(axis=1))


def truth_matrix(rows, class_names):
  truth = np.zeros((len(rows), len(class_names)))
  for r, (_, labels) in enumerate(rows):
    for label in labels:
      truth[r, class_names.index(label)] = 1
  return truth
