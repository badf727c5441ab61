"""What eval reports for one checkpoint, as a pure function of its clip
scores: the original's eval-N.txt (per-class and overall lwlrap; its path
is claims.marker_path), the metrics-N.txt of EER and micro-F1, and the
TensorBoard scalars and text. evaluation.py writes it; nothing here
touches a file."""

import dataclasses
import os

import numpy as np

from tagger.eval.metrics import Lwlrap, mfom_metrics

# Lwlrap-5%: the original's quick look at a random 5% of the clips
# (int(0.05 N) + 1 of them, after shuffling the clip order). The shuffle here
# is seeded so that a rerun reports the same figure.
PARTIAL_SEED = 2019


@dataclasses.dataclass(frozen=True)
class Report:
  step: int
  lwlrap_text: str  # eval-N.txt
  metrics_text: str  # metrics-N.txt
  scalars: dict  # TensorBoard name -> value
  table: str  # the per-class lwlrap table as TensorBoard text


def metrics_path(eval_dir, step):
  """metrics-N.txt: the EER and micro-F1 report of checkpoint N."""
  return os.path.join(eval_dir, 'metrics-%d.txt' % step)


def partial_clips(num_clips):
  """The clip indices of Lwlrap-5%."""
  order = np.random.default_rng(PARTIAL_SEED).permutation(num_clips)
  return order[:int(0.05 * num_clips) + 1]


def _lwlrap(class_names, truth, scores):
  lwlrap = Lwlrap(class_names)
  lwlrap.accumulate(truth, scores)
  return lwlrap


def report(step, truth, scores, class_names):
  """The Report of checkpoint `step`: [clips, classes] multi-hot truth and
  clip scores."""
  lwlrap = _lwlrap(class_names, truth, scores)
  partial = partial_clips(len(truth))
  result, metrics_text = mfom_metrics(truth, scores, class_names)
  scalars = {
      'Lwlrap': lwlrap.overall_lwlrap(),
      'Lwlrap-5%': _lwlrap(class_names, truth[partial],
                           scores[partial]).overall_lwlrap(),
      'Micro-F1': result['micro_f1'],
  }
  for name in ('mean_eer', 'pooled_eer'):
    if result[name] is not None:
      scalars['EER-' + name.split('_')[0]] = result[name]
  # Each class with labels in the eval set.
  for name, value, weight in zip(class_names, lwlrap.per_class_lwlrap(),
                                 lwlrap.per_class_weight()):
    if weight > 0:
      scalars['Lwlrap/' + name] = value
  table = '\n\n'.join('    ' + line for line in str(lwlrap).split('\n'))
  return Report(step, str(lwlrap), metrics_text, scalars, table)
