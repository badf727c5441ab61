"""--mode export: the SavedModel reproduces --mode inference in a process that
imports only TensorFlow, the TFLite model matches it with built-in ops only,
embeddings are the model's pooled features, and a failed self-check leaves
nothing behind."""

import errno
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tagger.models import waveform_model  # noqa: F401  (what export wraps)

from conftest import (CLASS_MAP, FEW_BN_BATCHES, HPARAMS, TAG_HPARAMS,
                      check_ok, export_args,
                      labeled_rows, read_class_names, read_csv_rows,
                      run_main, scorer_scores, shared, subprocess_env,
                      train_args, truth_matrix)
from support.scores import lwlrap_bounds, overall_lwlrap, within
from support.cli import Run, assert_one_error

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


def read_pcm(path):
  import wave
  with wave.open(path) as w:
    return np.frombuffer(w.readframes(w.getnframes()), '<i2').astype(
        np.float32) / 32768.0


def test_export_files_and_report(mobilenet_export):
  assert sorted(os.listdir(mobilenet_export['dir'])) == [
      'class_map.csv', 'examples_float32.tflite', 'model.tflite',
      'saved_model']
  out = mobilenet_export['result'].stdout
  assert re.search(r'SavedModel: scores of a [0-9.]+ s clip within', out)
  assert re.search(r'TFLite: [0-9]+ examples/s', out)
  with open(os.path.join(mobilenet_export['dir'], 'class_map.csv')) as f, \
      open(CLASS_MAP) as g:
    assert f.read() == g.read()


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


def test_failed_self_check_leaves_nothing(tmp_path, mobilenet_train,
                                          monkeypatch, parse_hparams):
  from tagger.modes import export
  from tagger.modes import export_checks
  from tagger.core import files
  monkeypatch.setattr(export_checks, 'TFLITE_TOLERANCE', -1.0)
  export_dir = str(tmp_path / 'out')
  with pytest.raises(files.UserError, match='TFLite scores a clip'):
    export.export('mobilenet-v1', parse_hparams(HPARAMS), read_class_names(),
                  CLASS_MAP, mobilenet_train['checkpoint'], export_dir)
  assert os.listdir(str(tmp_path)) == []


def test_export_dir_must_be_new_or_empty(tmp_path, mobilenet_train):
  taken = tmp_path / 'taken'
  taken.mkdir()
  (taken / 'something').write_text('x')
  assert_one_error(run_main(export_args(mobilenet_train['checkpoint'],
                                        str(taken))),
                   '--export_dir', str(taken), 'not an empty folder')


class _FullDisk:
  """A file opened for writing on a disk that fills up: it takes half of
  what is written, then fails as write(2) does, with an error that names
  no file."""

  def __init__(self, path):
    self.file = open(path, 'wb')

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.file.close()

  def write(self, data):
    self.file.write(data[:len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _saved_model_on_a_full_disk(save):
  """tf.saved_model.save (`save`) writing the export's SavedModel on a disk
  that fills up: a part written, then TensorFlow's error, naming the file
  as it names it. Other SavedModels (the converter's) are saved."""
  import tensorflow as tf

  def full(obj, path, signatures=None):
    if os.path.basename(path) != 'saved_model':
      return save(obj, path, signatures=signatures)
    os.makedirs(path)
    with open(os.path.join(path, 'saved_model.pb.tmp0e92f6b2'), 'wb') as f:
      f.write(b'\0' * 1000)
    raise tf.errors.ResourceExhaustedError(
        None, None, '%s/saved_model.pb.tmp0e92f6b2; No space left on device'
        % path)
  return full


@pytest.mark.parametrize('part', ['examples_float32.tflite', 'saved_model'])
def test_a_full_disk_names_the_export_dir(tagger, tagger_export, monkeypatch,
                                          parse_hparams, tmp_path, part):
  """The disk fills while a file of the export is written (the first one;
  the SavedModel, through TensorFlow): one line naming --export_dir and the
  part that could not be written, not the temporary folders the export is
  written through, and nothing left of them or of export_dir. (The model
  part is the fixture's export of the same checkpoint, not converted
  again.)"""
  import tempfile
  from tagger.modes import export
  from tagger.core import files
  from tagger.engines import tflite_engine
  with open(tagger_export['float32'], 'rb') as f:
    model_part = f.read()
  monkeypatch.setattr(tflite_engine, 'convert', lambda *args: model_part)
  temporary = tmp_path / 'tmp'  # where the export's temporary links go
  temporary.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temporary))
  if part == 'saved_model':
    full = _saved_model_on_a_full_disk(export.tf.saved_model.save)
    monkeypatch.setattr(export.tf.saved_model, 'save', full)
  else:
    monkeypatch.setattr(export, 'open', lambda path, mode='r': (
        _FullDisk(path) if 'w' in mode else open(path, mode)), raising=False)
  export_dir = str(tmp_path / 'out')
  with pytest.raises(files.UserError) as raised:
    export.export('crnn', parse_hparams(TAG_HPARAMS), read_class_names(),
                  CLASS_MAP, tagger['checkpoint'], export_dir)
  assert str(raised.value) == (
      '--export_dir: cannot write %s (No space left on device); nothing '
      'written' % os.path.join(export_dir, part))
  assert sorted(os.listdir(str(tmp_path))) == ['tmp']
  # What TensorFlow's autograph leaves there is not the export's.
  assert [name for name in os.listdir(str(temporary))
          if not name.startswith('__autograph_generated_file')] == []


@pytest.mark.parametrize('umask', [0o022, 0o027], ids=['022', '027'])
def test_export_dir_mode_follows_the_umask(tagger, monkeypatch,
                                           parse_hparams, tmp_path, umask):
  """A new export_dir gets 0o777 less the umask, as mkdir gives a folder
  (the export is built in a private temporary folder first); an existing
  empty one keeps its own mode. The build is a stand-in writing one file:
  what is under test is the folder it lands in."""
  from tagger.modes import export

  def build(scorer, class_names, class_map_path, folder, entries):
    with open(os.path.join(folder, 'built'), 'w') as f:
      f.write('x')
    return []

  monkeypatch.setattr(export, '_build', build)
  existing = tmp_path / 'existing'
  existing.mkdir()
  existing.chmod(0o751)
  hparams = parse_hparams(TAG_HPARAMS)
  previous = os.umask(umask)
  try:
    for export_dir, mode in ((tmp_path / 'new', 0o777 & ~umask),
                             (existing, 0o751)):
      export.export('crnn', hparams, read_class_names(), CLASS_MAP,
                    tagger['checkpoint'], str(export_dir))
      assert oct(os.stat(str(export_dir)).st_mode & 0o7777) == oct(mode)
      assert os.listdir(str(export_dir)) == ['built']
  finally:
    os.umask(previous)
  assert sorted(os.listdir(str(tmp_path))) == ['existing', 'new']




# --- chunks, non-finite samples, memory -------------------------------------

def _load_saved_model(export_dir, tmp_path):
  """The export's SavedModel, loaded through a link: TensorFlow reads a
  SavedModel path holding glob characters as a pattern."""
  import tensorflow as tf
  link = str(tmp_path / 'saved_model_link')
  os.symlink(os.path.join(export_dir, 'saved_model'), link)
  return tf.saved_model.load(link)


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
  from conftest import write_pcm_wav
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


MEMORY = r'''
import sys
import numpy as np
import tensorflow as tf


def status(key):
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(key + ':'):
        return int(line.split()[1]) * 1024


def extra_peak(serve, seconds):
  """Bytes by which serving `seconds` of audio raises the resident size
  above what it was just before the call (the waveform already made)."""
  waveform = tf.constant(np.random.default_rng(seconds).uniform(
      -0.3, 0.3, seconds * 44100).astype(np.float32))
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # the peak (VmHWM) starts again from the resident size
  before = status('VmRSS')
  serve(waveform=waveform)
  return status('VmHWM') - before


# As run_main runs a script: sys.argv is ['-c', 'main.py', the model].
serve = tf.saved_model.load(sys.argv[2]).signatures['serving_default']
extra_peak(serve, 10)  # the first call sets up TensorFlow's pools
print(extra_peak(serve, 10), extra_peak(serve, 600))
'''


def test_memory_of_a_long_waveform_stays_bounded(pcen_run, tmp_path):
  """Serving a 10-minute waveform (1200 examples) peaks less than 250 MB
  above serving a 10 s one. Measured on the 2-core test machine with this
  tiny CRNN: +73 MB chunk by chunk (the outputs, 23 MB of log_mel, and
  their copies while they grow), +1.5 GB when the whole waveform was one
  batch (its STFT alone is ~0.7 GB); MobileNet chunked, +95 MB. The
  waveform (106 MB) exists before the call and is not counted."""
  link = str(tmp_path / 'saved_model')
  os.symlink(os.path.join(pcen_run['export_dir'], 'saved_model'), link)
  result = run_main([link], cwd='/', timeout=600, script=MEMORY)
  assert result.returncode == 0, result.stderr[-3000:]
  short, long = (int(v) for v in result.stdout.split())
  assert long - short < 250 * 2**20, (short / 2**20, long / 2**20)


# --- the PCEN front end, destinations, stop requests ------------------------

PCEN_HPARAMS = ('batch_size=4,lr=0.01,crnn_filters=4,crnn_bndecay=0.9,'
                'frontend=pcen,' + FEW_BN_BATCHES)


@pytest.fixture(scope='session')
def pcen_run(tmp_path_factory, dataset):
  """A tiny CRNN with the PCEN front end, trained 4 steps and exported into
  a folder whose path holds every glob character (read-only for the
  tests: made once for every test process)."""
  def make(root):
    train_dir = str(root / 'train')
    check_ok(run_main(train_args('crnn', dataset['train_clip_dir'],
                                 dataset['train_csv'], train_dir, 4,
                                 hparams=PCEN_HPARAMS)))
    checkpoint = os.path.join(train_dir, 'model.ckpt-4')
    export_dir = str(root / 'run [1]*?' / 'export')
    result = check_ok(run_main(export_args(checkpoint, export_dir)))
    return {'train_dir': train_dir, 'checkpoint': checkpoint,
            'export_dir': export_dir, 'export': result}
  return shared(tmp_path_factory, 'pcen_run', make)


def test_export_dir_with_glob_characters(pcen_run, tmp_path):
  """TensorFlow reads a SavedModel's variables path as a glob pattern; the
  export still writes and checks itself in `run [1]*?/export`, and leaves
  nothing else there."""
  export_dir = pcen_run['export_dir']
  assert sorted(os.listdir(export_dir)) == [
      'class_map.csv', 'examples_float32.tflite', 'model.tflite',
      'saved_model']
  assert os.listdir(os.path.dirname(export_dir)) == ['export']
  assert 'TFLite: scores of a 7.3 s clip within' in pcen_run['export'].stdout
  model = _load_saved_model(export_dir, tmp_path)
  assert [n.decode() for n in model.signatures['class_names']()[
      'class_names'].numpy()] == read_class_names()


def test_pcen_train_eval_export_tag(pcen_run, dataset, parse_hparams,
                                    tmp_path, capsys):
  """frontend=pcen through every mode (inference and tag in this process,
  through the functions main.py calls): eval's lwlrap is that of the
  inference scores (sklearn), and tag's scores (its timeline) equal the
  export's SavedModel scores and inference's clip scores."""
  import tensorflow as tf
  from tagger.core import files
  import inference
  from tagger.modes import tagging
  eval_dir = str(tmp_path / 'eval')
  check_ok(run_main(['--mode', 'eval', '--class_map_path', CLASS_MAP,
                     '--eval_clip_dir', dataset['train_clip_dir'],
                     '--eval_csv_path', dataset['validation_csv'],
                     '--train_dir', pcen_run['train_dir'],
                     '--eval_dir', eval_dir]))
  hparams = parse_hparams(PCEN_HPARAMS)
  class_names = read_class_names()
  rows = labeled_rows(dataset['validation_csv'])
  fnames = [fname for fname, _ in rows]
  csv_path = str(tmp_path / 'submission.csv')
  inference.infer('crnn', hparams, class_names, dataset['train_clip_dir'],
                  fnames, files.check_clips([
                      os.path.join(dataset['train_clip_dir'], f)
                      for f in fnames]),
                  pcen_run['checkpoint'], csv_path)
  submitted = {r[0]: np.array([float(v) for v in r[1:]])
               for r in read_csv_rows(csv_path)[1:]}
  scores = np.array([submitted[fname] for fname in fnames])
  assert np.ptp(scores, axis=0).max() > 1e-4  # the clips are told apart
  with open(os.path.join(eval_dir, 'eval-4.txt')) as f:
    lwlrap = overall_lwlrap(f.read())
  assert within(lwlrap, lwlrap_bounds(truth_matrix(rows, class_names),
                                        scores))

  clip = os.path.join(dataset['train_clip_dir'], fnames[0])
  timeline = str(tmp_path / 'timeline.csv')
  capsys.readouterr()
  assert tagging.tag('crnn', hparams, class_names, [clip],
                     pcen_run['checkpoint'], 3, timeline) == 0
  assert capsys.readouterr().out.startswith(clip + ': ')
  example_scores = np.array([[float(v) for v in r[2:]]
                             for r in read_csv_rows(timeline)[1:]])
  out = _load_saved_model(pcen_run['export_dir'], tmp_path).signatures[
      'serving_default'](waveform=tf.constant(read_pcm(clip)))
  np.testing.assert_allclose(example_scores, out['scores'].numpy(),
                             atol=1e-5, rtol=0)
  np.testing.assert_allclose(example_scores.mean(axis=0),
                             out['clip_scores'].numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(example_scores.mean(axis=0), submitted[fnames[0]],
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize('where', ['under_a_file', 'proc'])
def test_export_dir_that_cannot_be_created(tmp_path, mobilenet_train, where):
  """Found before TensorFlow is imported: one line naming --export_dir and
  the path, nothing created. Root passes every permission check, so these
  fail for anyone: a parent below a regular file, and /proc."""
  blocker = tmp_path / 'somefile'
  blocker.write_text('x')
  path = (str(blocker / 'sub' / 'export') if where == 'under_a_file'
          else '/proc/export-test/sub/export')
  result = run_main(export_args(mobilenet_train['checkpoint'], path))
  assert_one_error(result, '--export_dir', path)
  assert result.stdout == ''  # before the checkpoint's record was read
  assert os.listdir(str(tmp_path)) == ['somefile']
  assert blocker.read_text() == 'x'
  assert not os.path.exists('/proc/export-test')


@pytest.mark.parametrize('sig', [signal.SIGTERM], ids=['SIGTERM'])
def test_stop_request_during_export_leaves_nothing(tmp_path, pcen_run, sig):
  """A stop request late in the build (its self-check has scored the check
  clip with the CLI's engine, and then checks both files and times them):
  exit 128 + the signal, one `stopped` line, no .export-* folder, no
  export_dir."""
  run = Run(export_args(pcen_run['checkpoint'], str(tmp_path / 'out')))
  run.wait_for(r'export check: ')
  assert [n for n in os.listdir(str(tmp_path)) if n.startswith('.export-')]
  rc, out, err = run.finish(sig)
  assert rc == 128 + sig, (out, err)
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith('main.py: stopped: stopped by %s' %
                             signal.Signals(sig).name), lines[0]
  assert 'Traceback' not in out + err
  assert os.listdir(str(tmp_path)) == []


def test_self_check_clip_has_the_dynamics_of_recorded_sound():
  """Quiet bins beside loud ones are where TFLite's FFT and TensorFlow's
  differ most, and PCEN's gain amplifies that in quiet passages: the
  self-check's clip has loud 50 ms frames, quiet passages 40 dB below
  them, sharp onsets, digital silence, and 16-bit samples."""
  from tagger.modes import export_checks
  samples = export_checks.check_waveform()
  assert len(samples) == int(7.3 * 44100)
  assert np.array_equal(samples * 32768, np.round(samples * 32768))
  frames = samples[:len(samples) // 2205 * 2205].reshape(-1, 2205)
  levels = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) +
                         1e-10)  # dBFS; digital silence -100
  loud = np.percentile(levels, 98)
  assert loud >= -20
  assert np.mean(levels < loud - 40) >= 0.15  # quiet passages
  assert np.sum(np.diff(levels) >= 20) >= 3  # onsets
  assert levels[0] == -100  # it starts with digital silence


def test_only_errors_inside_the_build_are_renamed(tmp_path):
  """A write error inside the export's build folder is renamed to the
  part of --export_dir it was writing; an error about any other path (a
  clip, a checkpoint) is left as it is."""
  import errno
  from tagger.modes import export
  build = str(tmp_path / 'build')
  inside = OSError(errno.ENOSPC, 'No space left on device',
                   os.path.join(build, 'saved_model', 'variables'))
  renamed = export._writing_error(inside, [build], '/out/my_tagger')
  assert str(renamed) == ('--export_dir: cannot write /out/my_tagger/'
                          'saved_model (No space left on device); nothing '
                          'written')
  for path in (str(tmp_path / 'clips' / 'a.wav'), build + '_other/x', None):
    outside = OSError(errno.EIO, 'Input/output error', path)
    assert export._writing_error(outside, [build], '/out/my_tagger') is None
