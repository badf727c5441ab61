"""The tests' side of tests/forkserver.py: runs of main.py forked from a
process that has imported TensorFlow once, with what the tests use of
subprocess (a CompletedProcess, or a Popen's stdout and stderr lines as
they come, send_signal, wait and kill). One server per test process,
started on first use; None from start() where a run must start afresh."""

import atexit
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Read by TensorFlow or its libraries when it is imported: a run with other
# values than the server's starts afresh.
IMPORT_TIME = ('TF_', 'CUDA', 'OMP_', 'KMP_', 'XLA_', 'MKL', 'LD_', 'MALLOC',
               'PYTHON')


class Child:
  """A forked run of main.py: Popen's pid, stdout, stderr (iterables of
  text lines, read as they are written), send_signal, kill, poll, wait."""

  def __init__(self, folder):
    self.pid = None
    self.returncode = None
    self.started, self.exited = threading.Event(), threading.Event()
    self.paths = [os.path.join(folder, n) for n in ('stdout', 'stderr')]
    for path in self.paths:
      open(path, 'wb').close()
    self.stdout, self.stderr = (_Lines(path, self.exited)
                                for path in self.paths)

  def send_signal(self, signum):
    if not self.exited.is_set():
      os.kill(self.pid, signum)

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def poll(self):
    return self.returncode

  def wait(self, timeout=None):
    if not self.exited.wait(timeout):
      raise subprocess.TimeoutExpired('main.py', timeout)
    return self.returncode

  def output(self):
    """(stdout, stderr) as written so far."""
    texts = []
    for path in self.paths:
      with open(path, errors='replace') as f:
        texts.append(f.read())
    return texts


class _Lines:
  """The lines of a file another process writes, as they come, until that
  process has exited and the file is read to its end."""

  def __init__(self, path, exited):
    self.path, self.exited = path, exited

  def __iter__(self):
    with open(self.path, 'rb') as f:
      partial = b''
      while True:
        done = self.exited.is_set()  # before reading: nothing comes after
        partial += f.read()
        lines = partial.split(b'\n')
        partial = lines.pop()
        for line in lines:
          yield line.decode(errors='replace') + '\n'
        if done:
          if partial:
            yield partial.decode(errors='replace')
          return
        time.sleep(0.02)


class _Server:

  def __init__(self, env):
    self.env = env
    self.folder = tempfile.mkdtemp(prefix='forks.')
    self.children = {}
    self.ids = itertools.count()
    self.lock = threading.Lock()
    self.process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'forkserver.py')], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, bufsize=0)
    ready = select.select([self.process.stdout], [], [], 120)[0]
    line = self.process.stdout.readline() if ready else b''
    if b'ready' not in line:
      self.process.kill()
      raise RuntimeError('tests/forkserver.py did not start')
    threading.Thread(target=self._replies, daemon=True).start()

  def _replies(self):
    for line in self.process.stdout:
      reply = json.loads(line)
      child = self.children[reply['id']]
      if 'pid' in reply:
        child.pid = reply['pid']
        child.started.set()
      else:
        child.returncode = reply['returncode']
        child.exited.set()
        del self.children[reply['id']]
    for child in list(self.children.values()):  # the server is gone
      child.started.set()
      child.exited.set()

  def alive(self):
    return self.process.poll() is None

  def start(self, args, cwd, env, script, sigint_ignored):
    folder = tempfile.mkdtemp(dir=self.folder)
    child = Child(folder)
    with self.lock:
      key = next(self.ids)
      self.children[key] = child
      self.process.stdin.write((json.dumps(dict(
          id=key, args=args, cwd=cwd, env=env, script=script,
          stdout=child.paths[0], stderr=child.paths[1],
          sigint_ignored=sigint_ignored)) + '\n').encode())
    if not child.started.wait(60) or child.pid is None:
      raise RuntimeError('tests/forkserver.py did not fork')
    return child

  def close(self):
    self.process.stdin.close()  # the server kills what is left and ends
    self.process.wait(30)
    shutil.rmtree(self.folder, ignore_errors=True)


_server = []


def start(args, cwd, env, script=None, sigint=None):
  """A Child running main.py (or `python -c script main.py args`), or None
  where it must start afresh (TESTS_FORK=0, or other import-time
  environment than the server's). sigint: True for Python's own handler
  of SIGINT (as an interactive run has it); default as this process has
  it (pytest-xdist's workers ignore it, and so would a subprocess)."""
  if os.environ.get('TESTS_FORK') == '0':
    return None
  if not _server or not _server[0].alive():
    _server[:] = [_Server(env)]
    atexit.register(_server[0].close)
  server = _server[0]
  keys = set(env) | set(server.env)
  if any(env.get(k) != server.env.get(k) for k in keys
         if k.startswith(IMPORT_TIME) and k != 'TF_CONFIG'):
    return None
  if sigint is None:
    sigint = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
  return server.start(args, cwd, env, script, not sigint)


def run(args, cwd, env, timeout, script=None):
  """subprocess.run's CompletedProcess (or TimeoutExpired) for a forked
  run, or None where it must start afresh."""
  child = start(args, cwd, env, script)
  if child is None:
    return None
  command_line = command(args, script)
  try:
    child.wait(timeout)
  except subprocess.TimeoutExpired:
    child.kill()
    child.wait(60)
    raise subprocess.TimeoutExpired(command_line, timeout, *child.output())
  finally:
    stdout, stderr = child.output()
    shutil.rmtree(os.path.dirname(child.paths[0]), ignore_errors=True)
  return subprocess.CompletedProcess(command_line, child.returncode, stdout,
                                     stderr)


def command(args, script=None):
  """The command line of a fresh run of main.py (`python -c script
  main.py args` with a script)."""
  return [sys.executable] + (['-c', script] if script else []) + [
      os.path.join(os.path.dirname(HERE), 'main.py')] + list(args)
