"""Bad CSVs, clips, folders and checkpoints given to main.py are reported as
one `main.py: error:` line, with nothing written and an existing submission
untouched; an error inside the input pipeline becomes one line too, and a
short clip gets a finite row."""

import os
import shutil

import numpy as np
import pytest

from support.cli import assert_one_error, run_main, train_args
from support.scores import read_csv_rows
from support.settings import CLASS_MAP
from support.signals import cut_in_half, write_audio, write_pcm_wav
from support.main_args import inference_args, train_flags


# --- bad CSVs and clips -----------------------------------------------------

@pytest.fixture(scope='module')
def clips(tmp_path_factory, dataset):
  """A folder of one good clip and one bad clip of each kind."""
  folder = tmp_path_factory.mktemp('clips')
  good = os.path.join(dataset['train_clip_dir'], 'c0000.wav')
  shutil.copy(good, str(folder / 'good.wav'))
  noise = np.random.default_rng(0).uniform(-0.2, 0.2, 88200)
  for ext in ('flac', 'mp3', 'ogg'):
    cut_in_half(write_audio(folder / ('whole.' + ext), noise),
                folder / ('cut.' + ext))
  write_pcm_wav(folder / 'empty.wav', [])
  with open(good, 'rb') as f:
    data = f.read()
  with open(str(folder / 'truncated.wav'), 'wb') as f:
    f.write(data[:30])  # cut inside the header
  (folder / 'song.m4a').write_bytes(b'\x00\x00\x00\x20ftypM4A ' +
                                    b'\x00' * 100)
  (folder / 'notes.wav').write_text('not audio\n')
  return folder


# Every file is cut in half (2.0 s long); the seconds readable are pinned
# by sound/test_audio.py.
BAD_CLIPS = [('cut.flac', 'truncated or damaged: 0.'),
             ('cut.mp3', 'truncated or damaged: 0.'),
             ('cut.ogg', 'truncated: the Ogg stream has no end; '),
             ('song.m4a', 'libsndfile cannot read; converting it to FLAC or '
              'WAV works'),
             ('notes.wav', 'not an audio file libsndfile can read'),
             ('truncated.wav', 'not an audio file libsndfile can read'),
             ('empty.wav', 'empty')]


def _csv(path, rows):
  with open(str(path), 'w') as f:
    f.write('fname,labels\n')
    for fname, labels in rows:
      f.write('%s,"%s"\n' % (fname, labels))
  return str(path)


@pytest.mark.parametrize('bad,message', BAD_CLIPS,
                         ids=[b for b, _ in BAD_CLIPS])
def test_bad_clip_in_train(tmp_path, clips, bad, message):
  csv_path = _csv(tmp_path / 'train.csv', [('good.wav', 'Bass_drum'),
                                           (bad, 'Hiss,Buzz')])
  train_dir = tmp_path / 'train'
  assert_one_error(run_main(train_args('crnn', str(clips), csv_path,
                                       str(train_dir), 1)), bad, message)
  assert not train_dir.exists()




@pytest.mark.parametrize('bad,message', BAD_CLIPS,
                         ids=[b for b, _ in BAD_CLIPS])
def test_bad_clip_in_inference_keeps_predictions(tmp_path, clips,
                                                 fake_checkpoint, bad,
                                                 message):
  folder = tmp_path / 'clips'
  folder.mkdir()
  shutil.copy(str(clips / 'good.wav'), str(folder / 'a.wav'))
  shutil.copy(str(clips / bad), str(folder / bad))
  predictions = tmp_path / 'submission.csv'
  old = b'fname,x\nold.wav,0.5\n'
  predictions.write_bytes(old)
  assert_one_error(run_main(inference_args(str(folder), fake_checkpoint,
                                            str(predictions))), bad, message)
  assert predictions.read_bytes() == old
  assert sorted(os.listdir(str(tmp_path))) == ['clips', 'submission.csv']


def test_unknown_label_in_csv(tmp_path, clips):
  csv_path = _csv(tmp_path / 'train.csv', [('good.wav', 'Bass_drum'),
                                           ('good.wav', 'Hiss,Kazoo_solo')])
  assert_one_error(run_main(train_args('crnn', str(clips), csv_path,
                                       str(tmp_path / 'train'), 1)),
                   csv_path, 'Kazoo_solo', 'line 3')


def test_missing_clip_in_csv(tmp_path, clips):
  csv_path = _csv(tmp_path / 'train.csv', [('good.wav', 'Bass_drum'),
                                           ('ghost.wav', 'Hiss')])
  assert_one_error(run_main(train_args('crnn', str(clips), csv_path,
                                       str(tmp_path / 'train'), 1)),
                   csv_path, 'ghost.wav')


def test_csv_not_utf8(tmp_path, clips):
  csv_path = str(tmp_path / 'train.csv')
  with open(csv_path, 'wb') as f:
    f.write(b'fname,labels\ngood.wav,Bass_drum\ngood.wav,Hiss\xe9\n')
  assert_one_error(run_main(train_args('crnn', str(clips), csv_path,
                                       str(tmp_path / 'train'), 1)), csv_path)


def test_class_map_not_utf8(tmp_path, dataset):
  class_map = str(tmp_path / 'class_map.csv')
  with open(class_map, 'wb') as f:
    f.write(b'0,Bass_drum\n1,Hiss\xff\n')
  assert_one_error(run_main(train_flags(dataset, str(tmp_path / 'train'),
                                         class_map_path=class_map)),
                   class_map)
  assert os.listdir(str(tmp_path)) == ['class_map.csv']


def test_bad_clip_in_eval_csv(tmp_path, clips):
  csv_path = _csv(tmp_path / 'eval.csv', [('good.wav', 'Bass_drum'),
                                          ('cut.flac', 'Hiss')])
  result = run_main(['--mode', 'eval', '--model', 'crnn',
                     '--class_map_path', CLASS_MAP,
                     '--eval_clip_dir', str(clips), '--eval_csv_path',
                     csv_path, '--train_dir', str(tmp_path / 'train'),
                     '--eval_dir', str(tmp_path / 'eval')])
  assert_one_error(result, 'cut.flac', 'truncated or damaged')
  assert not (tmp_path / 'eval').exists()


def test_error_inside_the_pipeline_becomes_one_line(tmp_path):
  # A clip that turns bad after its header was read (here: cut short between
  # building the dataset and reading it) is caught by the pipeline's own
  # assertion; main.py reports it as `file: what`.
  import tensorflow as tf
  import inputs
  import main
  from tagger.core import params
  path = str(tmp_path / 'shrinks.wav')
  write_pcm_wav(path, np.zeros(48000, dtype=np.int16))
  dataset = inputs.scoring_dataset([path], params.HParams(), 4)
  with open(path, 'r+b') as f:
    f.truncate(1000)
  with pytest.raises(tf.errors.OpError) as e:
    for _ in dataset:
      pass
  assert main.op_error_message(e.value) == '%s: is truncated' % path


# --- inference folders and checkpoints --------------------------------------

def test_inference_empty_folder(tmp_path, fake_checkpoint):
  folder = tmp_path / 'empty'
  folder.mkdir()
  assert_one_error(run_main(inference_args(
      str(folder), fake_checkpoint, str(tmp_path / 'p.csv'))),
                   str(folder), 'no audio files')
  assert not (tmp_path / 'p.csv').exists()


def test_inference_folder_without_wavs(tmp_path, fake_checkpoint):
  folder = tmp_path / 'texts'
  folder.mkdir()
  (folder / 'notes.txt').write_text('not audio')
  (folder / 'sub.wav').mkdir()  # a folder named like a clip is no clip
  assert_one_error(run_main(inference_args(
      str(folder), fake_checkpoint, str(tmp_path / 'p.csv'))),
                   str(folder), 'no audio files')


def test_inference_missing_checkpoint(tmp_path, dataset):
  missing = str(tmp_path / 'train' / 'model.ckpt-42')
  assert_one_error(run_main(inference_args(
      dataset['test_clip_dir'], missing, str(tmp_path / 'p.csv'))),
                   '--inference_checkpoint', missing)


@pytest.mark.parametrize('holds', [(), ('examples_float32.tflite',
                                        'examples_int8.tflite')],
                         ids=['empty', 'export'])
def test_a_model_file_that_is_a_folder(tmp_path, dataset, holds):
  """A folder (an export's, say) is named as one, with the models it holds,
  before TensorFlow starts."""
  from support.cli import inference_with_model
  folder = tmp_path / 'export'
  folder.mkdir()
  for name in holds + ('model.tflite',):
    (folder / name).write_bytes(b'')
  result = inference_with_model(dataset, str(folder), tmp_path)
  line = assert_one_error(result, '--tflite_model: %s is a folder, not a '
                          '.tflite file' % folder)
  assert line.endswith(' (it holds %s)' % ', '.join(holds) if holds else
                       'file')
  assert result.stdout == ''
  assert sorted(os.listdir(str(tmp_path))) == ['export']


@pytest.mark.parametrize('override,recorded', [
    ('bn_stats=moving', 'bn_stats=precise'),
    ('score_averaged=0', 'score_averaged=1'),
    ('mel_bands=64', 'mel_bands=96'),
])
def test_a_model_file_fixes_its_scoring_hparams(tmp_path, dataset,
                                                mobilenet_export, override,
                                                recorded):
  """The statistics and weights folded into an exported model, like its
  features and architecture, are the file's: another value is one line
  naming the hparam, both values and the file, before TensorFlow starts
  and with nothing written."""
  from support.cli import inference_with_model
  model = os.path.join(mobilenet_export['dir'], 'examples_float32.tflite')
  result = inference_with_model(dataset, model, tmp_path,
                                 ['--hparams', override])
  assert_one_error(result, '--hparams: hparam %s contradicts %s, exported '
                   'with %s' % (override, model, recorded))
  assert result.stdout == ''
  assert os.listdir(str(tmp_path)) == []


def test_inference_checkpoint_folder_gets_hint(tmp_path, dataset):
  assert_one_error(run_main(inference_args(
      dataset['test_clip_dir'], str(tmp_path), str(tmp_path / 'p.csv'))),
                   str(tmp_path), 'model.ckpt-N prefix')


def test_inference_unreadable_checkpoint_keeps_predictions(
    tmp_path, dataset, fake_checkpoint):
  """A failure after TensorFlow has started is one line too, and the
  existing submission is untouched."""
  predictions = tmp_path / 'submission.csv'
  old = b'fname,x\nold.wav,0.25\n'
  predictions.write_bytes(old)
  assert_one_error(run_main(inference_args(
      dataset['test_clip_dir'], fake_checkpoint, str(predictions))),
                   fake_checkpoint)
  assert predictions.read_bytes() == old
  assert os.listdir(str(tmp_path)) == ['submission.csv']


def test_short_clip_gets_finite_row(mobilenet_inference):
  rows = read_csv_rows(mobilenet_inference['csv'])
  short = [r for r in rows if r[0] == 'short.wav']
  assert len(short) == 1
  values = np.array([float(v) for v in short[0][1:]])
  assert values.shape == (80,)
  assert np.all(np.isfinite(values))
  assert np.all((values >= 0) & (values <= 1))
