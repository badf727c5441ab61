"""Two worker processes on localhost (MultiWorkerMirroredStrategy, through
main.py) train, save and resume like one, a lost one is named and a
SIGTERM to one stops both; a cluster is needed, a worker's own port must be
free, lone workers time out or stop on a signal; the workers of a cluster
leave together, their runtime silenced."""

import json
import os
import re
import signal
import socket
import subprocess
import time

from support.cli import assert_one_error, Run, run_main, train_args
from support.settings import REPO
from support.distributed import CRNN, free_ports


# --- two workers on localhost -----------------------------------------------

def start_worker(dataset, train_dir, max_steps, ports, index, extra=()):
  """main.py as `worker` index of a cluster of workers on these ports."""
  cluster = {'worker': ['localhost:%d' % p for p in ports]}
  os.environ['TF_CONFIG'] = json.dumps(
      {'cluster': cluster, 'task': {'type': 'worker', 'index': index}})
  try:
    return Run(train_args(
        'crnn', dataset['train_clip_dir'], dataset['train_csv'], train_dir,
        max_steps, hparams=CRNN,
        extra=['--distribution=multi_worker'] + list(extra)))
  finally:
    del os.environ['TF_CONFIG']


def start_workers(dataset, train_dir, max_steps, ports):
  return [start_worker(dataset, train_dir, max_steps, ports, index)
          for index in range(len(ports))]


def test_two_workers_train_save_and_resume(tmp_path, dataset):
  train_dir = str(tmp_path / 'train')
  runs = start_workers(dataset, train_dir, 3, free_ports(2))
  results = [run.finish(timeout=600) for run in runs]
  for rc, out, err in results:
    assert rc == 0, out[-2000:] + err[-2000:]
    assert 'Training on CollectiveAllReduceStrategy: 2 replica(s) on 2 ' \
        'worker(s)' in out
    # Nothing from TensorFlow's runtime either, e.g. a worker that ended
    # first reported as crashed.
    assert not err.strip(), err
    assert 'Each step takes 4 examples: 2 on each of the 2 replicas' in out
  # Both workers report the same loss (the mean over the whole batch).
  losses = [re.findall(r'^step \d+ loss (\S+)', out, re.M)
            for _, out, _ in results]
  assert len(losses[0]) == 3 and losses[0] == losses[1]
  # Only the chief (worker 0) writes train_dir's checkpoints and files.
  assert 'Saved checkpoint' in results[0][1]
  assert 'Saved checkpoint' not in results[1][1]
  names = sorted(os.listdir(train_dir))
  assert [n for n in names if n.endswith('.index')] == [
      'model.ckpt-0.index', 'model.ckpt-3.index']
  assert not [n for n in names if n.startswith('.worker')]
  assert len([n for n in names if n.startswith('events.')]) == 1

  # (Eval reads a distributed run's checkpoints as any other's:
  # test_mirrored_training_run_and_eval.)
  _lose_a_worker_then_stop_both(dataset, train_dir)


def _lose_a_worker_then_stop_both(dataset, train_dir):
  """The two-worker run of step 3 in train_dir: a lost worker is named by
  the other, and both resume from step 3; a SIGTERM to one stops both."""
  # Kill worker 1 mid-run: worker 0 says so in one line (after what
  # TensorFlow logs) and ends. Both start again and resume from the last
  # checkpoint, step 3.
  ports = free_ports(2)
  runs = start_workers(dataset, train_dir, 100000, ports)
  runs[1].wait_for(r'step 6 loss')
  runs[1].finish(signal.SIGKILL)
  rc, out, err = runs[0].finish(timeout=120)
  assert rc == 1 and 'Traceback' not in out + err, out[-2000:] + err
  ours = [l for l in err.splitlines() if l.startswith('main.py:')]
  assert ours == [err.strip().splitlines()[-1]], err
  assert ours[0] == (
      'main.py: error: training stopped: worker 1 (localhost:%d) of the '
      'cluster was lost; the last checkpoint is %s; restart every worker '
      'with the same command to resume' % (
          ports[1], os.path.join(train_dir, 'model.ckpt-3'))), err
  # Restarted, both resume there; SIGTERM to one worker then stops both at
  # the same step, the chief saving it.
  runs = start_workers(dataset, train_dir, 100000, free_ports(2))
  runs[1].wait_for(r'step 7 loss')
  results = [runs[1].finish(signal.SIGTERM), runs[0].finish(timeout=600)]
  stops = []
  for rc, out, err in results:
    assert rc == 143, out[-2000:] + err[-2000:]
    assert 'Resuming from %s at step 3' % os.path.join(
        train_dir, 'model.ckpt-3') in out
    assert re.findall(r'^step (\d+) loss', out, re.M)[:4] == [
        '4', '5', '6', '7']
    stops.append(re.fullmatch(r'main.py: stopped: stopped by (SIGTERM|another '
                              r'worker) at step (\d+); run the same command '
                              r'to resume\n', err).groups())
  assert stops[0][0] == 'SIGTERM' and stops[1][0] == 'another worker'
  assert stops[0][1] == stops[1][1]
  assert os.path.exists(os.path.join(train_dir,
                                     'model.ckpt-%s.index' % stops[0][1]))


def test_multi_worker_needs_a_cluster(dataset, tmp_path):
  env_free = {k: v for k, v in os.environ.items() if k != 'TF_CONFIG'}
  assert 'TF_CONFIG' not in env_free
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'],
      str(tmp_path / 'train'), 1, extra=['--distribution=multi_worker'])),
                   '--distribution=multi_worker', 'TF_CONFIG')


# --- a cluster that does not form -------------------------------------------

def test_own_port_in_use(tmp_path, dataset):
  """Checked before anything is created."""
  ports = free_ports(2)
  taken = socket.create_server(('', ports[0]))
  try:
    run = start_worker(dataset, str(tmp_path / 'train'), 1, ports, 0)
    result = subprocess.CompletedProcess([], *run.finish(timeout=120))
  finally:
    taken.close()
  assert_one_error(result, 'TF_CONFIG', 'worker 0',
                   'localhost:%d' % ports[0], 'port %d' % ports[0])
  assert result.stderr.strip().endswith('(Address already in use)')
  assert not (tmp_path / 'train').exists()


def test_lone_workers_time_out_and_stop(tmp_path, dataset):
  """Two workers whose cluster never forms, run at the same time. Worker 0
  finds worker 1's port answering (a listener standing in for a peer that
  never joins) and waits in TensorFlow's own start-up, which the flag bounds
  too: exit 1, one line naming worker 1, within about the flag's seconds.
  Worker 1 of another cluster is alone and gets SIGTERM while it waits: exit
  143, one line, at once."""
  ports, alone = free_ports(2), free_ports(2)
  stand_in = socket.create_server(('', ports[1]))
  try:
    timing_out = start_worker(dataset, str(tmp_path / 'a'), 1, ports, 0,
                              ['--cluster_start_timeout_seconds=5'])
    stopped = start_worker(dataset, str(tmp_path / 'b'), 1, alone, 1)
    joined = re.escape('Joining the cluster as worker ')
    timing_out.wait_for(joined + '0', timeout=300)
    waiting = time.monotonic()
    stopped.wait_for(joined + '1', timeout=300)
    start = time.monotonic()
    rc, out, err = stopped.finish(signal.SIGTERM, timeout=60)
    assert time.monotonic() - start < 10
    assert rc == 143, out + err
    assert [l for l in err.splitlines() if l.strip()] == [
        'main.py: stopped: stopped by SIGTERM; nothing was trained: the '
        'other tasks of the cluster had not all started'], err
    rc, out, err = timing_out.finish(timeout=120)
    assert 3 < time.monotonic() - waiting < 30, out + err
  finally:
    stand_in.close()
  assert_one_error(subprocess.CompletedProcess([], rc, out, err),
                   '--cluster_start_timeout_seconds=5',
                   'worker 1 (localhost:%d)' % ports[1])


# --- leaving together -------------------------------------------------------

def test_cluster_workers_leave_together(tmp_path, dataset, monkeypatch,
                                        capsys):
  """The end of a cluster's run saves and then waits for every worker,
  TensorFlow's stderr silenced from there: a worker that ends first is
  reported as crashed by the others' runtime (a race, which the clean
  two-worker run above loses only now and then; a stop does the same, see
  run_loop). In-process, with the agreement between workers recorded
  instead of run."""
  import inputs
  import tensorflow as tf
  from tagger.training import distribution
  from tagger.core import params
  import train
  from support.scores import read_class_names
  events = []
  monkeypatch.setattr(train, 'make_stop_agreement', lambda strategy: (
      lambda wanted: events.append('agree') or False))
  monkeypatch.setattr(distribution, 'silence_native_stderr',
                      lambda: events.append('silence'))
  save = tf.train.CheckpointManager.save
  monkeypatch.setattr(tf.train.CheckpointManager, 'save', lambda self, **k: (
      events.append('save'), save(self, **k))[1])
  train.train('crnn', params.parse_hparams(CRNN), read_class_names(),
              [inputs.Source(dataset['train_csv'], dataset['train_clip_dir'])],
              str(tmp_path / 'train'), max_steps=2)
  # Step 0's save, each step's agreement, the last save, the wait for all.
  assert events == ['save', 'agree', 'agree', 'save', 'silence', 'agree']
  assert 'Training finished' in capsys.readouterr().out


_LEAVE = r'''
import os, sys
sys.path.insert(0, %r)
from tagger.training import distribution
real_exit = os._exit


def exit_with_a_native_write(code):  # as TensorFlow's threads write at exit
  os.write(2, b'runtime noise\n')
  real_exit(code)


os._exit = exit_with_a_native_write
print('trained', end='')
sys.stderr.write('main.py: error: lost\n')
distribution.leave(3)
'''


def test_leave_flushes_the_run_and_silences_the_runtime():
  """A worker leaves by os._exit with its own output flushed, and what
  TensorFlow's runtime writes to fd 2 from then on (a peer reported as
  crashed) is not shown."""
  result = run_main([], timeout=120, script=_LEAVE % REPO)
  assert (result.returncode, result.stdout, result.stderr) == (
      3, 'trained', 'main.py: error: lost\n')
