"""The commands of a study, run one at a time, each in a process of its
own, SIGINT and SIGTERM passed on."""

import ctypes
import os
import shlex
import signal
import subprocess
import time

from tagger.core import machine
from tools.studylib.spec import StudyError

class StudyStopped(Exception):
  """SIGINT or SIGTERM: the study stops with 128 + the signal number."""

  def __init__(self, signum):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.during = None  # the run and command it stopped, if any


def _prctl():
  try:
    return ctypes.CDLL(None).prctl  # Linux
  except (OSError, AttributeError):
    return None


def _child_setup(prctl):
  """In the child, before exec: signals unblocked (blocked around the
  start, see CommandRunner.start) and SIGINT at its default, so that main.py's
  stop handlers take them; SIGTERM when the study dies, so that no
  training is left running into a run folder."""
  signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  if prctl is not None:
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class CommandRunner:
  """Runs one command at a time with its output appended to a log, and
  passes each SIGINT or SIGTERM the study gets on to it. The child has a
  session of its own, so that Ctrl-C in a terminal reaches it once, through
  here (a second signal makes main.py stop at once, without saving)."""

  def __init__(self):
    self.child = None
    self.stop = None  # the first signal received
    self.prctl = _prctl()  # found here: the child may only call it

  def install(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      if signal.getsignal(signum) is not signal.SIG_IGN:
        signal.signal(signum, self.handle)

  def handle(self, signum, frame):
    del frame
    self.stop = self.stop or signum
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def __call__(self, argv, log_path, cwd):
    if self.stop:
      raise StudyStopped(self.stop)
    with open(log_path, 'a') as log:
      log.write('\n$ %s  # %s\n# on %s\n' % (
          shlex.join(argv), time.strftime('%c'), machine.describe()))
      log.flush()
      self.start(argv, log, cwd)
      try:
        code = self.child.wait()
      finally:
        self.child = None
    if self.stop:
      raise StudyStopped(self.stop)
    return code

  def start(self, argv, log, cwd):
    # Signals held until self.child is set: one arriving meanwhile is then
    # passed on, and not lost.
    held = signal.pthread_sigmask(signal.SIG_BLOCK,
                                  (signal.SIGINT, signal.SIGTERM))
    try:
      env = dict(os.environ, PYTHONUNBUFFERED='1')
      self.child = subprocess.Popen(
          argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
          stderr=subprocess.STDOUT, env=env, start_new_session=True,
          preexec_fn=lambda: _child_setup(self.prctl))
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _last_line(log_path):
  try:
    with open(log_path, errors='replace') as f:
      lines = [l.strip() for l in f.readlines()[-50:] if l.strip()]
  except OSError:
    return ''
  return lines[-1][:300] if lines else ''


def run_command(runner, argv, log_path, cwd, what, name):
  try:
    code = runner(argv, log_path, cwd)
  except StudyStopped as e:
    e.during = e.during or '%s (%s)' % (name, what)
    raise
  if code != 0:
    status = ('killed by %s' % signal.Signals(-code).name if code < 0 else
              'exit status %d' % code)
    last = _last_line(log_path)
    raise StudyError('%s: %s failed (%s%s); see %s' % (
        name, what, status, ': ' + last if last else '', log_path))
