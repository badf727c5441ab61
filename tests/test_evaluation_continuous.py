"""Eval's flags, waits and stops: a bad eval flag is one line and --help
documents them; continuous eval gives up after its idle timeout, stops on
SIGTERM (at any moment: no marker or claim is left of the checkpoint it was
scoring), reads a checkpoint still being written again, and sees the
checkpoint saved as training finishes."""

import os
import re
import shutil
import signal
import time

import pytest

from support.cli import assert_one_error, Run, run_main
from support.eval_runs import (LONG, claim_files, eval_args,
                               evaluate_in_process, markers, prefixes)




# --- flags, waiting and stopping --------------------------------------------

@pytest.mark.parametrize('flag,needles', [
    ('--eval_poll_seconds=0', ['--eval_poll_seconds', 'positive']),
    ('--eval_claim_timeout_seconds=-5', ['--eval_claim_timeout_seconds',
                                         'positive']),
    ('--eval_idle_timeout_seconds=inf', ['--eval_idle_timeout_seconds',
                                         'positive']),
    ('--eval_poll_seconds=soon', ['--eval_poll_seconds', 'soon']),
    ('--eval_idle_timeout_seconds=5', ['--eval_idle_timeout_seconds',
                                       '--eval_continuous']),
], ids=['poll-0', 'claim-negative', 'idle-inf', 'poll-text',
        'idle-without-continuous'])
def test_bad_eval_flags(tmp_path, dataset, flag, needles):
  assert_one_error(run_main(eval_args(dataset, str(tmp_path / 'train'),
                                       str(tmp_path / 'eval'), flag)),
                   *needles)
  assert not (tmp_path / 'eval').exists()


def test_help_documents_the_eval_flags():
  result = run_main(['--help'])
  assert result.returncode == 0
  for flag in ('eval_continuous', 'eval_poll_seconds',
               'eval_idle_timeout_seconds', 'eval_claim_timeout_seconds'):
    assert re.search(r'--(\[no\])?%s: \S' % flag,
                     result.stdout + result.stderr), flag


def test_continuous_eval_gives_up_without_new_checkpoints(tmp_path, dataset):
  train_dir = str(tmp_path / 'train')  # training has not even started
  result = run_main(eval_args(
      dataset, train_dir, str(tmp_path / 'eval'), '--eval_continuous',
      '--eval_poll_seconds=0.05', '--eval_idle_timeout_seconds=0.5'))
  assert_one_error(result, train_dir, 'no new checkpoint for 0.5 seconds',
                   'training_finished')
  assert re.search(r'^Waiting for new checkpoints in %s \(0 evaluated so '
                   r'far\)$' % re.escape(train_dir), result.stdout, re.M)


def test_continuous_eval_stops_on_sigterm(tmp_path, dataset):
  train_dir = str(tmp_path / 'train')
  run = Run(eval_args(dataset, train_dir, str(tmp_path / 'eval'),
                        '--eval_continuous', '--eval_poll_seconds=0.05'))
  run.wait_for(r'Waiting for new checkpoints', timeout=LONG)
  rc, out, err = run.finish(signal.SIGTERM, timeout=LONG)
  assert rc == 128 + signal.SIGTERM
  lines = [l for l in err.splitlines() if l.strip()]
  assert lines == ['main.py: stopped: stopped by SIGTERM; files written so '
                   'far are complete, run the same command to do the rest']
  assert 'Traceback' not in out + err


@pytest.mark.parametrize('moment', ['tracing', 'loading'])
def test_sigterm_always_stops_eval(tmp_path, dataset, make_train_dir,
                                   monkeypatch, moment):
  """SIGTERM while tf.data traces the feature function (where an exception
  raised by a signal handler is caught and the run goes on), or while a
  checkpoint loads: eval stops with 143 before its next batch, writes no
  marker for the checkpoint it was scoring and lets its claim go."""
  from tagger.sound import features
  from tagger.engines import scoring
  from tagger.core import stopping
  sent = []

  def stop_once(function):
    def wrapped(*args):
      if not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here
      return function(*args)
    return wrapped

  if moment == 'tracing':
    monkeypatch.setattr(features, 'waveform_to_examples',
                        stop_once(features.waveform_to_examples))
  else:
    monkeypatch.setattr(scoring.Scorer, 'load', stop_once(scoring.Scorer.load))
  train_dir = make_train_dir([1, 2])
  eval_dir = str(tmp_path / 'eval')
  with pytest.raises(stopping.Stopped) as stopped:
    evaluate_in_process(dataset, train_dir, eval_dir)
  assert stopped.value.exit_code == 143 and sent
  assert str(stopped.value).startswith('stopped by SIGTERM; ')
  assert markers(eval_dir) == [] and claim_files(eval_dir) == []


def test_continuous_eval_retries_a_checkpoint_being_written(
    tmp_path, dataset, make_train_dir, mobilenet_train, monkeypatch, capsys):
  """A checkpoint whose .index is incomplete when first read (TensorFlow
  writes it in place) is read again at the next look; one that stays
  unreadable is reported as damaged."""
  from tagger.core import checkpoints
  import evaluation
  from tagger.engines import scoring
  monkeypatch.setattr(evaluation, 'SETTLE_SECONDS', 0.2)
  good_index = mobilenet_train['checkpoint'] + '.index'
  with open(good_index, 'rb') as f:
    data = f.read()
  original = scoring.Scorer.load
  fixed = []

  def load_then_finish_writing(self, prefix):
    try:
      return original(self, prefix)
    except checkpoints.DamagedCheckpoint:
      if not fixed and os.path.basename(os.path.dirname(prefix)) == 'slow':
        fixed.append(prefix)
        shutil.copy(good_index, prefix + '.index')  # the write completes
      raise

  monkeypatch.setattr(scoring.Scorer, 'load', load_then_finish_writing)
  for name, outcome in (('slow', 'evaluated'), ('damaged', 'reported')):
    train_dir = make_train_dir([1, 2], name=name)
    with open(os.path.join(train_dir, 'model.ckpt-2.index'), 'wb') as f:
      f.write(data[:len(data) // 2])
    with open(os.path.join(train_dir, 'training_finished'), 'w') as f:
      f.write('2\n')
    eval_dir = str(tmp_path / (name + '_eval'))
    options = dict(continuous=True, poll_seconds=0.05)
    if outcome == 'evaluated':
      evaluate_in_process(dataset, train_dir, eval_dir, **options)
      assert markers(eval_dir) == ['eval-1.txt', 'eval-2.txt']
    else:
      with pytest.raises(checkpoints.DamagedCheckpoint,
                         match='model.ckpt-2: unreadable checkpoint'):
        evaluate_in_process(dataset, train_dir, eval_dir, **options)
      assert markers(eval_dir) == ['eval-1.txt']
    assert claim_files(eval_dir) == []
    out = capsys.readouterr().out
    assert re.search(r'^note: %s cannot be read yet \(.*\); trying again'
                     % re.escape(prefixes(train_dir, [2])[0]), out, re.M)


# --- training finishing while eval looks ------------------------------------

def _training_finishes_after_listing(monkeypatch, train_dir, step):
  """Makes the first listing of train_dir behave as if training saved
  model.ckpt-<step> and wrote its finished file just after the listing
  read the folder: the moment an eval that reads the two in the wrong
  order misses that checkpoint. Returns the listings made."""
  from tagger.core import checkpoints
  real = checkpoints.list_checkpoints
  listings = []

  def listing(folder):
    found = real(folder)
    if not listings:
      open(os.path.join(train_dir, 'model.ckpt-%d.index' % step), 'w').close()
      with open(os.path.join(train_dir, checkpoints.FINISHED_FILE), 'w') as f:
        f.write('%d\n' % step)
    listings.append(found)
    return found

  monkeypatch.setattr(checkpoints, 'list_checkpoints', listing)
  return listings


class _MarksEvaluated:
  """Stands in for the evaluator: notes each checkpoint it is given and
  writes its marker, as scoring it would."""

  def __init__(self, eval_dir):
    self.eval_dir, self.scored = eval_dir, []

  def evaluate(self, step, prefix, retry_unreadable=False):
    from tagger.eval import claims
    import evaluation
    self.scored.append(step)
    with open(claims.marker_path(self.eval_dir, step), 'w') as f:
      f.write('evaluated\n')
    return evaluation.EVALUATED, None


def test_the_checkpoint_saved_as_training_finishes_is_evaluated(
    tmp_path, monkeypatch, capsys):
  """Continuous eval reads training_finished before it lists the
  checkpoints: a last checkpoint and the finished file written between
  the two are both seen at the next look, and the checkpoint scored."""
  import evaluation
  train_dir, eval_dir = tmp_path / 'train', tmp_path / 'eval'
  train_dir.mkdir()
  eval_dir.mkdir()
  (train_dir / 'model.ckpt-0.index').write_text('')
  (eval_dir / 'eval-0.txt').write_text('evaluated earlier\n')
  _training_finishes_after_listing(monkeypatch, str(train_dir), 100)
  evaluator = _MarksEvaluated(str(eval_dir))
  evaluation._evaluate_continuously(evaluator, str(train_dir),
                                    poll_seconds=0.01,
                                    idle_timeout_seconds=LONG)
  assert evaluator.scored == [100]
  assert ('Training finished at step 100; every checkpoint in %s is '
          'evaluated (1 by this process)\n' % train_dir
          ) in capsys.readouterr().out


def test_eval_waiting_for_training_sees_a_first_checkpoint_saved_as_it_ends(
    tmp_path, monkeypatch):
  """Eval started before training reads training_finished before it lists
  the checkpoints too: it waits on, rather than finding training over and
  no checkpoint."""
  import evaluation
  train_dir = str(tmp_path)
  listings = _training_finishes_after_listing(monkeypatch, train_dir, 0)
  evaluation.wait_for_first_checkpoint(train_dir, poll_seconds=0.01,
                                       idle_timeout_seconds=LONG)
  assert listings == [[], [(0, os.path.join(train_dir, 'model.ckpt-0'))]]
