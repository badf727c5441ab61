"""Bad flags, files and clips are reported as one `main.py: error:` line;
signals, divergence and vanished checkpoints are handled without damage."""

import os
import re
import shutil
import signal

import numpy as np
import pytest

from tagger.core import checkpoints
from conftest import (CLASS_MAP, FEW_BN_BATCHES, HPARAMS, cut_in_half,
                      read_csv_rows, run_main, train_args, write_audio,
                      write_pcm_wav)
from support.cli import Run, assert_one_error


# --- flags ------------------------------------------------------------------

def _train_flags(dataset, train_dir, **overrides):
  flags = {'mode': 'train', 'class_map_path': CLASS_MAP,
           'train_clip_dir': dataset['train_clip_dir'],
           'train_csv_path': dataset['train_csv'],
           'train_dir': train_dir, 'hparams': 'batch_size=4,' + FEW_BN_BATCHES}
  flags.update(overrides)
  return ['--%s=%s' % (k, v) for k, v in flags.items() if v is not None]


@pytest.mark.parametrize('overrides,extra,needles', [
    ({'mode': 'tran'}, [], ['--mode', 'tran']),
    ({}, ['--foo'], ['foo']),
    ({'class_map_path': None}, [], ['--class_map_path']),
    ({'train_dir': None}, [], ['--train_dir']),
    ({'hparams': 'batch_size=abc'}, [], ['batch_size', 'abc']),
    ({'hparams': 'nosuch=1'}, [], ['nosuch']),
    ({'hparams': 'lrdecay=0.9'}, [], ['--epoch_num_batches', 'lrdecay']),
    ({'hparams': 'warmstart=1'}, [], ['--warmstart_checkpoint']),
    ({'hparams': 'warmstart=1'}, ['--warmstart_checkpoint=/no/model.ckpt-7'],
     ['--warmstart_checkpoint', '/no/model.ckpt-7']),
    ({}, ['--max_steps=0'], ['max_steps']),
    ({}, ['--epoch_num_batches=0'], ['epoch_num_batches']),
    ({'hparams': 'batch_size=4,cosine_decay=1'}, [],
     ['--hparams', 'cosine_decay=1', 'decay_horizon or --max_steps']),
    ({'hparams': 'batch_size=4,cosine_decay=1,warmup_steps=50'},
     ['--max_steps=40'], ['cosine_decay=1', 'warmup_steps=50']),
], ids=['mode', 'unknown-flag', 'class-map', 'train-dir', 'hparam-value',
        'hparam-name', 'lrdecay', 'warmstart', 'warmstart-missing',
        'max-steps-0', 'epoch-batches-0', 'cosine-without-horizon',
        'cosine-within-warmup'])
def test_bad_flags(dataset, tmp_path, overrides, extra, needles):
  # (In the test's own folder: a run that wrongly creates it leaves nothing
  # behind for the next run of the suite.)
  train_dir = tmp_path / 'never' / 'created'
  assert_one_error(run_main(_train_flags(
      dataset, **dict({'train_dir': str(train_dir)}, **overrides)) + extra),
                   *needles)
  assert os.listdir(str(tmp_path)) == []


def test_missing_mode(dataset):
  """Names every mode, export and tag included, as --help does."""
  assert_one_error(run_main(['--class_map_path', CLASS_MAP]),
                   '--mode is required (train, eval, inference, export, tag or '
                   'relabel)')
  help_text = run_main(['--help']).stdout
  assert '<train|eval|inference|export|tag|relabel>' in help_text
  assert 'export a checkpoint as a SavedModel' in help_text
  # --hparams applies on top of what a run recorded.
  assert 'apply these on top' in re.sub(r'\s+', ' ', help_text)


def test_relabel_thresholds_may_be_equal(tmp_path, dataset):
  """keep == add is a threshold like any other: the run goes on to the
  next check (here, a checkpoint that does not exist); keep above add is
  refused."""
  args = ['--mode', 'relabel', '--class_map_path', CLASS_MAP,
          '--inference_checkpoint', str(tmp_path / 'model.ckpt-5'),
          '--relabel_csv_path', dataset['train_csv'],
          '--relabel_clip_dir', dataset['train_clip_dir'],
          '--relabeled_csv_path', str(tmp_path / 'out.csv')]
  assert_one_error(run_main(args + ['--relabel_keep_threshold', '0.5',
                                    '--relabel_add_threshold', '0.5']),
                   '--inference_checkpoint', 'model.ckpt-5')
  assert_one_error(run_main(args + ['--relabel_keep_threshold', '0.51',
                                    '--relabel_add_threshold', '0.5']),
                   '--relabel_keep_threshold 0.51 is above')


@pytest.mark.parametrize('mode,flag,owners', [
    ('inference', ['--top_k', '5'], 'tag'),
    ('train', ['--eval_dir', 'e'], 'eval'),
    ('tag', ['--max_steps', '200'], 'train'),
    ('eval', ['--relabel_add_threshold', '0.9'], 'relabel'),
    ('export', ['--predictions_csv_path', 'p.csv'], 'inference'),
    ('relabel', ['--export_dir', 'x'], 'export'),
    ('inference', ['--train_dir', 't'], 'train and eval'),
    ('train', ['--inference_checkpoint', 'c'],
     'inference, export, tag and relabel'),
])
def test_a_flag_of_another_mode_is_refused(tmp_path, mode, flag, owners):
  """A mode's flags belong to it: another mode would ignore them."""
  assert_one_error(run_main(['--mode', mode, '--class_map_path', CLASS_MAP]
                            + flag, cwd=str(tmp_path)),
                   '%s is for --mode %s, not --mode %s' % (flag[0], owners,
                                                           mode))
  assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize('target', ['train_dir', 'eval_dir', 'predictions'])
def test_output_path_of_the_wrong_kind(tmp_path, dataset, mobilenet_train,
                                       target):
  """An output folder that is a file (or an output file that is a folder)
  is a file problem like any other: one line naming it, no traceback."""
  if target == 'predictions':
    bad = tmp_path / 'submission.csv'
    bad.mkdir()
    args = _inference_args(dataset['test_clip_dir'],
                           mobilenet_train['checkpoint'], str(bad),
                           model='mobilenet-v1')
  else:
    bad = tmp_path / target
    bad.write_text('a file, not a folder')
    if target == 'train_dir':
      args = train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                        str(bad), 1)
    else:
      args = ['--mode', 'eval', '--model', 'mobilenet-v1',
              '--class_map_path', CLASS_MAP,
              '--eval_clip_dir', dataset['train_clip_dir'],
              '--eval_csv_path', dataset['validation_csv'],
              '--train_dir', mobilenet_train['train_dir'],
              '--eval_dir', str(bad), '--hparams', HPARAMS]
  assert_one_error(run_main(args), str(bad))


@pytest.mark.parametrize('case', ['tag-timeline', 'inference-class-map',
                                  'inference-clip', 'eval-dir', 'train-dir',
                                  'inference-checkpoint'])
def test_an_output_that_is_an_input_is_refused(tmp_path, dataset,
                                               fake_checkpoint, case):
  """Every mode refuses to write over what it reads: one line naming the
  output flag, before any work, the input untouched."""
  clips = tmp_path / 'clips'
  shutil.copytree(dataset['test_clip_dir'], str(clips))
  clip = str(clips / sorted(os.listdir(str(clips)))[0])
  class_map = str(tmp_path / 'class_map.csv')
  shutil.copy(CLASS_MAP, class_map)
  flag, victim, args = {
      'tag-timeline': ('--timeline_csv_path', clip, [
          '--mode', 'tag', '--inference_checkpoint', fake_checkpoint,
          '--tag_paths', clip, '--timeline_csv_path', clip]),
      'inference-class-map': ('--predictions_csv_path', class_map,
                              _inference_args(str(clips), fake_checkpoint,
                                              class_map)),
      'inference-clip': ('--predictions_csv_path', clip,
                         _inference_args(str(clips), fake_checkpoint, clip)),
      'inference-checkpoint': ('--predictions_csv_path',
                               fake_checkpoint + '.index',
                               _inference_args(str(clips), fake_checkpoint,
                                               fake_checkpoint + '.index')),
      'eval-dir': ('--eval_dir', None, [
          '--mode', 'eval', '--eval_clip_dir', dataset['train_clip_dir'],
          '--eval_csv_path', dataset['validation_csv'],
          '--train_dir', str(tmp_path), '--eval_dir', str(tmp_path)]),
      'train-dir': ('--train_dir', None, _train_flags(
          dataset, train_dir=dataset['train_clip_dir'])),
  }[case]
  args = [class_map if a == CLASS_MAP else a for a in args]
  if class_map not in args:
    args = args + ['--class_map_path', class_map]
  before = open(victim, 'rb').read() if victim else None
  assert_one_error(run_main(args), flag, 'is ')
  if victim:
    assert open(victim, 'rb').read() == before
  assert not [n for n in os.listdir(dataset['train_clip_dir'])
              if not n.endswith('.wav')]


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
# by test_audio.py.
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


@pytest.fixture(scope='module')
def fake_checkpoint(tmp_path_factory):
  """Passes main.py's pre-flight check (a .index file exists)."""
  prefix = tmp_path_factory.mktemp('fake') / 'model.ckpt-1'
  with open(str(prefix) + '.index', 'wb') as f:
    f.write(b'this is not a checkpoint index')
  return str(prefix)


def _inference_args(clip_dir, checkpoint, csv_path, model='crnn'):
  return ['--mode', 'inference', '--model', model,
          '--class_map_path', CLASS_MAP, '--inference_clip_dir', clip_dir,
          '--inference_checkpoint', checkpoint,
          '--predictions_csv_path', csv_path, '--hparams', HPARAMS]


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
  assert_one_error(run_main(_inference_args(str(folder), fake_checkpoint,
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
  assert_one_error(run_main(_train_flags(dataset, str(tmp_path / 'train'),
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


# --- inference folders and checkpoints --------------------------------------

def test_inference_empty_folder(tmp_path, fake_checkpoint):
  folder = tmp_path / 'empty'
  folder.mkdir()
  assert_one_error(run_main(_inference_args(
      str(folder), fake_checkpoint, str(tmp_path / 'p.csv'))),
                   str(folder), 'no audio files')
  assert not (tmp_path / 'p.csv').exists()


def test_inference_folder_without_wavs(tmp_path, fake_checkpoint):
  folder = tmp_path / 'texts'
  folder.mkdir()
  (folder / 'notes.txt').write_text('not audio')
  (folder / 'sub.wav').mkdir()  # a folder named like a clip is no clip
  assert_one_error(run_main(_inference_args(
      str(folder), fake_checkpoint, str(tmp_path / 'p.csv'))),
                   str(folder), 'no audio files')


def test_inference_missing_checkpoint(tmp_path, dataset):
  missing = str(tmp_path / 'train' / 'model.ckpt-42')
  assert_one_error(run_main(_inference_args(
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
  assert_one_error(run_main(_inference_args(
      dataset['test_clip_dir'], str(tmp_path), str(tmp_path / 'p.csv'))),
                   str(tmp_path), 'model.ckpt-N prefix')


def test_inference_unreadable_checkpoint_keeps_predictions(
    tmp_path, dataset, fake_checkpoint):
  """A failure after TensorFlow has started is one line too, and the
  existing submission is untouched."""
  predictions = tmp_path / 'submission.csv'
  old = b'fname,x\nold.wav,0.25\n'
  predictions.write_bytes(old)
  assert_one_error(run_main(_inference_args(
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


# --- signals ----------------------------------------------------------------

def _steps_on_disk(train_dir):
  return sorted(int(m.group(1)) for m in (
      re.fullmatch(r'model\.ckpt-(\d+)\.index', n)
      for n in os.listdir(train_dir)) if m)


def _step_in(prefix):
  import tensorflow as tf
  return int(tf.train.load_checkpoint(prefix).get_tensor(
      'step/.ATTRIBUTES/VARIABLE_VALUE'))


def test_sigterm_then_sigkill_resume(tmp_path, dataset):
  train_dir = str(tmp_path / 'train')
  args = train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                    train_dir, 100000)

  # 1. SIGTERM after the first step: a checkpoint at the current step, a
  # one-line 'stopped' message, a non-zero exit.
  run = Run(args)
  run.wait_for(r'step \d+ loss')
  rc, out, err = run.finish(signal.SIGTERM)
  assert rc == 128 + 15 == 143  # 128 + the signal number
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  match = re.fullmatch(r'main\.py: stopped: stopped by SIGTERM at step (\d+)'
                       r'; run the same command to resume', lines[0])
  assert match, lines[0]
  stopped_at = int(match.group(1))
  assert 'Traceback' not in out + err
  assert _steps_on_disk(train_dir) == [0, stopped_at]
  assert _step_in(os.path.join(train_dir, 'model.ckpt-%d' % stopped_at)) == (
      stopped_at)
  with open(os.path.join(train_dir, 'checkpoint')) as f:
    assert 'model_checkpoint_path: "model.ckpt-%d"' % stopped_at in f.read()

  # 2. The same command resumes there; SIGKILL it a few steps later.
  run = Run(args)
  resumed = run.wait_for(r'Resuming from (.*) at step (\d+)$')
  assert resumed.group(1) == os.path.join(train_dir,
                                          'model.ckpt-%d' % stopped_at)
  assert int(resumed.group(2)) == stopped_at
  first = int(run.wait_for(r'step (\d+) loss').group(1))
  assert first == stopped_at + 1
  run.wait_for(r'step %d loss' % (stopped_at + 3))
  rc, out, _ = run.finish(signal.SIGKILL)
  assert rc == -signal.SIGKILL
  on_disk = _steps_on_disk(train_dir)
  assert on_disk[:2] == [0, stopped_at]

  # 3. The same command again: resumes from the last complete checkpoint and
  # continues the count; SIGTERM saves where it stops.
  run = Run(args)
  resumed = run.wait_for(r'Resuming from (.*) at step (\d+)$')
  resumed_at = int(resumed.group(2))
  assert resumed_at == on_disk[-1]
  assert resumed.group(1) == os.path.join(train_dir,
                                          'model.ckpt-%d' % resumed_at)
  assert int(run.wait_for(r'step (\d+) loss').group(1)) == resumed_at + 1
  rc, out, err = run.finish(signal.SIGTERM)
  assert rc == 143
  final = int(re.search(r'stopped by SIGTERM at step (\d+)', err).group(1))
  assert final > resumed_at
  assert _steps_on_disk(train_dir)[-1] == final
  assert _step_in(os.path.join(train_dir, 'model.ckpt-%d' % final)) == final


def test_sigint_saves_and_exits_130(tmp_path, dataset):
  """Ctrl-C during training: a checkpoint at the current step, one line
  `main.py: stopped: stopped by SIGINT at step N; ...`, exit status
  128 + 2."""
  train_dir = str(tmp_path / 'train')
  run = Run(train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                        train_dir, 100000,
                        hparams='batch_size=4,crnn_filters=4,' +
                        FEW_BN_BATCHES))
  run.wait_for(r'step 2 loss')
  rc, out, err = run.finish(signal.SIGINT)
  assert rc == 128 + 2 == 130
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  match = re.fullmatch(r'main\.py: stopped: stopped by SIGINT at step (\d+)'
                       r'; run the same command to resume', lines[0])
  assert match, lines[0]
  stopped_at = int(match.group(1))
  assert stopped_at >= 2
  assert 'Traceback' not in out + err
  assert 'KeyboardInterrupt' not in out + err
  # The last step printed is the step it stopped at, and saved.
  printed = [int(s) for s in re.findall(r'^step (\d+) loss', out, re.M)]
  assert printed == list(range(1, stopped_at + 1))
  assert 'Saved checkpoint %s' % os.path.join(
      train_dir, 'model.ckpt-%d' % stopped_at) in out
  assert _steps_on_disk(train_dir) == [0, stopped_at]
  assert _step_in(os.path.join(train_dir, 'model.ckpt-%d' % stopped_at)) == (
      stopped_at)


# --- divergence (in-process) ------------------------------------------------

def test_non_finite_loss_stops_without_bad_checkpoint(tmp_path, dataset,
                                                      monkeypatch, capsys):
  import tensorflow as tf
  from tagger.core import files
  import inputs
  from tagger.core import params
  import train
  from conftest import read_class_names
  monkeypatch.setattr(checkpoints, 'CHECKPOINT_EVERY', 1)
  train_dir = str(tmp_path / 'train')
  with pytest.raises(files.UserError) as caught:
    train.train('crnn', params.parse_hparams('batch_size=4,lr=1e30'),
                read_class_names(), [inputs.Source(
                    dataset['train_csv'], dataset['train_clip_dir'])],
                train_dir, max_steps=20)
  message = str(caught.value)
  match = re.search(r'diverged at step (\d+)', message)
  assert match, message
  bad_step = int(match.group(1))
  assert bad_step >= 2  # the first step starts from finite weights
  assert train_dir in message
  # A checkpoint for every good step and none for the bad one or later.
  assert _steps_on_disk(train_dir) == list(range(0, bad_step))
  reader = tf.train.load_checkpoint(
      os.path.join(train_dir, 'model.ckpt-%d' % (bad_step - 1)))
  for key in reader.get_variable_to_shape_map():
    if key.startswith('weights/'):
      assert np.all(np.isfinite(reader.get_tensor(key))), key


# --- eval: vanished checkpoints, interrupted runs (in-process) --------------

@pytest.fixture
def three_checkpoints(tmp_path, mobilenet_train):
  """A train_dir with model.ckpt-1, -2, -3 (copies of one checkpoint)."""
  train_dir = tmp_path / 'train'
  train_dir.mkdir()
  source = mobilenet_train['train_dir']
  for name in os.listdir(source):
    if name.startswith('model.ckpt-3.'):
      for step in (1, 2, 3):
        shutil.copy(os.path.join(source, name), str(
            train_dir / name.replace('ckpt-3', 'ckpt-%d' % step)))
  return str(train_dir)


def _evaluate(dataset, train_dir, eval_dir):
  import evaluation
  from tagger.core import files
  from tagger.core import params
  from conftest import labeled_rows, read_class_names
  rows = labeled_rows(dataset['validation_csv'])
  samples = files.check_clips([os.path.join(dataset['train_clip_dir'], f)
                              for f, _ in rows])
  evaluation.evaluate('mobilenet-v1', params.parse_hparams(HPARAMS),
                      read_class_names(), rows, dataset['train_clip_dir'],
                      samples, train_dir, eval_dir)


def _markers(eval_dir):
  return sorted(n for n in os.listdir(eval_dir) if n.startswith('eval-'))


def test_eval_skips_checkpoint_deleted_during_run(
    tmp_path, dataset, three_checkpoints, monkeypatch, capsys):
  from tagger.engines import scoring
  original = scoring.Scorer.score
  calls = []

  def score_and_delete_next(self, *args, **kwargs):
    if not calls:
      for name in os.listdir(three_checkpoints):
        if name.startswith('model.ckpt-2.'):
          os.remove(os.path.join(three_checkpoints, name))
    calls.append(1)
    return original(self, *args, **kwargs)

  monkeypatch.setattr(scoring.Scorer, 'score', score_and_delete_next)
  eval_dir = str(tmp_path / 'eval')
  _evaluate(dataset, three_checkpoints, eval_dir)
  out = capsys.readouterr().out
  assert '3 checkpoints in %s, 0 already evaluated' % three_checkpoints in out
  warnings = [l for l in out.splitlines() if l.startswith('warning:')]
  assert len(warnings) == 1
  assert os.path.join(three_checkpoints, 'model.ckpt-2') in warnings[0]
  assert 'skipped' in warnings[0]
  assert len(calls) == 2
  assert _markers(eval_dir) == ['eval-1.txt', 'eval-3.txt']
  with open(os.path.join(eval_dir, 'eval-1.txt')) as f1, open(
      os.path.join(eval_dir, 'eval-3.txt')) as f3:
    assert f1.read() == f3.read()  # the same weights, the same report


class _Killed(BaseException):
  pass


def test_eval_interrupted_marker_write_then_rerun(
    tmp_path, dataset, three_checkpoints, monkeypatch, capsys):
  """Killed while writing the second marker: no partial marker appears, and
  a rerun evaluates exactly the checkpoints without one. (Each checkpoint
  writes metrics-N.txt, then its marker eval-N.txt: the fourth write is the
  second marker.)"""
  eval_dir = str(tmp_path / 'eval')
  real_fsync = os.fsync
  calls = []

  def fsync_then_die(fd):
    calls.append(fd)
    if len(calls) == 4:
      raise _Killed()
    real_fsync(fd)

  with monkeypatch.context() as patch:
    patch.setattr(os, 'fsync', fsync_then_die)
    with pytest.raises(_Killed):
      _evaluate(dataset, three_checkpoints, eval_dir)
  assert _markers(eval_dir) == ['eval-1.txt']
  assert not [n for n in os.listdir(eval_dir) if n.endswith('.tmp')]
  marker = os.path.join(eval_dir, 'eval-1.txt')
  with open(marker) as f:
    text = f.read()
  assert re.search(r'\nOverall lwlrap = [0-9.]+$', text)  # the last line
  mtime = os.stat(marker).st_mtime_ns
  capsys.readouterr()

  _evaluate(dataset, three_checkpoints, eval_dir)
  out = capsys.readouterr().out
  assert '3 checkpoints in %s, 1 already evaluated' % three_checkpoints in out
  evaluated = re.findall(r'^Checkpoint (\S+) \(', out, re.M)
  assert evaluated == [os.path.join(three_checkpoints, 'model.ckpt-%d' % n)
                       for n in (2, 3)]
  assert _markers(eval_dir) == ['eval-1.txt', 'eval-2.txt', 'eval-3.txt']
  assert os.stat(marker).st_mtime_ns == mtime
  with open(os.path.join(eval_dir, 'eval-2.txt')) as f:
    assert f.read() == text


def test_checkpoint_of_another_model_or_hparams(crnn_train, parse_hparams):
  from tagger.core import files
  from tagger.engines import scoring
  checkpoint = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  scorer = scoring.Scorer('mobilenet-v1', 80, parse_hparams(HPARAMS))
  with pytest.raises(files.UserError,
                     match='model.ckpt-101: trained with --model crnn, not '
                     'mobilenet-v1'):
    scorer.load(checkpoint)
  scorer = scoring.Scorer('crnn', 80, parse_hparams('crnn_filters=16'))
  with pytest.raises(files.UserError,
                     match=r'trained with hparam crnn_filters=32, not 16'):
    scorer.load(checkpoint)


def test_eval_without_checkpoints(tmp_path, dataset):
  from tagger.core import files
  empty = tmp_path / 'train'
  empty.mkdir()
  with pytest.raises(files.UserError, match='no model.ckpt-N checkpoints'):
    _evaluate(dataset, str(empty), str(tmp_path / 'eval'))
  assert not (tmp_path / 'eval').exists()


def test_help_documents_every_flag():
  result = run_main(['--help'])
  assert result.returncode == 0
  for flag in ('mode', 'model', 'hparams', 'class_map_path', 'train_clip_dir',
               'train_csv_path', 'epoch_num_batches', 'warmstart_checkpoint',
               'warmstart_include_scopes', 'warmstart_exclude_scopes',
               'train_dir', 'max_steps', 'eval_clip_dir', 'eval_csv_path',
               'eval_dir', 'inference_checkpoint', 'inference_clip_dir',
               'predictions_csv_path', 'engine', 'tflite_threads',
               'tflite_model', 'quantize', 'calibration_csv_path',
               'calibration_clip_dir'):
    # Each flag is listed with a description, not just its name.
    assert re.search(r'--%s: \S' % flag, result.stdout + result.stderr), flag


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


# main.py run afresh (the fork server has imported TensorFlow), saying as
# it exits whether TensorFlow was imported.
# Runs the script of argv[1] as __main__ with TensorFlow, Keras and LiteRT
# unimportable: an import of any of them raises ImportError.
WITHOUT_TENSORFLOW = r'''
import importlib.abc, runpy, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'keras', 'ai_edge_litert'):
      raise ImportError('%s is unimportable here' % name)
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.mark.parametrize('args,needle', [
    (['--mode', 'train', '--train_clip_dir', '.', '--train_csv_path',
      '/no/train.csv', '--train_dir', '{tmp}/train'], '/no/train.csv'),
    (['--mode', 'train', '--train_clip_dir', '.', '--train_csv_path',
      '{csv}', '--train_dir', '{tmp}/train', '--hparams', 'cosine_decay=1'],
     'cosine_decay=1'),
    (['--mode', 'eval', '--eval_clip_dir', '.', '--eval_csv_path',
      '/no/eval.csv', '--train_dir', '{tmp}', '--eval_dir', '{tmp}/eval'],
     '/no/eval.csv'),
    (['--mode', 'inference', '--inference_clip_dir', '/no/clips',
      '--inference_checkpoint', '{ckpt}',
      '--predictions_csv_path', '{tmp}/s.csv'], '/no/clips'),
    (['--mode', 'export', '--inference_checkpoint', '/no/model.ckpt-1',
      '--export_dir', '{tmp}/export'], '/no/model.ckpt-1'),
    (['--mode', 'tag', '--inference_checkpoint', '{ckpt}',
      '--tag_paths', '/no/a.wav'], '/no/a.wav'),
    (['--mode', 'relabel', '--relabel_csv_path', '/no/noisy.csv',
      '--relabel_clip_dir', '.', '--inference_checkpoint',
      '{ckpt}', '--relabeled_csv_path', '{tmp}/r.csv'],
     '/no/noisy.csv'),
], ids=['train', 'train-hparams', 'eval', 'inference', 'export', 'tag',
        'relabel'])
def test_each_modes_checks_run_before_tensorflow_is_imported(
    tmp_path, dataset, fake_checkpoint, args, needle):
  """What every mode's docstring promises: a bad flag is one line, with
  TensorFlow never imported: here it cannot be (a refusal in well under a
  second)."""
  import subprocess
  import sys
  from conftest import REPO, subprocess_env
  args = [a.format(tmp=tmp_path, csv=dataset['train_csv'],
                   ckpt=fake_checkpoint) for a in args]
  result = subprocess.run(
      [sys.executable, '-c', WITHOUT_TENSORFLOW,
       os.path.join(REPO, 'main.py'), '--class_map_path', CLASS_MAP] + args,
      env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert_one_error(result, needle)


def test_the_core_imports_without_tensorflow(tmp_path):
  """Every module of tagger/core/ (flags' checks, params, sources, files,
  checkpoint naming, stopping, the runtime, the machine), every mode's
  declaration (tagger/modes/*_mode.py, with the shared flags, engine flags
  and hparams records) and the cluster's checks import where TensorFlow
  cannot be imported."""
  import glob
  import subprocess
  import sys
  from conftest import REPO, subprocess_env
  modules = ['tagger.core.' + os.path.basename(p)[:-3] for p in glob.glob(
      os.path.join(REPO, 'tagger', 'core', '*.py'))]
  modules += ['tagger.modes.' + os.path.basename(p)[:-3] for p in glob.glob(
      os.path.join(REPO, 'tagger', 'modes', '*_mode.py'))]
  modules += ['tagger.modes.mode', 'tagger.modes.engine_flags',
              'tagger.modes.records', 'tagger.training.cluster_config',
              'tagger.training.distribution']
  assert {'tagger.core.params', 'tagger.core.files', 'tagger.core.sources',
          'tagger.modes.train_mode', 'tagger.modes.tag_mode'} <= set(modules)
  script = tmp_path / 'import_core.py'
  script.write_text('import sys\nsys.path.insert(0, %r)\n' % REPO + ''.join(
      'import %s\n' % n for n in sorted(modules)
      if not n.endswith('__init__')) + 'print("imported")\n')
  result = subprocess.run(
      [sys.executable, '-c', WITHOUT_TENSORFLOW, str(script)],
      env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and result.stdout == 'imported\n', (
      result.stderr[-2000:])
