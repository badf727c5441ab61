"""The strategy and the cluster's start (tagger/training/distribution.py),
in-process: a cluster that does not form is given up at the flag's
deadline or on a signal, its lost tasks named; TensorFlow's start-up gets
its time, and its errors name the task; a SIGTERM once the strategy has
started is recorded; which modes train on a cluster, and auto mirrors over
two GPUs or more."""

import json
import os
import signal
import threading
import time

import pytest

from support.cli import run_main
from support.distributed import free_ports


# --- a cluster that does not form -------------------------------------------

def test_peers_waited_for_until_the_deadline(monkeypatch, capsys):
  """Worker 0 of a cluster whose worker 1 never starts: a line saying what
  it waits for, then an error naming worker 1's address and the flag once
  the deadline has passed."""
  from tagger.training import distribution
  from tagger.core.files import UserError
  ports = free_ports(2)
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['localhost:%d' % p for p in ports]},
      'task': {'type': 'worker', 'index': 0}}))
  start = time.monotonic()
  with pytest.raises(UserError) as raised:
    distribution.wait_for_peers(1.0)
  assert 1.0 <= time.monotonic() - start < 5
  message = str(raised.value)
  assert 'worker 1 (localhost:%d)' % ports[1] in message, message
  assert '--cluster_start_timeout_seconds=1' in message, message
  assert capsys.readouterr().out == (
      'Joining the cluster as worker 0 (localhost:%d) of 2 tasks; waiting up '
      'to 1 s for the others\n' % ports[0])


def test_lost_tasks_named_in_an_error(monkeypatch):
  """The other tasks of the cluster a TensorFlow error names, each once,
  in the order named; this task, and tasks the cluster does not have, are
  left out."""
  from tagger.training import distribution
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['localhost:2222', 'localhost:2223',
                             'localhost:2224']},
      'task': {'type': 'worker', 'index': 0}}))
  message = ('Collective ops is aborted by: task /job:worker/replica:0/task:2'
             ' lost; from /job:worker/task:0; /job:worker/replica:0/task:3 '
             'and /job:worker/task:1 and /job:worker/replica:0/task:2 again')
  assert distribution._named_tasks(message) == [
      ('worker 2', 'localhost:2224'), ('worker 1', 'localhost:2223')]


def test_tensorflow_start_up_gets_its_time_however_late_the_peers(
    monkeypatch):
  """Once every peer has answered, TensorFlow's own start-up may take what
  is left of the timeout, and at least min(timeout, 10 s) even when the
  last peer answered at the deadline."""
  from tagger.training import distribution
  limits = []

  class Enough(Exception):
    pass

  def limit(seconds):
    limits.append(seconds)
    raise Enough()

  monkeypatch.setattr(distribution, '_limit_registration', limit)
  for left, timeout, expected in ((0, 600, 10), (0, 4, 4), (300, 600, 300)):
    monkeypatch.setattr(distribution, 'wait_for_peers',
                        lambda _, left=left: time.monotonic() + left)
    with pytest.raises(Enough):
      distribution._multi_worker(timeout)
    assert limits[-1] == pytest.approx(expected, abs=1)


def test_peers_waited_for_until_a_signal(monkeypatch):
  from tagger.training import distribution
  from tagger.core import stopping
  ports = free_ports(2)
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['localhost:%d' % p for p in ports]},
      'task': {'type': 'worker', 'index': 1}}))
  # pytest-xdist starts its workers with SIGINT ignored, which requests()
  # respects: give this process Python's own handler, as a shell would.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with stopping.requests():
      threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
      start = time.monotonic()
      with pytest.raises(stopping.Stopped) as raised:
        distribution.wait_for_peers(60)
  finally:
    signal.signal(signal.SIGINT, previous)
  assert time.monotonic() - start < 5
  assert raised.value.exit_code == 130
  assert 'stopped by SIGINT' in str(raised.value)


# After the strategy has started: TensorFlow's runtime installs a SIGTERM
# handler of its own in native code (Python's signal.getsignal does not see
# it); a SIGTERM before the training loop must still be recorded.
# Run as `python -c _SIGTERM_AFTER_START main.py`, forked as main.py is.
_SIGTERM_AFTER_START = """
import os, signal, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from tagger.training import distribution
from tagger.core import stopping
with stopping.requests():
  distribution.make_strategy('multi_worker', 60)
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.5)
  print('requested', stopping.requested())
"""


def test_sigterm_recorded_once_the_strategy_has_started():
  os.environ['TF_CONFIG'] = json.dumps(
      {'cluster': {'worker': ['localhost:%d' % free_ports(1)[0]]},
       'task': {'type': 'worker', 'index': 0}})
  try:
    result = run_main([], timeout=120, script=_SIGTERM_AFTER_START)
  finally:
    del os.environ['TF_CONFIG']
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == 'requested %d' % signal.SIGTERM


# --- the strategy of each mode ----------------------------------------------

def test_which_modes_train_on_the_cluster(monkeypatch):
  """multi_worker always; auto only when TF_CONFIG names more than one
  task; none and mirrored never, whatever TF_CONFIG says."""
  from tagger.training import distribution
  two = json.dumps({'cluster': {'worker': ['localhost:1', 'localhost:2']},
                    'task': {'type': 'worker', 'index': 0}})
  one = json.dumps({'cluster': {'worker': ['localhost:1']},
                    'task': {'type': 'worker', 'index': 0}})
  expected = {
      None: {'auto': False, 'none': False, 'mirrored': False},
      one: {'auto': False, 'none': False, 'mirrored': False,
            'multi_worker': True},
      two: {'auto': True, 'none': False, 'mirrored': False,
            'multi_worker': True}}
  for config, modes in expected.items():
    if config is None:
      monkeypatch.delenv('TF_CONFIG', raising=False)
    else:
      monkeypatch.setenv('TF_CONFIG', config)
    assert {m: distribution.uses_cluster(m) for m in modes} == modes, config


def test_errors_of_the_cluster_start_name_the_task(monkeypatch):
  """TensorFlow's start-up errors as one line: this task's port taken
  after it was checked; the deadline passed without the tasks it names
  (else every other task); anything else, its first line."""
  import tensorflow as tf
  from tagger.training import distribution
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['hosta:2222', 'hostb:2301', 'hostc:2402']},
      'task': {'type': 'worker', 'index': 1}}))
  failure = distribution._start_failure(tf.errors.UnknownError(
      None, None, 'Could not start gRPC server on hostb'), 30)
  assert failure == ("TF_CONFIG: worker 1's address hostb:2301: cannot "
                     "listen on port 2301 (taken since it was checked)")
  late = distribution._start_failure(tf.errors.DeadlineExceededError(
      None, None, 'no heartbeat'), 30)
  assert late == (
      'the cluster did not form within --cluster_start_timeout_seconds=30: '
      'no answer from worker 0 (hosta:2222), worker 2 (hostc:2402); start '
      "every task of TF_CONFIG's cluster")
  other = distribution._start_failure(tf.errors.InternalError(
      None, None, 'bad things\nmore'), 30)
  assert other == 'TensorFlow could not join the cluster of TF_CONFIG: bad ' \
      'things'


def test_auto_mirrors_over_two_gpus_or_more(monkeypatch):
  """--distribution=auto without a cluster: MirroredStrategy once there
  are two GPUs, the default strategy with one or none."""
  import tensorflow as tf
  from tagger.training import distribution
  monkeypatch.delenv('TF_CONFIG', raising=False)
  gpus = []
  monkeypatch.setattr(tf.config, 'list_logical_devices',
                      lambda kind=None: list(gpus) if kind == 'GPU' else [])
  for count, mirrored in ((0, False), (1, False), (2, True), (3, True)):
    gpus[:] = ['/gpu:%d' % i for i in range(count)]
    strategy = distribution.make_strategy('auto')
    assert isinstance(strategy, tf.distribute.MirroredStrategy) == mirrored
    if not mirrored:
      assert strategy is tf.distribute.get_strategy()
