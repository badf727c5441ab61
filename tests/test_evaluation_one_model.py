"""Eval of one model (--inference_checkpoint, a checkpoint or an ensemble's,
instead of --train_dir): what it refuses before anything is scored. Its
scores are held to its members' in engines/test_ensemble.py."""

import os
import shutil

import pytest

from support.cli import assert_one_error, run_main
from support.settings import CLASS_MAP


@pytest.mark.parametrize('case', ['both', 'neither', 'continuous', 'renamed',
                                  'scored'])
def test_what_eval_of_one_model_refuses(fake_checkpoint, dataset, tmp_path,
                                        case):
  prefix = fake_checkpoint
  eval_dir = tmp_path / 'eval'
  if case == 'renamed':
    prefix = str(tmp_path / 'best')
    shutil.copy(fake_checkpoint + '.index', prefix + '.index')
  if case == 'scored':
    eval_dir.mkdir()
    (eval_dir / 'eval-1.txt').write_text('Overall lwlrap = 0.5\n')
  args = ['--mode', 'eval', '--class_map_path', CLASS_MAP,
          '--eval_csv_path', dataset['validation_csv'],
          '--eval_clip_dir', dataset['train_clip_dir'],
          '--eval_dir', str(eval_dir)]
  args += {'both': ['--train_dir', str(tmp_path), '--inference_checkpoint',
                    prefix],
           'neither': [],
           'continuous': ['--inference_checkpoint', prefix + ',' + prefix,
                          '--eval_continuous']}.get(
                              case, ['--inference_checkpoint', prefix])
  needle = {
      'both': 'give one of them', 'neither': 'give one of them',
      'continuous': '--eval_continuous watches --train_dir',
      'renamed': '--inference_checkpoint: %s is not named model.ckpt-N' %
                 prefix,
      'scored': '--eval_dir: %s exists (a result of step 1' %
                (eval_dir / 'eval-1.txt')}[case]
  assert_one_error(run_main(args), needle)
  left = os.listdir(str(eval_dir)) if eval_dir.exists() else []
  assert left == (['eval-1.txt'] if case == 'scored' else [])
