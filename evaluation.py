"""The eval loop (--mode eval): scores every checkpoint of a training run
and reports the metrics of metrics.py.

Several eval processes may share one train_dir and eval_dir, on one machine
or on several that share the folders: each claims a checkpoint before
scoring it (see "Claims" below), so that no checkpoint is scored twice.
With continuous=True eval keeps polling train_dir for new checkpoints and
stops once training has finished and every checkpoint is evaluated.
"""

import contextlib
import glob
import os
import re
import socket
import threading
import time

import numpy as np

import checkpoints
import files
import stopping
from files import UserError, write_atomically
from metrics import Lwlrap, mfom_metrics  # noqa: F401  (evaluation.Lwlrap)


# Lwlrap-5%: the original's quick look at a random 5% of the clips
# (int(0.05 N) + 1 of them, after shuffling the clip order). The shuffle here
# is seeded so that a rerun reports the same figure.
PARTIAL_SEED = 2019

# Present in train_dir once a training run has finished (train.FINISHED_FILE;
# named here too so that waiting for checkpoints needs no TensorFlow).
FINISHED_FILE = 'training_finished'
POLL_SECONDS = 30.0
CLAIM_TIMEOUT_SECONDS = 600.0
# A holder refreshes its claim this often, and at least 4 times per timeout.
REFRESH_SECONDS = 10.0
# TensorFlow writes a checkpoint's .index file in place, after its data: a
# continuous eval may list a checkpoint whose .index is not complete yet. One
# that cannot be read is tried again at the next polls, and is reported as
# damaged once its files have not changed for this long.
SETTLE_SECONDS = 10.0


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


# --- Claims -----------------------------------------------------------------
#
# Before scoring checkpoint N a process creates eval_dir/eval-N.claim with
# O_CREAT | O_EXCL: of all the processes that try at once, exactly one
# succeeds (on a local file system, and on NFS v3 and later, where the
# server decides). The file holds who made it (host, pid, time). Its holder
# updates the file's mtime every few seconds while it scores, and removes it
# after writing eval-N.txt, or when it stops cleanly (an error, Ctrl-C,
# SIGTERM).
#
# A claim not refreshed for the claim timeout is stale: its holder is taken
# to be dead (killed, or its machine down). A stale claim is never removed
# or overwritten to take it over: a process that found it stale a moment ago
# could then remove or overwrite a fresh claim made in between, and two
# processes would hold N. Instead claims have generations: a stale
# eval-N.claim is taken over by creating eval-N.claim.1 (then .2, ...),
# again with O_EXCL, and the claim in force is the highest generation
# present. So:
#   - generation g + 1 is only created while generation g exists and is
#     stale, i.e. after its holder stopped refreshing it;
#   - of the processes that find generation g stale, exactly one creates
#     g + 1; the others get EEXIST and look again (and find g + 1 fresh);
#   - a claim file is only removed by its own holder, or by any holder of N
#     once eval-N.txt exists (then all of N's claim files go);
#   - whoever creates a claim then looks for eval-N.txt and lets the claim go
#     if it is there (the marker is written before any claim of N is
#     removed, so a claim made after the removal sees it), and for a higher
#     generation, which it then leaves in force.
# Two processes can therefore hold N at once only if one of them was alive
# without refreshing its claim for a whole timeout (e.g. suspended). Such a
# holder finds the higher generation when it resumes and writes nothing for
# N. Machines sharing eval_dir need clocks that agree to well within the
# timeout, since the age of a claim is its mtime against this host's clock.

DONE, HELD, OWNED = 'done', 'held', 'owned'


def claim_path(eval_dir, step, generation=0):
  """eval-N.claim, or eval-N.claim.G for a claim taken over G times."""
  name = 'eval-%d.claim' % step
  return os.path.join(eval_dir, name + ('.%d' % generation if generation
                                        else ''))


def claims_of(eval_dir, step):
  """{generation: path} of the claim files of checkpoint `step`."""
  found = {}
  for path in glob.glob(os.path.join(glob.escape(eval_dir),
                                     'eval-%d.claim*' % step)):
    match = re.fullmatch(r'eval-%d\.claim(?:\.([1-9]\d*))?' % step,
                         os.path.basename(path))
    if match:
      found[int(match.group(1) or 0)] = path
  return found


def describe_claim(path, now=None):
  """Who holds the claim at `path` and when they last refreshed it."""
  try:
    with open(path, errors='replace') as f:
      holder = f.readline(200).strip()
    age = (now or time.time()) - os.stat(path).st_mtime
  except FileNotFoundError:
    return '%s (gone)' % os.path.basename(path)
  return '%s, held by %s, refreshed %.0f s ago' % (
      os.path.basename(path), holder or 'an unnamed process', max(age, 0))


class Claim:
  """A claim this process holds on one checkpoint (see "Claims")."""

  def __init__(self, eval_dir, step, generation):
    self.eval_dir, self.step, self.generation = eval_dir, step, generation
    self.path = claim_path(eval_dir, step, generation)
    self.taken_over = None  # the stale claim this one replaced, described
    self.lost = False
    self.finished = False  # eval-N.txt is written
    self.released = False

  def refresh(self):
    """Updates the claim's mtime; notes if the claim was lost."""
    try:
      os.utime(self.path)
    except FileNotFoundError:
      self.lost = True
    if not self.in_force():
      self.lost = True

  def in_force(self):
    """True while this claim is the highest generation present."""
    found = claims_of(self.eval_dir, self.step)
    return self.generation in found and max(found) == self.generation

  def release(self):
    """Removes this claim file, and once eval-N.txt is written (finished),
    every claim file of the checkpoint."""
    if self.released:
      return
    self.released = True
    paths = (claims_of(self.eval_dir, self.step).values() if self.finished
             else [self.path])
    for path in paths:
      try:
        os.remove(path)
      except FileNotFoundError:
        pass


def try_claim(eval_dir, step, timeout):
  """Claims checkpoint `step`. Returns (DONE, None) if it has its marker,
  (HELD, description of the claim in force) if a live process holds it, or
  (OWNED, Claim)."""
  for _ in range(100):
    if os.path.exists(marker_path(eval_dir, step)):
      return DONE, None
    found = claims_of(eval_dir, step)
    stale = None
    if found:
      top = max(found)
      now = time.time()
      try:
        age = now - os.stat(found[top]).st_mtime
      except FileNotFoundError:
        continue  # let go of meanwhile: look again
      if age < timeout:
        return HELD, describe_claim(found[top], now)
      stale = describe_claim(found[top], now)
      generation = top + 1
    else:
      generation = 0
    claim = Claim(eval_dir, step, generation)
    try:
      fd = os.open(claim.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      continue  # another process was first: look again
    try:
      with os.fdopen(fd, 'w') as f:
        f.write('%s pid %d since %s\n' % (
            socket.gethostname(), os.getpid(),
            time.strftime('%Y-%m-%d %H:%M:%S')))
    except BaseException:
      claim.release()
      raise
    if os.path.exists(marker_path(eval_dir, step)):
      claim.release()
      return DONE, None
    if not claim.in_force():
      claim.release()
      continue
    claim.taken_over = stale
    return OWNED, claim
  # Only if claims keep appearing and vanishing: leave it for a later pass.
  return HELD, 'claims of checkpoint %d keep changing' % step


@contextlib.contextmanager
def kept_fresh(claim, interval):
  """Refreshes the claim every `interval` seconds from a thread while the
  block runs; lets it go afterwards."""
  stop = threading.Event()

  def keep():
    while not stop.wait(interval):
      try:
        claim.refresh()
      except OSError:
        pass  # e.g. a network file system hiccup: try again next time

  thread = threading.Thread(target=keep, name='eval-claim', daemon=True)
  thread.start()
  try:
    yield claim
  finally:
    stop.set()
    thread.join()
    claim.release()


# --- Continuous eval --------------------------------------------------------

def training_finished(train_dir):
  """The final step recorded in train_dir/training_finished (its text, if
  not a number), or None while training has not finished."""
  try:
    with open(os.path.join(train_dir, FINISHED_FILE), errors='replace') as f:
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
              self.train_dir, self.idle_timeout_seconds, FINISHED_FILE,
              evaluated))
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
               clip_samples, eval_dir, claim_timeout_seconds):
    self.model_name, self.hparams = model_name, hparams
    self.class_names, self.rows = class_names, rows
    self.clip_samples = clip_samples
    self.eval_dir = eval_dir
    self.claim_timeout = claim_timeout_seconds
    self.truth = files.label_matrix(rows, class_names)
    self.paths = [os.path.join(clip_dir, fname) for fname, _ in rows]
    self.partial = partial_clips(len(rows))
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
    import tensorflow as tf  # here so that the claims above need no TF
    import scoring

    if self.scorer is None:
      self.scorer = scoring.Scorer(self.model_name, len(self.class_names),
                                   self.hparams)
      self.writer = tf.summary.create_file_writer(self.eval_dir)
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
    scores = self.scorer.score(self.paths, self.clip_samples,
                               label='eval %s' % prefix,
                               on_progress=self.running_lwlrap)
    claim.refresh()
    if claim.lost:
      print('warning: %s was taken over by another process while this one '
            'scored it (its claim was not refreshed for %g s); its results are'
            ' left to that process' % (prefix, self.claim_timeout))
      return LOST, None
    lwlrap = Lwlrap(self.class_names)
    lwlrap.accumulate(self.truth, scores)
    partial_lwlrap = Lwlrap(self.class_names)
    partial_lwlrap.accumulate(self.truth[self.partial], scores[self.partial])
    result, report = mfom_metrics(self.truth, scores, self.class_names)
    print('Checkpoint %s (%d clips, batch-norm statistics: %s)\n%s\n%s\n' % (
        prefix, len(self.rows), statistics, lwlrap, report))
    with self.writer.as_default():
      tf.summary.scalar('Lwlrap', lwlrap.overall_lwlrap(), step=step)
      tf.summary.scalar('Lwlrap-5%', partial_lwlrap.overall_lwlrap(),
                        step=step)
      tf.summary.scalar('Micro-F1', result['micro_f1'], step=step)
      for name in ('mean_eer', 'pooled_eer'):
        if result[name] is not None:
          tf.summary.scalar('EER-' + name.split('_')[0], result[name],
                            step=step)
      # Each class with labels in the eval set, and the sorted table.
      per_class = lwlrap.per_class_lwlrap()
      for name, value, weight in zip(self.class_names, per_class,
                                     lwlrap.per_class_weight()):
        if weight > 0:
          tf.summary.scalar('Lwlrap/' + name, value, step=step)
      tf.summary.text('Lwlrap per class', '\n\n'.join(
          '    ' + line for line in str(lwlrap).split('\n')), step=step)
    self.writer.flush()
    write_atomically(metrics_path(self.eval_dir, step), report + '\n')
    # The marker last: its presence means the checkpoint is done.
    write_atomically(marker_path(self.eval_dir, step), str(lwlrap))
    claim.finished = True
    return EVALUATED, None

  def close(self):
    if self.writer is not None:
      self.writer.close()


def evaluate(model_name, hparams, class_names, rows, clip_dir, clip_samples,
             train_dir, eval_dir, continuous=False, poll_seconds=POLL_SECONDS,
             claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS,
             idle_timeout_seconds=None):
  """Scores every checkpoint in train_dir that has no eval-N.txt marker in
  eval_dir yet and that no other eval process holds; rows are the CSV's
  (fname, labels).

  continuous: keep polling train_dir every poll_seconds for new checkpoints;
  stop once train_dir/training_finished exists and every checkpoint has its
  marker (waiting for those other processes hold, and taking them over if
  their claims go stale). With idle_timeout_seconds, give up (UserError)
  when no new checkpoint has appeared for that long while training has not
  finished.
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

  os.makedirs(eval_dir, exist_ok=True)
  evaluator = _Evaluator(model_name, hparams, class_names, rows, clip_dir,
                         clip_samples, eval_dir, claim_timeout_seconds)
  with stopping.requests():
    try:
      if continuous:
        _evaluate_continuously(evaluator, train_dir, poll_seconds,
                               idle_timeout_seconds)
      else:
        for step, prefix in todo:
          outcome, detail = evaluator.evaluate(step, prefix)
          if outcome == HELD:
            print('Skipped %s: being evaluated by another process (%s)' % (
                prefix, detail))
          elif outcome == DONE:
            print('Skipped %s: evaluated meanwhile by another process' %
                  prefix)
    finally:
      evaluator.close()


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
  folder, base = os.path.split(prefix)
  signature = []
  for name in sorted(os.listdir(folder or '.')):
    if name.startswith(base + '.'):
      try:
        stat = os.stat(os.path.join(folder, name))
      except FileNotFoundError:
        continue
      signature.append((name, stat.st_size, stat.st_mtime_ns))
  return tuple(signature)
