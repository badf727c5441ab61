"""The exported model (export.py's Tagger): the SavedModel reproduces
--mode inference in a process that imports only TensorFlow, the TFLite
model matches it with built-in ops only, embeddings are the model's
pooled features, the chunked outputs equal the whole clip's, and a
non-finite sample gives NaN outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


from support.cli import subprocess_env
from support.scores import (labeled_rows, read_class_names, read_csv_rows,
                            scorer_scores)
from support.settings import HPARAMS, TAG_HPARAMS
from support.wav_files import read_pcm


# Runs in a fresh interpreter with nothing of this project on its path.
PLAIN_TENSORFLOW = r'''
import json, sys, wave
import numpy as np
import tensorflow as tf
export_dir, clips = sys.argv[1], sys.argv[2:]
model = tf.saved_model.load(export_dir + '/saved_model')
names = [n.decode() for n in
         model.signatures['class_names']()['class_names'].numpy()]
serve = model.signatures['serving_default']
out = {'class_names': names, 'clips': {}}
for path in clips:
  with wave.open(path) as w:
    pcm = np.frombuffer(w.readframes(w.getnframes()), '<i2')
  result = serve(waveform=tf.constant(pcm.astype(np.float32) / 32768.0))
  out['clips'][path] = {k: v.numpy().tolist() for k, v in result.items()}
out['modules'] = sorted(m for m in sys.modules if m.split('.')[0] in (
    'tagger', 'model', 'inputs', 'train', 'evaluation', 'inference'))
print(json.dumps(out))
'''


def test_plain_tensorflow_reproduces_inference(mobilenet_export,
                                               mobilenet_inference,
                                               inference_clips):
  fnames = sorted(n for n in os.listdir(inference_clips)
                  if n.endswith('.wav'))
  paths = [os.path.join(inference_clips, n) for n in fnames]
  result = subprocess.run(
      [sys.executable, '-c', PLAIN_TENSORFLOW, mobilenet_export['dir']] +
      paths, capture_output=True, text=True, timeout=600,
      env=subprocess_env(), cwd='/')
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.splitlines()[-1])
  assert out['modules'] == []  # nothing of this project was imported
  assert out['class_names'] == read_class_names()
  rows = read_csv_rows(mobilenet_inference['csv'])
  submitted = {r[0]: np.array([float(v) for v in r[1:]]) for r in rows[1:]}
  for name, path in zip(fnames, paths):
    clip = out['clips'][path]
    np.testing.assert_allclose(clip['clip_scores'], submitted[name],
                               atol=1e-5, rtol=0, err_msg=name)
    scores = np.array(clip['scores'])
    np.testing.assert_allclose(scores.mean(axis=0), clip['clip_scores'],
                               atol=1e-6)
    assert np.array(clip['embeddings']).shape == (scores.shape[0], 1024)
    assert np.array(clip['log_mel']).shape[1] == 96
  # The clips differ, so the comparison is not trivially satisfied.
  assert np.ptp(np.array([out['clips'][p]['clip_scores'] for p in paths]),
                axis=0).max() > 1e-4


def test_tflite_matches_saved_model_with_builtin_ops(mobilenet_export,
                                                     inference_clips):
  import tensorflow as tf
  from tagger.modes import export_checks
  path = os.path.join(mobilenet_export['dir'], 'model.tflite')
  ops = export_checks.tflite_ops(path)  # of every subgraph
  assert {'WHILE', 'CONV_2D', 'RFFT2D'} <= set(ops)  # the loop's body too
  assert not [op for op in ops if op.startswith('Flex') or op == 'CUSTOM']
  assert 'VAR_HANDLE' not in ops  # weights are constants
  runner = export_checks.tflite_runner(path)
  serve = tf.saved_model.load(os.path.join(
      mobilenet_export['dir'], 'saved_model')).signatures['serving_default']
  for name in sorted(os.listdir(inference_clips)):
    waveform = read_pcm(os.path.join(inference_clips, name))
    want = serve(waveform=tf.constant(waveform))
    got = runner(waveform=waveform)
    for key in ('scores', 'clip_scores', 'embeddings'):
      np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-4,
                                 rtol=1e-4, err_msg=(name, key))
    np.testing.assert_allclose(got['log_mel'], want['log_mel'].numpy(),
                               atol=1e-4)


def test_embeddings_are_the_pooled_features_and_batch_signature(
    mobilenet_export, mobilenet_train, inference_clips, parse_hparams):
  """Against a plain Keras model: its global-pool output on NumPy features
  (precise batch-norm statistics, as scoring)."""
  import keras
  import tensorflow as tf
  from support import plain_models
  from support import reference
  hparams = parse_hparams(HPARAMS)
  plain = plain_models.load_checkpoint(
      plain_models.plain_model('mobilenet-v1', 80, hparams),
      mobilenet_train['checkpoint'])
  pooled = keras.Model(plain.input, plain.layers[-2].output)
  model = tf.saved_model.load(os.path.join(mobilenet_export['dir'],
                                           'saved_model'))
  name = sorted(os.listdir(inference_clips))[0]
  waveform = read_pcm(os.path.join(inference_clips, name))
  got = model.signatures['serving_default'](waveform=tf.constant(waveform))
  examples = reference.np_examples(waveform, hparams).astype(np.float32)
  np.testing.assert_allclose(got['embeddings'].numpy(),
                             pooled(examples).numpy(), atol=1e-4, rtol=1e-3)
  # Two equal-length waveforms at once give each one's own outputs.
  other = waveform[::-1].copy()
  batch = model.signatures['batch'](waveforms=tf.constant(
      np.stack([waveform, other])))
  single = model.signatures['serving_default'](waveform=tf.constant(other))
  assert batch['scores'].shape[0] == 2
  for key in ('scores', 'clip_scores', 'embeddings', 'log_mel'):
    np.testing.assert_allclose(batch[key].numpy()[0], got[key].numpy(),
                               atol=1e-5, err_msg=key)
    np.testing.assert_allclose(batch[key].numpy()[1], single[key].numpy(),
                               atol=1e-5, err_msg=key)


def test_crnn_export(tagger, tagger_export, parse_hparams):
  """The tagger's CRNN (its export shared with test_tflite_engine.py): the
  SavedModel's embeddings are the GRU's output, its clip scores those of
  --mode inference's scorer on one of its training clips."""
  import tensorflow as tf
  model = tf.saved_model.load(os.path.join(tagger_export['dir'],
                                           'saved_model'))
  clip = os.path.join(tagger['data']['train_clip_dir'],
                      labeled_rows(tagger['data']['train_csv'])[0][0])
  out = model.signatures['serving_default'](waveform=tf.constant(
      read_pcm(clip)))
  assert out['embeddings'].shape[1] == 32  # the GRU's output
  np.testing.assert_allclose(
      out['clip_scores'].numpy(),
      scorer_scores('crnn', parse_hparams(TAG_HPARAMS), tagger['checkpoint'],
                    [clip])[0], atol=1e-5)


# --- chunks, non-finite samples ---------------------------------------------

def _tflite(export_dir):
  from tagger.modes import export_checks
  return export_checks.tflite_runner(os.path.join(export_dir, 'model.tflite'))


@pytest.mark.parametrize('bad', [np.nan, -np.inf], ids=['nan', 'inf'])
def test_non_finite_sample_gives_nan_outputs(mobilenet_export, bad):
  """One rule for both signatures and the TFLite model: a waveform with a
  non-finite sample gets NaN for every output, whichever chunk holds it
  (the model alone turns NaN features into plausible scores); in a batch,
  only that clip."""
  import tensorflow as tf
  good = np.random.default_rng(5).uniform(-0.3, 0.3, 10 * 44100).astype(
      np.float32)  # two chunks
  waveform = good.copy()
  waveform[-1000] = bad  # in the second chunk only
  model = tf.saved_model.load(os.path.join(mobilenet_export['dir'],
                                           'saved_model'))
  serve = model.signatures['serving_default']
  batch = model.signatures['batch'](waveforms=tf.constant(
      np.stack([good, waveform])))
  outputs = {
      'serving_default': serve(waveform=tf.constant(waveform)),
      'batch': {key: value[1] for key, value in batch.items()},
      'TFLite': _tflite(mobilenet_export['dir'])(waveform=waveform)}
  for kind, out in outputs.items():
    assert sorted(out) == ['clip_scores', 'embeddings', 'log_mel', 'scores']
    for key, value in out.items():
      value = np.asarray(value)
      assert value.size and np.isnan(value).all(), (kind, key)
  for key, value in serve(waveform=tf.constant(good)).items():
    assert np.isfinite(value.numpy()).all(), key
    np.testing.assert_allclose(batch[key].numpy()[0], value.numpy(),
                               atol=1e-5, err_msg=key)


def test_chunked_outputs_equal_the_whole_clip_computation(
    mobilenet_export, mobilenet_train, parse_hparams, tmp_path):
  """The export runs chunk by chunk; on a 30 s waveform (4 chunks) and on
  one shorter than an STFT window its outputs are those of the whole clip
  as one batch (features.waveform_to_examples of all of it through the
  scoring model), its clip_scores those of --mode inference's engine, and
  the TFLite model and the batch signature agree."""
  import keras
  import tensorflow as tf
  from tagger.modes import export_checks
  from tagger.sound import features
  from support import reference
  from tagger.engines import scoring
  from support.signals import write_pcm_wav
  hparams = parse_hparams(HPARAMS)
  scorer = scoring.Scorer('mobilenet-v1', 80, hparams)
  scorer.load(mobilenet_train['checkpoint'])
  net = scorer.inference_model
  whole = keras.Model(net.input, [net.get_layer('logits').input, net.output])
  model = tf.saved_model.load(os.path.join(mobilenet_export['dir'],
                                           'saved_model'))
  serve = model.signatures['serving_default']
  tflite = _tflite(mobilenet_export['dir'])
  long = export_checks.check_waveform(30.0, seed=11)
  short = long[44100:44100 + 500]
  for waveform in (long, short):
    got = {k: v.numpy() for k, v in serve(
        waveform=tf.constant(waveform)).items()}
    assert len(got['scores']) == reference.np_num_examples(len(waveform),
                                                           hparams)
    if waveform is long:  # its examples differ, or agreement proves little
      assert np.ptp(got['scores'], axis=0).max() > 1e-4
    log_mel = features.waveform_to_features(tf.constant(waveform), hparams)
    embeddings, logits = whole(features.log_mel_to_examples(log_mel,
                                                            hparams))
    want = {'log_mel': log_mel, 'embeddings': embeddings,
            'scores': tf.sigmoid(logits)}
    for key, value in want.items():
      # float32 through 27 layers, in batches of other sizes (other kernel
      # blockings): 1.3e-5 has been seen on a score of 0.41.
      np.testing.assert_allclose(got[key], value.numpy(), atol=3e-5,
                                 rtol=1e-5, err_msg=key)
    path = str(tmp_path / ('%d.wav' % len(waveform)))
    write_pcm_wav(path, np.round(waveform * 32768))
    np.testing.assert_allclose(
        got['clip_scores'], scorer.score([path], [len(waveform)])[0],
        atol=export_checks.SAVED_MODEL_TOLERANCE, rtol=0)
    lite = tflite(waveform=waveform)
    np.testing.assert_allclose(lite['clip_scores'], got['clip_scores'],
                               atol=export_checks.TFLITE_TOLERANCE, rtol=0)
    np.testing.assert_allclose(lite['log_mel'], got['log_mel'], atol=1e-3)
  batch = model.signatures['batch'](waveforms=tf.constant(
      np.stack([long, long[::-1]])))
  for i, waveform in enumerate((long, long[::-1])):
    for key, value in serve(waveform=tf.constant(waveform)).items():
      np.testing.assert_allclose(batch[key].numpy()[i], value.numpy(),
                                 atol=1e-5, err_msg=key)
