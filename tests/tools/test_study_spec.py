"""study.py's spec: each mistake refused in one line before any run, and
a configuration's own data and commands with {seed}, {run} and {runs}
filled in."""

import json
import os

import pytest

from support.study_fakes import (CONFIGS, FakeMain, assert_spec_refused,
                                 write_datasets_spec, write_spec)
from tools import study
from tools.studylib import runs as runs_lib


def test_unknown_key_at_the_top_of_a_spec(tmp_path, capsys):
  write_spec(tmp_path, CONFIGS)
  raw = json.loads((tmp_path / 'study.json').read_text())
  raw['steps'] = [100]
  (tmp_path / 'study.json').write_text(json.dumps(raw))
  code = study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out')], runner=FakeMain())
  assert code == 1
  assert capsys.readouterr().err == (
      "study.py: error: %s: unknown key 'steps' (known: class_map, "
      "train_csv, train_clip_dir, test_csv, test_clip_dir, datasets, model, "
      "seeds, reference, configs, plots)\n" % (tmp_path / 'study.json'))
  assert not (tmp_path / 'out').exists()

@pytest.mark.parametrize('change, message', [
    ({'hparams': 'lr=0.1,seed=3'}, 'configs.base.hparams: seed is set by the'
     ' study'),
    ({'eval_steps': [150]}, 'configs.base.eval_steps: 150 is not a '
     'checkpoint step'),
    ({'train_flags': ['--max_steps=5']}, 'configs.base.train_flags: '
     '--max_steps=5 is set by the study'),
    ({'hparams': 'lr=fast'}, 'configs.base.hparams: hparam lr=fast'),
    ({'epochs': 3}, "configs.base.unknown key 'epochs'"),
    # Several: the first in alphabetical order, whatever order a set keeps.
    (dict.fromkeys(['zeta', 'mu', 'kappa', 'omega', 'nu', 'eta', 'beta',
                    'xi', 'tau', 'psi'], 1), "configs.base.unknown key "
     "'beta'"),
    ({'max_steps': 0}, 'configs.base.max_steps: a positive integer is '
     'required'),
    ({'steps_before': -100}, 'configs.base.steps_before: a non-negative '
     'integer is required'),
    ({'steps_before': 1.5}, 'configs.base.steps_before: a non-negative '
     'integer is required'),
])
def test_spec_errors(tmp_path, capsys, change, message):
  write_spec(tmp_path, CONFIGS)
  raw = json.loads((tmp_path / 'study.json').read_text())
  raw['configs']['base'].update(change)
  (tmp_path / 'study.json').write_text(json.dumps(raw))
  code = study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out')], runner=FakeMain())
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1
  assert err.startswith('study.py: error: %s: %s' % (tmp_path / 'study.json',
                                                     message))


@pytest.mark.parametrize('configs, message', [
    # json.dumps cannot write a key twice: the spec is written by hand.
    ('{"base": {"max_steps": 200}, "fast": {"max_steps": 100}, '
     '"base": {"max_steps": 300}}',
     "configs: configuration 'base' is named twice"),
    ('{"base": {"max_steps": 200, "hparams": "lr=0.1", "max_steps": 300}}',
     "configs.base: key 'max_steps' is given twice"),
], ids=['configuration', 'key'])
def test_a_name_given_twice_in_a_spec_is_refused(tmp_path, capsys, configs,
                                                  message):
  write_spec(tmp_path, CONFIGS)
  text = (tmp_path / 'study.json').read_text()
  start = text.index('"configs": ') + len('"configs": ')
  end = start + len(json.dumps(CONFIGS))
  assert json.loads(text[start:end]) == CONFIGS
  (tmp_path / 'study.json').write_text(text[:start] + configs + text[end:])
  assert_spec_refused(tmp_path, capsys, message)


def test_a_budget_of_one_step(tmp_path):
  spec = write_spec(tmp_path, {'base': {'max_steps': 1}})
  assert spec.configs['base'].max_steps == 1

@pytest.mark.parametrize('plots, message', [
    ([], 'plots: an object of lists of configurations is required'),
    ({'a/b': ['fast']}, "plots: 'a/b' is not a name of letters, digits, _, ."
     " and -"),
    ({'quick': []}, 'plots.quick: a list of configurations is required'),
    ({'quick': 'fast'}, 'plots.quick: a list of configurations is required'),
    ({'quick': ['fast', 'slow']}, "plots.quick: 'slow' is not one of the "
     "configs (base, fast)"),
    ({'quick': [['fast']]}, "plots.quick: ['fast'] is not one of the "
     "configs (base, fast)"),
])
def test_plot_errors(tmp_path, capsys, plots, message):
  write_spec(tmp_path, CONFIGS)
  raw = json.loads((tmp_path / 'study.json').read_text())
  raw['plots'] = plots
  (tmp_path / 'study.json').write_text(json.dumps(raw))
  assert_spec_refused(tmp_path, capsys, message)

def _datasets_changed(tmp_path, change):
  write_datasets_spec(tmp_path, CONFIGS)
  raw = json.loads((tmp_path / 'study.json').read_text())
  change(raw)
  (tmp_path / 'study.json').write_text(json.dumps(raw))


@pytest.mark.parametrize('change, message', [
    (lambda raw: raw.update(class_map='drums/class_map.csv'),
     'class_map: with "datasets", each dataset names its own data'),
    (lambda raw: raw.update(datasets={}),
     'datasets: an object of datasets is required'),
    (lambda raw: raw['datasets'].update(pooled=raw['datasets']['drums']),
     "datasets: name 'pooled': use letters, digits, _ . and -, and not "
     "'pooled'"),
    (lambda raw: raw['datasets'].update({'a b': raw['datasets']['drums']}),
     "datasets: name 'a b': use letters"),
    (lambda raw: raw['datasets']['instruments'].pop('test_csv'),
     'datasets.instruments.test_csv: a path is required'),
    (lambda raw: raw['datasets']['drums'].update(seeds=[1]),
     "datasets.drums.unknown key 'seeds' (known: class_map, train_csv, "
     "train_clip_dir, test_csv, test_clip_dir)"),
    (lambda raw: raw['datasets']['drums'].update(test_csv='drums/x.csv'),
     'datasets.drums.test_csv: %s does not exist'),
    (lambda raw: raw['datasets'].update(drums=['drums']),
     'datasets.drums: expected an object'),
], ids=['top', 'none', 'pooled', 'name', 'missing', 'unknown', 'absent',
        'list'])
def test_dataset_errors(tmp_path, capsys, change, message):
  _datasets_changed(tmp_path, change)
  if '%s' in message:
    message %= tmp_path / 'drums' / 'x.csv'
  assert study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out')], runner=FakeMain()) == 1
  err = capsys.readouterr().err
  assert err.startswith('study.py: error: %s: %s' % (
      tmp_path / 'study.json', message)) and err.count('\n') == 1, err
  assert not (tmp_path / 'out').exists()


def test_a_dataset_name_needs_datasets(tmp_path, capsys):
  write_spec(tmp_path, CONFIGS)
  raw = json.loads((tmp_path / 'study.json').read_text())
  raw['configs']['fast']['train_csv'] = '{dataset}/train.csv'
  (tmp_path / 'study.json').write_text(json.dumps(raw))
  assert_spec_refused(tmp_path, capsys, 'configs.fast.train_csv: {dataset} '
                      'needs "datasets" in the spec')


def test_a_configuration_may_chain_on_other_runs(tmp_path):
  """Its own training data and a command before its training, with {seed},
  {run} and {runs} filled in: e.g. a warm start from another configuration's
  run of the same seed, or training on a CSV relabelled first."""
  spec = write_spec(tmp_path, {
      'noisy': {'max_steps': 100, 'train_csv': 'data/test.csv'},
      'relabelled': {
          'max_steps': 100,
          'train_csv': 'data/train.csv,{run}/relabelled.csv',
          'train_clip_dir': 'data,data',
          'before': ['--mode', 'relabel', '--inference_checkpoint',
                     '{runs}/noisy/seed-{seed}/train/model.ckpt-100',
                     '--relabeled_csv_path', '{run}/relabelled.csv'],
          'train_flags': ['--warmstart_checkpoint',
                          '{runs}/noisy/seed-{seed}/train/model.ckpt-100']}})
  out = str(tmp_path / 'out')
  folder = runs_lib.run_dir(out, spec.datasets[0], 'relabelled', 2)
  runs = os.path.join(out, 'runs')
  flags = runs_lib.train_command(spec, spec.datasets[0],
                                 spec.configs['relabelled'], 2, folder)
  flags = dict(zip(flags[2::2], flags[3::2]))
  data = str(tmp_path / 'data')
  assert flags['--train_csv_path'] == '%s/train.csv,%s/relabelled.csv' % (
      data, folder)
  assert flags['--train_clip_dir'] == '%s,%s' % (data, data)
  assert flags['--warmstart_checkpoint'] == (
      runs + '/noisy/seed-2/train/model.ckpt-100')
  assert flags['--hparams'] == 'seed=2'
  before = runs_lib.before_command(spec.datasets[0],
                                   spec.configs['relabelled'], 2, folder)
  assert before[2:] == [
      '--class_map_path', str(tmp_path / 'data/class_map.csv'),
      '--mode', 'relabel', '--inference_checkpoint',
      runs + '/noisy/seed-2/train/model.ckpt-100',
      '--relabeled_csv_path', folder + '/relabelled.csv']
  (one,) = spec.datasets
  noisy = runs_lib.train_command(spec, one, spec.configs['noisy'], 1,
                                 runs_lib.run_dir(out, one, 'noisy', 1))
  assert dict(zip(noisy[2::2], noisy[3::2]))['--train_csv_path'] == (
      data + '/test.csv')
