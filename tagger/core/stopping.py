"""Stop requests: Ctrl-C (SIGINT) and SIGTERM, recorded when they arrive and
acted on at safe points of the long loops (after a training step, a scored
batch, a chunk read, a poll).

The handlers only record the request. An exception raised from a handler
lands wherever Python happens to be: inside tf.data or AutoGraph, which may
catch it and carry on, or inside an iterator with a Python generator in
flight, which can crash the process. Each loop instead calls check() where
stopping is clean, and the resulting Stopped unwinds through the usual
clean-up (claims let go, temporary folders removed, no partial file).

A second request while the first waits for its safe point (e.g. a long
first batch) stops the process at once.

Plain Python; no TensorFlow.
"""

import contextlib
import os
import signal
import time

from tagger.core.files import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What the non-training modes say when they stop: their outputs are written
# whole or not at all.
RERUN = 'files written so far are complete, run the same command to do the rest'

_requested = []  # the signals received, first first
_depth = []  # one entry per requests() block being run


class Stopped(UserError):
  """The run was stopped by a signal; main.py reports it as `stopped` and
  exits with 128 + the signal number."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_code = 128 + signum


def _handle(signum, frame):
  del frame
  if _requested:
    os.write(2, ('main.py: stopped: %s again: stopping at once\n' %
                 signal.Signals(signum).name).encode())
    os._exit(128 + signum)
  _requested.append(signum)


@contextlib.contextmanager
def requests():
  """Records SIGINT and SIGTERM while the block runs (see requested()). A
  signal the process was started with ignored (SIGINT of `cmd &`) stays
  ignored. Nested uses share the record; each installs the handlers anew,
  since TensorFlow's multi-worker runtime installs a SIGTERM handler of its
  own in native code, which Python's signal.getsignal does not see."""
  previous = {}
  for signum in SIGNALS:
    if signal.getsignal(signum) is not signal.SIG_IGN:
      previous[signum] = signal.signal(signum, _handle)
  _depth.append(None)
  try:
    yield
  finally:
    _depth.pop()
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    if not _depth:
      del _requested[:]


def reinstall():
  """Installs the handlers of the requests() blocks being run again, e.g.
  after TensorFlow's multi-worker runtime has taken SIGTERM."""
  if _depth:
    for signum in SIGNALS:
      if signal.getsignal(signum) is _handle:
        signal.signal(signum, _handle)


def requested():
  """The signal number of the first stop request, or None."""
  return _requested[0] if _requested else None


def name(signum):
  return signal.Signals(signum).name


def check(what=RERUN):
  """Raises Stopped ('stopped by SIGTERM; <what>') if a stop was
  requested."""
  if _requested:
    raise Stopped('stopped by %s; %s' % (name(_requested[0]), what),
                  _requested[0])


def sleep(seconds, what=RERUN):
  """time.sleep that returns early, with Stopped, on a stop request."""
  end = time.monotonic() + seconds
  while True:
    check(what)
    left = end - time.monotonic()
    if left <= 0:
      return
    time.sleep(min(left, 0.1))
