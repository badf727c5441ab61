"""Study configurations that are ensembles of another configuration's
runs (a stand-in main.py): the members each run scores, the order of the
runs, the seeds' ensemble scored once, and the specs refused."""

import csv
import json
import os

import pytest

from support.study_fakes import FakeMain, member_lwlrap, write_spec
from tools import study
from tools.studylib import spec as spec_lib
from tools.studylib import stats

CONFIGS = {'base': {'max_steps': 300, 'eval_steps': [200, 300]},
           'seeds': {'ensemble': {'of': 'base', 'seeds': True}},
           'snaps': {'ensemble': {'of': 'base', 'snapshots': 3},
                     'eval_steps': [200, 300]},
           'pair': {'ensemble': {'of': 'base', 'snapshots': 2}}}


def _results(out):
  with open(os.path.join(out, 'results.csv')) as f:
    return {(r['config'], int(r['seed']), int(r['step'])): float(r['lwlrap'])
            for r in csv.DictReader(f)}


def test_ensembles_score_the_members_they_name(tmp_path):
  spec = write_spec(tmp_path, CONFIGS, seeds=(1, 2, 3))
  # Defaults: the steps of "of" that have enough checkpoints up to them.
  assert spec.configs['pair'].ensemble == spec_lib.Ensemble('base',
                                                            'snapshots', 2)
  assert spec.configs['pair'].eval_steps == (200, 300)
  assert spec.configs['seeds'].ensemble.kind == 'seeds'
  out = str(tmp_path / 'out')
  fake = FakeMain()
  study.run_study(spec, out, runner=fake, say=lambda line: None)
  runs = [c[:2] for c in fake.calls]
  # Snapshots follow their run; the seeds' ensemble comes after every seed,
  # scored once, for seed 1.
  assert runs == [(m, '%s/seed-%d' % (c, s)) for s in (1, 2, 3)
                  for m, c in [('train', 'base'), ('eval', 'base'),
                               ('eval', 'snaps'), ('eval', 'snaps'),
                               ('eval', 'pair'), ('eval', 'pair')]] + [
                                   ('eval', 'seeds/seed-1')] * 2
  members = [c[2] for c in fake.calls if '@' in str(c[2])]
  assert members[:4] == [['base/seed-1@200', 'base/seed-1@100',
                          'base/seed-1@0'],
                         ['base/seed-1@300', 'base/seed-1@200',
                          'base/seed-1@100'],
                         ['base/seed-1@200', 'base/seed-1@100'],
                         ['base/seed-1@300', 'base/seed-1@200']]
  assert members[-1] == ['base/seed-%d@300' % s for s in (1, 2, 3)]
  results = _results(out)
  base = os.path.join(out, 'runs', 'base', 'seed-%d', 'train',
                      'model.ckpt-%d')
  for seed in (1, 2, 3):
    assert results[('snaps', seed, 300)] == pytest.approx(
        sum(member_lwlrap(base % (seed, s)) for s in (100, 200, 300)) / 3,
        abs=1e-6)
    assert results[('seeds', seed, 300)] == pytest.approx(
        sum(member_lwlrap(base % (s, 300)) for s in (1, 2, 3)) / 3, abs=1e-6)
  # Paired with each member: the mean difference is the ensemble's lead
  # over its members' mean.
  rows = {(r['config'], r['step']): r for r in stats.summarize(
      [k + (v,) for k, v in results.items()], 'base')}
  members_mean = sum(results[('base', s, 300)] for s in (1, 2, 3)) / 3
  assert rows[('seeds', 300)]['diff'] == pytest.approx(
      results[('seeds', 1, 300)] - members_mean, abs=1e-9)
  again = FakeMain()
  study.run_study(spec, out, runner=again, say=lambda line: None)
  assert again.calls == []


def test_an_ensemble_whose_members_are_missing_is_one_line(tmp_path, capsys):
  write_spec(tmp_path, CONFIGS)
  code = study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out'), '--only', 'snaps'],
                    runner=FakeMain())
  assert code == 1
  member = os.path.join(str(tmp_path / 'out'), 'runs', 'base', 'seed-1',
                        'train', 'model.ckpt-200')
  assert capsys.readouterr().err == (
      'study.py: error: snaps/seed-1: its member %s does not exist; run base '
      'first\n' % member)


@pytest.mark.parametrize('entry,message', [
    ({'ensemble': {'of': 'base', 'seeds': True}, 'hparams': 'lr=0.1'},
     'configs.e.hparams: an ensemble trains nothing'),
    ({'ensemble': {'of': 'base'}}, 'configs.e.ensemble: {"of": CONFIG, '),
    ({'ensemble': {'of': 'base', 'seeds': True, 'snapshots': 2}},
     'configs.e.ensemble: {"of": CONFIG, '),
    ({'ensemble': {'of': 'later', 'seeds': True}},
     "configs.e.ensemble.of: 'later' is not a configuration above it"),
    ({'ensemble': {'of': 'base', 'seeds': False}},
     'configs.e.ensemble.seeds: true is required'),
    ({'ensemble': {'of': 'base', 'snapshots': 1}},
     'configs.e.ensemble.snapshots: an integer of at least 2'),
    ({'ensemble': {'of': 'base', 'snapshots': 5}},
     'configs.e.ensemble.snapshots: base saves 4 checkpoints'),
    ({'ensemble': {'of': 'base', 'snapshots': 3}, 'eval_steps': [100, 300]},
     'configs.e.eval_steps: 100 has fewer than 3 checkpoints of base'),
])
def test_what_an_ensemble_configuration_cannot_be(tmp_path, capsys, entry,
                                                  message):
  configs = {'base': CONFIGS['base'], 'e': entry,
             'later': {'max_steps': 100}}
  write_spec(tmp_path, {'base': CONFIGS['base']})
  raw = json.loads((tmp_path / 'study.json').read_text())
  (tmp_path / 'study.json').write_text(json.dumps(dict(raw, configs=configs)))
  code = study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out')], runner=FakeMain())
  err = capsys.readouterr().err
  assert code == 1 and err.startswith('study.py: error: %s: %s' % (
      tmp_path / 'study.json', message)), err
  assert err.count('\n') == 1 and not (tmp_path / 'out').exists()
