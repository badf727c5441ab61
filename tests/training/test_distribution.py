"""Training with tf.distribute on CPU: two logical devices under
MirroredStrategy give the single-device numbers; two worker processes on
localhost (MultiWorkerMirroredStrategy) train, save and resume like one, and
a lost one is named; TF_CONFIG is checked before anything is made, and a
cluster that does not form is given up within the flag's time or on a
signal; mixed precision computes in its dtype (float16 loss-scaled) and
scores in float32."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import (CLASS_MAP, FEW_BN_BATCHES, REPO, check_ok, run_main,
                      subprocess_env, train_args)
from support.cli import Run, assert_one_error

SUPPORT = os.path.join(REPO, 'tests', 'support')
# Smooth activations and no dropout: with ReLU, float rounding that differs
# between the two runs flips an occasional unit on or off, which moves
# MobileNet's gradients by a few percent; the CRNN's ELU has no such edge.
CRNN = 'batch_size=4,crnn_filters=4,crnn_dropout=0,' + FEW_BN_BATCHES


# Runs tests/support/two_devices.py as `python -c` would run it, in a forked run
# where it can be (TensorFlow imported, no op run: the CPU can still be split).
TWO_DEVICES = ('import runpy, sys; sys.argv = [%r] + sys.argv[2:]; '
               'runpy.run_path(sys.argv[0], run_name="__main__")'
               % os.path.join(SUPPORT, 'two_devices.py'))


def two_devices(*args, check=True):
  result = run_main(args, timeout=600, script=TWO_DEVICES)
  if check:
    assert result.returncode == 0, (result.stderr[-3000:] +
                                    result.stdout[-2000:])
  return result


def steps(model_name, text, weights='weights'):
  """two_devices.steps_in on one device, then on two replicas."""
  lines = two_devices('steps', model_name, text, 'none,mirrored',
                      weights).stdout.splitlines()
  return [json.loads(line) for line in lines[-2:]]


@pytest.mark.parametrize('optimizer', ['opt=sgd,lr=0.1,momentum=0.9',
                                       'lr=0.001'])
def test_mirrored_steps_equal_one_device(optimizer):
  """Three steps on two replicas (two examples each) equal three steps on
  one device with the four examples: same losses, same weights, moving
  statistics included. Tolerance: float32 rounding of sums taken in another
  order (1e-6 on losses); with Adam, whose update divides by the root of the
  squared gradient, rounding in near-zero gradients moves a weight by up to
  ~lr, hence 3e-3 (3 steps at lr 1e-3) there."""
  text = CRNN + ',' + optimizer
  one, two = steps('crnn', text)
  assert one['step'] == two['step'] == 3
  np.testing.assert_allclose(two['losses'], one['losses'], rtol=1e-6)
  atol = 1e-5 if 'sgd' in optimizer else 3e-3
  moved = 0
  for path, value in one['weights'].items():
    np.testing.assert_allclose(two['weights'][path], value, atol=atol,
                               rtol=0, err_msg=path)
    moved += path.endswith('moving_mean') and np.abs(value).max() > 1e-3
  assert moved == 5  # every batch norm's statistics took part


def test_unsynchronized_batch_norm_is_not_the_single_device_run():
  """bn_sync=0: each replica normalises with its own two examples, so even
  the first loss differs from the single-device one (which bn_sync=1
  matches, above)."""
  one, two = steps('crnn', CRNN + ',bn_sync=0')
  assert abs(one['losses'][0] - two['losses'][0]) > 1e-4


def test_mirrored_mobilenet_first_step():
  """MobileNet's layer table at a quarter of its width (the same layers,
  depthwise convolutions and batch norms; a fifth of the time)."""
  one, two = steps('mobilenet-v1', 'batch_size=4,width=0.25', 'losses')
  np.testing.assert_allclose(two['losses'][0], one['losses'][0], rtol=1e-5)


def test_mirrored_training_run_and_eval(tmp_path, dataset):
  """Two sources, the second noisy (its examples get the noisy loss), on
  two replicas."""
  train_dir = str(tmp_path / 'train')
  out = two_devices(
      'train', dataset['train_csv'] + ',' + dataset['validation_csv'],
      dataset['train_clip_dir'] + ',' + dataset['train_clip_dir'],
      train_dir, CRNN + ',noisy_loss=lq', '3', 'curated,noisy').stdout
  assert 'Training on MirroredStrategy: 2 replica(s)' in out
  assert re.search(r'^Source 1 \(curated\): .*train.csv, 8 clips', out, re.M)
  assert re.search(r'^Source 2 \(noisy\): .*validation.csv, 4 clips', out,
                   re.M)
  # batch_size in all: each replica takes half of it from the pipeline.
  assert 'Each step takes 4 examples: 2 on each of the 2 replicas' in out
  assert re.findall(r'^step (\d+) loss', out, re.M) == ['1', '2', '3']
  assert sorted(n for n in os.listdir(train_dir) if n.endswith('.index')) == [
      'model.ckpt-0.index', 'model.ckpt-3.index']
  result = check_ok(run_main(
      ['--mode', 'eval', '--class_map_path', CLASS_MAP,
       '--eval_clip_dir', dataset['train_clip_dir'],
       '--eval_csv_path', dataset['validation_csv'], '--train_dir', train_dir,
       '--eval_dir', str(tmp_path / 'eval')]))
  assert len(re.findall(r'^Overall lwlrap = ', result.stdout, re.M)) == 2
  # batch_size must split evenly over the replicas.
  failed = two_devices('train', dataset['train_csv'],
                       dataset['train_clip_dir'], str(tmp_path / 'odd'),
                       'batch_size=3,crnn_filters=4', '1', check=False)
  assert failed.returncode == 1
  assert 'batch_size=3: must be a multiple of the 2 replicas' in failed.stdout


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


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


@pytest.mark.parametrize('precision,dtype', [
    ('precision=mixed_float16', 'float16'),
    ('precision=mixed_bfloat16', 'bfloat16')])
def test_mixed_precision_computes_in_its_dtype(precision, dtype):
  """The layers compute in the precision's dtype (weights and logits
  float32), and float16 is loss-scaled: with a loss so small that its
  float16 gradients underflow to zero unscaled, a step still moves the
  convolutions' weights."""
  from tagger.core import params
  import train
  state = train.state_lib.TrainingState('crnn', params.parse_hparams(
      CRNN + ',' + precision), 5, 0)
  model = state.model
  assert {model.get_layer(name).compute_dtype for name in (
      'conv1', 'conv4', 'gru')} == {dtype}
  assert model.get_layer('logits').compute_dtype == 'float32'
  assert {v.dtype for v in model.weights} == {'float32'}
  step = train.step_lib.make_train_step(
      model, lambda labels, logits: 1e-7 * state.loss_fn(labels, logits),
      state.variables, state.optimizer, state.step)
  kernels = [v for name in ('conv1', 'conv4')
             for v in model.get_layer(name).trainable_weights
             if v.path.endswith('kernel')]
  before = [v.numpy() for v in kernels]
  rng = np.random.default_rng(0)
  loss, finite = step(
      rng.normal(-2, 1, (4, 100, 96)).astype(np.float32),
      (rng.random((4, 5)) < 0.3).astype(np.float32))
  assert bool(finite) and 0 < float(loss) < 1e-6
  for kernel, old in zip(kernels, before):
    assert np.abs(kernel.numpy() - old).max() > 1e-7, kernel.path


@pytest.mark.parametrize('precision', ['mixed_float16', 'mixed_bfloat16'])
def test_mixed_precision_trains_and_scores_float32(tmp_path, dataset,
                                                   precision):
  import tensorflow as tf
  train_dir = str(tmp_path / 'train')
  out = check_ok(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'], train_dir, 3,
      hparams='batch_size=4,crnn_filters=4,%s,precision=%s' % (
          FEW_BN_BATCHES, precision)))).stdout
  losses = [float(l) for l in re.findall(r'^step \d+ loss (\S+)', out, re.M)]
  assert len(losses) == 3 and all(np.isfinite(losses))
  prefix = os.path.join(train_dir, 'model.ckpt-3')
  dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
  weights = {k: d for k, d in dtypes.items() if k.startswith('weights/')}
  assert weights and set(weights.values()) == {tf.float32}
  from tagger.core import params
  from tagger.engines import scoring
  from conftest import read_class_names
  scorer = scoring.Scorer('crnn', 80, params.parse_hparams(
      'crnn_filters=4,precision=' + precision))
  scorer.load(prefix)
  clip = os.path.join(dataset['test_clip_dir'],
                      sorted(os.listdir(dataset['test_clip_dir']))[0])
  from tagger.core import files
  scores = scorer.score([clip], files.check_clips([clip]))
  assert scores.dtype == np.float64 and np.all(np.isfinite(scores))
  examples = np.zeros((2, 100, 96), np.float32)
  assert scorer.inference_model(examples).dtype == tf.float32
  assert len(read_class_names()) == 80


# --- TF_CONFIG -------------------------------------------------------------

WORKERS = {'worker': ['localhost:2222', 'localhost:2223']}
WORKER_0 = {'type': 'worker', 'index': 0}


@pytest.mark.parametrize('config,needle', [
    ('[]', 'not a list'),
    ('"worker"', 'not a string'),
    ('3', 'not a number'),
    ({'cluster': WORKERS}, 'no "task"'),
    ({'task': WORKER_0}, 'no "cluster"'),
    ({'cluster': WORKERS, 'task': 'worker'}, '"task" must be an object'),
    ({'cluster': WORKERS, 'task': {'index': 0}}, '"task" has no "type"'),
    ({'cluster': WORKERS, 'task': {'type': 'worker'}}, '"task" has no "index"'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': 2}},
     'index 2 is out of range'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': -1}},
     'index -1 is out of range'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': '0'}},
     'whole number'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': True}},
     'whole number'),
    ({'cluster': WORKERS, 'task': {'type': 'ps', 'index': 0}}, '"ps"'),
    ({'cluster': WORKERS, 'task': {'type': 'chief', 'index': 0}},
     '"chief" has no list'),
    ({'cluster': ['localhost:2222'], 'task': WORKER_0},
     '"cluster" must be an object'),
    ({'cluster': {}, 'task': WORKER_0}, '"cluster" must be an object'),
    ({'cluster': {'worker': 'localhost:2222'}, 'task': WORKER_0},
     'must be a list'),
    ({'cluster': {'worker': []}, 'task': WORKER_0}, 'must be a list'),
    ({'cluster': {'worker': ['localhost']}, 'task': WORKER_0},
     '"localhost" is not a "host:port" address'),
    ({'cluster': {'worker': ['localhost:http']}, 'task': WORKER_0},
     '"localhost:http" is not'),
    ({'cluster': {'worker': ['localhost:65536']}, 'task': WORKER_0},
     '"localhost:65536" is not'),
    ({'cluster': {'worker': ['localhost:0']}, 'task': WORKER_0},
     '"localhost:0" is not'),
    ({'cluster': {'worker': [':2222']}, 'task': WORKER_0}, '":2222" is not'),
    ({'cluster': {'worker': [2222]}, 'task': WORKER_0}, '2222 is not'),
    ({'cluster': {'worker': ['a:1', 'a:1']}, 'task': WORKER_0},
     'both worker 0 and worker 1'),
    ({'cluster': dict(WORKERS, ps=['localhost:2224']), 'task': WORKER_0},
     '"ps"'),
    ({'cluster': dict(WORKERS, chief=['a:1', 'b:1']), 'task': WORKER_0},
     '2 "chief" tasks'),
])
def test_tf_config_of_the_wrong_shape(monkeypatch, config, needle):
  from tagger.training import cluster_config
  from tagger.core.files import UserError
  monkeypatch.setenv('TF_CONFIG', config if isinstance(config, str) else
                     json.dumps(config))
  with pytest.raises(UserError) as raised:
    cluster_config.check_config()
  message = str(raised.value)
  assert message.startswith('TF_CONFIG: ') and '\n' not in message, message
  assert needle in message, message


def test_tf_config_accepted(monkeypatch):
  from tagger.training import cluster_config
  # The first and last ports there are.
  config = {'cluster': {'worker': ['localhost:1', 'localhost:65535'],
                        'chief': ['[::1]:2221']},
            'task': {'type': 'worker', 'index': 1}, 'environment': 'cloud'}
  monkeypatch.setenv('TF_CONFIG', json.dumps(config))
  assert cluster_config.check_config() == (config['cluster'], config['task'])
  monkeypatch.delenv('TF_CONFIG')
  assert cluster_config.check_config() == (None, None)


def test_tf_config_checked_before_anything_is_made(tmp_path, dataset):
  """A task index out of range: one line, nothing created, TensorFlow never
  started."""
  train_dir = tmp_path / 'train'
  os.environ['TF_CONFIG'] = json.dumps({'cluster': WORKERS,
                                        'task': {'type': 'worker', 'index': 2}})
  try:
    result = run_main(train_args(
        'crnn', dataset['train_clip_dir'], dataset['train_csv'],
        str(train_dir), 1, hparams=CRNN,
        extra=['--distribution=multi_worker']))
  finally:
    del os.environ['TF_CONFIG']
  assert_one_error(result, 'TF_CONFIG', 'index 2 is out of range',
                   '2 "worker" tasks')
  assert not train_dir.exists()


# --- a cluster that does not form ------------------------------------------

def test_peers_waited_for_until_the_deadline(monkeypatch, capsys):
  """Worker 0 of a cluster whose worker 1 never starts: a line saying what
  it waits for, then an error naming worker 1's address and the flag once
  the deadline has passed."""
  from tagger.training import distribution
  from tagger.core.files import UserError
  ports = free_ports(2)
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['localhost:%d' % p for p in ports]},
      'task': {'type': 'worker', 'index': 0}}))
  start = time.monotonic()
  with pytest.raises(UserError) as raised:
    distribution.wait_for_peers(1.0)
  assert 1.0 <= time.monotonic() - start < 5
  message = str(raised.value)
  assert 'worker 1 (localhost:%d)' % ports[1] in message, message
  assert '--cluster_start_timeout_seconds=1' in message, message
  assert capsys.readouterr().out == (
      'Joining the cluster as worker 0 (localhost:%d) of 2 tasks; waiting up '
      'to 1 s for the others\n' % ports[0])


def test_lost_tasks_named_in_an_error(monkeypatch):
  """The other tasks of the cluster a TensorFlow error names, each once,
  in the order named; this task, and tasks the cluster does not have, are
  left out."""
  from tagger.training import distribution
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['localhost:2222', 'localhost:2223',
                             'localhost:2224']},
      'task': {'type': 'worker', 'index': 0}}))
  message = ('Collective ops is aborted by: task /job:worker/replica:0/task:2'
             ' lost; from /job:worker/task:0; /job:worker/replica:0/task:3 '
             'and /job:worker/task:1 and /job:worker/replica:0/task:2 again')
  assert distribution._named_tasks(message) == [
      ('worker 2', 'localhost:2224'), ('worker 1', 'localhost:2223')]


def test_tensorflow_start_up_gets_its_time_however_late_the_peers(
    monkeypatch):
  """Once every peer has answered, TensorFlow's own start-up may take what
  is left of the timeout, and at least min(timeout, 10 s) even when the
  last peer answered at the deadline."""
  from tagger.training import distribution
  limits = []

  class Enough(Exception):
    pass

  def limit(seconds):
    limits.append(seconds)
    raise Enough()

  monkeypatch.setattr(distribution, '_limit_registration', limit)
  for left, timeout, expected in ((0, 600, 10), (0, 4, 4), (300, 600, 300)):
    monkeypatch.setattr(distribution, 'wait_for_peers',
                        lambda _, left=left: time.monotonic() + left)
    with pytest.raises(Enough):
      distribution._multi_worker(timeout)
    assert limits[-1] == pytest.approx(expected, abs=1)


def test_peers_waited_for_until_a_signal(monkeypatch):
  from tagger.training import distribution
  from tagger.core import stopping
  ports = free_ports(2)
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['localhost:%d' % p for p in ports]},
      'task': {'type': 'worker', 'index': 1}}))
  # pytest-xdist starts its workers with SIGINT ignored, which requests()
  # respects: give this process Python's own handler, as a shell would.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with stopping.requests():
      threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
      start = time.monotonic()
      with pytest.raises(stopping.Stopped) as raised:
        distribution.wait_for_peers(60)
  finally:
    signal.signal(signal.SIGINT, previous)
  assert time.monotonic() - start < 5
  assert raised.value.exit_code == 130
  assert 'stopped by SIGINT' in str(raised.value)


# After the strategy has started: TensorFlow's runtime installs a SIGTERM
# handler of its own in native code (Python's signal.getsignal does not see
# it); a SIGTERM before the training loop must still be recorded.
# Run as `python -c _SIGTERM_AFTER_START main.py`, forked as main.py is.
_SIGTERM_AFTER_START = """
import os, signal, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from tagger.training import distribution
from tagger.core import stopping
with stopping.requests():
  distribution.make_strategy('multi_worker', 60)
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.5)
  print('requested', stopping.requested())
"""


def test_sigterm_recorded_once_the_strategy_has_started():
  os.environ['TF_CONFIG'] = json.dumps(
      {'cluster': {'worker': ['localhost:%d' % free_ports(1)[0]]},
       'task': {'type': 'worker', 'index': 0}})
  try:
    result = run_main([], timeout=120, script=_SIGTERM_AFTER_START)
  finally:
    del os.environ['TF_CONFIG']
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == 'requested %d' % signal.SIGTERM


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
  from conftest import read_class_names
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


def test_which_modes_train_on_the_cluster(monkeypatch):
  """multi_worker always; auto only when TF_CONFIG names more than one
  task; none and mirrored never, whatever TF_CONFIG says."""
  from tagger.training import distribution
  two = json.dumps({'cluster': {'worker': ['localhost:1', 'localhost:2']},
                    'task': {'type': 'worker', 'index': 0}})
  one = json.dumps({'cluster': {'worker': ['localhost:1']},
                    'task': {'type': 'worker', 'index': 0}})
  expected = {
      None: {'auto': False, 'none': False, 'mirrored': False},
      one: {'auto': False, 'none': False, 'mirrored': False,
            'multi_worker': True},
      two: {'auto': True, 'none': False, 'mirrored': False,
            'multi_worker': True}}
  for config, modes in expected.items():
    if config is None:
      monkeypatch.delenv('TF_CONFIG', raising=False)
    else:
      monkeypatch.setenv('TF_CONFIG', config)
    assert {m: distribution.uses_cluster(m) for m in modes} == modes, config


def test_errors_of_the_cluster_start_name_the_task(monkeypatch):
  """TensorFlow's start-up errors as one line: this task's port taken
  after it was checked; the deadline passed without the tasks it names
  (else every other task); anything else, its first line."""
  import tensorflow as tf
  from tagger.training import distribution
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['hosta:2222', 'hostb:2301', 'hostc:2402']},
      'task': {'type': 'worker', 'index': 1}}))
  failure = distribution._start_failure(tf.errors.UnknownError(
      None, None, 'Could not start gRPC server on hostb'), 30)
  assert failure == ("TF_CONFIG: worker 1's address hostb:2301: cannot "
                     "listen on port 2301 (taken since it was checked)")
  late = distribution._start_failure(tf.errors.DeadlineExceededError(
      None, None, 'no heartbeat'), 30)
  assert late == (
      'the cluster did not form within --cluster_start_timeout_seconds=30: '
      'no answer from worker 0 (hosta:2222), worker 2 (hostc:2402); start '
      "every task of TF_CONFIG's cluster")
  other = distribution._start_failure(tf.errors.InternalError(
      None, None, 'bad things\nmore'), 30)
  assert other == 'TensorFlow could not join the cluster of TF_CONFIG: bad ' \
      'things'


def test_auto_mirrors_over_two_gpus_or_more(monkeypatch):
  """--distribution=auto without a cluster: MirroredStrategy once there
  are two GPUs, the default strategy with one or none."""
  import tensorflow as tf
  from tagger.training import distribution
  monkeypatch.delenv('TF_CONFIG', raising=False)
  gpus = []
  monkeypatch.setattr(tf.config, 'list_logical_devices',
                      lambda kind=None: list(gpus) if kind == 'GPU' else [])
  for count, mirrored in ((0, False), (1, False), (2, True), (3, True)):
    gpus[:] = ['/gpu:%d' % i for i in range(count)]
    strategy = distribution.make_strategy('auto')
    assert isinstance(strategy, tf.distribute.MirroredStrategy) == mirrored
    if not mirrored:
      assert strategy is tf.distribute.get_strategy()
