"""Parallel and continuous eval: several `--mode eval` processes share the
checkpoints of one train_dir through claims in eval_dir (no checkpoint
scored twice, none left out, a dead process's claim taken over, a live
one's respected), and --eval_continuous follows a training run until it
has finished.

Every assertion holds whatever the scheduling: processes are started
together and the tests wait for their output lines, never for fixed times."""

import os
import re
import threading
import time


from support.cli import Run
from support.eval_runs import (LONG, checkpoints_evaluated, claim_files,
                               copy_checkpoint, eval_args, markers, prefixes)




def _check_ok(rc, out, err):
  assert rc == 0, 'rc=%s\nstdout:\n%s\nstderr:\n%s' % (rc, out[-3000:], err)
  assert 'Traceback' not in out + err


def _check_shared(train_dir, eval_dir, steps, outputs):
  """Every checkpoint evaluated by exactly one process, with one marker
  each, and no claim left behind."""
  evaluated = [checkpoints_evaluated(out) for out in outputs]
  for one in evaluated:
    assert len(one) == len(set(one)), one
  everything = [p for one in evaluated for p in one]
  assert sorted(everything) == sorted(prefixes(train_dir, steps)), evaluated
  assert markers(eval_dir) == sorted('eval-%d.txt' % s for s in steps)
  assert claim_files(eval_dir) == []
  # The same weights everywhere: the same report from every process.
  reports = set()
  for step in steps:
    with open(os.path.join(eval_dir, 'eval-%d.txt' % step)) as f:
      reports.add(f.read())
  assert len(reports) == 1


def _finish_shared(runs, train_dir, eval_dir, steps):
  """Waits for every run, checks each exited cleanly and that together they
  evaluated each checkpoint once; returns their stdouts."""
  results = [run.finish(timeout=LONG) for run in runs]
  for result in results:
    _check_ok(*result)
  outputs = [out for _, out, _ in results]
  _check_shared(train_dir, eval_dir, steps, outputs)
  return outputs


def test_two_processes_share_the_checkpoints(tmp_path, dataset,
                                             make_train_dir):
  steps = [0, 100, 200, 300, 400, 500]
  train_dir = make_train_dir(steps)
  eval_dir = str(tmp_path / 'eval')
  runs = [Run(eval_args(dataset, train_dir, eval_dir)) for _ in range(2)]
  outputs = _finish_shared(runs, train_dir, eval_dir, steps)
  # Each process accounts for every checkpoint: evaluated by it, marked
  # before it started, or reported as skipped.
  for out in outputs:
    already = int(re.search(r'^6 checkpoints in .*, (\d) already evaluated$',
                            out, re.M).group(1))
    skipped = re.findall(r'^Skipped (\S+): ', out, re.M)
    assert (len(checkpoints_evaluated(out)) + len(skipped) + already ==
            len(steps)), out


def test_processes_started_before_training_share_its_checkpoints(
    tmp_path, dataset, make_train_dir, mobilenet_train):
  """Two continuous evals wait for an empty train_dir; the checkpoints
  arrive while both are polling, so both go for the same ones at once. Both
  stop by themselves once training_finished is written and every
  checkpoint is evaluated."""
  steps = [0, 100, 200, 300, 400, 500]
  train_dir = make_train_dir([])
  eval_dir = str(tmp_path / 'eval')
  runs = [Run(eval_args(dataset, train_dir, eval_dir, '--eval_continuous',
                          '--eval_poll_seconds=0.05'))
          for _ in range(2)]
  for run in runs:
    run.wait_for(r'Waiting for new checkpoints in %s \(0 evaluated so far\)$'
                 % re.escape(train_dir), timeout=LONG)
  for step in steps:
    copy_checkpoint(mobilenet_train['checkpoint'], train_dir, step)
  with open(os.path.join(train_dir, 'training_finished'), 'w') as f:
    f.write('500\n')
  outputs = _finish_shared(runs, train_dir, eval_dir, steps)
  for out in outputs:
    assert re.search(r'^Training finished at step 500; every checkpoint in '
                     r'%s is evaluated \(\d by this process\)$'
                     % re.escape(train_dir), out, re.M), out


def test_continuous_eval_follows_training_and_stops(tmp_path, dataset,
                                                    make_train_dir,
                                                    mobilenet_train):
  train_dir = make_train_dir([0, 3])
  eval_dir = str(tmp_path / 'eval')
  run = Run(eval_args(dataset, train_dir, eval_dir, '--eval_continuous',
                        '--eval_poll_seconds=0.05'))
  # Both checkpoints evaluated, and no training_finished: it waits.
  run.wait_for(r'Waiting for new checkpoints in %s \(2 evaluated so far\)$'
               % re.escape(train_dir), timeout=LONG)
  assert markers(eval_dir) == ['eval-0.txt', 'eval-3.txt']
  # Training saves one more checkpoint and finishes.
  copy_checkpoint(mobilenet_train['checkpoint'], train_dir, 6)
  with open(os.path.join(train_dir, 'training_finished'), 'w') as f:
    f.write('6\n')
  rc, out, err = run.finish(timeout=LONG)  # by itself: no signal
  _check_ok(rc, out, err)
  assert checkpoints_evaluated(out) == prefixes(train_dir, [0, 3, 6])
  assert re.search(r'^Training finished at step 6; every checkpoint in %s '
                   r'is evaluated \(3 by this process\)$'
                   % re.escape(train_dir), out, re.M), out
  assert markers(eval_dir) == ['eval-0.txt', 'eval-3.txt', 'eval-6.txt']
  assert claim_files(eval_dir) == []


class _LiveHolder:
  """Another process's claim, kept fresh from a thread as a live holder
  does."""

  def __init__(self, path, text):
    self.path = path
    with open(path, 'w') as f:
      f.write(text)
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._keep, daemon=True)
    self.thread.start()

  def _keep(self):
    while not self.stop.wait(0.2):
      os.utime(self.path)

  def close(self):
    self.stop.set()
    self.thread.join()


def test_stale_claim_taken_over_live_claim_respected(tmp_path, dataset,
                                                     make_train_dir):
  """eval-1.claim was left 300 s ago by a killed process: with a 60 s claim
  timeout it is taken over (with the default 600 s it would not be).
  eval-2.claim is held by a live process: checkpoint 2 is skipped."""
  train_dir = make_train_dir([1, 2, 3])
  eval_dir = tmp_path / 'eval'
  eval_dir.mkdir()
  stale = str(eval_dir / 'eval-1.claim')
  with open(stale, 'w') as f:
    f.write('deadhost pid 11 since long ago\n')
  old = time.time() - 300
  os.utime(stale, (old, old))
  live = _LiveHolder(str(eval_dir / 'eval-2.claim'),
                     'otherhost pid 22 since now\n')
  try:
    rc, out, err = Run(eval_args(
        dataset, train_dir, str(eval_dir),
        '--eval_claim_timeout_seconds=60')).finish(timeout=LONG)
  finally:
    live.close()
  _check_ok(rc, out, err)
  assert checkpoints_evaluated(out) == prefixes(train_dir, [1, 3])
  one, two = prefixes(train_dir, [1, 2])
  assert re.search(r'^Taking over %s: its claim \(eval-1\.claim, held by '
                   r'deadhost pid 11 since long ago, refreshed \d+ s ago\) '
                   r'is older than the 60 s timeout$' % re.escape(one),
                   out, re.M), out
  assert re.search(r'^Skipped %s: being evaluated by another process '
                   r'\(eval-2\.claim, held by otherhost pid 22 since now, '
                   r'refreshed \d+ s ago\)$' % re.escape(two), out, re.M), out
  assert markers(str(eval_dir)) == ['eval-1.txt', 'eval-3.txt']
  # The live claim is untouched; the stale one and its successor are gone.
  assert claim_files(str(eval_dir)) == ['eval-2.claim']
  with open(str(eval_dir / 'eval-2.claim')) as f:
    assert f.read() == 'otherhost pid 22 since now\n'


def test_a_sweep_names_each_checkpoint_another_process_took(tmp_path,
                                                           monkeypatch,
                                                           capsys):
  """Between the listing and its claim, checkpoint 100 is being scored by
  another process and 200 has been scored by one: each is skipped with a
  line saying which, and nothing is scored here."""
  import evaluation
  from tagger.eval import claims
  train_dir = tmp_path / 'train'
  train_dir.mkdir()
  for step in (100, 200):
    (train_dir / ('model.ckpt-%d.index' % step)).write_text('')
  taken = {100: (claims.HELD, 'eval-100.claim, held by b pid 2'),
           200: (claims.DONE, None)}
  monkeypatch.setattr(evaluation, 'try_claim',
                      lambda eval_dir, step, timeout: taken[step])
  evaluation.evaluate('crnn', None, ['a'], [], str(tmp_path), [],
                      str(train_dir), str(tmp_path / 'eval'))
  one, two = (os.path.join(str(train_dir), 'model.ckpt-%d' % s)
              for s in (100, 200))
  assert capsys.readouterr().out.splitlines()[1:] == [
      'Skipped %s: being evaluated by another process (eval-100.claim, held '
      'by b pid 2)' % one,
      'Skipped %s: evaluated meanwhile by another process' % two]
