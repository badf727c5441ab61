"""The eval loop (--mode eval): scores every checkpoint of a training run
and reports the metrics of metrics.py."""

import os

import numpy as np

import checkpoints
import files
from files import UserError, write_atomically
from metrics import Lwlrap, mfom_metrics  # noqa: F401  (evaluation.Lwlrap)


# Lwlrap-5%: the original's quick look at a random 5% of the clips
# (int(0.05 N) + 1 of them, after shuffling the clip order). The shuffle here
# is seeded so that a rerun reports the same figure.
PARTIAL_SEED = 2019


def marker_path(eval_dir, step):
  """eval-N.txt: the original's lwlrap report, whose presence marks
  checkpoint N as evaluated."""
  return os.path.join(eval_dir, 'eval-%d.txt' % step)


def metrics_path(eval_dir, step):
  """metrics-N.txt: the EER and micro-F1 report of checkpoint N."""
  return os.path.join(eval_dir, 'metrics-%d.txt' % step)


def partial_clips(num_clips):
  """The clip indices of Lwlrap-5%."""
  order = np.random.default_rng(PARTIAL_SEED).permutation(num_clips)
  return order[:int(0.05 * num_clips) + 1]


def evaluate(model_name, hparams, class_names, rows, clip_dir, clip_samples,
             train_dir, eval_dir):
  """Scores every checkpoint in train_dir that has no eval-N.txt marker in
  eval_dir yet; rows are the CSV's (fname, labels)."""
  import tensorflow as tf  # here so that the metrics above need no TF
  import scoring
  import summary

  found = checkpoints.list_checkpoints(train_dir)
  if not found:
    raise UserError('%s: no model.ckpt-N checkpoints to evaluate' % train_dir)
  todo = [(n, p) for n, p in found
          if not os.path.exists(marker_path(eval_dir, n))]
  print('%d checkpoints in %s, %d already evaluated' % (
      len(found), train_dir, len(found) - len(todo)))
  if not todo:
    return

  truth = files.label_matrix(rows, class_names)
  paths = [os.path.join(clip_dir, fname) for fname, _ in rows]
  partial = partial_clips(len(rows))

  def running_lwlrap(finished, scores):
    if not finished.any():
      return ''
    lwlrap = Lwlrap(class_names)
    lwlrap.accumulate(truth[finished], scores[finished])
    return ', running lwlrap %.4f' % lwlrap.overall_lwlrap()

  scorer = scoring.Scorer(model_name, len(class_names), hparams)
  os.makedirs(eval_dir, exist_ok=True)
  writer = tf.summary.create_file_writer(eval_dir)
  for step, prefix in todo:
    try:
      statistics = scorer.load(prefix)
    except UserError:
      if checkpoints.exists(prefix):
        raise
      # Deleted since the listing, e.g. by a training run's clean-up.
      print('warning: %s was deleted before it could be evaluated; skipped'
            % prefix)
      continue
    scores = scorer.score(paths, clip_samples, label='eval %s' % prefix,
                          on_progress=running_lwlrap)
    lwlrap = Lwlrap(class_names)
    lwlrap.accumulate(truth, scores)
    partial_lwlrap = Lwlrap(class_names)
    partial_lwlrap.accumulate(truth[partial], scores[partial])
    result, report = mfom_metrics(truth, scores, class_names)
    print('Checkpoint %s (%d clips, batch-norm statistics: %s)\n%s\n%s\n' % (
        prefix, len(rows), statistics, lwlrap, report))
    with writer.as_default():
      summary.scalar('Lwlrap', lwlrap.overall_lwlrap(), step)
      summary.scalar('Lwlrap-5%', partial_lwlrap.overall_lwlrap(), step)
      summary.scalar('Micro-F1', result['micro_f1'], step)
      for name in ('mean_eer', 'pooled_eer'):
        if result[name] is not None:
          summary.scalar('EER-' + name.split('_')[0], result[name], step)
    writer.flush()
    write_atomically(metrics_path(eval_dir, step), report + '\n')
    # The marker last: its presence means the checkpoint is done.
    write_atomically(marker_path(eval_dir, step), str(lwlrap))
