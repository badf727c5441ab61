"""tests/support/forks.py and tests/support/forkserver.py: a server that dies fails its runs
plainly (its exit status and last output named, nothing left waiting), and
no run is forked from a process that could have initialised a GPU."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from support import forks
from support.cli import check_ok, run_main, subprocess_env

# A run that lasts until it is killed, its start on stdout.
SLEEPER = 'import time\nprint("sleeping", flush=True)\ntime.sleep(60)\n'
PRINT_PARENT = 'import os\nprint(os.getppid())\n'


@pytest.fixture(scope='module')
def servers():
  """A server of this module's own (not the session's), started on first
  use and again once killed."""
  started = []

  def get():
    if not started or not started[-1].alive():
      started.append(forks._Server(subprocess_env()))
    return started[-1]
  yield get
  for server in started:
    if server.alive():  # not left stopped by a failed test
      os.kill(server.process.pid, signal.SIGCONT)
    server.close()


def _gone(pid, timeout):
  """Whether process pid has ended (reaped, or a zombie nobody reaps)
  within timeout seconds."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      with open('/proc/%d/stat' % pid) as f:
        if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
          return True
    except FileNotFoundError:
      return True
    time.sleep(0.05)
  return False


def test_check_ok_names_a_missing_return_code():
  result = subprocess.CompletedProcess(['main.py'], None, 'out', 'err')
  with pytest.raises(AssertionError) as failed:
    check_ok(result)
  message = str(failed.value)
  assert 'rc=None' in message and 'out' in message and 'err' in message


def test_server_hides_gpus(servers, tmp_path):
  """The server hides GPUs from itself before it imports TensorFlow (and so
  from the TensorFlow its children inherit); a child keeps the environment
  its run asked for."""
  server = servers()
  assert server.ready['CUDA_VISIBLE_DEVICES'] == ''
  assert server.ready['gpus'] == []
  child = server.start(
      [], str(tmp_path), subprocess_env(),
      'import json, os, tensorflow as tf\n'
      'print(json.dumps([os.getppid(), [d.name for d in\n'
      '    tf.config.list_physical_devices("GPU")],\n'
      '    os.environ.get("CUDA_VISIBLE_DEVICES")]))\n', False)
  assert child.wait(30) == 0
  assert json.loads(child.output()[0]) == [
      server.process.pid, [], subprocess_env().get('CUDA_VISIBLE_DEVICES')]


def test_fresh_runs_where_a_gpu_could_be_seen(monkeypatch, tmp_path):
  """A run forks only where one started afresh would see no GPU either;
  TESTS_FORK=0 starts every run afresh."""
  nvidia = ['/dev/nvidia0']
  assert forks.gpu_visible({}, nvidia)
  assert forks.gpu_visible({'CUDA_VISIBLE_DEVICES': '0'}, nvidia)
  assert not forks.gpu_visible({'CUDA_VISIBLE_DEVICES': ''}, nvidia)
  assert not forks.gpu_visible({'CUDA_VISIBLE_DEVICES': '-1'}, nvidia)
  assert not forks.gpu_visible({}, [])

  class Server:  # what start() uses of one, recording what it forks
    forked = []

    def __init__(self, env):
      self.env, self.ready = env, {'gpus': []}

    def alive(self):
      return True

    def start(self, args, *_):
      self.forked.append(args)
      return 'forked'

    def close(self):
      pass

  monkeypatch.setattr(forks, '_Server', Server)
  monkeypatch.setattr(forks, '_server', [])
  monkeypatch.delenv('TESTS_FORK', raising=False)
  env = dict(subprocess_env())
  env.pop('CUDA_VISIBLE_DEVICES', None)
  hidden = dict(env, CUDA_VISIBLE_DEVICES='')

  monkeypatch.setattr(forks, 'gpu_devices', lambda: nvidia)
  assert forks.start(['gpu'], str(tmp_path), env) is None
  assert forks.run(['gpu'], str(tmp_path), env, 10) is None
  assert Server.forked == []
  assert forks.start(['hidden'], str(tmp_path), hidden) == 'forked'
  monkeypatch.setattr(forks, '_server', [])
  monkeypatch.setattr(forks, 'gpu_devices', lambda: [])
  assert forks.start(['no gpu'], str(tmp_path), env) == 'forked'
  assert Server.forked == [['hidden'], ['no gpu']]
  # A server that sees a GPU all the same forks nothing.
  forks._server[0].ready['gpus'] = ['/physical_device:GPU:0']
  assert forks.start(['seen'], str(tmp_path), env) is None
  assert Server.forked == [['hidden'], ['no gpu']]

  monkeypatch.setenv('TESTS_FORK', '0')
  monkeypatch.setattr(forks, '_server', [])
  assert forks.start(['afresh'], str(tmp_path), env) is None
  assert forks.run(['afresh'], str(tmp_path), env, 10) is None
  # conftest's run_main then runs a plain subprocess of this process.
  result = check_ok(run_main([], cwd=str(tmp_path), timeout=30,
                             script=PRINT_PARENT))
  assert int(result.stdout) == os.getpid()
  assert Server.forked == [['hidden'], ['no gpu']] and forks._server == []


def _in_thread(call):
  """call() in a thread of its own; returns a list that will hold what it
  raised (or None)."""
  outcome = []

  def target():
    try:
      call()
      outcome.append(None)
    except BaseException as e:  # for the test to check
      outcome.append(e)
  threading.Thread(target=target, daemon=True).start()
  return outcome


def _until(condition, timeout=30):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.02)


def test_dead_server_fails_its_runs(servers, monkeypatch, tmp_path):
  """A server killed while a run is in progress, or before it has forked a
  run it was sent, or before a run, fails that run at once, naming the dead
  server and showing its last output (what it forked); the run it had
  forked dies with it."""
  server = servers()
  pid = server.process.pid
  monkeypatch.setattr(forks, '_server', [server])
  monkeypatch.setattr(forks, 'gpu_devices', lambda: [])  # forked anywhere
  monkeypatch.delenv('TESTS_FORK', raising=False)
  env = subprocess_env()
  cwd = str(tmp_path)

  # A run in progress (as run_main has it), and one sent to the server
  # while it is stopped, so not forked.
  running = _in_thread(lambda: forks.run(['--while'], cwd, env, 60, SLEEPER))
  _until(lambda: [c for c in server.children.values() if c.pid])
  child, = server.children.values()
  assert next(iter(child.stdout)) == 'sleeping\n'
  os.kill(pid, signal.SIGSTOP)
  sent = _in_thread(lambda: server.start(['--sent'], cwd, env, SLEEPER,
                                         False))
  _until(lambda: len(server.children) == 2)
  with server.lock:  # held until the request is written
    pass
  os.kill(pid, signal.SIGKILL)
  _until(lambda: running and sent, timeout=10)  # failed, not left waiting

  died = 'tests/support/forkserver.py (pid %d) died (killed by SIGKILL)' % pid
  # What it wrote last: that it forked the run.
  last_output = ('forkserver.py: forked %d: python -c SCRIPT main.py '
                 '--while\n' % child.pid)

  def check(error, when):
    assert isinstance(error, forks.ServerDied), error
    head, tail = str(error).split('; its last output:\n')
    assert head == died + when
    assert tail.endswith(last_output)
  check(running[0], ' while main.py ran (pid %d)' % child.pid)
  check(sent[0], ' before forking main.py')
  assert _gone(child.pid, 10), 'the run outlived its server'
  with pytest.raises(forks.ServerDied, match='killed by SIGKILL'):
    child.wait(5)
  with pytest.raises(forks.ServerDied, match='killed by SIGKILL'):
    child.poll()
  child.kill()  # nothing left to kill

  # Killed before a run: that run fails at once, as plainly.
  start = time.monotonic()
  with pytest.raises(forks.ServerDied) as after:
    server.start(['--after'], cwd, env, SLEEPER, False)
  assert time.monotonic() - start < 1
  check(after.value, '')
