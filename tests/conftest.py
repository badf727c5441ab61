"""Shared fixtures: a tiny synthetic dataset, and session-scoped training,
eval, inference and export runs reused by the CLI, error and training
tests, each made once for every pytest-xdist process. The helpers they use
and the tests share are in tests/support/.

TensorFlow is imported lazily (inside helpers and fixtures) so that test
files that only exercise main.py's pre-flight checks stay fast.
"""

import fcntl
import os
import pickle
import random
import shutil
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The tests' models are tiny: oneDNN's graph rewrites and kernel set-up cost
# more than they save at this size (test_train.py side by side: 83 s
# without, 92 s with). Each number a test compares is held to an
# independent computation with a tolerance either kernel library meets;
# TF_ENABLE_ONEDNN_OPTS=1 runs the suite with oneDNN.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# The project's modules, as main.py imports them.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from support.cli import (calibration_args, check_ok, export_args,  # noqa: E402
                         run_main, train_args)
from support.scores import labeled_rows  # noqa: E402
from support.settings import (CLASS_MAP, CRNN_HPARAMS, HPARAMS,  # noqa: E402
                              TAG_HPARAMS, TAG_STEPS)
from support.signals import write_check_clip, write_pcm_wav  # noqa: E402
from tools import make_demo_data  # noqa: E402


@pytest.fixture(autouse=True)
def _same_random_state():
  """Every test starts from the same random state, whichever tests ran
  before it: Python's (Keras draws its initialisers' and dropout's seeds
  from it), NumPy's and, once loaded, TensorFlow's global seed."""
  random.seed(0)
  np.random.seed(0)
  if 'tensorflow' in sys.modules:
    sys.modules['tensorflow'].random.set_seed(0)


@pytest.fixture(scope='session')
def parse_hparams():
  from tagger.core import params
  return params.parse_hparams


def shared(tmp_path_factory, name, make):
  """make(folder)'s result, made once per test session even when
  pytest-xdist runs the session in several processes: the first process to
  ask makes it in a folder they all see, under an exclusive lock; the
  others wait, then read its pickled result. A make that fails leaves no
  result, so the next process tries again (and fails the same way)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # the workers' basetemps are its popen-gwN folders
  folder = base / ('shared-' + name)
  with open(str(base / ('shared-%s.lock' % name)), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    made = folder / 'made.pickle'
    if made.exists():
      return pickle.loads(made.read_bytes())
    shutil.rmtree(str(folder), ignore_errors=True)
    folder.mkdir()
    result = make(folder)
    made.write_bytes(pickle.dumps(result))
    return result


@pytest.fixture(scope='session')
def workspace(tmp_path_factory):
  """A folder holding data/ (the synthetic dataset); runs go beside it."""
  def make(root):
    make_demo_data.make_dataset(str(root / 'data'), num_train=8,
                                num_validation=4, num_test=3,
                                min_seconds=0.5, max_seconds=2.0, seed=7)
    return root
  return shared(tmp_path_factory, 'workspace', make)


@pytest.fixture(scope='session')
def dataset(workspace):
  d = workspace / 'data'
  return {
      'root': str(d),
      'train_clip_dir': str(d / 'train_curated'),
      'train_csv': str(d / 'train.csv'),
      'validation_csv': str(d / 'validation.csv'),
      'test_clip_dir': str(d / 'test'),
  }


@pytest.fixture(scope='session')
def mobilenet_train(tmp_path_factory, workspace):
  """mobilenet-v1, 3 steps, run from the workspace with relative paths."""
  def make(_):
    result = check_ok(run_main(train_args(
        'mobilenet-v1', 'data/train_curated', 'data/train.csv', 'mn_train',
        3), cwd=str(workspace)))
    return {'result': result, 'train_dir': str(workspace / 'mn_train'),
            'checkpoint': str(workspace / 'mn_train' / 'model.ckpt-3')}
  return shared(tmp_path_factory, 'mobilenet_train', make)


@pytest.fixture(scope='session')
def mobilenet_eval(tmp_path_factory, workspace, mobilenet_train):
  """eval of the mobilenet run, with relative train_dir and eval_dir."""
  def make(_):
    result = check_ok(run_main(
        ['--mode', 'eval', '--model', 'mobilenet-v1',
         '--class_map_path', CLASS_MAP, '--eval_clip_dir',
         'data/train_curated', '--eval_csv_path', 'data/validation.csv',
         '--train_dir', 'mn_train', '--eval_dir', 'mn_eval', '--hparams',
         HPARAMS], cwd=str(workspace)))
    return {'result': result, 'eval_dir': str(workspace / 'mn_eval')}
  return shared(tmp_path_factory, 'mobilenet_eval', make)


@pytest.fixture(scope='session')
def inference_clips(tmp_path_factory, dataset):
  """The test clips plus a 50-sample clip."""
  def make(folder):
    folder = folder / 'clips'
    shutil.copytree(dataset['test_clip_dir'], str(folder))
    rng = np.random.default_rng(3)
    write_pcm_wav(folder / 'short.wav', rng.integers(-8000, 8000, 50))
    return str(folder)
  return shared(tmp_path_factory, 'inference_clips', make)


@pytest.fixture(scope='session')
def mobilenet_inference(tmp_path_factory, mobilenet_train, inference_clips):
  def make(folder):
    csv_path = str(folder / 'mn_submission.csv')
    result = check_ok(run_main(
        ['--mode', 'inference', '--model', 'mobilenet-v1',
         '--class_map_path', CLASS_MAP, '--inference_clip_dir',
         inference_clips, '--inference_checkpoint',
         mobilenet_train['checkpoint'], '--predictions_csv_path', csv_path,
         '--hparams', HPARAMS]))
    return {'result': result, 'csv': csv_path}
  return shared(tmp_path_factory, 'mobilenet_inference', make)


@pytest.fixture(scope='session')
def mobilenet_export(tmp_path_factory, mobilenet_train):
  def make(folder):
    export_dir = str(folder / 'mn')
    result = check_ok(run_main(export_args(mobilenet_train['checkpoint'],
                                           export_dir)))
    return {'dir': export_dir, 'result': result}
  return shared(tmp_path_factory, 'mobilenet_export', make)


@pytest.fixture(scope='session')
def crnn_train(tmp_path_factory, workspace, dataset):
  """crnn for 101 steps: checkpoints at 100 (CHECKPOINT_EVERY) and 101."""
  def make(_):
    train_dir = str(workspace / 'crnn_train')
    result = check_ok(run_main(train_args(
        'crnn', dataset['train_clip_dir'], dataset['train_csv'], train_dir,
        101, hparams=CRNN_HPARAMS)))
    return {'result': result, 'train_dir': train_dir,
            'hparams': CRNN_HPARAMS}
  return shared(tmp_path_factory, 'crnn_train', make)


@pytest.fixture(scope='session')
def tagger(tmp_path_factory):
  """A tiny CRNN trained to recognise the synthetic sounds (~20 s)."""
  def make(root):
    data = make_demo_data.make_dataset(str(root / 'data'), num_train=24,
                                       num_validation=0, num_test=0,
                                       min_seconds=1.0, max_seconds=2.0,
                                       seed=0)
    train_dir = str(root / 'train')
    check_ok(run_main(train_args('crnn', data['train_clip_dir'],
                                 data['train_csv'], train_dir, TAG_STEPS,
                                 hparams=TAG_HPARAMS)))
    data.update(_calibration_set(root / 'calibration', data))
    return {'root': root, 'data': data, 'train_dir': train_dir,
            'checkpoint': os.path.join(train_dir,
                                       'model.ckpt-%d' % TAG_STEPS)}
  return shared(tmp_path_factory, 'tagger', make)


QUIET_CALIBRATION_CLIPS = 4


def _calibration_set(folder, data):
  """The training clips and QUIET_CALIBRATION_CLIPS clips of
  export_checks.check_waveform (seeds the export's check does not use). The
  synthetic clips never fall below their noise floor (log-mel about -4),
  while the check clips, like recordings, reach digital silence (-6.9):
  calibrated on the synthetic ones alone, int8 clips those quiet passages
  and its largest error on the check clips lands on either side of the
  0.6 bound with the seed and the CPU the tagger trained on (0.53 to 0.72
  for seeds 1 to 3 on one machine); with the quiet clips, 0.06 to 0.22
  (docs/fast-cpu-scoring.md)."""
  os.makedirs(str(folder))
  rows = labeled_rows(data['train_csv'])
  for fname, _ in rows:
    os.link(os.path.join(data['train_clip_dir'], fname),
            os.path.join(str(folder), fname))
  for i in range(QUIET_CALIBRATION_CLIPS):
    fname = 'quiet%d.wav' % i
    write_check_clip(os.path.join(str(folder), fname), 3.0, seed=100 + i)
    rows.append((fname, ['Hiss']))
  csv_path = os.path.join(str(folder), 'calibration.csv')
  make_demo_data.write_csv(csv_path, rows)
  return {'calibration_csv': csv_path, 'calibration_clip_dir': str(folder)}


@pytest.fixture(scope='session')
def tagger_export(tmp_path_factory, tagger):
  """The tagger exported with an int8 model calibrated on its training
  clips."""
  def make(folder):
    export_dir = str(folder / 'export')
    result = check_ok(run_main(export_args(
        tagger['checkpoint'], export_dir,
        calibration_args(tagger['data']) + ['--quantize', 'int8'])))
    return {'dir': export_dir, 'result': result,
            'int8': os.path.join(export_dir, 'examples_int8.tflite'),
            'float32': os.path.join(export_dir, 'examples_float32.tflite')}
  return shared(tmp_path_factory, 'tagger_export', make)


# --- fixtures of several test files, made by tests/support/ -----------------

@pytest.fixture(scope='module')
def fake_checkpoint(tmp_path_factory):
  """Passes main.py's pre-flight check (a .index file exists)."""
  from support.main_args import write_fake_checkpoint
  return write_fake_checkpoint(tmp_path_factory.mktemp('fake'))


@pytest.fixture(scope='session')
def remembered(tmp_path_factory, dataset):
  """crnn trained 1 step with RUN_HPARAMS in a folder whose name has glob
  characters (TensorFlow reads checkpoint prefixes as patterns); read-only
  for the tests, made once for every test process."""
  from support.remembered_run import remembered_run
  return remembered_run(tmp_path_factory, dataset)


@pytest.fixture
def make_train_dir(tmp_path, mobilenet_train):
  """make_train_dir(steps): a train_dir holding model.ckpt-N for each step,
  all copies of the mobilenet run's last checkpoint."""
  from support.eval_runs import train_dir_maker
  return train_dir_maker(tmp_path, mobilenet_train['checkpoint'])


@pytest.fixture(scope='session')
def crnn_bce3(tmp_path_factory, dataset):
  """crnn, bce, 3 steps (read-only for the tests: copy to mutate; made
  once for every test process)."""
  from support.training_runs import crnn_bce3_run
  return crnn_bce3_run(tmp_path_factory, dataset)


@pytest.fixture(scope='session')
def two_sources(tmp_path_factory):
  """A curated source of 4 clips and a noisy one of 3, of other classes."""
  from support.options import write_two_sources
  return write_two_sources(tmp_path_factory.mktemp('two_sources'))


@pytest.fixture
def cli(monkeypatch):
  """run(args): main.run() in this process with the work of each mode
  replaced by a recorder; returns {function name: {parameter: value}} of
  what the mode was given. The flags are reset afterwards."""
  from support.options import main_with_recorders
  yield from main_with_recorders(monkeypatch)
