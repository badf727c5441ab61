"""Stand-ins for study.py's tests: a spec over empty data files, a main.py
that writes checkpoint and eval files with lwlrap values known to the test,
and the one-line refusal of a spec."""

import json
import os
import sys

from tools import study
from tools.studylib import runs as runs_lib
from tools.studylib import spec as spec_lib


def rows_by_key(rows):
  return {(r['config'], r['step']): r for r in rows}


DATASETS = ('drums', 'instruments')


def write_spec(tmp_path, configs, seeds=(1, 2), **extra):
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


def write_datasets_spec(tmp_path, configs, seeds=(1, 2), names=DATASETS,
                        **extra):
  """A spec of several datasets, each in a folder of its name."""
  datasets = {}
  for name in names:
    data = tmp_path / name
    (data / 'test').mkdir(parents=True, exist_ok=True)
    for file in ('class_map.csv', 'train.csv', 'test.csv'):
      (data / file).write_text('')
    datasets[name] = dict(
        class_map=name + '/class_map.csv', train_csv=name + '/train.csv',
        train_clip_dir=name, test_csv=name + '/test.csv',
        test_clip_dir=name + '/test')
  raw = dict(datasets=datasets, seeds=list(seeds), configs=configs)
  raw.update(extra)
  path = tmp_path / 'study.json'
  path.write_text(json.dumps(raw))
  return spec_lib.load_spec(str(path))


def fake_lwlrap(folder, step):
  """A value for each run and step, known to the test. On the instruments,
  runs score 0.2 lower, and fast gains 0.01 x seed over base instead of
  0.05."""
  dataset, config, seed = folder.split(os.sep)[-3:]
  seed = int(seed[len('seed-'):])
  if dataset == 'instruments':
    return round(0.1 * seed + step / 1000 - 0.2 +
                 (0.01 * seed if config == 'fast' else 0), 6)
  return round(0.1 * seed + step / 1000 + (0.05 if config == 'fast' else 0),
               6)


class FakeMain:
  """Stands in for main.py: training writes the checkpoint files of the
  steps not yet saved, eval writes eval-N.txt for the linked checkpoints.
  Records (mode, run, steps) of every call, the run named by its folder
  under runs/, and the flags of each."""

  def __init__(self, fail=None):
    self.calls, self.flags = [], []
    self.fail = fail  # (mode, its last log line): fail that mode

  def __call__(self, argv, log_path, cwd):
    assert argv[:2] == [sys.executable, runs_lib.MAIN] and os.path.isdir(cwd)
    flags = dict(zip(argv[2::2], argv[3::2]))
    mode = flags['--mode']
    if self.fail and self.fail[0] == mode:
      with open(log_path, 'a') as log:
        log.write('starting\n%s\n' % self.fail[1])
      return 1
    if mode not in ('train', 'eval'):  # a configuration's before command
      folder, steps = before_run_folder(argv), None
    elif mode == 'train':
      folder = os.path.dirname(flags['--train_dir'])
      steps = spec_lib.checkpoint_steps(int(flags['--max_steps']))
      os.makedirs(flags['--train_dir'], exist_ok=True)
      for step in steps:
        prefix = os.path.join(flags['--train_dir'], 'model.ckpt-%d' % step)
        for suffix in ('.index', '.data-00000-of-00001'):
          if not os.path.exists(prefix + suffix):
            with open(prefix + suffix, 'w') as f:
              f.write(flags['--hparams'])
    elif '--inference_checkpoint' in flags:
      folder = os.path.dirname(flags['--eval_dir'])
      steps = ensemble_eval(flags)
    elif mode == 'eval':
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
    run = folder.rsplit(os.sep + 'runs' + os.sep, 1)[1]
    self.calls.append((mode, run.replace(os.sep, '/'), steps))
    self.flags.append(flags)
    return 0


def member_lwlrap(prefix):
  """A member's fake_lwlrap: its run folder's value at its step."""
  run = os.path.dirname(os.path.dirname(prefix))
  return fake_lwlrap(run, int(prefix.rsplit('-', 1)[1]))


def ensemble_eval(flags):
  """Eval of one model: eval-N.txt (N: the first member's step) holding
  the mean of the members' fake_lwlrap, which depends on each member;
  returns the members as 'config/seed-N@step'."""
  members = flags['--inference_checkpoint'].split(',')
  step = int(members[0].rsplit('-', 1)[1])
  value = sum(member_lwlrap(m) for m in members) / len(members)
  os.makedirs(flags['--eval_dir'], exist_ok=True)
  for name, text in (('metrics-%d.txt', 'EER = 0.1\n'),
                     ('eval-%d.txt', 'Overall lwlrap = %.6f\n' % value)):
    with open(os.path.join(flags['--eval_dir'], name % step), 'w') as f:
      f.write(text)
  return ['/'.join(m.split(os.sep)[-4:-2]) + '@' + m.rsplit('-', 1)[1]
          for m in members]


def before_run_folder(argv):
  """The run folder a before command names in its --relabeled_csv_path."""
  return os.path.dirname(argv[argv.index('--relabeled_csv_path') + 1])


CONFIGS = {'base': {'hparams': 'lr=0.01', 'max_steps': 200},
           'fast': {'max_steps': 100, 'eval_steps': [100]}}


def assert_spec_refused(tmp_path, capsys, message):
  """study.json is refused with one line ending in `message`, exit 1, and
  no study folder made."""
  code = study.main(['--spec', str(tmp_path / 'study.json'), '--study_dir',
                     str(tmp_path / 'out')], runner=FakeMain())
  assert code == 1
  assert capsys.readouterr().err == 'study.py: error: %s: %s\n' % (
      tmp_path / 'study.json', message)
  assert not (tmp_path / 'out').exists()
