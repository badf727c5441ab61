"""Parallel and continuous eval: several `--mode eval` processes share the
checkpoints of one train_dir through claims in eval_dir (no checkpoint
scored twice, none left out, a dead process's claim taken over), and
--eval_continuous follows a training run until it has finished.

Every assertion holds whatever the scheduling: processes are started
together and the tests wait for their output lines, never for fixed times
(but for a claim's refresh thread, given three quarters of a timeout).
"""

import os
import re
import shutil
import signal
import threading
import time

import pytest

from conftest import CLASS_MAP, run_main
from support.cli import Run, assert_one_error

LONG = 600  # seconds a test waits for a process before failing


def _copy_checkpoint(source, train_dir, step):
  """Copies the checkpoint `source` to train_dir/model.ckpt-<step>, its
  .index last and by a rename, so that it appears whole (as a listing
  finds checkpoints by their .index)."""
  folder, base = os.path.split(source)
  for name in os.listdir(folder):
    if name.startswith(base + '.') and not name.endswith('.index'):
      shutil.copy(os.path.join(folder, name), os.path.join(
          train_dir, 'model.ckpt-%d' % step + name[len(base):]))
  temporary = os.path.join(train_dir, '.copying')
  shutil.copy(source + '.index', temporary)
  os.replace(temporary, os.path.join(train_dir, 'model.ckpt-%d.index' % step))


@pytest.fixture
def make_train_dir(tmp_path, mobilenet_train):
  """make_train_dir(steps): a train_dir holding model.ckpt-N for each step,
  all copies of the mobilenet run's last checkpoint."""

  def make(steps, name='train'):
    train_dir = tmp_path / name
    train_dir.mkdir()
    for step in steps:
      _copy_checkpoint(mobilenet_train['checkpoint'], str(train_dir), step)
    return str(train_dir)

  return make


def _eval_args(dataset, train_dir, eval_dir, *extra):
  # No --model or --hparams: eval reads them from the checkpoints' record.
  return ['--mode', 'eval', '--class_map_path', CLASS_MAP,
          '--eval_clip_dir', dataset['train_clip_dir'],
          '--eval_csv_path', dataset['validation_csv'],
          '--train_dir', train_dir, '--eval_dir', eval_dir] + list(extra)


def _prefixes(train_dir, steps):
  return [os.path.join(train_dir, 'model.ckpt-%d' % s) for s in steps]


def _evaluated(stdout):
  """The checkpoints a process evaluated, in order, from its report lines."""
  return re.findall(r'^Checkpoint (\S+) \(', stdout, re.M)


def _markers(eval_dir):
  return sorted(n for n in os.listdir(eval_dir)
                if re.fullmatch(r'eval-\d+\.txt', n))


def _claims(eval_dir):
  return sorted(n for n in os.listdir(eval_dir) if '.claim' in n)


def _check_ok(rc, out, err):
  assert rc == 0, 'rc=%s\nstdout:\n%s\nstderr:\n%s' % (rc, out[-3000:], err)
  assert 'Traceback' not in out + err


def _check_shared(train_dir, eval_dir, steps, outputs):
  """Every checkpoint evaluated by exactly one process, with one marker
  each, and no claim left behind."""
  evaluated = [_evaluated(out) for out in outputs]
  for one in evaluated:
    assert len(one) == len(set(one)), one
  everything = [p for one in evaluated for p in one]
  assert sorted(everything) == sorted(_prefixes(train_dir, steps)), evaluated
  assert _markers(eval_dir) == sorted('eval-%d.txt' % s for s in steps)
  assert _claims(eval_dir) == []
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
  runs = [Run(_eval_args(dataset, train_dir, eval_dir)) for _ in range(2)]
  outputs = _finish_shared(runs, train_dir, eval_dir, steps)
  # Each process accounts for every checkpoint: evaluated by it, marked
  # before it started, or reported as skipped.
  for out in outputs:
    already = int(re.search(r'^6 checkpoints in .*, (\d) already evaluated$',
                            out, re.M).group(1))
    skipped = re.findall(r'^Skipped (\S+): ', out, re.M)
    assert len(_evaluated(out)) + len(skipped) + already == len(steps), out


def test_processes_started_before_training_share_its_checkpoints(
    tmp_path, dataset, make_train_dir, mobilenet_train):
  """Two continuous evals wait for an empty train_dir; the checkpoints
  arrive while both are polling, so both go for the same ones at once. Both
  stop by themselves once training_finished is written and every
  checkpoint is evaluated."""
  steps = [0, 100, 200, 300, 400, 500]
  train_dir = make_train_dir([])
  eval_dir = str(tmp_path / 'eval')
  runs = [Run(_eval_args(dataset, train_dir, eval_dir, '--eval_continuous',
                          '--eval_poll_seconds=0.05'))
          for _ in range(2)]
  for run in runs:
    run.wait_for(r'Waiting for new checkpoints in %s \(0 evaluated so far\)$'
                 % re.escape(train_dir), timeout=LONG)
  for step in steps:
    _copy_checkpoint(mobilenet_train['checkpoint'], train_dir, step)
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
  run = Run(_eval_args(dataset, train_dir, eval_dir, '--eval_continuous',
                        '--eval_poll_seconds=0.05'))
  # Both checkpoints evaluated, and no training_finished: it waits.
  run.wait_for(r'Waiting for new checkpoints in %s \(2 evaluated so far\)$'
               % re.escape(train_dir), timeout=LONG)
  assert _markers(eval_dir) == ['eval-0.txt', 'eval-3.txt']
  # Training saves one more checkpoint and finishes.
  _copy_checkpoint(mobilenet_train['checkpoint'], train_dir, 6)
  with open(os.path.join(train_dir, 'training_finished'), 'w') as f:
    f.write('6\n')
  rc, out, err = run.finish(timeout=LONG)  # by itself: no signal
  _check_ok(rc, out, err)
  assert _evaluated(out) == _prefixes(train_dir, [0, 3, 6])
  assert re.search(r'^Training finished at step 6; every checkpoint in %s '
                   r'is evaluated \(3 by this process\)$'
                   % re.escape(train_dir), out, re.M), out
  assert _markers(eval_dir) == ['eval-0.txt', 'eval-3.txt', 'eval-6.txt']
  assert _claims(eval_dir) == []


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
    rc, out, err = Run(_eval_args(
        dataset, train_dir, str(eval_dir),
        '--eval_claim_timeout_seconds=60')).finish(timeout=LONG)
  finally:
    live.close()
  _check_ok(rc, out, err)
  assert _evaluated(out) == _prefixes(train_dir, [1, 3])
  one, two = _prefixes(train_dir, [1, 2])
  assert re.search(r'^Taking over %s: its claim \(eval-1\.claim, held by '
                   r'deadhost pid 11 since long ago, refreshed \d+ s ago\) '
                   r'is older than the 60 s timeout$' % re.escape(one),
                   out, re.M), out
  assert re.search(r'^Skipped %s: being evaluated by another process '
                   r'\(eval-2\.claim, held by otherhost pid 22 since now, '
                   r'refreshed \d+ s ago\)$' % re.escape(two), out, re.M), out
  assert _markers(str(eval_dir)) == ['eval-1.txt', 'eval-3.txt']
  # The live claim is untouched; the stale one and its successor are gone.
  assert _claims(str(eval_dir)) == ['eval-2.claim']
  with open(str(eval_dir / 'eval-2.claim')) as f:
    assert f.read() == 'otherhost pid 22 since now\n'


# --- claims while scoring (in-process) --------------------------------------

class _TimedOut(Exception):
  pass


def _evaluate_in_process(dataset, train_dir, eval_dir, **options):
  """evaluation.evaluate on the validation clips; fails the test if it
  has not returned within LONG seconds."""
  import evaluation
  from tagger.core import files
  from tagger.core import params
  from conftest import HPARAMS, labeled_rows, read_class_names
  rows = labeled_rows(dataset['validation_csv'])
  samples = files.check_clips([os.path.join(dataset['train_clip_dir'], f)
                              for f, _ in rows])

  def time_out(signum, frame):
    raise _TimedOut('evaluate did not return within %d s' % LONG)

  previous = signal.signal(signal.SIGALRM, time_out)
  signal.alarm(LONG)
  try:
    evaluation.evaluate('mobilenet-v1', params.parse_hparams(HPARAMS),
                        read_class_names(), rows, dataset['train_clip_dir'],
                        samples, train_dir, eval_dir, **options)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


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
    _evaluate_in_process(dataset, train_dir, eval_dir,
                         claim_timeout_seconds=0.4)
  out = capsys.readouterr().out
  assert len(seen) == 3
  for text in seen:
    assert re.fullmatch(r'\S+ pid %d since [-0-9]+ [:0-9]+\n' % os.getpid(),
                        text), text
  assert _evaluated(out) == _prefixes(train_dir, [1])
  assert re.search(r'^warning: %s was taken over by another process while '
                   r'this one scored it' % re.escape(
                       _prefixes(train_dir, [2])[0]), out, re.M), out
  assert _markers(eval_dir) == ['eval-1.txt']
  assert not os.path.exists(os.path.join(eval_dir, 'metrics-2.txt'))
  # Only the claim of the process that took checkpoint 2 over is left.
  assert _claims(eval_dir) == ['eval-2.claim.1']


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
  assert_one_error(run_main(_eval_args(dataset, str(tmp_path / 'train'),
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
  result = run_main(_eval_args(
      dataset, train_dir, str(tmp_path / 'eval'), '--eval_continuous',
      '--eval_poll_seconds=0.05', '--eval_idle_timeout_seconds=0.5'))
  assert_one_error(result, train_dir, 'no new checkpoint for 0.5 seconds',
                   'training_finished')
  assert re.search(r'^Waiting for new checkpoints in %s \(0 evaluated so '
                   r'far\)$' % re.escape(train_dir), result.stdout, re.M)


def test_continuous_eval_stops_on_sigterm(tmp_path, dataset):
  train_dir = str(tmp_path / 'train')
  run = Run(_eval_args(dataset, train_dir, str(tmp_path / 'eval'),
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
    _evaluate_in_process(dataset, train_dir, eval_dir)
  assert stopped.value.exit_code == 143 and sent
  assert str(stopped.value).startswith('stopped by SIGTERM; ')
  assert _markers(eval_dir) == [] and _claims(eval_dir) == []


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
      _evaluate_in_process(dataset, train_dir, eval_dir, **options)
      assert _markers(eval_dir) == ['eval-1.txt', 'eval-2.txt']
    else:
      with pytest.raises(checkpoints.DamagedCheckpoint,
                         match='model.ckpt-2: unreadable checkpoint'):
        _evaluate_in_process(dataset, train_dir, eval_dir, **options)
      assert _markers(eval_dir) == ['eval-1.txt']
    assert _claims(eval_dir) == []
    out = capsys.readouterr().out
    assert re.search(r'^note: %s cannot be read yet \(.*\); trying again'
                     % re.escape(_prefixes(train_dir, [2])[0]), out, re.M)


def test_a_stop_request_ends_a_wait_at_once():
  """A poll's wait (stopping.sleep) ends within its 0.1 s step of a stop
  request, however long it was to be; without one it lasts its time."""
  from tagger.core import stopping
  start = time.monotonic()
  stopping.sleep(0.25)
  assert 0.25 <= time.monotonic() - start < 0.4
  with stopping.requests():
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(stopping.Stopped) as stopped:
      stopping.sleep(30, 'the wait was cut short')
    waited = time.monotonic() - start - 0.25
  assert 0.3 <= waited < 1.5
  assert str(stopped.value) == 'stopped by SIGTERM; the wait was cut short'


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


# --- training finishing while eval looks ------------------------------------

def _training_finishes_after_listing(monkeypatch, train_dir, step):
  """Makes the first listing of train_dir behave as if training saved
  model.ckpt-<step> and wrote its finished file just after the listing
  read the folder: the moment an eval that reads the two in the wrong
  order misses that checkpoint. Returns the listings made."""
  from tagger.core import checkpoints
  import evaluation
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
