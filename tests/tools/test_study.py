"""study.py's runs with a stand-in main.py: the order, resuming, settings a
run refuses to change, failing commands, --only and --summarize_only,
progress, stops passed to the command and the command logs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support.cli import default_sigint, subprocess_env
from support.settings import REPO
from support.study_fakes import (CONFIGS, FakeMain, fake_lwlrap,
                                 write_datasets_spec, write_spec)
from tagger.core import machine
from tools import study
from tools.studylib import report
from tools.studylib import runner as runner_lib
from tools.studylib import spec as spec_lib
from tools.studylib import stats


def _remove(folder, *names):
  for name in names:
    os.remove(os.path.join(folder, name))

def test_resume_runs_only_what_is_left(tmp_path):
  spec = write_spec(tmp_path, CONFIGS)
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
  spec = write_spec(tmp_path, CONFIGS)
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
  study.run_study(write_spec(tmp_path, CONFIGS), out, runner=FakeMain(),
                  say=lambda line: None)
  changed = dict(CONFIGS, base=dict(CONFIGS['base'], max_steps=300,
                                    hparams='lr=0.02'))
  with pytest.raises(spec_lib.StudyError, match='base/seed-1 was started with '
                     'hparams "lr=0.01,seed=1", the spec now says '
                     '"lr=0.02,seed=1"'):
    study.run_study(write_spec(tmp_path, changed), out, runner=FakeMain(),
                    say=lambda line: None)
  # More steps of the same recipe resume it.
  more = dict(CONFIGS, base=dict(CONFIGS['base'], max_steps=300))
  runner = FakeMain()
  study.run_study(write_spec(tmp_path, more), out, runner=runner,
                  say=lambda line: None)
  assert runner.calls[:2] == [('train', 'base/seed-1', [0, 100, 200, 300]),
                              ('eval', 'base/seed-1', [300])]


def test_failing_command_is_one_line_and_exit_1(tmp_path, capsys):
  spec = write_spec(tmp_path, CONFIGS)
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
  spec = write_spec(tmp_path, CONFIGS)
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
  spec = write_spec(tmp_path, CONFIGS)
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
  spec = write_spec(tmp_path, CONFIGS)
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
      preexec_fn=lambda: (os.setpgid(0, 0), default_sigint()))
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


def test_every_configuration_runs_on_each_dataset(tmp_path):
  """Seed by seed, each dataset's configurations in spec order; each run in
  runs/<dataset>/<config>/seed-N, trained and scored on its dataset's
  files, with {dataset} filled in and its dataset's data recorded."""
  configs = dict(CONFIGS, fast=dict(CONFIGS['fast'],
                                    train_flags=['--warmstart_checkpoint',
                                                 '{dataset}/{seed}.ckpt']))
  spec = write_datasets_spec(tmp_path, configs)
  out = str(tmp_path / 'out')
  runner, lines = FakeMain(), []
  study.run_study(spec, out, runner=runner, say=lines.append)
  assert lines[0].endswith('8 runs (2 datasets x 2 configurations x 2 seeds)'
                           ' in %s, 0 finished already' % out)
  order = [run for mode, run, _ in runner.calls if mode == 'train']
  assert order == ['%s/%s/seed-%d' % (d, c, s) for s in (1, 2)
                   for d in ('drums', 'instruments') for c in ('base', 'fast')]
  for (mode, run, _), flags in zip(runner.calls, runner.flags):
    dataset = run.split('/')[0]
    assert flags['--class_map_path'] == str(tmp_path / dataset /
                                            'class_map.csv')
    if mode == 'train':
      assert flags['--train_csv_path'] == str(tmp_path / dataset /
                                              'train.csv')
      assert flags['--train_clip_dir'] == str(tmp_path / dataset)
      assert flags.get('--warmstart_checkpoint') == (
          '%s/%s.ckpt' % (dataset, run[-1]) if '/fast/' in run else None)
    else:
      assert flags['--eval_csv_path'] == str(tmp_path / dataset / 'test.csv')
      assert flags['--eval_clip_dir'] == str(tmp_path / dataset / 'test')
  with open(os.path.join(out, 'runs/instruments/base/seed-2/run.json')) as f:
    assert json.load(f)['data']['test_csv'] == 'instruments/test.csv'
  with open(os.path.join(out, 'results.csv')) as f:
    results = list(csv.DictReader(f))
  assert len(results) == 2 * 2 * (3 + 1)
  for r in results:
    folder = os.path.join(out, 'runs', r['dataset'], r['config'],
                          'seed-' + r['seed'])
    assert float(r['lwlrap']) == fake_lwlrap(folder, int(r['step']))
    assert r['eval_file'] == os.path.relpath(
        os.path.join(folder, 'eval', 'eval-%s.txt' % r['step']), out)


def test_a_before_command_runs_once_before_its_training(tmp_path):
  """In the run's order: before, train, eval; a run resumed after its
  before command finished does not run it again."""
  configs = {'relabelled': {
      'max_steps': 100, 'before': ['--mode', 'relabel',
                                   '--relabeled_csv_path', '{run}/r.csv']}}
  spec = write_spec(tmp_path, configs, seeds=[3])
  out = str(tmp_path / 'out')
  first = FakeMain()
  study.run_study(spec, out, runner=first, say=lambda line: None)
  assert [c[:2] for c in first.calls] == [
      ('relabel', 'relabelled/seed-3'), ('train', 'relabelled/seed-3'),
      ('eval', 'relabelled/seed-3')]
  folder = os.path.join(out, 'runs', 'relabelled', 'seed-3')
  assert os.path.exists(os.path.join(folder, 'before.done'))
  os.remove(os.path.join(folder, 'eval', 'eval-100.txt'))
  again = FakeMain()
  study.run_study(spec, out, runner=again, say=lambda line: None)
  assert [c[:2] for c in again.calls] == [('eval', 'relabelled/seed-3')]
