"""study.py: the summary's statistics against hand-worked values, the plot,
resuming, failures and stops with stand-in commands, and one real study of
two seeds on the tiny dataset."""

import csv
import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from conftest import (CLASS_MAP, FEW_BN_BATCHES, REPO, _default_sigint,
                      run_main, subprocess_env)
from tagger.core import machine
from tools import study
from tools.studylib import report
from tools.studylib import runner as runner_lib
from tools.studylib import runs as runs_lib
from tools.studylib import spec as spec_lib
from tools.studylib import stats

# Student t 97.5% quantiles from a printed table, not from scipy.
T975 = {1: 12.706205, 2: 4.302653}


def _rows_by_key(rows):
  return {(r['config'], r['step']): r for r in rows}


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
  rows = _rows_by_key(stats.summarize(RESULTS, 'base'))
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
  spec = _spec(tmp_path, {'base': {'max_steps': 100},
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


# --- Stand-in runs ----------------------------------------------------------

def _spec(tmp_path, configs, seeds=(1, 2), **extra):
  data = tmp_path / 'data'
  data.mkdir(exist_ok=True)
  for name in ('class_map.csv', 'train.csv', 'test.csv'):
    (data / name).write_text('')
  raw = dict(class_map='data/class_map.csv', train_csv='data/train.csv',
             train_clip_dir='data', test_csv='data/test.csv',
             test_clip_dir='data', seeds=list(seeds), configs=configs)
  raw.update(extra)
  path = tmp_path / 'study.json'
  path.write_text(json.dumps(raw))
  return spec_lib.load_spec(str(path))


def fake_lwlrap(folder, step):
  """A value for each run and step, known to the test."""
  config, seed = folder.split(os.sep)[-2:]
  return round(0.1 * int(seed[len('seed-'):]) + step / 1000 +
               (0.05 if config == 'fast' else 0), 6)


class FakeMain:
  """Stands in for main.py: training writes the checkpoint files of the
  steps not yet saved, eval writes eval-N.txt for the linked checkpoints.
  Records (mode, run, steps) of every call."""

  def __init__(self, fail=None):
    self.calls = []
    self.fail = fail  # (mode, its last log line): fail that mode

  def __call__(self, argv, log_path, cwd):
    assert argv[:2] == [sys.executable, runs_lib.MAIN] and os.path.isdir(cwd)
    flags = dict(zip(argv[2::2], argv[3::2]))
    mode = flags['--mode']
    if self.fail and self.fail[0] == mode:
      with open(log_path, 'a') as log:
        log.write('starting\n%s\n' % self.fail[1])
      return 1
    if mode == 'train':
      folder = os.path.dirname(flags['--train_dir'])
      steps = spec_lib.checkpoint_steps(int(flags['--max_steps']))
      os.makedirs(flags['--train_dir'], exist_ok=True)
      for step in steps:
        prefix = os.path.join(flags['--train_dir'], 'model.ckpt-%d' % step)
        for suffix in ('.index', '.data-00000-of-00001'):
          if not os.path.exists(prefix + suffix):
            with open(prefix + suffix, 'w') as f:
              f.write(flags['--hparams'])
    else:
      folder = os.path.dirname(flags['--eval_dir'])
      links = flags['--train_dir']
      steps = sorted(int(n[len('model.ckpt-'):-len('.index')])
                     for n in os.listdir(links) if n.endswith('.index'))
      os.makedirs(flags['--eval_dir'], exist_ok=True)
      for step in steps:
        assert os.path.exists(os.path.join(links, 'model.ckpt-%d.data-00000-'
                                           'of-00001' % step))
        with open(os.path.join(flags['--eval_dir'], 'eval-%d.txt' % step),
                  'w') as f:
          f.write('Lwlrap(a) = 0.5\nOverall lwlrap = %.6f\n' %
                  fake_lwlrap(folder, step))
    self.calls.append((mode, '/'.join(folder.split(os.sep)[-2:]), steps))
    return 0


CONFIGS = {'base': {'hparams': 'lr=0.01', 'max_steps': 200},
           'fast': {'max_steps': 100, 'eval_steps': [100]}}


def _remove(folder, *names):
  for name in names:
    os.remove(os.path.join(folder, name))


def test_resume_runs_only_what_is_left(tmp_path):
  spec = _spec(tmp_path, CONFIGS)
  out = str(tmp_path / 'out')
  first = FakeMain()
  study.run_study(spec, out, runner=first, say=lambda line: None)
  assert [c[:2] for c in first.calls] == [
      ('train', 'base/seed-1'), ('eval', 'base/seed-1'),
      ('train', 'fast/seed-1'), ('eval', 'fast/seed-1'),
      ('train', 'base/seed-2'), ('eval', 'base/seed-2'),
      ('train', 'fast/seed-2'), ('eval', 'fast/seed-2')]
  assert first.calls[1][2] == [0, 100, 200] and first.calls[3][2] == [100]
  with open(os.path.join(out, 'runs/base/seed-1/train/model.ckpt-0.index')) \
      as f:
    assert f.read() == 'lr=0.01,seed=1'
  # base/seed-1 stopped in training after step 100, base/seed-2 in eval
  # after scoring steps 0 and 100, fast/seed-2 never started.
  runs = os.path.join(out, 'runs')
  _remove(os.path.join(runs, 'base/seed-1/train'), 'model.ckpt-200.index',
          'model.ckpt-200.data-00000-of-00001')
  _remove(os.path.join(runs, 'base/seed-1/eval'), 'eval-200.txt')
  _remove(os.path.join(runs, 'base/seed-2/eval'), 'eval-200.txt')
  for root, dirs, names in os.walk(os.path.join(runs, 'fast/seed-2'),
                                   topdown=False):
    for name in names:
      os.remove(os.path.join(root, name))
    os.rmdir(root)
  lines = []
  second = FakeMain()
  study.run_study(spec, out, runner=second, say=lines.append)
  assert second.calls == [
      ('train', 'base/seed-1', [0, 100, 200]), ('eval', 'base/seed-1', [200]),
      ('eval', 'base/seed-2', [200]),
      ('train', 'fast/seed-2', [0, 100]), ('eval', 'fast/seed-2', [100])]
  assert lines[0].endswith('4 runs (2 configurations x 2 seeds) in %s, 1 '
                           'finished already' % out)
  assert lines[1].startswith('[2/4] base/seed-1: training to step 200')
  assert lines[-2].startswith('[4/4] fast/seed-2: done in ')
  assert 'elapsed' in lines[-2] and 'left' in lines[-2]
  third = FakeMain()
  study.run_study(spec, out, runner=third, say=lambda line: None)
  assert third.calls == []
  # results.csv holds every chosen step of every run, read from its file.
  with open(os.path.join(out, 'results.csv')) as f:
    results = list(csv.DictReader(f))
  expected = [(c, s, st) for s in (1, 2) for c, st in [
      ('base', 0), ('base', 100), ('base', 200), ('fast', 100)]]
  assert sorted((r['config'], int(r['seed']), int(r['step']))
                for r in results) == sorted(expected)
  for r in results:
    assert float(r['lwlrap']) == fake_lwlrap(
        os.path.join(runs, r['config'], 'seed-' + r['seed']), int(r['step']))
    assert stats.read_lwlrap(os.path.join(out, r['eval_file'])) == float(
        r['lwlrap'])


def test_a_summary_that_fails_does_not_stop_the_runs(tmp_path, monkeypatch,
                                                      capsys):
  """A plot that raises after each run is reported and the study trains
  on; the summary after the last run raises it. Once the plot is mended,
  the same command writes the summary and runs nothing."""
  spec = _spec(tmp_path, CONFIGS)
  out = str(tmp_path / 'out')

  drawn = []

  def broken(rows, reference, path):
    drawn.append(len(rows))
    raise ValueError('no colours left')
  monkeypatch.setattr(report, 'plot', broken)
  lines, runner = [], FakeMain()
  with pytest.raises(ValueError, match='no colours left'):
    study.run_study(spec, out, runner=runner, say=lines.append)
  assert len(runner.calls) == 8  # two configurations, two seeds, trained
  # Drawn between runs 1-2, 2-3 and 3-4, then once after the last run (not
  # twice after it).
  failed = [l for l in lines if l.startswith('summary failed')]
  assert failed == ['summary failed (ValueError: no colours left); the study '
                    'goes on and writes it again after the last run'] * 3
  assert len(drawn) == 4
  assert 'Traceback' in capsys.readouterr().err
  with open(os.path.join(out, 'results.csv')) as f:
    assert len(list(csv.DictReader(f))) == 8
  monkeypatch.undo()
  again = FakeMain()
  study.run_study(spec, out, runner=again, say=lambda line: None)
  assert again.calls == [] and os.path.exists(os.path.join(out, 'lwlrap.png'))


def test_a_run_refuses_other_settings(tmp_path):
  out = str(tmp_path / 'out')
  study.run_study(_spec(tmp_path, CONFIGS), out, runner=FakeMain(),
                  say=lambda line: None)
  changed = dict(CONFIGS, base=dict(CONFIGS['base'], max_steps=300,
                                    hparams='lr=0.02'))
  with pytest.raises(spec_lib.StudyError, match='base/seed-1 was started with '
                     'hparams "lr=0.01,seed=1", the spec now says '
                     '"lr=0.02,seed=1"'):
    study.run_study(_spec(tmp_path, changed), out, runner=FakeMain(),
                    say=lambda line: None)
  # More steps of the same recipe resume it.
  more = dict(CONFIGS, base=dict(CONFIGS['base'], max_steps=300))
  runner = FakeMain()
  study.run_study(_spec(tmp_path, more), out, runner=runner,
                  say=lambda line: None)
  assert runner.calls[:2] == [('train', 'base/seed-1', [0, 100, 200, 300]),
                              ('eval', 'base/seed-1', [300])]


def test_failing_command_is_one_line_and_exit_1(tmp_path, capsys):
  spec = _spec(tmp_path, CONFIGS)
  out = str(tmp_path / 'out')
  code = study.main(['--spec', spec.path, '--study_dir', out],
                    runner=FakeMain(fail=('eval', 'main.py: error: boom')))
  err = capsys.readouterr().err
  log = os.path.join(out, 'runs', 'base', 'seed-1', 'eval.log')
  assert code == 1
  assert err == ('study.py: error: base/seed-1: eval failed (exit status 1: '
                 'main.py: error: boom); see %s\n' % log)


class SkippingMain(FakeMain):
  """FakeMain whose eval exits 0 but writes no eval-N.txt for these steps."""

  def __init__(self, skip):
    super().__init__()
    self.skip = skip

  def __call__(self, argv, log_path, cwd):
    code = super().__call__(argv, log_path, cwd)
    if self.calls[-1][0] == 'eval':
      eval_dir = argv[argv.index('--eval_dir') + 1]
      for step in self.skip:
        os.remove(os.path.join(eval_dir, 'eval-%d.txt' % step))
    return code


def test_eval_that_writes_too_little_is_one_line(tmp_path, capsys):
  """An eval that ends well without scoring every chosen step: the first
  step it left out is named."""
  spec = _spec(tmp_path, CONFIGS)
  out = str(tmp_path / 'out')
  code = study.main(['--spec', spec.path, '--study_dir', out],
                    runner=SkippingMain(skip=(100, 200)))
  run = os.path.join(out, 'runs', 'base', 'seed-1')
  assert code == 1
  assert capsys.readouterr().err == (
      'study.py: error: base/seed-1: eval wrote no %s; see %s\n' % (
          os.path.join(run, 'eval', 'eval-100.txt'),
          os.path.join(run, 'eval.log')))


def test_only_and_summarize_only(tmp_path, capsys, monkeypatch):
  spec = _spec(tmp_path, CONFIGS)
  out = str(tmp_path / 'out')
  runner = FakeMain()
  assert study.main(['--spec', spec.path, '--study_dir', out, '--only',
                     'fast'], runner=runner) == 0
  assert [c[:2] for c in runner.calls] == [
      ('train', 'fast/seed-1'), ('eval', 'fast/seed-1'),
      ('train', 'fast/seed-2'), ('eval', 'fast/seed-2')]
  for name in ('results.csv', 'table.csv', 'table.md', 'lwlrap.png'):
    os.remove(os.path.join(out, name))
  capsys.readouterr()

  def refuse(*args):
    raise AssertionError('ran %s' % (args,))

  # As `python study.py ...` runs it: the arguments from sys.argv.
  monkeypatch.setattr(sys, 'argv', ['study.py', '--spec', spec.path,
                                    '--study_dir', out, '--summarize_only'])
  assert study.main(runner=refuse) == 0
  assert capsys.readouterr().out == '2 results; summary in %s\n' % out
  with open(os.path.join(out, 'table.csv')) as f:
    (row,) = list(csv.DictReader(f))
  assert (row['config'], row['step'], row['seeds']) == ('fast', '100', '2')
  assert os.path.exists(os.path.join(out, 'lwlrap.png'))
  assert study.main(['--spec', spec.path, '--study_dir', out, '--only',
                     'slow'], runner=refuse) == 1
  assert capsys.readouterr().err.startswith(
      'study.py: error: --only: slow is not a configuration of ')


def test_unknown_key_at_the_top_of_a_spec(tmp_path, capsys):
  _spec(tmp_path, CONFIGS)
  raw = json.loads((tmp_path / 'study.json').read_text())
  raw['steps'] = [100]
  (tmp_path / 'study.json').write_text(json.dumps(raw))
  code = study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out')], runner=FakeMain())
  assert code == 1
  assert capsys.readouterr().err == (
      "study.py: error: %s: unknown key 'steps' (known: class_map, "
      "train_csv, train_clip_dir, test_csv, test_clip_dir, model, seeds, "
      "reference, configs, plots)\n" % (tmp_path / 'study.json'))
  assert not (tmp_path / 'out').exists()


def _assert_spec_refused(tmp_path, capsys, message):
  """study.json is refused with one line ending in `message`, exit 1, and
  no study folder made."""
  code = study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out')], runner=FakeMain())
  assert code == 1
  assert capsys.readouterr().err == 'study.py: error: %s: %s\n' % (
      tmp_path / 'study.json', message)
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
  _spec(tmp_path, CONFIGS)
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
  _spec(tmp_path, CONFIGS)
  text = (tmp_path / 'study.json').read_text()
  start = text.index('"configs": ') + len('"configs": ')
  end = start + len(json.dumps(CONFIGS))
  assert json.loads(text[start:end]) == CONFIGS
  (tmp_path / 'study.json').write_text(text[:start] + configs + text[end:])
  _assert_spec_refused(tmp_path, capsys, message)


def test_a_budget_of_one_step(tmp_path):
  spec = _spec(tmp_path, {'base': {'max_steps': 1}})
  assert spec.configs['base'].max_steps == 1


# A main.py that says its process group, waits to be stopped, and writes
# down every signal it gets until it exits, half a second after the first.
STAND_IN = '''
import os, signal, sys, time
got = []
def note(signum, frame):
  got.append(signum)
  with open(os.environ['STUDY_TEST_MARK'], 'a') as f:
    f.write('%d\\n' % signum)
signal.signal(signal.SIGINT, note)
signal.signal(signal.SIGTERM, note)
with open(os.environ['STUDY_TEST_MARK'] + '.tmp', 'w') as f:
  f.write(str(os.getpgid(0)))
os.replace(os.environ['STUDY_TEST_MARK'] + '.tmp',
           os.environ['STUDY_TEST_MARK'] + '.ready')
deadline = time.monotonic() + 20
while not got and time.monotonic() < deadline:
  time.sleep(0.01)
time.sleep(0.5)
sys.exit(128 + got[0] if got else 0)
'''


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_stop_is_passed_to_the_command(tmp_path, signum):
  """The signal goes to the study's process group, as Ctrl-C in a terminal
  sends it; the command, in a group of its own, gets it once, from the
  study."""
  spec = _spec(tmp_path, CONFIGS)
  stand_in = tmp_path / 'stand_in.py'
  stand_in.write_text(STAND_IN)
  mark = str(tmp_path / 'mark')
  env = dict(subprocess_env(), STUDY_TEST_MARK=mark)
  code = ('import sys; sys.path.insert(0, %r); from tools import study; '
          'from tools.studylib import runs; '
          'runs.MAIN = sys.argv[1]; sys.exit(study.main(sys.argv[2:]))' %
          REPO)
  process = subprocess.Popen(
      [sys.executable, '-c', code, str(stand_in), '--spec', spec.path,
       '--study_dir', str(tmp_path / 'out')], env=env, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      preexec_fn=lambda: (os.setpgid(0, 0), _default_sigint()))
  try:
    deadline = time.monotonic() + 60
    while not os.path.exists(mark + '.ready'):
      assert time.monotonic() < deadline and process.poll() is None
      time.sleep(0.05)
    with open(mark + '.ready') as f:
      assert int(f.read()) != process.pid  # the study's group
    os.killpg(process.pid, signum)
    out, err = process.communicate(timeout=15)
  finally:
    process.kill()
    process.wait()
  assert process.returncode == 128 + signum
  assert err == ('study.py: stopped by %s during base/seed-1 (training); '
                 'what is done is kept, run the same command to continue\n'
                 % signal.Signals(signum).name)
  with open(mark) as f:
    assert f.read() == '%d\n' % signum
  assert '[1/4] base/seed-1: training to step 200' in out


def test_each_command_is_logged_with_where_it_ran(tmp_path):
  log = tmp_path / 'train.log'
  log.write_text('earlier\n')
  argv = [sys.executable, '-c', 'print("step 200")']
  assert runner_lib.CommandRunner()(argv, str(log), str(tmp_path)) == 0
  lines = log.read_text().splitlines()
  assert lines[:2] == ['earlier', '']
  assert lines[2].startswith('$ %s -c ' % sys.executable)
  assert lines[3:] == ['# on ' + machine.describe(), 'step 200']


# --- Plot -------------------------------------------------------------------

def test_plot_is_a_png(tmp_path):
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.02 * seed + (c == 'lr') * 0.05)
       for c in ('base', 'lr') for seed in (1, 2, 3)
       for step in (0, 100, 200)] + [('one', 1, 200, 0.5)], 'base')
  path = str(tmp_path / 'lwlrap.png')
  report.plot(rows, 'base', path)
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR'
  assert struct.unpack('>II', head[16:24]) == (800, 500)
  assert 10_000 < os.path.getsize(path) < 500_000
  assert not [n for n in os.listdir(tmp_path) if n != 'lwlrap.png']


def test_plot_draws_each_configuration_the_reference_last(tmp_path,
                                                          monkeypatch):
  """Each configuration once, with its own rows; the reference last, so
  that it is drawn over the others, whatever its place in the rows."""
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.01 * seed)
       for c in ('base', 'lr', 'wide') for seed in (1, 2)
       for step in (100, 200)], 'base')
  drawn = []
  real = report._plot_config

  def spy(ax, mine, config, is_reference, colors):
    drawn.append((config, is_reference, sorted({r['config'] for r in mine})))
    return real(ax, mine, config, is_reference, colors)

  monkeypatch.setattr(report, '_plot_config', spy)
  import matplotlib.axes
  grids = []
  monkeypatch.setattr(matplotlib.axes.Axes, 'grid',
                      lambda self, *args, **kwargs: grids.append(kwargs))
  report.plot(rows, 'base', str(tmp_path / 'lwlrap.png'))
  assert drawn == [('lr', False, ['lr']), ('wide', False, ['wide']),
                   ('base', True, ['base'])]
  # A light grid (matplotlib's own calls set no alpha).
  assert [g for g in grids if 'alpha' in g] == [{'alpha': 0.3}]


@pytest.mark.parametrize('reference, first', [('base', 'base (reference)'),
                                              ('reference', 'reference')])
def test_the_legend_lists_the_reference_first(tmp_path, monkeypatch,
                                              reference, first):
  """The reference heads the legend, however the rows order it, and a
  reference named `reference` is not called so twice; a configuration
  scored at one step (an error bar, which matplotlib's own legend order
  puts after the lines) keeps its place."""
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.01 * seed)
       for c in ('lr', 'one', reference, 'wide') for seed in (1, 2)
       for step in (100, 200) if c != 'one' or step == 200], reference)
  import matplotlib.axes
  legends = []
  monkeypatch.setattr(matplotlib.axes.Axes, 'legend',
                      lambda self, handles, labels, **kw: legends.append(
                          (labels, [h.get_label() for h in handles],
                           # An error bar's colour is its data line's.
                           [getattr(h, 'lines', [h])[0].get_color()
                            for h in handles])))
  report.plot(rows, reference, str(tmp_path / 'lwlrap.png'))
  ((labels, own_labels, colors),) = legends
  assert labels == own_labels == [first, 'lr', 'one', 'wide']
  assert colors[0] == 'black' and 'black' not in colors[1:]


def test_more_configurations_than_colours_get_lines_of_their_own(
    tmp_path, monkeypatch):
  """Past the palette's 10 colours the lines turn dashed, then dotted:
  23 configurations and the reference give 24 lines, no two alike, and
  the study goes on instead of running out of colours."""
  names = ['c%02d' % i for i in range(23)]
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.01 * seed)
       for c in ['base'] + names for seed in (1, 2)
       for step in (100, 200)], 'base')
  import matplotlib.axes
  legends = []
  monkeypatch.setattr(matplotlib.axes.Axes, 'legend',
                      lambda self, handles, labels, **kw: legends.append(
                          [(h.get_label(), h.get_color(), h.get_linestyle())
                           for h in handles]))
  report.plot(rows, 'base', str(tmp_path / 'lwlrap.png'))
  ((lines,),) = [legends]
  assert [label for label, _, _ in lines] == ['base (reference)'] + names
  styles = [(color, dashes) for _, color, dashes in lines]
  assert len(set(styles)) == 24
  import matplotlib.pyplot as plt
  palette = plt.rcParams['axes.prop_cycle'].by_key()['color']
  assert styles[1:] == ([(c, '-') for c in palette] +
                        [(c, '--') for c in palette] +
                        [(c, ':') for c in palette[:3]])


def test_an_empty_palette_still_gives_lines():
  """A style sheet without colours must not hang the plot: the lines fall
  back to the first default colour and still differ by their dashes."""
  def first(colors, n):
    def hung(*_):
      raise TimeoutError('_line_styles yielded nothing for 10 s')
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # a generator that never yields fails, not hangs
    try:
      return list(itertools.islice(report._line_styles(colors), n))
    finally:
      signal.alarm(0)
      signal.signal(signal.SIGALRM, previous)
  assert first([], 5) == [
      ('C0', '-'), ('C0', '--'), ('C0', ':'), ('C0', '-.'), ('C0', '-')]
  # An iterator is read once and kept for every line style.
  assert first(iter(['red', 'blue']), 3) == [
      ('red', '-'), ('blue', '-'), ('red', '--')]


def test_the_specs_plots_draw_their_configurations_beside_the_reference(
    tmp_path, monkeypatch):
  """lwlrap.png draws every configuration; each of the spec's plots its own
  ones and the reference, with the same rows, and none for a plot with no
  results yet."""
  spec = _spec(tmp_path, {'base': {'max_steps': 200},
                          'fast': {'max_steps': 100},
                          'wide': {'max_steps': 100},
                          'late': {'max_steps': 100}}, seeds=(1, 2, 3),
               plots={'quick': ['fast'], 'both': ['wide', 'fast'],
                      'later': ['late']})
  out = str(tmp_path / 'out')
  study.run_study(spec, out, only=('base', 'fast', 'wide'), runner=FakeMain(),
                  say=lambda line: None)
  drawn = {}
  monkeypatch.setattr(report, 'plot', lambda rows, reference, path: drawn.update(
      {os.path.basename(path): (reference, rows)}))
  assert report.write_summary(spec, out) == 3 * (3 + 2 + 2)
  every = stats.summarize(stats.collect(spec, out), 'base')
  assert drawn['lwlrap.png'] == ('base', every)
  assert drawn['lwlrap-quick.png'] == (
      'base', [r for r in every if r['config'] in ('base', 'fast')])
  assert drawn['lwlrap-both.png'] == (
      'base', [r for r in every if r['config'] != 'late'])
  assert sorted(drawn) == ['lwlrap-both.png', 'lwlrap-quick.png',
                           'lwlrap.png']


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
  _spec(tmp_path, CONFIGS)
  raw = json.loads((tmp_path / 'study.json').read_text())
  raw['plots'] = plots
  (tmp_path / 'study.json').write_text(json.dumps(raw))
  _assert_spec_refused(tmp_path, capsys, message)


def test_plot_is_drawn_whatever_backend_the_environment_names(tmp_path):
  """study.py draws with Agg, whatever MPLBACKEND says: here the
  third-party mplcairo backend, as a user's shell may export it, which this
  environment does not have."""
  script = ('import sys; sys.path.insert(0, %r); '
            'from tools.studylib import report, stats; '
            'report.plot(stats.summarize([("a", 1, 100, 0.5), ("a", 2, 100, '
            '0.6)], "a"), "a", %r)' % (REPO, str(tmp_path / 'p.png')))
  env = dict(os.environ,
             MPLBACKEND='module://mplcairo.base')
  result = subprocess.run([sys.executable, '-c', script], env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'


def test_help_says_what_each_option_does(capsys):
  with pytest.raises(SystemExit) as stopped:
    study.parse_args(['--help'])
  assert stopped.value.code == 0
  out = ' '.join(capsys.readouterr().out.split())
  for needle in ('--spec SPEC the study spec (JSON)',
                 '--study_dir STUDY_DIR folder of the runs and the summary',
                 '--only ONLY comma-separated configurations to run (default: '
                 'all); the summary covers every one',
                 '--summarize_only rebuild results, tables and plot from the '
                 'eval files; run nothing'):
    assert needle in out, out


def test_time_left_from_the_runs_done_whole(monkeypatch):
  """The mean duration of the runs this process did whole, times the runs
  left; resumed runs (shorter) only while no run was done whole."""
  lines = []
  monkeypatch.setattr(study.time, 'monotonic', lambda: 1000.0)
  progress = study.Progress(6, 1, lines.append)
  assert progress.left() == 'time left unknown'
  progress.finished('a/seed-1', 30, 'lwlrap 0.5 at step 100', False)
  assert progress.left() == 'about 0:02:00 left'  # 4 left at 30 s
  progress.finished('b/seed-1', 600, 'lwlrap 0.6 at step 100', True)
  progress.finished('c/seed-1', 1200, 'lwlrap 0.7 at step 100', True)
  assert progress.left() == 'about 0:30:00 left'  # 2 left at 900 s
  assert lines[-1] == ('[4/6] c/seed-1: done in 0:20:00, lwlrap 0.7 at step '
                       '100; elapsed 0:00:00, about 0:30:00 left')


class Axes:
  """What _plot_config draws, by method."""

  def __init__(self):
    self.calls = []

  def __getattr__(self, name):
    def call(*args, **kwargs):
      self.calls.append((name, args, kwargs))
      return [name]  # as Axes.plot, a list of what it drew
    return call


def test_each_configuration_is_drawn_with_its_interval():
  """Several steps: the line of means and the interval as a band; one
  step: a point with the interval as error bars (below, above the mean)."""
  rows = [{'step': 100, 'mean': 0.5, 'low': 0.4, 'high': 0.7},
          {'step': 200, 'mean': 0.6, 'low': None, 'high': None}]
  ax = Axes()
  report._plot_config(ax, rows, 'wide', False, iter([('red', '--')]))
  (plot, args, kwargs), (band, band_args, band_kwargs) = ax.calls
  assert (plot, args, kwargs['label'], kwargs['color'],
          kwargs['linestyle']) == (
      'plot', ([100, 200], [0.5, 0.6]), 'wide', 'red', '--')
  plot_kwargs = kwargs
  assert (band, band_args, band_kwargs['color']) == (
      'fill_between', ([100, 200], [0.4, 0.6], [0.7, 0.6]), 'red')
  ax = Axes()
  report._plot_config(ax, rows[:1], 'base', True, iter([]))
  ((name, args, kwargs),) = ax.calls
  assert (name, args, kwargs['label'], kwargs['color']) == (
      'errorbar', ([100], [0.5]), 'base (reference)', 'black')
  assert [e[0] for e in kwargs['yerr']] == pytest.approx([0.1, 0.2])
  # The reference stands out: a thicker line than any other's.
  assert kwargs['linewidth'] > plot_kwargs['linewidth']
  # Its band is lighter than the others', so that theirs show through it,
  # and no band has an outline that would read as a line of its own.
  ax = Axes()
  report._plot_config(ax, rows, 'base', True, iter([]))
  reference_band = ax.calls[1][2]
  assert reference_band['alpha'] < band_kwargs['alpha']
  assert reference_band['linewidth'] == band_kwargs['linewidth'] == 0


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



def test_a_configuration_may_chain_on_other_runs(tmp_path):
  """Its own training data and a command before its training, with {seed},
  {run} and {runs} filled in: e.g. a warm start from another configuration's
  run of the same seed, or training on a CSV relabelled first."""
  spec = _spec(tmp_path, {
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
  folder = runs_lib.run_dir(out, 'relabelled', 2)
  runs = os.path.join(out, 'runs')
  flags = runs_lib.train_command(spec, spec.configs['relabelled'], 2, folder)
  flags = dict(zip(flags[2::2], flags[3::2]))
  data = str(tmp_path / 'data')
  assert flags['--train_csv_path'] == '%s/train.csv,%s/relabelled.csv' % (
      data, folder)
  assert flags['--train_clip_dir'] == '%s,%s' % (data, data)
  assert flags['--warmstart_checkpoint'] == (
      runs + '/noisy/seed-2/train/model.ckpt-100')
  assert flags['--hparams'] == 'seed=2'
  before = runs_lib.before_command(spec, spec.configs['relabelled'], 2, folder)
  assert before[2:] == [
      '--class_map_path', str(tmp_path / 'data/class_map.csv'),
      '--mode', 'relabel', '--inference_checkpoint',
      runs + '/noisy/seed-2/train/model.ckpt-100',
      '--relabeled_csv_path', folder + '/relabelled.csv']
  noisy = runs_lib.train_command(spec, spec.configs['noisy'], 1,
                              runs_lib.run_dir(out, 'noisy', 1))
  assert dict(zip(noisy[2::2], noisy[3::2]))['--train_csv_path'] == (
      data + '/test.csv')


def test_a_warm_started_configuration_is_compared_at_equal_steps(tmp_path):
  """steps_before shifts a configuration's steps: 100 steps after 100 of
  another run meet the reference's step 200, not its step 100."""
  spec = _spec(tmp_path, {
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
  rows = _rows_by_key(stats.summarize(stats.collect(spec, out), 'base'))
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


# --- The committed study results -------------------------------------------

@pytest.mark.parametrize('name', ['drums_600', 'long_2000', 'combined_2000'])
def test_the_committed_results_are_rebuilt_from_their_runs(tmp_path, name):
  """README's study figures come from studies/results/NAME: its results.csv
  and table.csv are what the eval reports in runs/ give, and every run
  there was made with its configuration's settings in the spec. The
  spec's data is not in the repository: it is stood in for by empty files
  at the same relative paths."""
  spec_path = os.path.join(REPO, 'studies', name + '.json')
  with open(spec_path) as f:
    raw = json.load(f)
  for key in spec_lib.DATA_KEYS:
    path = tmp_path / raw[key]
    if key.endswith('clip_dir'):
      path.mkdir(parents=True, exist_ok=True)
    else:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text('')
  (tmp_path / 'spec.json').write_text(json.dumps(raw))
  spec = spec_lib.load_spec(str(tmp_path / 'spec.json'))
  results_dir = os.path.join(REPO, 'studies', 'results', name)
  results = stats.collect(spec, results_dir)
  with open(os.path.join(results_dir, 'results.csv')) as f:
    assert f.read() == report.results_csv(results)
  with open(os.path.join(results_dir, 'table.csv')) as f:
    assert f.read() == report.table_csv(
        stats.summarize(results, spec.reference))
  runs = {(config, seed) for config, seed, *_ in results}
  assert len(runs) >= 2 * len(spec.seeds)
  for config, seed in runs:
    folder = runs_lib.run_dir(results_dir, config, seed)
    with open(os.path.join(folder, 'run.json')) as f:
      assert json.load(f) == runs_lib.run_settings(spec, spec.configs[config],
                                                seed)
    with open(os.path.join(folder, 'train-command.txt')) as f:
      assert ' --hparams %s ' % runs_lib.run_hparams(spec.configs[config],
                                                  seed) in f.read()
