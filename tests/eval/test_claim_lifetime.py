"""Claims as the eval loop holds them (tagger/eval/claims.py, as evaluation.py
uses it): made by this process and kept fresh while a checkpoint is
scored, lost to a process that took it over, let go on Ctrl-C or when made
too late, and refreshed often enough under a timeout shorter than the
refresh period (the holder's refresh thread is given three quarters of a
timeout)."""

import os
import re
import time

import pytest

from support.eval_runs import (LONG, checkpoints_evaluated, claim_files,
                               evaluate_in_process, markers, prefixes)




# --- claims while scoring (in-process) --------------------------------------

def test_claim_kept_fresh_lost_and_released(tmp_path, dataset,
                                            make_train_dir, monkeypatch,
                                            capsys):
  """While a checkpoint is scored its claim exists, names this process and
  is refreshed; a claim taken over meanwhile (a higher generation appears)
  leaves the checkpoint to its new holder; Ctrl-C lets the claim go."""
  from tagger.engines import scoring
  train_dir = make_train_dir([1, 2, 3])
  eval_dir = str(tmp_path / 'eval')
  original = scoring.Scorer.score
  seen = []

  def score(self, paths, samples, label, on_progress=None):
    step = int(re.search(r'model\.ckpt-(\d+)$', label).group(1))
    claim = os.path.join(eval_dir, 'eval-%d.claim' % step)
    with open(claim) as f:
      seen.append(f.read())
    if step == 1:
      # Refreshed by its holder: an mtime set far back moves forward again.
      os.utime(claim, (1000, 1000))
      deadline = time.monotonic() + LONG
      while os.stat(claim).st_mtime == 1000:
        assert time.monotonic() < deadline, 'claim not refreshed'
        time.sleep(0.01)
    if step == 2:
      # Another process found the claim stale and took it over.
      with open(claim + '.1', 'w') as f:
        f.write('otherhost pid 22 since now\n')
    if step == 3:
      raise KeyboardInterrupt
    return original(self, paths, samples, label, on_progress)

  monkeypatch.setattr(scoring.Scorer, 'score', score)
  with pytest.raises(KeyboardInterrupt):
    evaluate_in_process(dataset, train_dir, eval_dir,
                         claim_timeout_seconds=0.4)
  out = capsys.readouterr().out
  assert len(seen) == 3
  for text in seen:
    assert re.fullmatch(r'\S+ pid %d since [-0-9]+ [:0-9]+\n' % os.getpid(),
                        text), text
  assert checkpoints_evaluated(out) == prefixes(train_dir, [1])
  assert re.search(r'^warning: %s was taken over by another process while '
                   r'this one scored it' % re.escape(
                       prefixes(train_dir, [2])[0]), out, re.M), out
  assert markers(eval_dir) == ['eval-1.txt']
  assert not os.path.exists(os.path.join(eval_dir, 'metrics-2.txt'))
  # Only the claim of the process that took checkpoint 2 over is left.
  assert claim_files(eval_dir) == ['eval-2.claim.1']


# --- claims made and refreshed ----------------------------------------------

@pytest.mark.parametrize('meanwhile', ['marker', 'newer claim'])
def test_a_claim_made_too_late_is_let_go(tmp_path, monkeypatch, meanwhile):
  """While this process writes its claim, another finishes the checkpoint
  (its marker appears) or takes it over (a newer generation appears): the
  claim file just made is removed, and the checkpoint reported done or
  held; nothing of this process is left in eval_dir."""
  from tagger.eval import claims
  eval_dir = str(tmp_path)
  step = 300
  newer = claims.claim_path(eval_dir, step, 2)

  def hostname():  # called while the claim file is being written
    made = claims.marker_path(eval_dir, step) if meanwhile == 'marker' \
        else newer
    with open(made, 'w') as f:
      f.write('other pid 1\n')
    return 'here'

  monkeypatch.setattr(claims.socket, 'gethostname', hostname)
  state, detail = claims.try_claim(eval_dir, step, timeout=60)
  if meanwhile == 'marker':
    assert (state, detail) == (claims.DONE, None)
    assert os.listdir(eval_dir) == [os.path.basename(
        claims.marker_path(eval_dir, step))]
  else:
    assert state == claims.HELD and detail.startswith(
        'eval-300.claim.2, held by other pid 1, refreshed ')
    assert os.listdir(eval_dir) == [os.path.basename(newer)]


def test_a_claim_timeout_below_the_refresh_period_is_kept(tmp_path,
                                                          monkeypatch):
  """With a claim timeout shorter than claims.REFRESH_SECONDS the holder
  still refreshes its claim 4 times per timeout: another process that
  tries to claim the checkpoint once a whole timeout has passed since it
  was claimed finds it held, and does not score it too. (The holder's
  refresh thread has three quarters of a timeout to spare, 1.5 s.)"""
  from tagger.eval import claims
  import evaluation
  timeout = 2.0
  assert timeout < claims.REFRESH_SECONDS
  train_dir, eval_dir = str(tmp_path / 'train'), str(tmp_path / 'eval')
  os.mkdir(train_dir)
  open(os.path.join(train_dir, 'model.ckpt-300.index'), 'w').close()
  others = []

  def score(self, step, prefix, claim, retry_unreadable):
    time.sleep(1.25 * timeout)
    for _ in range(3):
      # A claim the other process gets is kept, as a live holder keeps it.
      others.append(claims.try_claim(eval_dir, step, timeout)[0])
      time.sleep(0.1)
    return evaluation.EVALUATED, None

  monkeypatch.setattr(evaluation._Evaluator, '_score', score)
  evaluation.evaluate('mobilenet-v1', None, ['a'], [], train_dir, [],
                      train_dir, eval_dir, claim_timeout_seconds=timeout)
  assert others == [claims.HELD] * 3
