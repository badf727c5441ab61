"""Bad flags are reported as one `main.py: error:` line before any work: an
unknown or missing flag or mode, bad hparams (out-of-range feature hparams
among them), a flag of another mode, an output of the wrong kind or that is
an input; --help documents every flag; and each mode's checks run, and the
core imports, where TensorFlow cannot be imported."""

import os
import re
import shutil

import pytest

from support.cli import assert_one_error, run_main, train_args
from support.settings import CLASS_MAP, HPARAMS
from support.main_args import inference_args, train_flags




# --- flags ------------------------------------------------------------------

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
  assert_one_error(run_main(train_flags(
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
     'eval, inference, export, tag and relabel'),
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
    args = inference_args(dataset['test_clip_dir'],
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
                              inference_args(str(clips), fake_checkpoint,
                                              class_map)),
      'inference-clip': ('--predictions_csv_path', clip,
                         inference_args(str(clips), fake_checkpoint, clip)),
      'inference-checkpoint': ('--predictions_csv_path',
                               fake_checkpoint + '.index',
                               inference_args(str(clips), fake_checkpoint,
                                               fake_checkpoint + '.index')),
      'eval-dir': ('--eval_dir', None, [
          '--mode', 'eval', '--eval_clip_dir', dataset['train_clip_dir'],
          '--eval_csv_path', dataset['validation_csv'],
          '--train_dir', str(tmp_path), '--eval_dir', str(tmp_path)]),
      'train-dir': ('--train_dir', None, train_flags(
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


# --- hparams and flags ------------------------------------------------------

@pytest.mark.parametrize('text,needle', [
    ('example_window_seconds=0.001', 'example_window_seconds=0.001'),
    ('stft_window_seconds=0.00001', 'stft_window_seconds=1e-05'),
    ('stft_hop_seconds=0.00001', 'stft_hop_seconds=1e-05'),
    ('example_hop_seconds=0.001', 'example_hop_seconds=0.001'),
    ('stft_window_seconds=5', 'stft_window_seconds=5.0'),
    ('mel_bands=4000', 'mel_bands=4000'),
])
def test_feature_hparams_out_of_range(dataset, tmp_path, text, needle):
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'],
      str(tmp_path / 'train'), 1, hparams=text)), '--hparams', needle)


def test_epoch_num_batches_must_be_positive(dataset, tmp_path):
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], dataset['train_csv'],
      str(tmp_path / 'train'), 1, extra=['--epoch_num_batches=0'])),
                   'epoch_num_batches')


# --- checks before TensorFlow is imported -----------------------------------

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
  from support.cli import subprocess_env
  from support.settings import REPO
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
  from support.cli import subprocess_env
  from support.settings import REPO
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
