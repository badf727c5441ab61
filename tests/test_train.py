"""The training loop of train.py, in-process and through main.py: every loss
trains, the default length (1000 epochs), examples kept in memory
(--train_cache_examples, refused when they would not fit), seeds that repeat
a run bit for bit, and the progress line."""

import os
import re
import shutil

import numpy as np
import pytest

from tagger.core import checkpoints
from support import reference
from support.training_runs import (MFOM_KEYS, checkpoint_reader,
                                   printed_losses, run_training, saved_weight)
from support.settings import FEW_BN_BATCHES


# --- losses -----------------------------------------------------------------

@pytest.mark.parametrize('loss', ['bce', 'mfom_eer_embed', 'mfom_microf1',
                                  'mfom_eer_normalized', 'mfom_cprim'])
def test_each_loss_trains_crnn(tmp_path, dataset, loss):
  out = run_training(dataset, 'crnn', 'batch_size=4,loss=' + loss, tmp_path, 2)
  losses = printed_losses(out)
  assert [s for s, _ in losses] == [1, 2]
  assert all(np.isfinite(l) for _, l in losses), losses
  keys = checkpoint_reader(
      str(tmp_path / 'model.ckpt-2')).get_variable_to_shape_map()
  layer_based = loss in ('mfom_microf1', 'mfom_eer_normalized', 'mfom_cprim')
  for path in MFOM_KEYS:
    assert (checkpoints.checkpoint_key(path) in keys) == layer_based, path
    if layer_based:
      assert keys[checkpoints.checkpoint_key(path)] == [80]
  assert checkpoints.checkpoint_key('logits/kernel') in keys


def test_mfom_loss_trains_mobilenet(tmp_path, dataset):
  """At a quarter of the width: the same layer table, a fraction of the
  time."""
  out = run_training(dataset, 'mobilenet-v1',
                     'batch_size=4,width=0.25,loss=mfom_eer_normalized',
                     tmp_path, 2)
  losses = printed_losses(out)
  assert [s for s, _ in losses] == [1, 2]
  assert all(np.isfinite(l) for _, l in losses), losses
  reader = checkpoint_reader(str(tmp_path / 'model.ckpt-2'))
  alpha = saved_weight(reader, MFOM_KEYS[0])
  assert alpha.shape == (80,) and np.all(np.isfinite(alpha))
  assert checkpoints.checkpoint_key('sepconv13/pointwise/kernel') in (
      reader.get_variable_to_shape_map())


# --- the 1000-epoch default -------------------------------------------------

@pytest.fixture(scope='module')
def one_example_clip(tmp_path_factory):
  """A 0.3 s clip: exactly one example, so an epoch is one batch of 1."""
  from support.signals import write_pcm_wav
  folder = tmp_path_factory.mktemp('one_example')
  (folder / 'clips').mkdir()
  samples = np.random.default_rng(5).integers(-8000, 8000, int(0.3 * 44100))
  write_pcm_wav(folder / 'clips' / 'one.wav', samples)
  assert reference.np_num_examples(len(samples),
                                   reference.README_DEFAULTS) == 1
  (folder / 'train.csv').write_text('fname,labels\none.wav,Bass_drum\n')
  return {'train_csv': str(folder / 'train.csv'),
          'train_clip_dir': str(folder / 'clips')}


def test_training_runs_the_default_epochs_without_max_steps(
    tmp_path, one_example_clip, monkeypatch):
  """No max_steps (main.py passes None without --max_steps): DEFAULT_EPOCHS
  epochs (1000, asserted below; 30 here, with a checkpoint every 10 steps
  instead of 100, to keep the test short) of one batch each, i.e. 30
  steps. In-process."""
  import train
  monkeypatch.setattr(train, 'DEFAULT_EPOCHS', 30)
  monkeypatch.setattr(checkpoints, 'CHECKPOINT_EVERY', 10)
  train_dir = tmp_path / 'train'
  out = run_training(one_example_clip, 'crnn', 'batch_size=1,crnn_filters=1',
                     train_dir, None)
  assert [s for s, _ in printed_losses(out)] == list(range(1, 31))
  assert out.rstrip().endswith('Training finished at step 30')
  steps = sorted(int(m.group(1)) for m in (
      re.fullmatch(r'model\.ckpt-(\d+)\.index', n)
      for n in os.listdir(str(train_dir))) if m)
  assert steps == [0, 10, 20, 30]


def test_epoch_num_batches_sets_the_default_length(tmp_path, dataset,
                                                   monkeypatch):
  """With --epoch_num_batches and no --max_steps, training runs
  DEFAULT_EPOCHS x epoch_num_batches steps (here 3 x 2 = 6 steps, though
  the data hold more batches than that per epoch)."""
  import train
  assert train.DEFAULT_EPOCHS == 1000
  monkeypatch.setattr(train, 'DEFAULT_EPOCHS', 3)
  out = run_training(dataset, 'crnn', 'batch_size=4,crnn_filters=2', tmp_path,
                     None, epoch_num_batches=2)
  assert [s for s, _ in printed_losses(out)] == [1, 2, 3, 4, 5, 6]
  assert 'Training finished at step 6' in out


# --- examples kept in memory ------------------------------------------------

def test_train_cache_examples_reads_each_clip_once(tmp_path, dataset):
  """Through main.py on one device: with --train_cache_examples the clips
  can be deleted once training has started (the first batch waits for the
  whole first epoch to be cached) and later epochs still train."""
  from support.cli import train_args
  from support.cli import Run
  clips = tmp_path / 'clips'
  shutil.copytree(dataset['train_clip_dir'], str(clips))
  train_dir = tmp_path / 'cached'
  run = Run(train_args(
      'crnn', str(clips), dataset['train_csv'], str(train_dir), 30,
      hparams='batch_size=4,crnn_filters=4,' + FEW_BN_BATCHES,
      extra=['--train_cache_examples']))
  run.wait_for(r'step 2 loss')
  shutil.rmtree(str(clips))
  rc, out, err = run.finish(timeout=300)
  assert rc == 0, err[-3000:]
  match = re.search(r'kept in memory after the first epoch '
                    r'\(--train_cache_examples\): (\d+) examples, (\S+) GB',
                    out)
  # Each example: 100 frames x 96 bands and 80 labels, float32.
  from tagger.core import params
  hparams = params.parse_hparams()
  examples = sum(int(reference.np_num_examples(n, hparams))
                 for n in _clip_lengths(dataset))
  assert int(match.group(1)) == examples
  assert float(match.group(2)) == pytest.approx(
      examples * 4 * (100 * 96 + 80) / 1e9, abs=0.006)
  losses = printed_losses(out)
  # 30 steps of 4 examples are several epochs of the ~20 examples.
  assert [s for s, _ in losses] == list(range(1, 31)) and 30 * 4 > 3 * examples
  assert all(np.isfinite(l) for _, l in losses)
  assert (train_dir / 'model.ckpt-30.index').exists()


def _clip_lengths(dataset):
  from tagger.sound import wav
  from support.scores import labeled_rows
  return [wav.read_header(os.path.join(dataset['train_clip_dir'],
                                       fname)).num_frames
          for fname, _ in labeled_rows(dataset['train_csv'])]


def test_a_cache_larger_than_memory_is_refused(tmp_path):
  """Sparse 13.5-hour clips (their samples a hole in the file) whose
  examples would take more memory than the machine has: one line with the
  size, before any training."""
  from support.cli import run_main, train_args
  from support.cli import assert_one_error
  from support.signals import write_sparse_wav
  from tagger.core import runtime
  per_clip = int(13.5 * 3600 * 2) * 4 * (100 * 96 + 80)  # ~3.7 GB
  count = runtime.available_memory() // per_clip + 2
  clips = tmp_path / 'clips'
  clips.mkdir()
  with open(str(tmp_path / 'train.csv'), 'w') as f:
    f.write('fname,labels\n')
    for i in range(count):
      write_sparse_wav(str(clips / ('%d.wav' % i)), 13.5)
      f.write('%d.wav,Bark\n' % i)
  train_dir = tmp_path / 'train'
  line = assert_one_error(run_main(train_args(
      'crnn', str(clips), str(tmp_path / 'train.csv'), str(train_dir), 1,
      extra=['--train_cache_examples'])), '--train_cache_examples',
                          'memory available')
  size = float(re.search(r'take (\S+) GB', line).group(1))
  assert size == pytest.approx(count * per_clip / 1e9, rel=0.01)
  assert not list(train_dir.glob('model.ckpt-*'))


# --- seeds ------------------------------------------------------------------

SEEDED = ('batch_size=4,crnn_filters=4,crnn_dropout=0.3,bn_stats_batches=2,'
          'specaug_time_masks=1,specaug_time_width=30,mixup=0.4')


def _checkpoint_values(prefix):
  """Every saved value (not the object graph, which names the optimizer by a
  process-wide counter)."""
  reader = checkpoint_reader(prefix)
  return {key: reader.get_tensor(key)
          for key in reader.get_variable_to_shape_map()
          if key != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def test_a_seed_repeats_a_run_bit_for_bit(tmp_path, dataset):
  """A run without a seed draws one, prints it and records it; a run given
  that seed, on FLAC copies of the WAV clips, writes the same checkpoints,
  every value equal (weights, optimizer slots, moving and precise
  batch-norm statistics), with dropout, SpecAugment and mixup on and
  shuffled data; another seed does not."""
  import json
  from support.cli import check_ok, run_main, train_args

  def run(name, clip_dir, csv_path, hparams):
    train_dir = str(tmp_path / name)
    out = check_ok(run_main(train_args(
        'crnn', clip_dir, csv_path, train_dir, 3, hparams=hparams))).stdout
    return train_dir, out

  drawn_dir, out = run('drawn', dataset['train_clip_dir'],
                       dataset['train_csv'], SEEDED)
  seed = int(re.search(r'^Seed (\d+) drawn for this run', out, re.M).group(1))
  with open(os.path.join(drawn_dir, 'hparams.json')) as f:
    assert json.load(f)['hparams']['seed'] == seed
  # Given that seed, on a lossless FLAC copy of the clips (decoded by
  # libsndfile, not tf.data's WAV reader): the same run.
  again_dir, again_out = run('again', str(tmp_path / 'flac'),
                             _flac_copy(dataset, tmp_path / 'flac'),
                             SEEDED + ',seed=%d' % seed)
  assert 'drawn' not in again_out
  assert [s for s, _ in printed_losses(again_out)] == [1, 2, 3]
  assert printed_losses(again_out) == printed_losses(out)
  for step in (0, 3):
    first = _checkpoint_values(os.path.join(drawn_dir, 'model.ckpt-%d' % step))
    second = _checkpoint_values(os.path.join(again_dir,
                                             'model.ckpt-%d' % step))
    assert sorted(first) == sorted(second) and len(first) > 50
    for key, value in first.items():
      np.testing.assert_array_equal(second[key], value, err_msg=key)
  # Another seed (in this process: the point is the seed, not the process).
  other_out = run_training(dataset, 'crnn',
                           SEEDED + ',seed=%d' % (seed % 1000 + 1),
                           tmp_path / 'other', 1)
  assert printed_losses(other_out) != printed_losses(out)[:1]
  key = checkpoints.checkpoint_key('logits/kernel')
  initial = _checkpoint_values(os.path.join(drawn_dir, 'model.ckpt-0'))
  other = _checkpoint_values(str(tmp_path / 'other' / 'model.ckpt-0'))
  assert np.abs(other[key] - initial[key]).max() > 0.01


def _flac_copy(dataset, folder):
  """The training clips as 16-bit FLAC files in folder; its CSV's path."""
  import soundfile
  from tools import make_demo_data
  from support.scores import labeled_rows
  os.makedirs(str(folder))
  rows = []
  for fname, labels in labeled_rows(dataset['train_csv']):
    pcm, rate = soundfile.read(os.path.join(dataset['train_clip_dir'],
                                            fname), dtype='int16')
    rows.append((fname[:-4] + '.flac', labels))
    soundfile.write(str(folder / rows[-1][0]), pcm, rate, subtype='PCM_16')
  make_demo_data.write_csv(str(folder / 'train.csv'), rows)
  return str(folder / 'train.csv')


def test_two_resumes_of_a_checkpoint_are_the_same_run(tmp_path, dataset):
  """A run resumed at step 2 continues with streams seeded by its seed and
  the step: resuming the same checkpoint twice gives the same weights."""
  hparams = SEEDED + ',seed=123'
  first = tmp_path / 'first'
  run_training(dataset, 'crnn', hparams, first, 2)
  shutil.copytree(str(first), str(tmp_path / 'second'))
  outs = [run_training(dataset, 'crnn', hparams, tmp_path / name, 4)
          for name in ('first', 'second')]
  assert [s for s, _ in printed_losses(outs[0])] == [3, 4]
  assert printed_losses(outs[0]) == printed_losses(outs[1])
  a = _checkpoint_values(str(first / 'model.ckpt-4'))
  b = _checkpoint_values(str(tmp_path / 'second' / 'model.ckpt-4'))
  for key, value in a.items():
    np.testing.assert_array_equal(b[key], value, err_msg=key)


def test_stream_seeds_differ_by_resume_step():
  import train
  assert train.stream_seed(123, 0) == 123
  seeds = {train.stream_seed(123, step) for step in (0, 100, 200, 300)}
  assert len(seeds) == 4 and all(0 < s < 2 ** 31 for s in seeds)
  assert train.stream_seed(124, 100) != train.stream_seed(123, 100)
  assert train.stream_seed(123, 100) == train.stream_seed(123, 100)


# --- the progress line ------------------------------------------------------

def test_progress_line(monkeypatch):
  """Steps 200 to 220 in 10 s, batch 16: 2 steps/s, 32 examples/s, and
  780 steps to step 1000 at that rate take 6 min 30 s."""
  import train
  monkeypatch.setattr(train.time, 'time', lambda: 110.0)
  assert train._progress(220, 0.25, 200, 100.0, 16, 1000) == (
      'step 220 loss 0.250000 (2.00 steps/s, 32.0 examples/s, 0:06:30 left)')
  assert train._progress(220, 0.25, 200, 100.0, 16, None) == (
      'step 220 loss 0.250000 (2.00 steps/s, 32.0 examples/s)')
