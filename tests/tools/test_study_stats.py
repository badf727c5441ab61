"""study.py's statistics against hand-worked values: means, 95% Student t
intervals and paired differences, the table files, steps shifted by a warm
start, and the committed study results rebuilt from their runs."""

import csv
import json
import os
import re

import pytest

from support.settings import REPO
from support.study_fakes import (CONFIGS, FakeMain, fake_lwlrap, rows_by_key,
                                 write_datasets_spec, write_spec)
from tools import study
from tools.studylib import report
from tools.studylib import runs as runs_lib
from tools.studylib import spec as spec_lib
from tools.studylib import stats

# Student t 97.5% quantiles from a printed table, not from scipy.
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446}


# --- Statistics -------------------------------------------------------------

# base is the reference. wide has every seed; short lacks seed 2; once has
# one seed.
RESULTS = [
    ('base', 1, 100, 0.50), ('base', 2, 100, 0.55), ('base', 3, 100, 0.75),
    ('wide', 1, 100, 0.60), ('wide', 2, 100, 0.70), ('wide', 3, 100, 0.80),
    ('short', 1, 100, 0.62), ('short', 3, 100, 0.90),
    ('once', 2, 100, 0.40),
]


def test_table_means_intervals_and_paired_differences():
  rows = rows_by_key(stats.summarize(RESULTS, 'base'))
  # wide: mean 0.7, sd 0.1, so half width t(2) * 0.1 / sqrt(3).
  wide = rows[('wide', 100)]
  half = T975[2] * 0.1 / 3 ** 0.5
  assert wide['seeds'] == 3
  assert wide['mean'] == pytest.approx(0.70)
  assert (wide['low'], wide['high']) == pytest.approx((0.70 - half,
                                                       0.70 + half), abs=1e-6)
  # Paired differences 0.10, 0.15, 0.05: mean 0.10, sd 0.05.
  half = T975[2] * 0.05 / 3 ** 0.5
  assert wide['paired'] == 3
  assert wide['diff'] == pytest.approx(0.10)
  assert (wide['diff_low'], wide['diff_high']) == pytest.approx(
      (0.10 - half, 0.10 + half), abs=1e-6)
  # short: seeds 1 and 3, mean 0.76, sd 0.28 / sqrt(2); its differences to
  # the reference's seeds 1 and 3 are 0.12 and 0.15 (unpaired: 0.76 - 0.6).
  short = rows[('short', 100)]
  half = T975[1] * 0.28 / 2 ** 0.5 / 2 ** 0.5
  assert short['seeds'] == 2 and short['mean'] == pytest.approx(0.76)
  assert (short['low'], short['high']) == pytest.approx((0.76 - half,
                                                         0.76 + half),
                                                        abs=1e-5)
  half = T975[1] * (0.03 / 2 ** 0.5) / 2 ** 0.5
  assert short['paired'] == 2 and short['diff'] == pytest.approx(0.135)
  assert (short['diff_low'], short['diff_high']) == pytest.approx(
      (0.135 - half, 0.135 + half), abs=1e-5)
  # One seed: a mean, no interval; one paired seed: a difference, no interval.
  once = rows[('once', 100)]
  assert (once['seeds'], once['mean'], once['low']) == (1, 0.40, None)
  assert once['paired'] == 1 and once['diff'] == pytest.approx(-0.15)
  assert once['diff_low'] is None
  base = rows[('base', 100)]
  assert base['mean'] == pytest.approx(0.60) and base.get('diff') is None


def test_table_files(tmp_path):
  spec = write_spec(tmp_path, {'base': {'max_steps': 100},
                          'wide': {'max_steps': 100, 'hparams': 'lr=0.01'},
                          'short': {'max_steps': 100},
                          'once': {'max_steps': 100}}, seeds=[1, 2, 3])
  rows = stats.summarize(RESULTS, 'base')
  table = list(csv.DictReader(report.table_csv(rows).splitlines()))
  wide = [r for r in table if r['config'] == 'wide'][0]
  assert float(wide['diff']) == pytest.approx(0.10)
  assert float(wide['high']) == pytest.approx(0.70 + T975[2] * 0.1 / 3 ** 0.5,
                                              abs=1e-6)
  assert [r['diff'] for r in table if r['config'] == 'base'] == ['']
  text = report.table_md(spec, rows, str(tmp_path / 'studies' / 'first'))
  assert 'Spec [`../../study.json`](../../study.json); seeds 1, 2, 3;' in text
  assert '| wide | 3 | 0.7000 | [0.4516, 0.9484] | +0.1000 | ' \
         '[-0.0242, +0.2242] | 3 |' in text
  assert '| base | 3 | 0.6000 |' in text and '| reference |' in text
  assert '| once | 1 | 0.4000 | – | -0.1500 | – | 1 |' in text
  # The configurations: the hparams each gives, `-` for none.
  assert '| base | mobilenet-v1 | `-` | 100 |' in text
  assert '| wide | mobilenet-v1 | `lr=0.01` | 100 |' in text

def test_a_warm_started_configuration_is_compared_at_equal_steps(tmp_path):
  """steps_before shifts a configuration's steps: 100 steps after 100 of
  another run meet the reference's step 200, not its step 100."""
  spec = write_spec(tmp_path, {
      'base': {'max_steps': 200},
      'warm': {'max_steps': 100, 'steps_before': 100, 'eval_steps': [0, 100],
               'train_flags': ['--warmstart_checkpoint',
                               '{runs}/base/seed-{seed}/train/model.ckpt-100']}})
  out = str(tmp_path / 'out')
  runner = FakeMain()
  study.run_study(spec, out, runner=runner, say=lambda line: None)
  # The runs themselves are unchanged: warm trains and scores its own steps.
  assert ('train', 'warm/seed-2', [0, 100]) in runner.calls
  assert ('eval', 'warm/seed-2', [0, 100]) in runner.calls
  with open(os.path.join(out, 'results.csv')) as f:
    warm = [r for r in csv.DictReader(f) if r['config'] == 'warm']
  assert [(r['seed'], r['step'], r['eval_file']) for r in warm] == [
      ('1', '100', 'runs/warm/seed-1/eval/eval-0.txt'),
      ('1', '200', 'runs/warm/seed-1/eval/eval-100.txt'),
      ('2', '100', 'runs/warm/seed-2/eval/eval-0.txt'),
      ('2', '200', 'runs/warm/seed-2/eval/eval-100.txt')]
  (data,) = spec.datasets
  rows = rows_by_key(stats.summarize(stats.collect(spec, out, data), 'base'))
  runs = os.path.join(out, 'runs')
  for step in (100, 200):
    diffs = [fake_lwlrap(os.path.join(runs, 'warm', 'seed-%d' % s),
                         step - 100) -
             fake_lwlrap(os.path.join(runs, 'base', 'seed-%d' % s), step)
             for s in (1, 2)]
    # Its own step 100 scores 0.1 below the reference's step 200.
    assert rows[('warm', step)]['diff'] == pytest.approx(-0.1)
    assert rows[('warm', step)]['diff'] == pytest.approx(sum(diffs) / 2)
    assert rows[('warm', step)]['paired'] == 2
  assert ('warm', 0) not in rows
  with open(os.path.join(out, 'table.md')) as f:
    table = f.read()
  assert '| warm | mobilenet-v1 | `-` | 100 after 100 |' in table
  assert '| base | mobilenet-v1 | `-` | 200 |' in table

def test_several_datasets_pool_each_dataset_and_seed(tmp_path):
  """Per dataset, fast against base at step 100: +0.05 on every drums
  seed; +0.01 and +0.02 on the instruments. Pooled over the four (dataset,
  seed) pairs: mean 0.0325, sd sqrt(0.001275 / 3), t(3) interval."""
  spec = write_datasets_spec(tmp_path, CONFIGS)
  out = str(tmp_path / 'out')
  study.run_study(spec, out, runner=FakeMain(), say=lambda line: None)
  with open(os.path.join(out, 'table.csv')) as f:
    table = {(r['dataset'], r['config'], r['step']): r
             for r in csv.DictReader(f)}
  assert len(table) == 3 * (3 + 1)  # drums, instruments, pooled
  drums = table[('drums', 'fast', '100')]
  assert float(drums['diff']) == pytest.approx(0.05)
  assert float(drums['diff_low']) == pytest.approx(0.05)
  instruments = table[('instruments', 'fast', '100')]
  half = T975[1] * (0.01 / 2 ** 0.5) / 2 ** 0.5
  assert (float(instruments['diff']), float(instruments['diff_high'])) == (
      pytest.approx(0.015), pytest.approx(0.015 + half, abs=1e-6))
  both = table[('pooled', 'fast', '100')]
  half = T975[3] * (0.001275 / 3) ** 0.5 / 2
  assert (both['seeds'], both['paired']) == ('4', '4')
  assert float(both['diff']) == pytest.approx(0.0325)
  assert (float(both['diff_low']), float(both['diff_high'])) == (
      pytest.approx(0.0325 - half, abs=1e-6),
      pytest.approx(0.0325 + half, abs=1e-6))
  # base at step 100: 0.2, 0.3 on the drums; 0.0, 0.1 on the instruments.
  assert float(table[('pooled', 'base', '100')]['mean']) == pytest.approx(
      0.15)
  assert table[('pooled', 'base', '0')]['seeds'] == '4'
  with open(os.path.join(out, 'table.md')) as f:
    text = f.read()
  assert ('seeds 1, 2; drums: test set `drums/test.csv`; instruments: test '
          'set `instruments/test.csv`.') in text
  assert ('Under "pooled", each (dataset, seed) pair counts as a seed: the '
          'mean over every dataset and seed, and Δ paired over the pairs both '
          'configurations have.') in text
  step = text[text.index('## Step 100'):text.index('## Step 200')]
  assert [l for l in step.splitlines() if l.startswith('###')] == [
      '### drums', '### instruments', '### pooled']
  assert ('| fast | 4 | 0.1825 | [-0.0540, 0.4190] | +0.0325 | [-0.0003, '
          '+0.0653] | 4 |') in step[step.index('### pooled'):]


# --- The committed study results -------------------------------------------

def _stand_in_data(raw, folder):
  """Empty files and folders at the spec's data paths (of each dataset)."""
  for data in raw.get('datasets', {'': raw}).values():
    for key in spec_lib.DATA_KEYS:
      path = folder / data[key]
      if key.endswith('clip_dir'):
        path.mkdir(parents=True, exist_ok=True)
      else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('')


@pytest.mark.parametrize('name', ['drums_600', 'long_2000', 'combined_2000',
                                  'two_devsets_600'])
def test_the_committed_results_are_rebuilt_from_their_runs(tmp_path, name):
  """README's study figures come from studies/results/NAME: its results.csv
  and table.csv are what the eval reports in runs/ give, and every run
  there was made with its configuration's settings in the spec (an
  ensemble's eval command names its members). The spec's data is not in
  the repository: it is stood in for by empty files at the same relative
  paths."""
  with open(os.path.join(REPO, 'studies', name + '.json')) as f:
    raw = json.load(f)
  _stand_in_data(raw, tmp_path)
  (tmp_path / 'spec.json').write_text(json.dumps(raw))
  spec = spec_lib.load_spec(str(tmp_path / 'spec.json'))
  results_dir = os.path.join(REPO, 'studies', 'results', name)
  results, _, table, several = report.summary(spec, results_dir)
  with open(os.path.join(results_dir, 'results.csv')) as f:
    assert f.read() == report.results_csv(results, several)
  with open(os.path.join(results_dir, 'table.csv')) as f:
    assert f.read() == report.table_csv(table, several)
  datasets = {d.name: d for d in spec.datasets}
  runs = {(r[0] if several else None,) + r[several:several + 2]
          for r in results}
  assert len(runs) >= 2 * len(spec.seeds) * len(datasets)
  for dataset, config, seed in runs:
    folder = runs_lib.run_dir(results_dir, datasets[dataset], config, seed)
    with open(os.path.join(folder, 'run.json')) as f:
      assert json.load(f) == runs_lib.run_settings(
          datasets[dataset], spec.configs[config], seed)
    _check_command(folder, spec, config, seed)


def _check_command(folder, spec, config, seed):
  """A trained run's command gives its hparams; an ensemble's, its
  members (the first one of its own seed)."""
  ensemble = spec.configs[config].ensemble
  with open(os.path.join(folder, ('eval' if ensemble else 'train') +
                         '-command.txt')) as f:
    command = f.read()
  if ensemble:
    members = re.search(r' --inference_checkpoint (\S+) ',
                        command).group(1).split(',')
    seeds = [int(re.search(r'/%s/seed-(\d+)/' % ensemble.of, m).group(1))
             for m in members]
    # Snapshots: this seed's run; seeds: each seed's (scored once).
    assert seeds == ([seed] * ensemble.count if ensemble.count else
                     list(spec.seeds))
  else:
    assert ' --hparams %s ' % runs_lib.run_hparams(spec.configs[config],
                                                  seed) in command
