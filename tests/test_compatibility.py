"""A run and an export written by an earlier version of the project
(tests/fixtures/crnn-2026-12.tar.xz, made as its README says) still load,
and score two clips as that version scored them: the checkpoint through
--mode inference (its variable names and hparams.json), the SavedModel in
plain TensorFlow and model.tflite in LiteRT (their signatures), and the
examples-in TFLite model through --tflite_model (its metadata). Whatever moves inside the project, these
files must not."""

import os
import tarfile

import numpy as np
import pytest

from support.cli import check_ok, run_main
from support.scores import read_class_names, read_csv_rows
from support.settings import CLASS_MAP

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHIVE = os.path.join(HERE, 'fixtures', 'crnn-2026-12.tar.xz')
RATE = 44100


def write_clips(folder):
  """Two 16-bit clips from a formula (a chirp over noise, and bursts of a
  tone): the same samples on any machine."""
  import soundfile
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(2026)
  t = np.arange(int(3.0 * RATE)) / RATE
  chirp = 0.5 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
  bursts = 0.7 * np.sin(2 * np.pi * 440 * t) * (np.mod(t, 0.5) < 0.2)
  for name, signal in (('chirp.wav', chirp), ('bursts.wav', bursts)):
    signal = signal + 0.05 * rng.standard_normal(len(t))
    pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype(np.int16)
    soundfile.write(os.path.join(folder, name), pcm, RATE, subtype='PCM_16')
  return folder


@pytest.fixture(scope='module')
def old_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('old_run')
  with tarfile.open(ARCHIVE) as archive:
    archive.extractall(str(root), filter='data')
  run = root / 'crnn-2026-12'
  return {'checkpoint': str(run / 'train' / 'model.ckpt-30'),
          'export': str(run / 'export'),
          'expected': _scores(str(run / 'expected.csv')),
          'clips': write_clips(str(root / 'clips'))}


def _scores(csv_path):
  rows = read_csv_rows(csv_path)
  assert rows[0][0] == 'fname' and len(rows[0]) == 81
  return {r[0]: np.array([float(v) for v in r[1:]]) for r in rows[1:]}


def _inference(old_run, tmp_path, extra):
  csv_path = str(tmp_path / 'submission.csv')
  check_ok(run_main(['--mode', 'inference', '--class_map_path', CLASS_MAP,
                     '--inference_clip_dir', old_run['clips'],
                     '--predictions_csv_path', csv_path] + extra))
  return _scores(csv_path)


def _assert_as_before(scores, expected, atol):
  assert sorted(scores) == sorted(expected) == ['bursts.wav', 'chirp.wav']
  for name, values in expected.items():
    np.testing.assert_allclose(scores[name], values, rtol=0, atol=atol,
                               err_msg=name)
  # The two clips score apart, so agreement is not a model's constant.
  assert np.abs(expected['chirp.wav'] - expected['bursts.wav']).max() > 1e-3


def test_an_old_checkpoint_scores_as_it_did(old_run, tmp_path):
  scores = _inference(old_run, tmp_path,
                      ['--inference_checkpoint', old_run['checkpoint']])
  _assert_as_before(scores, old_run['expected'], 1e-6)


def test_an_old_examples_model_scores_as_it_did(old_run, tmp_path):
  scores = _inference(old_run, tmp_path, [
      '--engine', 'tflite', '--tflite_model',
      os.path.join(old_run['export'], 'examples_float32.tflite')])
  _assert_as_before(scores, old_run['expected'], 1e-5)


def test_an_old_waveform_tflite_model_scores_as_it_did(old_run):
  """model.tflite (waveform in) through LiteRT's own interpreter."""
  import soundfile
  from ai_edge_litert.interpreter import Interpreter
  serve = Interpreter(model_path=os.path.join(
      old_run['export'], 'model.tflite')).get_signature_runner()
  scores = {}
  for name in old_run['expected']:
    samples, _ = soundfile.read(os.path.join(old_run['clips'], name),
                                dtype='float32')
    scores[name] = serve(waveform=samples)['clip_scores']
  _assert_as_before(scores, old_run['expected'], 1e-5)


def test_an_old_saved_model_scores_as_it_did(old_run):
  import soundfile
  import tensorflow as tf
  model = tf.saved_model.load(os.path.join(old_run['export'], 'saved_model'))
  names = [n.decode() for n in
           model.signatures['class_names']()['class_names'].numpy()]
  assert names == read_class_names()
  serve = model.signatures['serving_default']
  scores = {}
  for name in old_run['expected']:
    samples, rate = soundfile.read(os.path.join(old_run['clips'], name),
                                   dtype='float32')
    assert rate == RATE
    scores[name] = serve(waveform=tf.constant(samples))['clip_scores'].numpy()
  _assert_as_before(scores, old_run['expected'], 1e-5)
