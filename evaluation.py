"""The eval loop (--mode eval): scores every checkpoint of a training run
and reports the metrics of metrics.py.

Several eval processes may share one train_dir and eval_dir, on one machine
or on several that share the folders: each claims a checkpoint before
scoring it (see "Claims" below), so that no checkpoint is scored twice.
With continuous=True eval keeps polling train_dir for new checkpoints and
stops once training has finished and every checkpoint is evaluated.
"""

import contextlib
import os
import time

from tagger.core import checkpoints
from tagger.core import files
from tagger.core import stopping
from tagger.eval.claims import (DONE, HELD, OWNED, REFRESH_SECONDS, kept_fresh,
                    marker_path, try_claim)
from tagger.core.files import UserError, write_atomically
from tagger.eval import reports
from tagger.eval.metrics import Lwlrap  # noqa: F401  (evaluation.Lwlrap)


POLL_SECONDS = 30.0
CLAIM_TIMEOUT_SECONDS = 600.0
# TensorFlow writes a checkpoint's .index file in place, after its data: a
# continuous eval may list a checkpoint whose .index is not complete yet. One
# that cannot be read is tried again at the next polls, and is reported as
# damaged once its files have not changed for this long.
SETTLE_SECONDS = 10.0


# --- Continuous eval --------------------------------------------------------

def training_finished(train_dir):
  """The final step recorded in train_dir/training_finished (its text, if
  not a number), or None while training has not finished."""
  try:
    with open(os.path.join(train_dir, checkpoints.FINISHED_FILE),
              errors='replace') as f:
      text = f.read(100).strip()
  except (FileNotFoundError, NotADirectoryError):
    return None
  return text or '?'


class _Waiter:
  """Polls train_dir; says once what it is waiting for; gives up when no
  new checkpoint has come for idle_timeout seconds."""

  def __init__(self, train_dir, poll_seconds, idle_timeout_seconds):
    self.train_dir = train_dir
    self.poll_seconds = poll_seconds
    self.idle_timeout_seconds = idle_timeout_seconds
    self.said = None  # the last message printed, not printed again
    self.news()

  def news(self):
    """A new checkpoint appeared or one was evaluated."""
    self.since = time.monotonic()

  def wait(self, message, evaluated):
    if (self.idle_timeout_seconds is not None and
        time.monotonic() - self.since >= self.idle_timeout_seconds):
      raise UserError(
          '%s: no new checkpoint for %g seconds and training has not finished'
          ' (no %s file); stopped waiting after evaluating %d checkpoints' % (
              self.train_dir, self.idle_timeout_seconds,
              checkpoints.FINISHED_FILE, evaluated))
    if message != self.said:
      print(message, flush=True)
      self.said = message
    stopping.sleep(self.poll_seconds)


def waiting_message(train_dir, evaluated, held=0, retrying=0, final=None):
  """What continuous eval waits for: new checkpoints, or once training
  has finished, those held by other processes or to be read again."""
  parts = ['%d evaluated so far' % evaluated]
  if held:
    parts.append('%d being evaluated by other processes' % held)
  if retrying:
    parts.append('%d to read again' % retrying)
  if final is not None:
    return ('Training finished at step %s; waiting for the last checkpoints '
            '(%s)' % (final, '; '.join(parts)))
  return 'Waiting for new checkpoints in %s (%s)' % (train_dir,
                                                     '; '.join(parts))


def wait_for_first_checkpoint(train_dir, poll_seconds=POLL_SECONDS,
                              idle_timeout_seconds=None):
  """Continuous eval started before training: waits until train_dir holds a
  checkpoint (its record gives the model and hparams to score with)."""
  waiter = _Waiter(train_dir, poll_seconds, idle_timeout_seconds)
  with stopping.requests():
    while True:
      final = training_finished(train_dir)  # first: see evaluate()
      if checkpoints.list_checkpoints(train_dir):
        return
      if final is not None:
        raise UserError('%s: training has finished, and there are no '
                        'model.ckpt-N checkpoints to evaluate' % train_dir)
      waiter.wait(waiting_message(train_dir, 0), 0)


# --- Eval -------------------------------------------------------------------

EVALUATED, DELETED, UNREADABLE, LOST = ('evaluated', 'deleted', 'unreadable',
                                        'lost')


class _Evaluator:
  """Scores checkpoints one at a time, each under a claim; the model and
  the summary writer are made when the first checkpoint is claimed."""

  def __init__(self, model_name, hparams, class_names, rows, clip_dir,
               sample_counts, eval_dir, claim_timeout_seconds, engine=None):
    self.model_name, self.hparams = model_name, hparams
    self.engine = engine
    self.class_names, self.rows = class_names, rows
    self.sample_counts = sample_counts
    self.eval_dir = eval_dir
    self.claim_timeout = claim_timeout_seconds
    self.truth = files.label_matrix(rows, class_names)
    self.paths = [os.path.join(clip_dir, fname) for fname, _ in rows]
    self.scorer = self.writer = None

  def running_lwlrap(self, finished, scores):
    if not finished.any():
      return ''
    lwlrap = Lwlrap(self.class_names)
    lwlrap.accumulate(self.truth[finished], scores[finished])
    return ', running lwlrap %.4f' % lwlrap.overall_lwlrap()

  def evaluate(self, step, prefix, retry_unreadable=False):
    """Claims and scores one checkpoint. Returns (outcome, detail): DONE,
    (HELD, the claim in force), EVALUATED, DELETED, LOST, or, with
    retry_unreadable, (UNREADABLE, the error) for a checkpoint that cannot
    be read (else that raises)."""
    interval = max(min(REFRESH_SECONDS, self.claim_timeout / 4), 0.01)
    stopping.check()
    state, claim = try_claim(self.eval_dir, step, self.claim_timeout)
    if state != OWNED:
      return state, claim
    with kept_fresh(claim, interval):
      if claim.taken_over:
        print('Taking over %s: its claim (%s) is older than the %g s timeout'
              % (prefix, claim.taken_over, self.claim_timeout), flush=True)
      return self._score(step, prefix, claim, retry_unreadable)

  def _score(self, step, prefix, claim, retry_unreadable):
    from tagger.engines import scoring  # here: the claims above need no TF

    if self.scorer is None:
      self.scorer = scoring.Scorer(self.model_name, len(self.class_names),
                                   self.hparams, engine=self.engine)
    try:
      statistics = self.scorer.load(prefix)
    except UserError as e:
      if not checkpoints.exists(prefix):
        # Deleted since the listing, e.g. by a training run's clean-up.
        print('warning: %s was deleted before it could be evaluated; skipped'
              % prefix)
        return DELETED, None
      if retry_unreadable and isinstance(e, checkpoints.DamagedCheckpoint):
        return UNREADABLE, e
      raise
    scores = self.scorer.score(self.paths, self.sample_counts,
                               label='eval %s' % prefix,
                               on_progress=self.running_lwlrap)
    claim.refresh()
    if claim.lost:
      print('warning: %s was taken over by another process while this one '
            'scored it (its claim was not refreshed for %g s); its results are'
            ' left to that process' % (prefix, self.claim_timeout))
      return LOST, None
    self.report(step, scores, 'Checkpoint %s (%d clips, batch-norm '
                'statistics: %s%s)' % (prefix, len(self.rows), statistics,
                                       self.scorer.engine_note()))
    claim.finished = True
    return EVALUATED, None

  def report(self, step, scores, heading):
    """Prints and writes the metrics of `scores` as step's."""
    import tensorflow as tf
    result = reports.report(step, self.truth, scores, self.class_names)
    print('%s\n%s\n%s\n' % (heading, result.lwlrap_text, result.metrics_text))
    if self.writer is None:
      self.writer = tf.summary.create_file_writer(self.eval_dir)
    with self.writer.as_default():
      for name, value in result.scalars.items():
        tf.summary.scalar(name, value, step=result.step)
      tf.summary.text('Lwlrap per class', result.table, step=result.step)
    self.writer.flush()
    write_atomically(reports.metrics_path(self.eval_dir, result.step),
                     result.metrics_text + '\n')
    # The marker last: its presence means the checkpoint is done.
    write_atomically(marker_path(self.eval_dir, result.step),
                     result.lwlrap_text)

  @contextlib.contextmanager
  def running(self):
    """Makes eval_dir; stop requests are taken while scoring; the summary
    writer is closed at the end."""
    os.makedirs(self.eval_dir, exist_ok=True)
    with stopping.requests():
      try:
        yield
      finally:
        if self.writer is not None:
          self.writer.close()


def evaluate(model_name, hparams, class_names, rows, clip_dir, sample_counts,
             train_dir, eval_dir, continuous=False, poll_seconds=POLL_SECONDS,
             claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS,
             idle_timeout_seconds=None, engine=None):
  """Scores every checkpoint in train_dir that has no eval-N.txt marker in
  eval_dir yet and that no other eval process holds; rows are the CSV's
  (fname, labels).

  continuous: keep polling train_dir every poll_seconds for new checkpoints;
  stop once train_dir/training_finished exists and every checkpoint has its
  marker (waiting for those other processes hold, and taking them over if
  their claims go stale). With idle_timeout_seconds, give up (UserError)
  when no new checkpoint has appeared for that long while training has not
  finished. engine: a tflite_engine.Engine (default Keras).
  """
  found = checkpoints.list_checkpoints(train_dir)
  if not found and not continuous:
    raise UserError('%s: no model.ckpt-N checkpoints to evaluate' % train_dir)
  todo = [(n, p) for n, p in found
          if not os.path.exists(marker_path(eval_dir, n))]
  print('%d checkpoints in %s, %d already evaluated' % (
      len(found), train_dir, len(found) - len(todo)))
  if not todo and not continuous:
    return

  evaluator = _Evaluator(model_name, hparams, class_names, rows, clip_dir,
                         sample_counts, eval_dir, claim_timeout_seconds,
                         engine)
  with evaluator.running():
    if continuous:
      _evaluate_continuously(evaluator, train_dir, poll_seconds,
                             idle_timeout_seconds)
      return
    for step, prefix in todo:
      outcome, detail = evaluator.evaluate(step, prefix)
      if outcome == HELD:
        print('Skipped %s: being evaluated by another process (%s)' % (
            prefix, detail))
      elif outcome == DONE:
        print('Skipped %s: evaluated meanwhile by another process' % prefix)


def evaluate_model(model_name, hparams, class_names, rows, clip_dir,
                   sample_counts, checkpoint, eval_dir, engine=None):
  """Scores one model: a checkpoint, or an ensemble's (comma-separated: the
  mean of their clip scores), into eval_dir's eval-N.txt, N the first
  member's step."""
  from tagger.engines import scoring
  step = checkpoints.step_of(checkpoints.members(checkpoint)[0])
  evaluator = _Evaluator(model_name, hparams, class_names, rows, clip_dir,
                         sample_counts, eval_dir, CLAIM_TIMEOUT_SECONDS,
                         engine)
  with evaluator.running():
    scorer = scoring.open_scorer(model_name, len(class_names), hparams,
                                 checkpoint, engine, 'Evaluating')
    scores = scorer.score(evaluator.paths, sample_counts,
                          label='eval %s' % checkpoint,
                          on_progress=evaluator.running_lwlrap)
    evaluator.report(step, scores, '%s (%d clips, step %d)' % (
        checkpoint, len(rows), step))


def _evaluate_continuously(evaluator, train_dir, poll_seconds,
                           idle_timeout_seconds):
  waiter = _Waiter(train_dir, poll_seconds, idle_timeout_seconds)
  evaluated = 0
  seen = set()
  told = set()  # (step, claim) skips already reported
  unreadable = {}  # step: (its files' sizes and mtimes, since when so)
  while True:
    # Read before listing: a training run writes it after its last
    # checkpoint, so a listing made after seeing it is complete.
    final = training_finished(train_dir)
    found = checkpoints.list_checkpoints(train_dir)
    if set(found) - seen:
      seen.update(found)
      waiter.news()
    worked, held, retrying = False, 0, 0
    for step, prefix in found:
      if os.path.exists(marker_path(evaluator.eval_dir, step)):
        continue
      outcome, detail = evaluator.evaluate(step, prefix,
                                           retry_unreadable=True)
      if outcome == EVALUATED:
        evaluated += 1
        worked = True
        unreadable.pop(step, None)
      elif outcome == HELD:
        held += 1
        if (step, detail.split(',')[0]) not in told:
          told.add((step, detail.split(',')[0]))
          print('Skipped %s for now: being evaluated by another process (%s)'
                % (prefix, detail))
      elif outcome == LOST:
        held += 1
      elif outcome == UNREADABLE:
        retrying += 1
        signature = _file_signature(prefix)
        first = unreadable.get(step)
        if first is None or first[0] != signature:
          unreadable[step] = (signature, time.monotonic())
          print('note: %s cannot be read yet (%s); trying again (it may '
                'still be being written)' % (prefix, detail))
        elif time.monotonic() - first[1] >= max(SETTLE_SECONDS,
                                                  2 * poll_seconds):
          raise detail
    if worked:
      waiter.news()
      continue
    if final is not None and not held and not retrying:
      print('Training finished at step %s; every checkpoint in %s is '
            'evaluated (%d by this process)' % (final, train_dir, evaluated))
      return
    waiter.wait(waiting_message(train_dir, evaluated, held, retrying, final),
                evaluated)


def _file_signature(prefix):
  """The names, sizes and mtimes of a checkpoint's files."""
  signature = []
  for path in sorted(checkpoints.files_of(prefix)):
    try:
      stat = os.stat(path)
    except FileNotFoundError:
      continue
    signature.append((os.path.basename(path), stat.st_size, stat.st_mtime_ns))
  return tuple(signature)
