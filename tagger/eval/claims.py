"""Claims: how eval processes sharing an eval_dir (on one machine, or on
several that share the folder) make sure no checkpoint is scored twice.

Before scoring checkpoint N a process creates eval_dir/eval-N.claim with
O_CREAT | O_EXCL: of all the processes that try at once, exactly one
succeeds (on a local file system, and on NFS v3 and later, where the
server decides). The file holds who made it (host, pid, time). Its holder
updates the file's mtime every few seconds while it scores, and removes it
after writing eval-N.txt, or when it stops cleanly (an error, Ctrl-C,
SIGTERM).

A claim not refreshed for the claim timeout is stale: its holder is taken
to be dead (killed, or its machine down). A stale claim is never removed
or overwritten to take it over: a process that found it stale a moment ago
could then remove or overwrite a fresh claim made in between, and two
processes would hold N. Instead claims have generations: a stale
eval-N.claim is taken over by creating eval-N.claim.1 (then .2, ...),
again with O_EXCL, and the claim in force is the highest generation
present. So:
  - generation g + 1 is only created while generation g exists and is
    stale, i.e. after its holder stopped refreshing it;
  - of the processes that find generation g stale, exactly one creates
    g + 1; the others get EEXIST and look again (and find g + 1 fresh);
  - a claim file is only removed by its own holder, or by any holder of N
    once eval-N.txt exists (then all of N's claim files go);
  - whoever creates a claim then looks for eval-N.txt and lets the claim go
    if it is there (the marker is written before any claim of N is
    removed, so a claim made after the removal sees it), and for a higher
    generation, which it then leaves in force.
Two processes can therefore hold N at once only if one of them was alive
without refreshing its claim for a whole timeout (e.g. suspended). Such a
holder finds the higher generation when it resumes and writes nothing for
N. Machines sharing eval_dir need clocks that agree to well within the
timeout, since the age of a claim is its mtime against this host's clock.

Plain Python: no TensorFlow.
"""

import contextlib
import glob
import os
import re
import socket
import threading
import time

# A holder refreshes its claim this often, and at least 4 times per timeout.
REFRESH_SECONDS = 10.0


def marker_path(eval_dir, step):
  """eval-N.txt: the original's lwlrap report, whose presence marks
  checkpoint N as evaluated."""
  return os.path.join(eval_dir, 'eval-%d.txt' % step)


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
