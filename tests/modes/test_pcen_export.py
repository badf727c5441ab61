"""A tiny CRNN with the PCEN front end, trained and exported once into a
folder whose path holds every glob character: frontend=pcen through every
mode, the export writing and checking itself there, a stop request
during the export leaving nothing, and the memory of serving a long
waveform bounded."""

import os
import signal

import numpy as np
import pytest

from conftest import shared
from support.cli import check_ok, export_args, Run, run_main, train_args
from support.scores import (labeled_rows, lwlrap_bounds, overall_lwlrap,
                            read_class_names, read_csv_rows, truth_matrix,
                            within)
from support.settings import CLASS_MAP, FEW_BN_BATCHES
from support.wav_files import read_pcm


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


def _load_saved_model(export_dir, tmp_path):
  """The export's SavedModel, loaded through a link: TensorFlow reads a
  SavedModel path holding glob characters as a pattern."""
  import tensorflow as tf
  link = str(tmp_path / 'saved_model_link')
  os.symlink(os.path.join(export_dir, 'saved_model'), link)
  return tf.saved_model.load(link)


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


# --- memory -----------------------------------------------------------------

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
