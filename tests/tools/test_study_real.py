"""One real study through study.py's command line: two seeds of a tiny
CRNN trained and scored by main.py."""

import csv
import json
import os
import sys

import pytest

from support.cli import run_main
from support.settings import CLASS_MAP, FEW_BN_BATCHES
from tools import study
from tools.studylib import runs as runs_lib
from tools.studylib import stats


# --- A real study -----------------------------------------------------------

class ForkedMain:
  """Runs study.py's commands of main.py as run_main does (forked where it
  can be), each one's output appended to its log as runner_lib.CommandRunner has it."""

  def __init__(self):
    self.modes = []

  def __call__(self, argv, log_path, cwd):
    assert argv[:2] == [sys.executable, runs_lib.MAIN]
    self.modes.append(argv[argv.index('--mode') + 1])
    result = run_main(argv[2:], cwd=cwd, timeout=600)
    with open(log_path, 'a') as log:
      log.write(result.stdout + result.stderr)
    return result.returncode


def test_real_study_of_two_seeds(tmp_path, dataset, capsys):
  """crnn, 1 configuration x 2 seeds x 2 steps, scored at step 2 on the
  validation clips, through study.py's command line (its runs of main.py
  forked: test_stop_is_passed_to_the_command covers runner_lib.CommandRunner)."""
  spec = tmp_path / 'study.json'
  spec.write_text(json.dumps({
      'class_map': CLASS_MAP, 'train_csv': dataset['train_csv'],
      'train_clip_dir': dataset['train_clip_dir'],
      'test_csv': dataset['validation_csv'],
      'test_clip_dir': dataset['train_clip_dir'], 'model': 'crnn',
      'seeds': [1, 2],
      'configs': {'tiny': {'hparams': 'batch_size=4,crnn_filters=4,' +
                                      FEW_BN_BATCHES,
                           'max_steps': 2, 'eval_steps': [2]}}}))
  out = tmp_path / 'out'
  command = ['--spec', str(spec), '--study_dir', str(out)]
  runner = ForkedMain()
  assert study.main(command, runner=runner) == 0, capsys.readouterr()
  assert runner.modes == ['train', 'eval', 'train', 'eval']
  assert '[2/2] tiny/seed-2: done in ' in capsys.readouterr().out
  runs = out / 'runs' / 'tiny'
  with open(out / 'results.csv') as f:
    results = list(csv.DictReader(f))
  assert [(r['config'], r['seed'], r['step']) for r in results] == [
      ('tiny', '1', '2'), ('tiny', '2', '2')]
  for r in results:
    assert float(r['lwlrap']) == stats.read_lwlrap(str(out / r['eval_file']))
    assert r['eval_file'] == 'runs/tiny/seed-%s/eval/eval-2.txt' % r['seed']
  # Each run trained with its own seed, and the seeds made different runs.
  weights = []
  for seed in (1, 2):
    train = runs / ('seed-%d' % seed) / 'train'
    recorded = json.loads((train / 'hparams.json').read_text())['hparams']
    assert (recorded['seed'], recorded['crnn_filters']) == (seed, 4)
    weights.append((train / 'model.ckpt-2.data-00000-of-00001').read_bytes())
    # Only the chosen step is scored.
    scored = os.listdir(runs / ('seed-%d' % seed) / 'eval')
    assert [n for n in scored if n.startswith('eval-')] == ['eval-2.txt']
  assert weights[0] != weights[1]
  with open(out / 'table.csv') as f:
    (row,) = list(csv.DictReader(f))
  assert (row['config'], row['step'], row['seeds']) == ('tiny', '2', '2')
  assert float(row['mean']) == pytest.approx(
      sum(float(r['lwlrap']) for r in results) / 2)
  assert (out / 'lwlrap.png').read_bytes()[:4] == b'\x89PNG'
  # Run again: everything is done, nothing runs.
  log = (runs / 'seed-1' / 'train.log').read_text()
  again = ForkedMain()
  assert study.main(command, runner=again) == 0 and again.modes == []
  assert '2 finished already' in capsys.readouterr().out
  assert (runs / 'seed-1' / 'train.log').read_text() == log
