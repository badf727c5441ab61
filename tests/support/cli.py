"""Running main.py in the tests: its one-line errors, a run whose output is
read line by line as it comes, and inference with a model file."""

import queue
import re
import subprocess
import threading

from conftest import CLASS_MAP, popen_main, run_main


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
