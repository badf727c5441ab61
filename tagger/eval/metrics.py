"""Metrics of clip scores against multi-hot truth: lwlrap (the challenge's
metric) and the MFoM project's EER and micro-F1."""

import numpy as np
from sklearn import metrics as sk_metrics


class Lwlrap:
  """Label-weighted label-ranking average precision, accumulated over clips.

  For each positive label of each clip, precision is the fraction of labels
  scored at least as high that are positive (ties count against, as in
  sklearn's label ranking average precision). A class's lwlrap averages its
  precisions; the overall lwlrap weights classes by their share of positive
  labels, which equals LRAP with each clip weighted by its number of labels.
  """

  def __init__(self, class_map):
    self._class_map = list(class_map)
    self.num_classes = len(self._class_map)
    self._precision_sum = np.zeros(self.num_classes)
    self._count = np.zeros(self.num_classes, dtype=np.int64)

  def accumulate(self, batch_truth, batch_scores):
    truth = np.asarray(batch_truth) > 0
    scores = np.asarray(batch_scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.shape[-1] != self.num_classes:
      raise ValueError('truth %s and scores %s must both be [clips, %d]' % (
          truth.shape, scores.shape, self.num_classes))
    for row_truth, row_scores in zip(truth, scores):
      positives = np.flatnonzero(row_truth)
      if not len(positives):
        continue
      # ranked_at_or_above[i, j]: label j scores >= positive label i.
      ranked_at_or_above = row_scores[None, :] >= row_scores[positives, None]
      rank = ranked_at_or_above.sum(axis=1)
      hits = (ranked_at_or_above & row_truth[None, :]).sum(axis=1)
      self._precision_sum[positives] += hits / rank
      self._count[positives] += 1

  def per_class_lwlrap(self):
    return self._precision_sum / np.maximum(1, self._count)

  def per_class_weight(self):
    return self._count / max(1, self._count.sum())

  def overall_lwlrap(self):
    return float(np.sum(self.per_class_lwlrap() * self.per_class_weight()))

  def __str__(self):
    """The original's report: a line per class in decreasing order of
    lwlrap (tied classes in decreasing order of name, as the original's
    reverse sort of (lwlrap, name) pairs gives), then the overall lwlrap."""
    per_class = self.per_class_lwlrap()
    lines = ['Lwlrap(%s) = %.6f' % (name, value) for value, name in sorted(
        zip(per_class, self._class_map), reverse=True)]
    lines.append('Overall lwlrap = %.6f' % self.overall_lwlrap())
    return '\n'.join(lines)


def equal_error_rate(truth, scores):
  """EER of one detector: where the false-positive and false-negative rates
  of the ROC curve cross, linearly interpolated between its two nearest
  points. None when truth has no positive or no negative."""
  truth = np.asarray(truth) > 0
  if truth.all() or not truth.any():
    return None
  fpr, tpr, _ = sk_metrics.roc_curve(truth, scores, drop_intermediate=False)
  fnr = 1.0 - tpr
  gap = fnr - fpr  # starts at 1 and falls to -1 along the curve
  i = int(np.argmax(gap <= 0))
  if gap[i] == 0:
    return float(fpr[i])
  t = gap[i - 1] / (gap[i - 1] - gap[i])
  return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def micro_f1(truth, scores, threshold=0.5):
  """Micro-averaged F1 with a score >= threshold counted as a positive."""
  truth = np.asarray(truth) > 0
  predicted = np.asarray(scores) >= threshold
  true_positives = np.sum(truth & predicted)
  denominator = np.sum(truth) + np.sum(predicted)
  return float(2.0 * true_positives / denominator) if denominator else 0.0


def mfom_metrics(truth, scores, class_map):
  """Class-wise EER (None where undefined), their mean over defined classes,
  pooled EER and micro-F1, plus the report lines for them."""
  truth = np.asarray(truth)
  class_eer = [equal_error_rate(truth[:, c], scores[:, c])
               for c in range(truth.shape[1])]
  defined = [e for e in class_eer if e is not None]
  result = {
      'class_eer': class_eer,
      'mean_eer': float(np.mean(defined)) if defined else None,
      'pooled_eer': equal_error_rate(truth.ravel(), np.asarray(scores).ravel()),
      'micro_f1': micro_f1(truth, scores),
  }
  fmt = lambda v: 'undefined' if v is None else '%.6f' % v
  lines = ['EER(%s) = %s' % (name, fmt(e))
           for name, e in zip(class_map, class_eer)]
  lines += ['Mean EER = %s (over %d classes with positive and negative clips)'
            % (fmt(result['mean_eer']), len(defined)),
            'Pooled EER = %s' % fmt(result['pooled_eer']),
            'Micro-F1 = %.6f' % result['micro_f1']]
  return result, '\n'.join(lines)
