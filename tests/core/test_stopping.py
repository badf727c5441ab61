"""Stop requests on their own (tagger/core/stopping.py): a wait ends within its
step of a stop request, however long it was to be, and lasts its time
without one."""

import os
import signal
import threading
import time

import pytest


def test_a_stop_request_ends_a_wait_at_once():
  """A poll's wait (stopping.sleep) ends within its 0.1 s step of a stop
  request, however long it was to be; without one it lasts its time."""
  from tagger.core import stopping
  start = time.monotonic()
  stopping.sleep(0.25)
  assert 0.25 <= time.monotonic() - start < 0.4
  with stopping.requests():
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(stopping.Stopped) as stopped:
      stopping.sleep(30, 'the wait was cut short')
    waited = time.monotonic() - start - 0.25
  assert 0.3 <= waited < 1.5
  assert str(stopped.value) == 'stopped by SIGTERM; the wait was cut short'
