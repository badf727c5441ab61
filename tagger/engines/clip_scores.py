"""The scoring loop: batches of examples scored by an engine and summed into
clip scores (the mean of each clip's example scores), with progress lines,
and the checks that each clip got all of its examples and a finite score.
"""

import datetime
import gc
import sys
import time
import traceback

import numpy as np

from tagger.core import stopping
from tagger.core.files import UserError

PROGRESS_EVERY_SECONDS = 10.0


class _Tally:
  """Each clip's sum of example scores and count of examples so far."""

  def __init__(self, expected, num_classes):
    self.expected = expected  # [clips] examples each clip has
    self.sums = np.zeros((len(expected), num_classes))
    self.counts = np.zeros(len(expected), dtype=np.int64)
    self.reported = np.zeros(len(expected), dtype=bool)
    self.done = 0

  def add(self, clip_index, scores):
    np.add.at(self.sums, clip_index, scores)
    self.counts += np.bincount(clip_index, minlength=len(self.expected))
    self.done += len(clip_index)

  def complete(self):
    return (self.counts == self.expected) & (self.expected > 0)

  def means(self):
    return self.sums / np.maximum(self.counts, 1)[:, None]

  def newly_complete(self, clip_index):
    """The clips among clip_index that have just got all their examples."""
    found = []
    for i in np.unique(clip_index):
      if self.counts[i] == self.expected[i] and not self.reported[i]:
        self.reported[i] = True
        found.append(int(i))
    return found


def _progress_line(tally, label, start, on_progress):
  finished = tally.complete()
  total = int(tally.expected.sum())
  rate = tally.done / max(time.time() - start, 1e-9)
  extra = on_progress(finished, tally.means()) if on_progress else ''
  return '%s: %d/%d clips, %d/%d examples, %.1f examples/s, %s left%s' % (
      label, finished.sum(), len(tally.expected), tally.done, total, rate,
      datetime.timedelta(seconds=int((total - tally.done) / max(rate, 1e-9))),
      extra)


def score_batches(score_examples, batches, names, expected, num_classes,
                  label, on_progress=None, on_examples=None, on_clip=None,
                  out=None, partial=False):
  """batches of (examples, clip index[, example index]) -> [clips, classes]
  mean scores (score_examples: examples -> example scores), checked finite,
  and complete unless partial (then NaN for an incomplete clip). expected:
  [clips] examples of each clip. on_progress(finished, scores) gives extra
  text for a progress line; on_examples(clip indices, example indices,
  scores) sees each batch; on_clip(index, score) each clip once complete."""
  out = out or sys.stdout
  tally = _Tally(expected, num_classes)
  start = last_report = time.time()
  iterator = iter(batches)
  try:
    for batch in iterator:
      stopping.check()
      scores = score_examples(batch[0])
      clip_index = batch[1].numpy()
      tally.add(clip_index, scores)
      if on_examples:
        on_examples(clip_index, batch[2].numpy(), scores)
      for i in tally.newly_complete(clip_index) if on_clip else ():
        on_clip(i, _finite(tally.sums[i] / tally.counts[i], names[i]))
      if time.time() - last_report >= PROGRESS_EVERY_SECONDS:
        print(_progress_line(tally, label, start, on_progress), file=out,
              flush=True)
        last_report = time.time()
  except BaseException as e:
    # Stopped by an error or Ctrl-C, maybe inside the iterator's own
    # frames: the iterator is released now, while tf.data's threads can
    # still run Python (tagging's chunks come from a Python generator).
    # Kept alive by the traceback until the interpreter exits, it would be
    # destroyed when a generator call in flight can no longer finish, and
    # the exit would hang.
    traceback.clear_frames(e.__traceback__)
    del iterator
    gc.collect()
    raise
  stopping.check()  # a stop may have ended tagging's chunks early
  print(_progress_line(tally, label, start, on_progress), file=out,
        flush=True)
  return _clip_scores(tally, names, partial)


def _clip_scores(tally, names, partial):
  complete = tally.complete()
  if not partial and not complete.all():
    bad = int(np.flatnonzero(~complete)[0])
    raise UserError('%s: got %d examples, expected %d (did the file change '
                    'during the run?)' % (names[bad], tally.counts[bad],
                                          tally.expected[bad]))
  clip_scores = np.full(tally.sums.shape, np.nan)
  clip_scores[complete] = tally.sums[complete] / tally.counts[complete, None]
  for i in np.flatnonzero(complete):
    _finite(clip_scores[i], names[i])
  return clip_scores


def _finite(clip_score, name):
  if not np.all(np.isfinite(clip_score)):
    raise UserError('%s: scores are not finite (is the checkpoint '
                    'diverged?)' % name)
  return clip_score
