"""Running main.py in the tests: in a process of its own (forked where it
can be), the arguments of its modes, its one-line errors, a run whose
output is read line by line as it comes, and inference with a model file."""

import os
import queue
import re
import signal
import subprocess
import threading

from support import forks
from support.settings import CLASS_MAP, HPARAMS


def main_in_process(before='', after=''):
  """A Python script (for `python -c SCRIPT main.py ARGS...`) that runs
  main.py as __main__ in its own process: `before` first, then main.py
  with its exit status kept in `code`, then `after`, then that exit."""
  return ('import os, runpy, sys\n'
          'sys.path.insert(0, os.path.dirname(sys.argv[1]))\n' + before +
          'sys.argv = sys.argv[1:]\n'
          'code = 0\n'
          'try:\n'
          '  runpy.run_path(sys.argv[0], run_name="__main__")\n'
          'except SystemExit as e:\n'
          '  code = e.code\n' + after + 'sys.exit(code)\n')


def subprocess_env():
  env = dict(os.environ)
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONUNBUFFERED'] = '1'
  return env


def run_main(args, cwd=None, timeout=300, script=None):
  """Runs main.py in a process of its own (with a script, as `python -c
  SCRIPT main.py ARGS...`, e.g. one of main_in_process); returns the
  CompletedProcess. The process is forked from tests/support/forkserver.py's
  (TensorFlow imported once) where that cannot differ from starting it
  afresh."""
  args = [str(a) for a in args]
  env = subprocess_env()
  forked = forks.run(args, cwd or os.getcwd(), env, timeout, script)
  if forked is not None:
    return forked
  return subprocess.run(forks.command(args, script), cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def default_sigint():
  # A suite started in the background (`cmd &` in a script) inherits SIGINT
  # ignored, and Python then never raises KeyboardInterrupt; the tests that
  # send SIGINT need it as an interactive run has it.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen_main(args, cwd=None):
  """main.py running in a process of its own, forked as run_main's where it
  can be (a forks.Child, with what the tests use of a Popen), with
  Python's own SIGINT handler."""
  args = [str(a) for a in args]
  child = forks.start(args, cwd or os.getcwd(), subprocess_env(), sigint=True)
  if child is not None:
    return child
  return subprocess.Popen(forks.command(args), cwd=cwd,
                          env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=default_sigint)


def check_ok(result):
  assert result.returncode == 0, 'rc=%s\nstdout:\n%s\nstderr:\n%s' % (
      result.returncode, result.stdout[-3000:], result.stderr[-3000:])
  return result


def train_args(model, train_clip_dir, train_csv, train_dir, max_steps,
               hparams=HPARAMS, extra=()):
  return ['--mode', 'train', '--model', model, '--class_map_path', CLASS_MAP,
          '--train_clip_dir', train_clip_dir, '--train_csv_path', train_csv,
          '--train_dir', train_dir, '--hparams', hparams,
          '--max_steps', str(max_steps)] + list(extra)


def export_args(checkpoint, export_dir, extra=()):
  return ['--mode', 'export', '--class_map_path', CLASS_MAP,
          '--inference_checkpoint', checkpoint, '--export_dir',
          export_dir] + list(extra)



def calibration_args(data):
  return ['--calibration_csv_path', data['calibration_csv'],
          '--calibration_clip_dir', data['calibration_clip_dir']]



def assert_one_error(result, *needles):
  """Non-zero exit, exactly one stderr line `main.py: error: ...` naming each
  needle, and no traceback anywhere."""
  assert result.returncode != 0, result.stdout
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('main.py: error: '), lines[0]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  assert 'Traceback' not in result.stderr + result.stdout
  return lines[0]


class Run:
  """A main.py subprocess whose output lines are read as they come."""

  def __init__(self, args):
    self.process = popen_main(args)
    self.lines = queue.Queue()
    self.stdout, self.stderr = [], []
    self._threads = [
        threading.Thread(target=self._pump, args=(self.process.stdout,
                                                  self.stdout, True)),
        threading.Thread(target=self._pump, args=(self.process.stderr,
                                                  self.stderr, False))]
    for t in self._threads:
      t.daemon = True
      t.start()

  def _pump(self, stream, sink, to_queue):
    for line in stream:
      sink.append(line)
      if to_queue:
        self.lines.put(line)
    if to_queue:
      self.lines.put(None)

  def wait_for(self, pattern, timeout=600):
    """Returns the match of the first stdout line matching pattern."""
    while True:
      try:
        line = self.lines.get(timeout=timeout)
      except queue.Empty:
        self.process.kill()
        raise AssertionError('no line matching %r within %ds; got:\n%s' % (
            pattern, timeout, ''.join(self.stdout[-20:])))
      if line is None:
        raise AssertionError('exited (%s) before %r:\n%s%s' % (
            self.process.wait(), pattern, ''.join(self.stdout[-20:]),
            ''.join(self.stderr)))
      match = re.match(pattern, line)
      if match:
        return match

  def finish(self, sig=None, timeout=600):
    if sig is not None:
      self.process.send_signal(sig)
    try:
      rc = self.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.process.kill()  # no training left running after a failed test
      self.process.wait()
      raise AssertionError('no exit within %ds of %s' % (timeout, sig))
    for t in self._threads:
      t.join(timeout=30)
    return rc, ''.join(self.stdout), ''.join(self.stderr)


def inference_with_model(data, model, tmp_path, extra=(),
                          class_map=CLASS_MAP):
  return run_main(['--mode', 'inference', '--class_map_path', class_map,
                   '--inference_clip_dir', data['train_clip_dir'],
                   '--predictions_csv_path', str(tmp_path / 'out.csv'),
                   '--engine', 'tflite', '--tflite_model', model] +
                  list(extra))
