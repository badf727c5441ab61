"""The eval loop (--mode eval): scores every checkpoint of a training run
and reports the metrics of metrics.py."""

import math
import os

import checkpoints
import files
from files import UserError, write_atomically
from metrics import Lwlrap, mfom_metrics  # noqa: F401  (evaluation.Lwlrap)


def marker_path(eval_dir, step):
  return os.path.join(eval_dir, 'eval-%d.txt' % step)


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
  partial_clips = max(1, math.ceil(0.05 * len(rows)))

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
      scorer.load(prefix)
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
    partial = Lwlrap(class_names)
    partial.accumulate(truth[:partial_clips], scores[:partial_clips])
    result, report = mfom_metrics(truth, scores, class_names)
    text = '%s\n%s\n' % (lwlrap, report)
    print('Checkpoint %s (%d clips)\n%s' % (prefix, len(rows), text))
    with writer.as_default():
      summary.scalar('Lwlrap', lwlrap.overall_lwlrap(), step)
      summary.scalar('Lwlrap-5%', partial.overall_lwlrap(), step)
      summary.scalar('Micro-F1', result['micro_f1'], step)
      for name in ('mean_eer', 'pooled_eer'):
        if result[name] is not None:
          summary.scalar('EER-' + name.split('_')[0], result[name], step)
    writer.flush()
    write_atomically(marker_path(eval_dir, step), text)
