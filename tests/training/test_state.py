"""train.state_lib.Checkpointer, the work at each checkpoint, on its own: statistics
recomputed before the save, a killed save's leftovers removed, the chief
alone writing into train_dir, one save per step, the finished marker."""

import os

import numpy as np
import tensorflow as tf

from tagger.core import checkpoints
from tagger.core import params
import train
from support.cli import run_main
from support.settings import REPO


class _Batches:
  """Fixed statistics batches, counting the passes over them."""

  def __init__(self):
    rng = np.random.default_rng(0)
    self.batches = [rng.normal(-2, 1, (4, 100, 96)).astype(np.float32)
                    for _ in range(2)]
    self.passes = 0

  def __iter__(self):
    self.passes += 1
    return iter(self.batches)


def _checkpointer(folder, chief=True):
  state = train.state_lib.TrainingState('crnn', params.parse_hparams(
      'batch_size=4,crnn_filters=4'), 80, None)
  directory = str(folder) if chief else str(folder / '.worker-1')
  manager = tf.train.CheckpointManager(state.checkpoint, directory,
                                       max_to_keep=None,
                                       checkpoint_name=checkpoints.NAME)
  batches = _Batches()
  return train.state_lib.Checkpointer(state, manager, str(folder), batches, chief), \
      state, batches


def test_the_chief_saves_statistics_and_clears_leftovers(tmp_path):
  keeper, state, batches = _checkpointer(tmp_path)
  leftover = tmp_path / 'model.ckpt-9_temp'
  leftover.mkdir()
  state.step.assign(200)
  keeper.save()
  assert batches.passes == 1 and not leftover.exists()
  assert checkpoints.list_checkpoints(str(tmp_path)) == [
      (200, str(tmp_path / 'model.ckpt-200'))]
  reader = tf.train.load_checkpoint(str(tmp_path / 'model.ckpt-200'))
  saved = reader.get_tensor(checkpoints.checkpoint_key(
      'input_bn/moving_mean', 'precise_bn'))
  stacked = np.concatenate(batches.batches)
  np.testing.assert_allclose(saved, stacked.mean(axis=(0, 1)), rtol=1e-4)
  # The same step is not saved twice; a new one is.
  keeper.save_unless_saved()
  assert batches.passes == 1
  state.step.assign(1000)
  keeper.save_unless_saved()
  assert batches.passes == 2
  assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path))] == [
      200, 1000]
  keeper.finish(1000)
  assert (tmp_path / 'training_finished').read_text() == '1000\n'


def test_another_worker_writes_nothing_into_train_dir(tmp_path):
  keeper, state, _ = _checkpointer(tmp_path, chief=False)
  leftover = tmp_path / 'model.ckpt-9_temp'
  leftover.mkdir()  # the chief's save in progress
  state.step.assign(300)
  keeper.save()
  keeper.finish(300)
  assert leftover.exists()
  assert sorted(os.listdir(str(tmp_path))) == ['model.ckpt-9_temp']


_LINKS = r'''
import os, sys
sys.path.insert(0, %r)
from tagger.core import checkpoints
prefix = sys.argv[2]
read = [checkpoints.readable(prefix) for _ in range(2)]
for path in read:
  with open(path + '.index') as f:
    assert f.read() == 'index'
print('\n'.join(read))
'''


def test_links_to_a_glob_named_checkpoint_go_at_exit(tmp_path):
  """A prefix with glob characters is read through links to its files;
  the links are removed when the process ends, the checkpoint kept."""
  folder = tmp_path / 'run [1]*'
  folder.mkdir()
  (folder / 'model.ckpt-5.index').write_text('index')
  (folder / 'model.ckpt-5.data-00000-of-00001').write_text('data')
  prefix = str(folder / 'model.ckpt-5')
  result = run_main([prefix], timeout=120, script=_LINKS % REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  read = result.stdout.split()
  assert len(set(read)) == 2 and not any(set('[]*?') & set(p) for p in read)
  assert not [p for p in read if os.path.exists(os.path.dirname(p))]
  assert sorted(os.listdir(folder)) == ['model.ckpt-5.data-00000-of-00001',
                                        'model.ckpt-5.index']


def test_record_mismatch_names_the_first_contradiction(tagger):
  """Against the record of a trained checkpoint: the same model and
  hparams contradict nothing, nor do other training hparams; another
  model, or another value of a model-defining hparam, is named."""
  from support.settings import TAG_HPARAMS
  prefix = tagger['checkpoint']
  reader = checkpoints.open_checkpoint(prefix)
  same = params.parse_hparams(TAG_HPARAMS)
  assert checkpoints.record_mismatch(reader, prefix, 'crnn', same) is None
  steering = params.parse_hparams(TAG_HPARAMS + ',lr=0.5,batch_size=3')
  assert checkpoints.record_mismatch(reader, prefix, 'crnn', steering) is None
  assert checkpoints.record_mismatch(reader, prefix, 'mobilenet-v1', same) \
      == 'trained with --model crnn, not mobilenet-v1'
  for text, message in (
      ('crnn_filters=8', 'trained with hparam crnn_filters=4, not 8'),
      ('mel_max_hz=7000', 'trained with hparam mel_max_hz=8000, not 7000')):
    other = params.parse_hparams(TAG_HPARAMS + ',' + text)
    assert checkpoints.record_mismatch(reader, prefix, 'crnn', other) == \
        message
