"""Training with tf.distribute on CPU, two logical devices under
MirroredStrategy (tests/support/two_devices.py, forked): the steps of two
replicas equal those of one device (unless batch norm is not synchronized),
for the CRNN and MobileNet; a mirrored run of two sources trains, and eval
reads its checkpoints."""

import json
import os
import re

import numpy as np
import pytest

from support.cli import check_ok, run_main
from support.settings import CLASS_MAP, REPO
from support.distributed import CRNN


SUPPORT = os.path.join(REPO, 'tests', 'support')


# Runs tests/support/two_devices.py as `python -c` would run it, in a forked run
# where it can be (TensorFlow imported, no op run: the CPU can still be split).
TWO_DEVICES = ('import runpy, sys; sys.argv = [%r] + sys.argv[2:]; '
               'runpy.run_path(sys.argv[0], run_name="__main__")'
               % os.path.join(SUPPORT, 'two_devices.py'))


def two_devices(*args, check=True):
  result = run_main(args, timeout=600, script=TWO_DEVICES)
  if check:
    assert result.returncode == 0, (result.stderr[-3000:] +
                                    result.stdout[-2000:])
  return result


def steps(model_name, text, weights='weights'):
  """two_devices.steps_in on one device, then on two replicas."""
  lines = two_devices('steps', model_name, text, 'none,mirrored',
                      weights).stdout.splitlines()
  return [json.loads(line) for line in lines[-2:]]


@pytest.mark.parametrize('optimizer', ['opt=sgd,lr=0.1,momentum=0.9',
                                       'lr=0.001'])
def test_mirrored_steps_equal_one_device(optimizer):
  """Three steps on two replicas (two examples each) equal three steps on
  one device with the four examples: same losses, same weights, moving
  statistics included. Tolerance: float32 rounding of sums taken in another
  order (1e-6 on losses); with Adam, whose update divides by the root of the
  squared gradient, rounding in near-zero gradients moves a weight by up to
  ~lr, hence 3e-3 (3 steps at lr 1e-3) there."""
  text = CRNN + ',' + optimizer
  one, two = steps('crnn', text)
  assert one['step'] == two['step'] == 3
  np.testing.assert_allclose(two['losses'], one['losses'], rtol=1e-6)
  atol = 1e-5 if 'sgd' in optimizer else 3e-3
  moved = 0
  for path, value in one['weights'].items():
    np.testing.assert_allclose(two['weights'][path], value, atol=atol,
                               rtol=0, err_msg=path)
    moved += path.endswith('moving_mean') and np.abs(value).max() > 1e-3
  assert moved == 5  # every batch norm's statistics took part


def test_unsynchronized_batch_norm_is_not_the_single_device_run():
  """bn_sync=0: each replica normalises with its own two examples, so even
  the first loss differs from the single-device one (which bn_sync=1
  matches, above)."""
  one, two = steps('crnn', CRNN + ',bn_sync=0')
  assert abs(one['losses'][0] - two['losses'][0]) > 1e-4


def test_mirrored_mobilenet_first_step():
  """MobileNet's layer table at a quarter of its width (the same layers,
  depthwise convolutions and batch norms; a fifth of the time). The first
  loss comes before any update, so SGD, whose update traces in a third of
  Adam's time, changes nothing it compares."""
  one, two = steps('mobilenet-v1', 'batch_size=4,width=0.25,opt=sgd',
                   'losses')
  np.testing.assert_allclose(two['losses'][0], one['losses'][0], rtol=1e-5)


def test_mirrored_training_run_and_eval(tmp_path, dataset):
  """Two sources, the second noisy (its examples get the noisy loss), on
  two replicas."""
  train_dir = str(tmp_path / 'train')
  out = two_devices(
      'train', dataset['train_csv'] + ',' + dataset['validation_csv'],
      dataset['train_clip_dir'] + ',' + dataset['train_clip_dir'],
      train_dir, CRNN + ',noisy_loss=lq', '3', 'curated,noisy').stdout
  assert 'Training on MirroredStrategy: 2 replica(s)' in out
  assert re.search(r'^Source 1 \(curated\): .*train.csv, 8 clips', out, re.M)
  assert re.search(r'^Source 2 \(noisy\): .*validation.csv, 4 clips', out,
                   re.M)
  # batch_size in all: each replica takes half of it from the pipeline.
  assert 'Each step takes 4 examples: 2 on each of the 2 replicas' in out
  assert re.findall(r'^step (\d+) loss', out, re.M) == ['1', '2', '3']
  assert sorted(n for n in os.listdir(train_dir) if n.endswith('.index')) == [
      'model.ckpt-0.index', 'model.ckpt-3.index']
  result = check_ok(run_main(
      ['--mode', 'eval', '--class_map_path', CLASS_MAP,
       '--eval_clip_dir', dataset['train_clip_dir'],
       '--eval_csv_path', dataset['validation_csv'], '--train_dir', train_dir,
       '--eval_dir', str(tmp_path / 'eval')]))
  assert len(re.findall(r'^Overall lwlrap = ', result.stdout, re.M)) == 2
  # batch_size must split evenly over the replicas.
  failed = two_devices('train', dataset['train_csv'],
                       dataset['train_clip_dir'], str(tmp_path / 'odd'),
                       'batch_size=3,crnn_filters=4', '1', check=False)
  assert failed.returncode == 1
  assert 'batch_size=3: must be a multiple of the 2 replicas' in failed.stdout
