"""The tests' side of tests/support/forkserver.py: runs of main.py forked from a
process that has imported TensorFlow once, with what the tests use of
subprocess (a CompletedProcess, or a Popen's stdout and stderr lines as
they come, send_signal, wait and kill). One server per test process,
started on first use; None from start() where a run must start afresh.
A server that dies fails each run it had (ServerDied, with its exit status
and the end of its stderr), and the next one started replaces it."""

import atexit
import glob
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
REPO = os.path.dirname(os.path.dirname(HERE))
# Read by TensorFlow or its libraries when it is imported: a run with other
# values than the server's starts afresh.
IMPORT_TIME = ('TF_', 'CUDA', 'OMP_', 'KMP_', 'XLA_', 'MKL', 'LD_', 'MALLOC',
               'PYTHON')
# The device files of the GPUs TensorFlow can use: NVIDIA's (CUDA), AMD's
# (ROCm) and WSL's.
GPU_DEVICES = ('/dev/nvidia[0-9]*', '/dev/kfd', '/dev/dxg')
# The end of a dead server's stderr that its runs' failures show.
LAST_OUTPUT = 3000


class ServerDied(RuntimeError):
  """tests/support/forkserver.py ended while a run needed it: the run's outcome is
  unknown."""


def gpu_devices():
  """This machine's GPU device files (GPU_DEVICES)."""
  return sorted(p for pattern in GPU_DEVICES for p in glob.glob(pattern))


def gpu_visible(env, devices):
  """Whether a run started afresh in env could see a GPU, on a machine with
  these GPU device files: it could unless there are none or env hides them
  (CUDA_VISIBLE_DEVICES empty or -1; ROCm reads it too). The fork server
  hides them from itself, so such a run must start afresh."""
  hiding = env.get('CUDA_VISIBLE_DEVICES')
  return bool(devices) and (hiding is None or
                            hiding.strip() not in ('', '-1'))


class Child:
  """A forked run of main.py: Popen's pid, stdout, stderr (iterables of
  text lines, read as they are written), send_signal, kill, poll, wait."""

  def __init__(self, folder):
    self.pid = None
    self.returncode = None
    self.lost = None  # why the run's outcome is unknown: its server died
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
    return self._status() if self.exited.is_set() else None

  def wait(self, timeout=None):
    if not self.exited.wait(timeout):
      raise subprocess.TimeoutExpired('main.py', timeout)
    return self._status()

  def _status(self):
    if self.returncode is None:
      raise ServerDied(self.lost)
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
    self.closed = False
    self.gone = None  # once it has ended: how, and its last output
    self.log = os.path.join(self.folder, 'server.log')  # its stderr
    with open(self.log, 'wb') as log:
      self.process = subprocess.Popen(
          [sys.executable, os.path.join(HERE, 'forkserver.py')], env=env,
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
          bufsize=0)
    ready = select.select([self.process.stdout], [], [], 120)[0]
    line = self.process.stdout.readline() if ready else b''
    if b'ready' not in line:
      self.process.kill()
      self.process.wait()
      raise ServerDied(self._ended('did not start' if ready else
                                   'did not start within 120 s'))
    self.ready = json.loads(line)  # its pid, the GPUs it sees
    self.reader = threading.Thread(target=self._replies, daemon=True)
    self.reader.start()

  def _replies(self):
    how = 'died'
    try:
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
    except Exception as e:  # a reply not of the protocol: the server is lost
      how = 'was killed after a reply the client could not read (%r)' % e
      self.process.kill()  # and its children with it
    try:
      self.process.wait(30)
    except subprocess.TimeoutExpired:  # it closed its stdout, yet runs
      self.process.kill()
      self.process.wait()
    if self.closed:
      how = 'was closed'
    with self.lock:  # no run starts on it from now on
      self.gone = self._ended(how)
      for child in self.children.values():
        child.lost = self._ended(how, 'while main.py ran (pid %d)' % child.pid
                                 if child.pid else 'before forking main.py')
        child.started.set()
        child.exited.set()
      self.children.clear()

  def _ended(self, how, when=''):
    """How the server ended (its exit status), and its last output."""
    code = self.process.returncode
    status = ('killed by %s' % signal.Signals(-code).name if code < 0 else
              'exit status %d' % code)
    try:
      with open(self.log, 'rb') as f:
        f.seek(max(0, os.path.getsize(self.log) - LAST_OUTPUT))
        tail = f.read().decode(errors='replace')
    except OSError as e:
      tail = '(unread: %s)' % e
    return 'tests/support/forkserver.py (pid %d) %s (%s)%s; its last output:\n%s' % (
        self.process.pid, how, status, ' ' + when if when else '',
        tail or '(none)')

  def alive(self):
    return self.process.poll() is None

  def start(self, args, cwd, env, script, sigint_ignored):
    folder = tempfile.mkdtemp(dir=self.folder)
    child = Child(folder)
    with self.lock:
      if self.gone:
        raise ServerDied(self.gone)
      key = next(self.ids)
      self.children[key] = child
      try:
        self.process.stdin.write((json.dumps(dict(
            id=key, args=args, cwd=cwd, env=env, script=script,
            stdout=child.paths[0], stderr=child.paths[1],
            sigint_ignored=sigint_ignored)) + '\n').encode())
      except OSError:  # it has died: _replies will say how
        pass
    if not child.started.wait(60):
      raise RuntimeError('tests/support/forkserver.py did not fork within 60 s')
    if child.pid is None:
      raise ServerDied(child.lost)
    return child

  def close(self):
    self.closed = True
    try:
      self.process.stdin.close()  # the server kills what is left and ends
    except OSError:  # it had died
      pass
    self.process.wait(30)
    self.reader.join(30)
    shutil.rmtree(self.folder, ignore_errors=True)


_server = []


def start(args, cwd, env, script=None, sigint=None):
  """A Child running main.py (or `python -c script main.py args`), or None
  where it must start afresh (TESTS_FORK=0, a GPU the run could see, or
  other import-time environment than the server's). sigint: True for
  Python's own handler of SIGINT (as an interactive run has it); default
  as this process has it (pytest-xdist's workers ignore it, and so would a
  subprocess)."""
  if (os.environ.get('TESTS_FORK') == '0' or
      gpu_visible(env, gpu_devices())):
    return None
  if not _server or not _server[0].alive():
    _server[:] = [_Server(env)]
    atexit.register(_server[0].close)
  server = _server[0]
  if server.ready.get('gpus'):  # a GPU CUDA_VISIBLE_DEVICES does not hide
    return None
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
      os.path.join(REPO, 'main.py')] + list(args)
