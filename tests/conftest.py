"""Shared fixtures: a tiny synthetic dataset, helpers to run main.py, and
session-scoped training runs reused by the CLI, error and training tests.

TensorFlow is imported lazily (inside helpers and fixtures) so that test
files that only exercise main.py's pre-flight checks stay fast.
"""

import fcntl
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The tests' models are tiny: oneDNN's graph rewrites and kernel set-up cost
# more than they save at this size (test_train.py side by side: 83 s
# without, 92 s with). Each number a test compares is held to an
# independent computation with a tolerance either kernel library meets;
# TF_ENABLE_ONEDNN_OPTS=1 runs the suite with oneDNN.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from support import forks  # noqa: E402
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


MAIN = os.path.join(REPO, 'main.py')
# PreciseBN over 2 batches, not the default 20, in the tests' training runs:
# the same computation, and a third less time for a short run (the 20
# batches' examples are made and passed at every save).
FEW_BN_BATCHES = 'bn_stats_batches=2'
CLASS_MAP = os.path.join(REPO, 'class_map.csv')
# Tiny batches, and a batch norm decay fast enough that after a few steps the
# moving statistics are those of the batches (with the default 0.9997, or even
# 0.5, the inference-mode scores of a 3-step MobileNet are the same for every
# clip to 1e-7, and comparisons against them would prove little).
HPARAMS = 'batch_size=4,lr=0.001,bndecay=0.01,' + FEW_BN_BATCHES
CRNN_HPARAMS = 'batch_size=4,lr=0.001,crnn_bndecay=0.9,' + FEW_BN_BATCHES
SAMPLE_RATE = 44100


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


def _default_sigint():
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
                          preexec_fn=_default_sigint)


def check_ok(result):
  assert result.returncode == 0, 'rc=%s\nstdout:\n%s\nstderr:\n%s' % (
      result.returncode, result.stdout[-3000:], result.stderr[-3000:])
  return result


def write_pcm_wav(path, samples, rate=SAMPLE_RATE):
  """A mono 16-bit PCM WAV of int16 samples."""
  from tagger.sound import audio
  audio.write_pcm16(str(path), np.asarray(samples, np.int16), rate)


def write_audio(path, samples, rate=SAMPLE_RATE, **kwargs):
  """An audio file written by libsndfile (soundfile): float samples
  ([frames] or [frames, channels]) in the format its extension names
  (kwargs: soundfile.write's format and subtype, e.g. a lossless
  subtype='PCM_16' FLAC)."""
  import soundfile
  soundfile.write(str(path), np.asarray(samples, np.float32), rate, **kwargs)
  return str(path)


def cut_in_half(path, dest):
  """dest: the first half of path's bytes, as a copy cut short."""
  data = open(str(path), 'rb').read()
  with open(str(dest), 'wb') as f:
    f.write(data[:len(data) // 2])
  return str(dest)


def write_check_clip(path, seconds, seed):
  """A WAV file of export_checks.check_waveform (recorded-sound dynamics)."""
  from tagger.modes import export_checks
  write_pcm_wav(path, np.round(32768 * export_checks.check_waveform(seconds,
                                                             seed=seed)))


def read_class_names():
  from tagger.core import files
  return files.read_class_map(CLASS_MAP)


def read_csv_rows(path):
  import csv
  with open(path, newline='') as f:
    return list(csv.reader(f))


def labeled_rows(csv_path):
  """[(fname, [labels])] of a fname,labels CSV, read with the csv module."""
  rows = read_csv_rows(csv_path)
  assert rows[0] == ['fname', 'labels']
  return [(r[0], r[1].split(',')) for r in rows[1:] if r]


def load_model_from_checkpoint(model_name, hparams, checkpoint_prefix):
  """A plain Keras model of stock layers (tests/support/plain_models.py,
  its layer tables written out there) with every variable read from the
  checkpoint by its variable path (not through model.py or
  scoring.Scorer)."""
  from support import plain_models
  net = plain_models.plain_model(model_name, len(read_class_names()), hparams)
  return plain_models.load_checkpoint(net, checkpoint_prefix)


def scorer_scores(model_name, hparams, checkpoint, paths, engine=None):
  """[clips, classes] clip scores as eval, inference and relabel make them
  (scoring.Scorer, the Keras engine unless another is given)."""
  from tagger.core import files
  from tagger.engines import scoring
  scorer = scoring.Scorer(model_name, 80, hparams, engine=engine)
  scorer.load(checkpoint)
  return scorer.score(paths, files.check_clips(paths))


def independent_clip_scores(model_name, hparams, checkpoint_prefix, clip_dir,
                            fnames):
  """[clips, classes] mean sigmoid score over each clip's examples, from the
  plain model in inference mode on NumPy log-mel examples
  (tests/support/reference.py)."""
  import tensorflow as tf
  from support import reference
  net = load_model_from_checkpoint(model_name, hparams, checkpoint_prefix)
  examples = [reference.np_clip_examples(os.path.join(clip_dir, fname),
                                         hparams).astype(np.float32)
              for fname in fnames]
  everything = np.concatenate(examples)
  example_scores = np.concatenate([
      tf.sigmoid(net(everything[i:i + 32], training=False)).numpy()
      for i in range(0, len(everything), 32)]).astype(np.float64)
  ends = np.cumsum([len(e) for e in examples])
  scores = np.array([example_scores[end - len(e):end].mean(axis=0)
                     for e, end in zip(examples, ends)])
  # The model must tell clips apart, or comparisons against it prove little.
  assert np.ptp(scores, axis=0).max() > 1e-4, 'scores equal for all clips'
  return scores


def independent_lwlrap(truth, scores):
  from sklearn.metrics import label_ranking_average_precision_score
  truth = np.asarray(truth)
  return label_ranking_average_precision_score(
      truth, scores, sample_weight=truth.sum(axis=1))


def truth_matrix(rows, class_names):
  truth = np.zeros((len(rows), len(class_names)))
  for r, (_, labels) in enumerate(rows):
    for label in labels:
      truth[r, class_names.index(label)] = 1
  return truth


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


def train_args(model, train_clip_dir, train_csv, train_dir, max_steps,
               hparams=HPARAMS, extra=()):
  return ['--mode', 'train', '--model', model, '--class_map_path', CLASS_MAP,
          '--train_clip_dir', train_clip_dir, '--train_csv_path', train_csv,
          '--train_dir', train_dir, '--hparams', hparams,
          '--max_steps', str(max_steps)] + list(extra)


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


def export_args(checkpoint, export_dir, extra=()):
  return ['--mode', 'export', '--class_map_path', CLASS_MAP,
          '--inference_checkpoint', checkpoint, '--export_dir',
          export_dir] + list(extra)


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


# A tiny CRNN that recognises the synthetic sounds. Its mel bands stop at
# 8 kHz (mel_max_hz), inside the flat passband of every version of the test
# clip: a 22.05 kHz file holds nothing above 11.025 kHz, and
# resample_poly's filter is within 0.1 dB only up to 85% of the lower
# Nyquist frequency (9.4 kHz for 22.05 kHz), so with the default 20 kHz the
# comparison would measure what a 22.05 kHz file cannot hold, not the reader
# (test_tagging.py's test clip).
TAG_HPARAMS = ('batch_size=8,lr=0.03,crnn_filters=4,crnn_dropout=0,'
               'mel_max_hz=8000,bn_stats_batches=2,seed=1')
TAG_STEPS = 200


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


def calibration_args(data):
  return ['--calibration_csv_path', data['calibration_csv'],
          '--calibration_clip_dir', data['calibration_clip_dir']]


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
