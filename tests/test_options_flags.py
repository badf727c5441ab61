"""Every flag of main.py reaches the work it steers: main.run() in this
process with the work of each mode replaced by a recorder, each flag set to
a value other than its default, and what the mode was given compared with
it. Training refuses before any work what its hparams ask for and were not
given; warmstart=1 loads a recorded checkpoint's weights of the scopes
included and not excluded."""

import contextlib
import io
import os

import numpy as np
import pytest

from support.options import hparams_of, raw_weight
from support.scores import read_class_names
from support.settings import CLASS_MAP



# --- every flag of main.py reaches the work it steers -----------------------

@pytest.fixture(scope='module')
def recorded_checkpoint(tmp_path_factory):
  """A train_dir holding model.ckpt-3 of a tiny CRNN with its run record,
  written in-process."""
  import keras
  import train
  train_dir = tmp_path_factory.mktemp('recorded') / 'train'
  train_dir.mkdir()
  hparams = hparams_of('crnn_filters=2,mel_bands=64,batch_size=2,seed=3')
  keras.utils.set_random_seed(3)
  state = train.state_lib.TrainingState('crnn', hparams, len(read_class_names()), None)
  state.step.assign(3)
  prefix = str(train_dir / 'model.ckpt-3')
  state.checkpoint.write(prefix)
  return {'train_dir': str(train_dir), 'prefix': prefix}


def test_training_flags_reach_the_training_run(cli, dataset, tmp_path,
                                               recorded_checkpoint):
  """Every training flag, set to a value other than its default, is what
  the training run and the distribution strategy are given."""
  csvs = [dataset['train_csv'], dataset['validation_csv']]
  calls = cli([
      '--mode', 'train', '--model', 'crnn',
      '--train_csv_path', ','.join(csvs),
      '--train_clip_dir', ','.join([dataset['train_clip_dir']] * 2),
      '--train_source_weights', '3,1', '--train_source_kinds', 'curated,noisy',
      '--train_dir', tmp_path / 'train', '--epoch_num_batches', 5,
      '--max_steps', 9, '--train_cache_examples', '--features_on', 'device',
      '--distribution', 'none', '--cluster_start_timeout_seconds', 33,
      '--hparams', 'batch_size=2,warmstart=1,lrdecay=0.5',
      '--warmstart_checkpoint', recorded_checkpoint['prefix'] + '.index',
      '--warmstart_include_scopes', 'conv1,gru',
      '--warmstart_exclude_scopes', 'logits'])
  assert list(calls['make_strategy'].values()) == ['none', 33.0]
  given = calls['train']
  assert given['model_name'] == 'crnn'
  assert (given['hparams'].batch_size, given['hparams'].warmstart,
          given['hparams'].lrdecay) == (2, 1, 0.5)
  assert given['class_names'] == read_class_names()
  assert [(s.csv_path, s.clip_dir, s.weight, s.noisy)
          for s in given['sources']] == [
              (csvs[0], dataset['train_clip_dir'], 3.0, False),
              (csvs[1], dataset['train_clip_dir'], 1.0, True)]
  assert given['train_dir'] == str(tmp_path / 'train')
  assert (given['epoch_num_batches'], given['max_steps']) == (5, 9)
  assert given['warmstart_checkpoint'] == recorded_checkpoint['prefix']
  assert list(given['warmstart_include_scopes']) == ['conv1', 'gru']
  assert list(given['warmstart_exclude_scopes']) == ['logits']
  assert given['cache_examples'] is True
  assert given['features_on'] == 'device'


def test_eval_flags_reach_the_eval_loop(cli, dataset, tmp_path,
                                        recorded_checkpoint):
  """The eval flags (continuous, its timings, the claim timeout) and the
  engine flags reach the eval loop, which scores the run's recorded model
  and hparams with --hparams on top."""
  from tagger.core import files
  calls = cli([
      '--mode', 'eval', '--eval_csv_path', dataset['validation_csv'],
      '--eval_clip_dir', dataset['train_clip_dir'],
      '--train_dir', recorded_checkpoint['train_dir'],
      '--eval_dir', tmp_path / 'eval', '--eval_continuous',
      '--eval_poll_seconds', 7, '--eval_idle_timeout_seconds', 11,
      '--eval_claim_timeout_seconds', 13, '--engine', 'tflite',
      '--tflite_threads', 3, '--quantize', 'dynamic',
      '--hparams', 'lr=0.5'])
  waited = calls['wait_for_first_checkpoint']
  assert list(waited.values()) == [recorded_checkpoint['train_dir'], 7.0,
                                   11.0]
  given = calls['evaluate']
  # The model and hparams of the run's record, --hparams on top.
  assert given['model_name'] == 'crnn'
  assert (given['hparams'].crnn_filters, given['hparams'].lr) == (2, 0.5)
  assert given['rows'] == files.read_labeled_csv(
      dataset['validation_csv'], dataset['train_clip_dir'],
      read_class_names())
  assert given['clip_dir'] == dataset['train_clip_dir']
  assert given['train_dir'] == recorded_checkpoint['train_dir']
  assert given['eval_dir'] == str(tmp_path / 'eval')
  assert given['continuous'] is True
  assert (given['poll_seconds'], given['claim_timeout_seconds'],
          given['idle_timeout_seconds']) == (7.0, 13.0, 11.0)
  engine = given['engine']
  assert (engine.kind, engine.threads, engine.quantize) == (
      'tflite', 3, 'dynamic')


def test_inference_and_export_flags_reach_their_work(cli, dataset, tmp_path,
                                                     recorded_checkpoint):
  """Inference gets its clips, checkpoint, output and an int8 engine
  calibrated on the --calibration_* clips; export its checkpoint, folder
  and --quantize."""
  from tagger.core import files
  prefix = recorded_checkpoint['prefix']
  calls = cli([
      '--mode', 'inference', '--inference_clip_dir', dataset['test_clip_dir'],
      '--inference_checkpoint', prefix,
      '--predictions_csv_path', tmp_path / 'submission.csv',
      '--engine', 'tflite', '--quantize', 'int8',
      '--calibration_csv_path', dataset['train_csv'],
      '--calibration_clip_dir', dataset['train_clip_dir']])
  given = calls['infer']
  assert given['clip_dir'] == dataset['test_clip_dir']
  assert given['fnames'] == sorted(os.listdir(dataset['test_clip_dir']))
  assert given['checkpoint_path'] == prefix
  assert given['predictions_csv_path'] == str(tmp_path / 'submission.csv')
  assert (given['engine'].kind, given['engine'].quantize) == ('tflite',
                                                              'int8')
  rows = files.read_labeled_csv(dataset['train_csv'],
                                dataset['train_clip_dir'],
                                read_class_names())
  assert list(given['engine'].calibration_paths) == [
      os.path.join(dataset['train_clip_dir'], f) for f, _ in rows]
  calls = cli(['--mode', 'export', '--inference_checkpoint', prefix,
               '--export_dir', tmp_path / 'export', '--quantize', 'dynamic'])
  given = calls['export']
  assert given['class_map_path'] == CLASS_MAP
  assert given['checkpoint_path'] == prefix
  assert given['export_dir'] == str(tmp_path / 'export')
  assert given['quantize'] == 'dynamic'


def test_tag_and_relabel_flags_reach_their_work(cli, dataset, tmp_path,
                                                recorded_checkpoint):
  """Tag gets its files, --top_k and the timeline's path; relabel its
  CSV's rows, clips, output and both thresholds."""
  from tagger.core import files
  prefix = recorded_checkpoint['prefix']
  clips = sorted(os.listdir(dataset['test_clip_dir']))
  paths = [os.path.join(dataset['test_clip_dir'], f) for f in clips[:2]]
  calls = cli(['--mode', 'tag', '--inference_checkpoint', prefix,
               '--tag_paths', ','.join(paths), '--top_k', 5,
               '--timeline_csv_path', tmp_path / 'timeline.csv'])
  given = calls['tag']
  assert given['paths'] == paths
  assert given['checkpoint_path'] == prefix
  assert given['top_k'] == 5
  assert given['timeline_csv_path'] == str(tmp_path / 'timeline.csv')
  calls = cli(['--mode', 'relabel', '--inference_checkpoint', prefix,
               '--relabel_csv_path', dataset['train_csv'],
               '--relabel_clip_dir', dataset['train_clip_dir'],
               '--relabeled_csv_path', tmp_path / 'relabelled.csv',
               '--relabel_keep_threshold', 0.3,
               '--relabel_add_threshold', 0.9])
  given = calls['relabel']
  assert given['rows'] == files.read_labeled_csv(
      dataset['train_csv'], dataset['train_clip_dir'], read_class_names())
  assert given['clip_dir'] == dataset['train_clip_dir']
  assert given['checkpoint_path'] == prefix
  assert given['output_path'] == str(tmp_path / 'relabelled.csv')
  assert (given['keep_threshold'], given['add_threshold']) == (0.3, 0.9)


def test_training_needs_what_its_hparams_ask_for(cli, dataset, tmp_path,
                                                 recorded_checkpoint):
  """lrdecay needs --epoch_num_batches, warmstart=1 a checkpoint and
  cosine_decay=1 a horizon past the warm-up (decay_horizon, --max_steps, or
  1000 epochs of --epoch_num_batches); MFoM refuses several sources and
  mixup a noisy one: each refused before any work, and accepted with what
  it needs."""
  from tagger.core import files
  base = ['--mode', 'train', '--model', 'crnn',
          '--train_csv_path', dataset['train_csv'],
          '--train_clip_dir', dataset['train_clip_dir'],
          '--train_dir', tmp_path / 'train']
  two = ['--train_csv_path', dataset['train_csv'] + ',' +
         dataset['validation_csv'], '--train_clip_dir',
         dataset['train_clip_dir'] + ',' + dataset['train_clip_dir']]
  for args, needle in (
      (['--hparams', 'lrdecay=0.5'], '--epoch_num_batches'),
      (['--hparams', 'warmstart=1'], '--warmstart_checkpoint'),
      (two + ['--hparams', 'loss=mfom_microf1'], 'loss=mfom_microf1'),
      (two + ['--train_source_kinds', 'curated,noisy', '--hparams',
              'mixup=0.3'], 'mixup=0.3'),
      (['--hparams', 'cosine_decay=1'], 'decay_horizon or --max_steps'),
      (['--hparams', 'cosine_decay=1,warmup_steps=50', '--max_steps', 40],
       'warmup_steps=50')):
    with pytest.raises(files.UserError, match=needle):
      cli(base + args)
  for args in (['--hparams', 'lrdecay=0.5', '--epoch_num_batches', 3],
               ['--hparams', 'warmstart=1', '--warmstart_checkpoint',
                recorded_checkpoint['prefix']],
               ['--hparams', 'loss=mfom_microf1'],
               two + ['--hparams', 'mixup=0.3'],
               ['--hparams', 'cosine_decay=1', '--max_steps', 40],
               ['--hparams', 'cosine_decay=1', '--epoch_num_batches', 2],
               ['--hparams', 'cosine_decay=1,decay_horizon=60'],
               ['--hparams', 'cosine_decay=1,warmup_steps=50,'
                'decay_horizon=60', '--max_steps', 40]):
    assert 'train' in cli(base + args)


# --- warm start from the scopes given ---------------------------------------

def test_warm_start_loads_the_included_scopes(recorded_checkpoint):
  """warmstart=1: a new run starts from the checkpoint's weights of the
  scopes included and not excluded; the others keep their initial
  values."""
  import keras
  import train
  hparams = hparams_of('crnn_filters=2,mel_bands=64,batch_size=2,seed=4,'
                       'warmstart=1')
  keras.utils.set_random_seed(4)
  state = train.state_lib.TrainingState('crnn', hparams, len(read_class_names()), None)
  initial = {v.path: v.numpy() for v in state.variables}
  with contextlib.redirect_stdout(io.StringIO()):
    resumed = train.state_lib.restore_or_warm_start(
        state, os.path.join(recorded_checkpoint['train_dir'], 'none'),
        'crnn', hparams, recorded_checkpoint['prefix'], ['conv1', 'gru'],
        ['gru'])
  assert not resumed
  import tensorflow as tf
  reader = tf.train.load_checkpoint(recorded_checkpoint['prefix'])
  moved = 0
  for v in state.variables:
    saved = raw_weight(reader, v.path)
    if v.path.startswith('conv1/'):
      np.testing.assert_array_equal(v.numpy(), saved, err_msg=v.path)
    else:
      np.testing.assert_array_equal(v.numpy(), initial[v.path])
    # The runs' seeds differ: their kernels tell the two apart.
    if v.path.endswith('kernel'):
      assert not np.array_equal(initial[v.path], saved), v.path
      moved += v.path.startswith('conv1/')
  assert moved == 1
