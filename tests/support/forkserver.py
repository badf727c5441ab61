"""Runs main.py for the tests in children forked from a process that has
already imported TensorFlow and the project's modules: a run then starts in
a fraction of a second instead of the ~4 s of importing TensorFlow, which
the suite would otherwise pay on each of its runs of main.py.

Each child is a fresh process as far as main.py can tell: main.py itself
is executed anew as __main__ (its flags defined then), with its own
arguments, environment, working directory, stdout and stderr files and
random seeds. Before the fork the server has done only what main.py's own
import of TensorFlow does (runtime.import_tensorflow: one inter-op thread,
devices listed) and run no op, so no eager context, thread pool or device
memory is inherited. The tests start a run afresh where a fork could differ
from one: other values of the environment variables TensorFlow reads when
it is imported, or a GPU the run could see (tests/support/forks.py).

GPUs are hidden from the server (CUDA_VISIBLE_DEVICES empty before
TensorFlow is imported): listing devices would otherwise initialise CUDA,
and a child forked from a process that has done so hangs or fails when it
uses CUDA itself. Each child dies with the server (PR_SET_PDEATHSIG), and
the server notes on stderr each child it forks and each exit, so that a
server that dies leaves its last doings behind.

Protocol, one JSON line each way (tests/support/forks.py is the client): once
imported, the server says {ready: its pid, gpus: the GPUs TensorFlow lists
in it, CUDA_VISIBLE_DEVICES: as it has it}; then a request {id, args, cwd,
env, stdout, stderr (files the client made), sigint_ignored, and optionally
script: a `python -c` script to run with main.py and args as its
arguments} is answered with {id, pid} once forked, and later {id,
returncode} when the child ends (negative: killed by that signal, as
subprocess reports it).
"""

import atexit
import ctypes
import json
import os
import random
import runpy
import select
import signal
import sys
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))  # two folders up
MAIN = os.path.join(REPO, 'main.py')
sys.path.insert(0, REPO)  # as `python main.py` has it
os.environ['CUDA_VISIBLE_DEVICES'] = ''  # before TensorFlow: no GPU here

# What main.py imports, at once or lazily.
import absl.app  # noqa: E402,F401
import numpy as np  # noqa: E402
import keras  # noqa: E402,F401
import evaluation  # noqa: E402,F401
from tagger.modes import export  # noqa: E402,F401
import inference  # noqa: E402,F401
from tagger.modes import relabel  # noqa: E402,F401
from tagger.engines import scoring  # noqa: E402,F401
from tagger.modes import tagging  # noqa: E402,F401
from tagger.core import runtime  # noqa: E402
import train  # noqa: E402,F401

# As main.py does before its first op (devices listed, their chatter kept
# off stderr): the same settings in every child.
tf = runtime.import_tensorflow()

PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None), 'prctl', None)  # Linux


def log(text):
  # Flushed at once: a child must not inherit (and write out) any of it.
  sys.stderr.write('forkserver.py: %s\n' % text)
  sys.stderr.flush()


def _redirect(fd, path, flags):
  os.dup2(os.open(path, flags, 0o644), fd)


def child(request, server):
  if _prctl:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server:  # it died before that took effect
      os._exit(1)
  os.chdir(request['cwd'])
  os.environ.clear()
  os.environ.update(request['env'])
  _redirect(0, os.devnull, os.O_RDONLY)
  _redirect(1, request['stdout'], os.O_WRONLY | os.O_APPEND)
  _redirect(2, request['stderr'], os.O_WRONLY | os.O_APPEND)
  signal.signal(signal.SIGINT, signal.SIG_IGN if request['sigint_ignored']
                else signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  random.seed()
  np.random.seed()
  code = 0
  try:
    if request.get('script'):  # as `python -c SCRIPT main.py ARGS...`
      sys.argv = ['-c', MAIN] + request['args']
      exec(compile(request['script'], '<string>', 'exec'),
           {'__name__': '__main__', '__builtins__': __builtins__})
    else:
      sys.argv = [MAIN] + request['args']
      runpy.run_path(MAIN, run_name='__main__')
  except SystemExit as e:
    code = e.code
  except BaseException:  # as the interpreter reports an uncaught one
    traceback.print_exc()
    code = 1
  if code is None:
    code = 0
  elif not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
  atexit._run_exitfuncs()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def serve():
  """Forks a child for each request as it comes, and reports each child's
  exit as it happens, so that several runs (the workers of a cluster) can
  go at once. Ends, killing what is left, when its client goes."""
  replies = os.fdopen(os.dup(1), 'w')
  server = os.getpid()

  def reply(**fields):
    replies.write(json.dumps(fields) + '\n')
    replies.flush()

  children, pending = {}, b''
  while True:
    # Poll for exits only while there are children to reap.
    if select.select([0], [], [], 0.05 if children else None)[0]:
      chunk = os.read(0, 1 << 16)
      if not chunk:
        break
      pending += chunk
      while b'\n' in pending:
        line, pending = pending.split(b'\n', 1)
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
          replies.close()
          child(request, server)
        children[pid] = request['id']
        log('forked %d: %smain.py %s' % (
            pid, 'python -c SCRIPT ' if request.get('script') else '',
            ' '.join(request['args'])))
        reply(id=request['id'], pid=pid)
    while children:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if not pid:
        break
      code = os.waitstatus_to_exitcode(status)
      log('%d exited: %d' % (pid, code))
      reply(id=children.pop(pid), returncode=code)
  for pid in children:
    os.kill(pid, signal.SIGKILL)


if __name__ == '__main__':
  print(json.dumps({
      'ready': os.getpid(),
      'gpus': [d.name for d in tf.config.list_physical_devices('GPU')],
      'CUDA_VISIBLE_DEVICES': os.environ.get('CUDA_VISIBLE_DEVICES')}),
        flush=True)
  serve()
