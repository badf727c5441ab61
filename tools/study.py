r"""Studies: a grid of training configurations x seeds on one dataset, with
the test lwlrap of each run summarised as means, 95% intervals and paired
differences to a reference configuration.

  python tools/study.py --spec study.json --study_dir DIR [--only CONFIG,...]
  python tools/study.py --spec study.json --study_dir DIR --summarize_only

The spec is JSON; paths are relative to its folder (or absolute), and the
commands run in that folder, so relative paths in train_flags work too:

  {
    "class_map": "class_map.csv",
    "train_csv": "data/train.csv", "train_clip_dir": "data/train_curated",
    "test_csv": "data/validation.csv", "test_clip_dir": "data/train_curated",
    "model": "mobilenet-v1",
    "seeds": [1, 2, 3],
    "reference": "base",
    "configs": {
      "base": {"hparams": "batch_size=32,lr=0.001", "max_steps": 1000},
      "mixup": {"hparams": "batch_size=32,lr=0.001,mixup=0.2",
                "max_steps": 1000, "eval_steps": [500, 1000],
                "train_flags": ["--train_cache_examples"]}
    }
  }

A configuration may also train on its own data ("train_csv",
"train_clip_dir": main.py's comma-separated sources, relative to the spec's
folder) and run main.py once before its training ("before": arguments,
e.g. a --mode relabel); these and train_flags may hold {seed}, {run} (the
run's folder) and {runs} (the study's runs/ folder), so that a run can
start from another configuration's run of the same seed (configurations run
in the spec's order for each seed).

model defaults to mobilenet-v1 and a configuration may set its own;
reference defaults to the first configuration; hparams must not set seed.
eval_steps default to every checkpoint a run writes (0, 100, 200, ...,
max_steps); each must be one of those. Each (config, seed) is a run in
DIR/runs/<config>/seed-<seed>/: `main.py --mode train` with
`--hparams <hparams>,seed=<seed>` into train/ (log: train.log), then
`main.py --mode eval` on a folder of links to the chosen checkpoints
(eval_checkpoints/) into eval/ (log: eval.log; each command in a log
with its start time and a line naming the CPU, TensorFlow and the code's
commit, on which a seed's numbers depend). Runs go seed by seed, so
that every configuration has a first seed early. --only runs the named
configurations only; the summary covers all.

A study run again continues where it stopped: finished runs (an eval-N.txt
for every chosen step) are skipped, an unfinished training resumes from its
checkpoints. A run remembers its settings (run.json) and refuses to go on
under other ones. SIGINT and SIGTERM are passed to the running command,
which saves and stops; the study then stops (exit 130 / 143). A failing
command stops the study with one line naming the run and its log (exit 1).

Outputs in DIR, rebuilt after every run and by --summarize_only from the
eval files: results.csv (config, seed, step, lwlrap, eval file),
table.csv and table.md (per configuration and step: seeds, mean, 95%
Student t interval of the mean, paired difference to the reference with its
95% t interval) and lwlrap.png (mean against step with the 95% band, every
configuration). "plots": {"NAME": [CONFIG, ...]} in the spec adds
lwlrap-NAME.png, the named configurations beside the reference only.
"""

import argparse
import csv
import ctypes
import dataclasses
import fcntl
import itertools
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback

# Run as `python tools/study.py`: the project is one folder up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tagger.core import checkpoints
from tagger.core import files
from tagger.core import machine
import model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, 'main.py')
DATA_KEYS = ('class_map', 'train_csv', 'train_clip_dir', 'test_csv',
             'test_clip_dir')
SPEC_KEYS = DATA_KEYS + ('model', 'seeds', 'reference', 'configs', 'plots')
CONFIG_KEYS = ('hparams', 'max_steps', 'eval_steps', 'train_flags', 'model',
               'train_csv', 'train_clip_dir', 'before', 'steps_before')
# Flags the study sets for each run itself.
RESERVED_FLAGS = ('mode', 'model', 'hparams', 'max_steps', 'train_dir',
                  'class_map_path', 'train_clip_dir', 'train_csv_path')
NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')
LEVEL = 0.95


class StudyError(Exception):
  """A problem reported as one line, exit status 1."""


class StudyStopped(Exception):
  """SIGINT or SIGTERM: the study stops with 128 + the signal number."""

  def __init__(self, signum):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.during = None  # the run and command it stopped, if any


# --- The spec ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
  name: str
  model: str
  hparams: str
  max_steps: int
  eval_steps: tuple
  train_flags: tuple
  # Training steps its weights had before this run (a warm start from
  # another run): added to its steps in the results, table and plot, so
  # that it meets the reference at equal training steps. Reporting only,
  # not a run setting: it can be added to a study whose runs are done.
  steps_before: int
  # This configuration's own training data (main.py's comma-separated
  # sources), or None for the spec's; and main.py arguments run before its
  # training (e.g. a relabelling). Each may hold {seed}, {runs} (the study's
  # runs/ folder) and {run} (this run's folder).
  train_csv: str = None
  train_clip_dir: str = None
  before: tuple = ()


@dataclasses.dataclass(frozen=True)
class Spec:
  path: str
  folder: str
  data: dict  # DATA_KEYS: absolute paths
  raw_data: dict  # DATA_KEYS: as written, recorded with each run
  seeds: tuple
  reference: str
  configs: dict  # name: Config, in the spec's order
  # Extra plots, name: configurations drawn beside the reference, so that
  # a question (a section of a report) gets a picture of its own rather
  # than a share of one crowded with every configuration.
  plots: dict


def checkpoint_steps(max_steps):
  """The steps a training run to max_steps saves: 0, every 100, the end."""
  return sorted(set(range(0, max_steps, checkpoints.CHECKPOINT_EVERY))
                | {max_steps})


def load_spec(path):
  try:
    with open(path) as f:
      raw = json.load(f, object_pairs_hook=_Object)
  except OSError as e:
    raise StudyError('%s: cannot read (%s)' % (path, e.strerror)) from None
  except ValueError as e:
    raise StudyError('%s: not valid JSON (%s)' % (path, e)) from None
  try:
    return _parse_spec(os.path.abspath(path), raw)
  except ValueError as e:
    raise StudyError('%s: %s' % (path, e)) from None


class _Object(dict):
  """A JSON object that remembers the keys it was given more than once:
  json keeps only the last value of a key, silently."""

  def __init__(self, pairs):
    super().__init__(pairs)
    keys = [key for key, _ in pairs]
    self.repeated = [key for i, key in enumerate(keys) if key in keys[:i]]


def _no_repeated_keys(value, where=''):
  """Refuses the first key given twice in any object of the spec."""
  if isinstance(value, _Object) and value.repeated:
    what = ('configuration %r is named twice' if where == 'configs' else
            'key %r is given twice')
    raise ValueError((where + ': ' if where else '') +
                     what % value.repeated[0])
  if isinstance(value, dict):
    for key, child in value.items():
      _no_repeated_keys(child, '%s.%s' % (where, key) if where else key)


def _parse_spec(path, raw):
  if not isinstance(raw, dict):
    raise ValueError('expected a JSON object')
  _no_repeated_keys(raw)
  _no_unknown(raw, SPEC_KEYS, '')
  folder = os.path.dirname(path)
  data = {}
  for key in DATA_KEYS:
    if not isinstance(raw.get(key), str) or not raw[key]:
      raise ValueError('%s: a path is required' % key)
    data[key] = os.path.join(folder, raw[key])
    if not os.path.exists(data[key]):
      raise ValueError('%s: %s does not exist' % (key, data[key]))
  seeds = raw.get('seeds')
  if (not isinstance(seeds, list) or not seeds or
      not all(_is_int(s) and 1 <= s < 2 ** 31 for s in seeds) or
      len(set(seeds)) != len(seeds)):
    raise ValueError('seeds: a list of distinct integers from 1 to 2**31 - 1'
                     ' is required')
  default_model = _model(raw.get('model', 'mobilenet-v1'), 'model')
  entries = raw.get('configs')
  if not isinstance(entries, dict) or not entries:
    raise ValueError('configs: an object of configurations is required')
  configs = {name: _parse_config(name, entry, default_model)
             for name, entry in entries.items()}
  reference = _config_name(raw.get('reference', next(iter(configs))),
                           configs, 'reference')
  return Spec(path, folder, data, {k: raw[k] for k in DATA_KEYS},
              tuple(seeds), reference, configs,
              _plots(raw.get('plots', {}), configs))


def _plots(entry, configs):
  if not isinstance(entry, dict):
    raise ValueError('plots: an object of lists of configurations is required')
  plots = {}
  for name, chosen in entry.items():
    if not NAME.fullmatch(name):
      raise ValueError('plots: %r is not a name of letters, digits, _, . and'
                       ' -' % name)
    if not isinstance(chosen, list) or not chosen:
      raise ValueError('plots.%s: a list of configurations is required' % name)
    plots[name] = tuple(_config_name(c, configs, 'plots.' + name)
                        for c in chosen)
  return plots


def _config_name(value, configs, where):
  if not isinstance(value, str) or value not in configs:
    raise ValueError('%s: %r is not one of the configs (%s)' % (
        where, value, ', '.join(configs)))
  return value


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _no_unknown(entry, known, where):
  unknown = sorted(set(entry) - set(known))
  if unknown:
    raise ValueError('%sunknown key %r (known: %s)' % (where, unknown[0],
                                                       ', '.join(known)))


def _model(name, where):
  if name not in model.MODELS:
    raise ValueError('%s: %r is not a model (%s)' % (where, name,
                                                      ', '.join(model.MODELS)))
  return name


def _parse_config(name, entry, default_model):
  where = 'configs.%s.' % name
  if not NAME.fullmatch(name):
    raise ValueError('configs: name %r: use letters, digits, _ . and -' %
                     name)
  if not isinstance(entry, dict):
    raise ValueError(where[:-1] + ': expected an object')
  _no_unknown(entry, CONFIG_KEYS, where)
  max_steps = entry.get('max_steps')
  if not _is_int(max_steps) or max_steps < 1:
    raise ValueError(where + 'max_steps: a positive integer is required')
  for key in ('train_csv', 'train_clip_dir'):
    if key in entry and not (isinstance(entry[key], str) and entry[key]):
      raise ValueError(where + key + ': a path (or comma-separated paths) '
                       'is required')
  before = entry.get('before', [])
  if not isinstance(before, list) or not all(isinstance(a, str)
                                             for a in before):
    raise ValueError(where + 'before: a list of main.py arguments is '
                     'required')
  steps_before = entry.get('steps_before', 0)
  if not _is_int(steps_before) or steps_before < 0:
    raise ValueError(where + 'steps_before: a non-negative integer is '
                     'required')
  return Config(name, _model(entry.get('model', default_model),
                             where + 'model'),
                _hparams(entry.get('hparams', ''), where + 'hparams'),
                max_steps, _eval_steps(entry, max_steps, where),
                _train_flags(entry.get('train_flags', []), where),
                steps_before, entry.get('train_csv'),
                entry.get('train_clip_dir'), tuple(before))


def _hparams(text, where):
  from tagger.core import params  # plain Python, as main.py's own checks
  if not isinstance(text, str):
    raise ValueError(where + ': expected a "name=value,..." string')
  try:
    if 'seed' in params.parse_overrides(text):
      raise ValueError('seed is set by the study (see "seeds")')
    params.parse_hparams(text)
  except ValueError as e:
    raise ValueError('%s: %s' % (where, e)) from None
  return text.strip().strip(',')


def _eval_steps(entry, max_steps, where):
  possible = checkpoint_steps(max_steps)
  steps = entry.get('eval_steps', possible)
  if (not isinstance(steps, list) or not steps or
      not all(_is_int(s) for s in steps)):
    raise ValueError(where + 'eval_steps: a list of steps is required')
  for step in steps:
    if step not in possible:
      raise ValueError(
          '%seval_steps: %d is not a checkpoint step (0, a multiple of %d '
          'below max_steps, or max_steps=%d)' % (
              where, step, checkpoints.CHECKPOINT_EVERY, max_steps))
  return tuple(sorted(set(steps)))


def _train_flags(flags, where):
  if not isinstance(flags, list) or not all(isinstance(f, str)
                                            for f in flags):
    raise ValueError(where + 'train_flags: a list of strings is required')
  for flag in flags:
    name = flag.lstrip('-').split('=')[0]
    if name in RESERVED_FLAGS or name in ('no' + f for f in RESERVED_FLAGS):
      raise ValueError('%strain_flags: %s is set by the study' % (where,
                                                                   flag))
  return tuple(flags)


# --- Runs -------------------------------------------------------------------

def run_name(config_name, seed):
  return '%s/seed-%d' % (config_name, seed)


def run_dir(study_dir, config_name, seed):
  return os.path.join(study_dir, 'runs', config_name, 'seed-%d' % seed)


def eval_file(folder, step):
  return os.path.join(folder, 'eval', 'eval-%d.txt' % step)


def checkpoint_prefix(folder, step):
  return os.path.join(folder, 'train', 'model.ckpt-%d' % step)


def is_finished(folder, config):
  return all(os.path.exists(eval_file(folder, s)) for s in config.eval_steps)


def run_hparams(config, seed):
  return ','.join(p for p in (config.hparams, 'seed=%d' % seed) if p)


def fill(text, seed, folder):
  """A configuration's text with {seed}, {runs} and {run} filled in."""
  return text.format(seed=seed, run=folder,
                     runs=os.path.dirname(os.path.dirname(folder)))


def _paths(spec, text, seed, folder):
  """Comma-separated paths, each relative to the spec's folder."""
  return ','.join(os.path.join(spec.folder, fill(p, seed, folder))
                  for p in text.split(','))


def train_command(spec, config, seed, folder):
  csv_paths = (_paths(spec, config.train_csv, seed, folder)
               if config.train_csv else spec.data['train_csv'])
  clip_dirs = (_paths(spec, config.train_clip_dir, seed, folder)
               if config.train_clip_dir else spec.data['train_clip_dir'])
  return [sys.executable, MAIN, '--mode', 'train', '--model', config.model,
          '--class_map_path', spec.data['class_map'],
          '--train_clip_dir', clip_dirs, '--train_csv_path', csv_paths,
          '--train_dir', os.path.join(folder, 'train'),
          '--hparams', run_hparams(config, seed),
          '--max_steps', str(config.max_steps)] + [
              fill(f, seed, folder) for f in config.train_flags]


def before_command(spec, config, seed, folder):
  return [sys.executable, MAIN, '--class_map_path', spec.data['class_map']
          ] + [fill(a, seed, folder) for a in config.before]


def eval_command(spec, folder):
  return [sys.executable, MAIN, '--mode', 'eval',
          '--class_map_path', spec.data['class_map'],
          '--eval_clip_dir', spec.data['test_clip_dir'],
          '--eval_csv_path', spec.data['test_csv'],
          '--train_dir', os.path.join(folder, 'eval_checkpoints'),
          '--eval_dir', os.path.join(folder, 'eval')]


def run_settings(spec, config, seed):
  """What makes a run's results what they are; max_steps and eval_steps may
  grow (training resumes, more steps are scored)."""
  return {'model': config.model, 'hparams': run_hparams(config, seed),
          'train_flags': list(config.train_flags), 'data': spec.raw_data,
          'train_csv': config.train_csv,
          'train_clip_dir': config.train_clip_dir,
          'before': list(config.before)}


def check_settings(folder, settings, name):
  """Records the run's settings, or refuses other ones than recorded: a
  resumed run would mix two recipes, and its results would be neither's."""
  path = os.path.join(folder, 'run.json')
  if not os.path.exists(path):
    files.write_atomically(path, json.dumps(settings, indent=1) + '\n')
    return
  with open(path) as f:
    recorded = json.load(f)
  for key, value in settings.items():
    if recorded.get(key) != value:
      raise StudyError(
          '%s was started with %s %s, the spec now says %s; give the '
          'configuration another name, or delete %s to redo it' % (
              name, key, json.dumps(recorded.get(key)), json.dumps(value),
              folder))


def link_checkpoints(folder, steps, name):
  """Fills eval_checkpoints/ with relative links to the files of the chosen
  checkpoints not yet scored, so that eval scores those and no others."""
  links = os.path.join(folder, 'eval_checkpoints')
  os.makedirs(links, exist_ok=True)
  for entry in os.listdir(links):
    os.remove(os.path.join(links, entry))
  for step in steps:
    prefix = checkpoint_prefix(folder, step)
    paths = checkpoints.files_of(prefix)
    if prefix + '.index' not in paths or len(paths) < 2:  # index, shards
      raise StudyError('%s: training left no checkpoint %s; delete %s to '
                       'redo the run' % (name, prefix, folder))
    for path in paths:
      os.symlink(os.path.relpath(path, links),
                 os.path.join(links, os.path.basename(path)))


def remove_stale_claims(folder):
  """Eval claims left by an eval killed outright: the study lock makes this
  process the only one scoring into the folder."""
  eval_dir = os.path.join(folder, 'eval')
  if os.path.isdir(eval_dir):
    for entry in os.listdir(eval_dir):
      if re.fullmatch(r'eval-\d+\.claim(\.\d+)?', entry):
        os.remove(os.path.join(eval_dir, entry))


# --- Commands ---------------------------------------------------------------

def _prctl():
  try:
    return ctypes.CDLL(None).prctl  # Linux
  except (OSError, AttributeError):
    return None


def _child_setup(prctl):
  """In the child, before exec: signals unblocked (blocked around the
  start, see CommandRunner.start) and SIGINT at its default, so that main.py's
  stop handlers take them; SIGTERM when the study dies, so that no
  training is left running into a run folder."""
  signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  if prctl is not None:
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class CommandRunner:
  """Runs one command at a time with its output appended to a log, and
  passes each SIGINT or SIGTERM the study gets on to it. The child has a
  session of its own, so that Ctrl-C in a terminal reaches it once, through
  here (a second signal makes main.py stop at once, without saving)."""

  def __init__(self):
    self.child = None
    self.stop = None  # the first signal received
    self.prctl = _prctl()  # found here: the child may only call it

  def install(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      if signal.getsignal(signum) is not signal.SIG_IGN:
        signal.signal(signum, self.handle)

  def handle(self, signum, frame):
    del frame
    self.stop = self.stop or signum
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def __call__(self, argv, log_path, cwd):
    if self.stop:
      raise StudyStopped(self.stop)
    with open(log_path, 'a') as log:
      log.write('\n$ %s  # %s\n# on %s\n' % (
          shlex.join(argv), time.strftime('%c'), machine.describe()))
      log.flush()
      self.start(argv, log, cwd)
      try:
        code = self.child.wait()
      finally:
        self.child = None
    if self.stop:
      raise StudyStopped(self.stop)
    return code

  def start(self, argv, log, cwd):
    # Signals held until self.child is set: one arriving meanwhile is then
    # passed on, and not lost.
    held = signal.pthread_sigmask(signal.SIG_BLOCK,
                                  (signal.SIGINT, signal.SIGTERM))
    try:
      env = dict(os.environ, PYTHONUNBUFFERED='1')
      self.child = subprocess.Popen(
          argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
          stderr=subprocess.STDOUT, env=env, start_new_session=True,
          preexec_fn=lambda: _child_setup(self.prctl))
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _last_line(log_path):
  try:
    with open(log_path, errors='replace') as f:
      lines = [l.strip() for l in f.readlines()[-50:] if l.strip()]
  except OSError:
    return ''
  return lines[-1][:300] if lines else ''


def run_command(runner, argv, log_path, cwd, what, name):
  try:
    code = runner(argv, log_path, cwd)
  except StudyStopped as e:
    e.during = e.during or '%s (%s)' % (name, what)
    raise
  if code != 0:
    status = ('killed by %s' % signal.Signals(-code).name if code < 0 else
              'exit status %d' % code)
    last = _last_line(log_path)
    raise StudyError('%s: %s failed (%s%s); see %s' % (
        name, what, status, ': ' + last if last else '', log_path))


# --- Results ----------------------------------------------------------------

def read_lwlrap(path):
  with open(path, errors='replace') as f:
    lines = f.read().strip().splitlines()
  found = re.fullmatch(r'Overall lwlrap = (\S+)', lines[-1] if lines else '')
  try:
    return float(found.group(1))
  except (AttributeError, ValueError):
    raise StudyError('%s: last line is not "Overall lwlrap = X"' %
                     path) from None


def collect(spec, study_dir):
  """[(config, seed, step, lwlrap, eval file)] of every chosen step scored
  so far, in spec order; step counts the configuration's steps_before."""
  results = []
  for config in spec.configs.values():
    for seed in spec.seeds:
      folder = run_dir(study_dir, config.name, seed)
      for step in config.eval_steps:
        path = eval_file(folder, step)
        if os.path.exists(path):
          results.append((config.name, seed, step + config.steps_before,
                          read_lwlrap(path), os.path.relpath(path, study_dir)))
  return results


def t_quantile(df):
  from scipy import stats
  return float(stats.t.ppf(0.5 + LEVEL / 2, df))


def mean_interval(values):
  """(n, mean, low, high): the mean and its 95% Student t interval (n - 1
  degrees of freedom); no interval (None, None) from one value."""
  n = len(values)
  if n == 0:
    return 0, None, None, None
  mean = statistics.fmean(values)
  if n < 2:
    return n, mean, None, None
  half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
  return n, mean, mean - half, mean + half


def summarize(results, reference):
  """Per (config, step), configs in first-seen order and steps ascending:
  dicts of the seeds' mean lwlrap with its interval, and the paired
  difference to the reference at the same step over the seeds both have.
  results: (config, seed, step, lwlrap, ...) tuples."""
  values = {}
  for config, seed, step, lwlrap, *_ in results:
    values.setdefault((config, step), {})[seed] = lwlrap
  configs = list(dict.fromkeys(r[0] for r in results))
  rows = []
  for config in configs:
    for step in sorted(s for c, s in values if c == config):
      mine = values[(config, step)]
      row = dict(zip(('seeds', 'mean', 'low', 'high'),
                     mean_interval(list(mine.values()))))
      row.update(config=config, step=step)
      ref = values.get((reference, step), {})
      paired = sorted(set(mine) & set(ref))
      if config != reference and paired:
        diff = mean_interval([mine[s] - ref[s] for s in paired])
        row.update(zip(('paired', 'diff', 'diff_low', 'diff_high'), diff))
      rows.append(row)
  return rows


TABLE_COLUMNS = ('config', 'step', 'seeds', 'mean', 'low', 'high', 'paired',
                 'diff', 'diff_low', 'diff_high')


def results_csv(results):
  lines = [['config', 'seed', 'step', 'lwlrap', 'eval_file']]
  lines += [[c, s, st, repr(v), f] for c, s, st, v, f in results]
  return _csv_text(lines)


def table_csv(rows):
  lines = [list(TABLE_COLUMNS)]
  lines += [['' if row.get(k) is None else row[k] for k in TABLE_COLUMNS]
            for row in rows]
  return _csv_text(lines)


def _csv_text(lines):
  import io
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerows(lines)
  return out.getvalue()


def _interval(low, high, sign=''):
  if low is None:
    return '–'
  return '[%s, %s]' % (format(low, sign + '.4f'), format(high, sign + '.4f'))


def table_md(spec, rows, study_dir):
  ref = spec.reference
  # Relative to the table's own folder, so that the link holds wherever the
  # study folder and its spec are moved together.
  where = os.path.relpath(spec.path, study_dir)
  lines = [
      '# Study: test lwlrap', '',
      'Spec [`%s`](%s); seeds %s; test set `%s`.' % (
          where, where, ', '.join(map(str, spec.seeds)),
          spec.raw_data['test_csv']),
      'Mean over seeds with its 95%% Student t interval; Δ is the paired '
      'difference to the reference `%s` at the same step: the mean of the '
      'per-seed differences over the seeds both have, with its 95%% t '
      'interval. An interval needs 2 seeds.' % ref, '',
      '| configuration | model | hparams | max_steps |', '| --- | --- | --- | --- |']
  lines += ['| %s | %s | `%s` | %s |' % (c.name, c.model, c.hparams or '-',
                                         _budget(c))
            for c in spec.configs.values()]
  for step in sorted({r['step'] for r in rows}):
    lines += ['', '## Step %d' % step, '',
              '| configuration | seeds | mean lwlrap | 95%% interval | Δ vs %s'
              ' | 95%% interval of Δ | paired seeds |' % ref,
              '| --- | ---: | ---: | --- | ---: | --- | ---: |']
    lines += [_md_row(r, ref) for r in rows if r['step'] == step]
  return '\n'.join(lines) + '\n'


def _budget(config):
  if not config.steps_before:
    return str(config.max_steps)
  return '%d after %d' % (config.max_steps, config.steps_before)


def _md_row(row, reference):
  if row['config'] == reference:
    diff = ['reference', '', '']
  elif row.get('diff') is None:
    diff = ['–', '–', '0']
  else:
    diff = [format(row['diff'], '+.4f'),
            _interval(row['diff_low'], row['diff_high'], '+'),
            str(row['paired'])]
  return '| %s | %d | %.4f | %s | %s |' % (
      row['config'], row['seeds'], row['mean'],
      _interval(row['low'], row['high']), ' | '.join(diff))


def plot(rows, reference, path):
  """Mean test lwlrap against step per configuration, the 95% interval as a
  band (an error bar for a configuration scored at one step only)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
  configs = list(dict.fromkeys(r['config'] for r in rows))
  # The reference last, so that it is drawn over the others.
  configs.sort(key=lambda c: c == reference)
  styles = _line_styles(plt.rcParams['axes.prop_cycle'].by_key()['color'])
  handles = []  # in drawing order (matplotlib lists error bars last)
  for config in configs:
    mine = [r for r in rows if r['config'] == config]
    handles.append(_plot_config(ax, mine, config, config == reference,
                                styles))
  fewest, most = min(r['seeds'] for r in rows), max(r['seeds'] for r in rows)
  ax.set_title('Test lwlrap: mean and 95%% interval over %s seed%s' % (
      most if fewest == most else '%d–%d' % (fewest, most),
      '' if most == 1 else 's'))
  ax.set_xlabel('training step')
  ax.set_ylabel('test lwlrap')
  ax.grid(alpha=0.3)
  if configs[-1] == reference:  # drawn last, listed first
    handles = handles[-1:] + handles[:-1]
  ax.legend(handles, [h.get_label() for h in handles], loc='best')
  fig.tight_layout()
  temporary = path + '.tmp.png'
  fig.savefig(temporary)
  plt.close(fig)
  os.replace(temporary, path)


def _line_styles(colors):
  """Endless (colour, line style): each colour solid, then each dashed,
  dotted, dash-dotted, so that a study of more configurations than the
  palette has colours still tells its lines apart."""
  colors = list(colors) or ['C0']  # an empty palette would loop forever
  for dashes in itertools.cycle(('-', '--', ':', '-.')):
    for color in colors:
      yield color, dashes


def _plot_config(ax, rows, config, is_reference, styles):
  """Draws one configuration; returns its legend handle."""
  steps = [r['step'] for r in rows]
  means = [r['mean'] for r in rows]
  low = [r['mean'] if r['low'] is None else r['low'] for r in rows]
  high = [r['mean'] if r['high'] is None else r['high'] for r in rows]
  label = config if config == 'reference' else config + ' (reference)'
  style = (dict(color='black', linewidth=2.5, label=label, zorder=3)
           if is_reference else
           dict(zip(('color', 'linestyle'), next(styles)), linewidth=1.5,
                label=config))
  if len(rows) == 1:
    return ax.errorbar(steps, means,
                       yerr=[[means[0] - low[0]], [high[0] - means[0]]],
                       marker='o', capsize=6, **style)
  (line,) = ax.plot(steps, means, marker='o', markersize=4, **style)
  ax.fill_between(steps, low, high, color=style['color'],
                  alpha=0.15 if is_reference else 0.2, linewidth=0)
  return line


def write_summary(spec, study_dir):
  """results.csv, table.csv, table.md, lwlrap.png and the spec's plots from
  the eval files; returns the number of results."""
  results = collect(spec, study_dir)
  rows = summarize(results, spec.reference)
  files.write_atomically(os.path.join(study_dir, 'results.csv'),
                         results_csv(results))
  files.write_atomically(os.path.join(study_dir, 'table.csv'),
                         table_csv(rows))
  files.write_atomically(os.path.join(study_dir, 'table.md'),
                         table_md(spec, rows, study_dir))
  if rows:
    plot(rows, spec.reference, os.path.join(study_dir, 'lwlrap.png'))
  for name, chosen in spec.plots.items():
    mine = [r for r in rows if r['config'] in chosen + (spec.reference,)]
    if any(r['config'] in chosen for r in mine):
      plot(mine, spec.reference,
           os.path.join(study_dir, 'lwlrap-%s.png' % name))
  return len(results)


# --- The study --------------------------------------------------------------

def _clock(seconds):
  seconds = int(round(seconds))
  return '%d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)


class Progress:
  """Runs done of the total, time elapsed, and the time left estimated from
  the mean duration of the runs this process has done (of those it did
  whole, if any: a resumed run is shorter)."""

  def __init__(self, total, done, say):
    self.total, self.done, self.say = total, done, say
    self.start = time.monotonic()
    self.durations = {True: [], False: []}  # whole run: seconds

  def left(self):
    durations = self.durations[True] or self.durations[False]
    if not durations:
      return 'time left unknown'
    mean = statistics.fmean(durations)
    return 'about %s left' % _clock(mean * (self.total - self.done))

  def started(self, name, what):
    self.say('[%d/%d] %s: %s' % (self.done + 1, self.total, name, what))

  def finished(self, name, seconds, result, whole):
    self.done += 1
    self.durations[whole].append(seconds)
    self.say('[%d/%d] %s: done in %s, %s; elapsed %s, %s' % (
        self.done, self.total, name, _clock(seconds), result,
        _clock(time.monotonic() - self.start), self.left()))


def plan(spec, only):
  """[(config, seed)] to run: seed by seed, configurations in spec order."""
  names = list(spec.configs)
  if only:
    unknown = [n for n in only if n not in spec.configs]
    if unknown:
      raise StudyError('--only: %s is not a configuration of %s (%s)' % (
          unknown[0], spec.path, ', '.join(names)))
    names = [n for n in names if n in only]
  return [(spec.configs[n], seed) for seed in spec.seeds for n in names]


def execute(spec, config, seed, study_dir, runner, progress):
  name = run_name(config.name, seed)
  folder = run_dir(study_dir, config.name, seed)
  os.makedirs(folder, exist_ok=True)
  check_settings(folder, run_settings(spec, config, seed), name)
  began = time.monotonic()
  whole = not os.path.exists(os.path.join(folder, 'train'))
  done_before = os.path.join(folder, 'before.done')
  if config.before and not os.path.exists(done_before):
    log = os.path.join(folder, 'before.log')
    progress.started(name, 'running its before command (log: %s)' % log)
    run_command(runner, before_command(spec, config, seed, folder), log,
                spec.folder, 'before command', name)
    files.write_atomically(done_before, 'done\n')
  if not os.path.exists(checkpoint_prefix(folder, config.max_steps) +
                        '.index'):
    log = os.path.join(folder, 'train.log')
    progress.started(name, 'training to step %d (log: %s)' % (
        config.max_steps, log))
    run_command(runner, train_command(spec, config, seed, folder), log,
                spec.folder, 'training', name)
  todo = [s for s in config.eval_steps
          if not os.path.exists(eval_file(folder, s))]
  link_checkpoints(folder, todo, name)
  remove_stale_claims(folder)
  log = os.path.join(folder, 'eval.log')
  progress.started(name, 'scoring step%s %s on the test set (log: %s)' % (
      's' if len(todo) > 1 else '', ', '.join(map(str, todo)), log))
  run_command(runner, eval_command(spec, folder), log, spec.folder, 'eval',
              name)
  missing = [s for s in todo if not os.path.exists(eval_file(folder, s))]
  if missing:
    raise StudyError('%s: eval wrote no %s; see %s' % (
        name, eval_file(folder, missing[0]), log))
  last = config.eval_steps[-1]
  progress.finished(name, time.monotonic() - began, 'lwlrap %.4f at step %d'
                    % (read_lwlrap(eval_file(folder, last)), last), whole)


def run_study(spec, study_dir, only=(), runner=None, say=print):
  """Runs what is left of the study, then writes the summary."""
  runner = runner or CommandRunner()
  runs = plan(spec, only)
  left = [(c, s) for c, s in runs
          if not is_finished(run_dir(study_dir, c.name, s), c)]
  say('Study %s: %d runs (%d configurations x %d seeds) in %s, %d finished '
      'already' % (spec.path, len(runs), len({c.name for c, _ in runs}),
                   len(spec.seeds), study_dir, len(runs) - len(left)))
  progress = Progress(len(runs), len(runs) - len(left), say)
  for number, (config, seed) in enumerate(left, 1):
    execute(spec, config, seed, study_dir, runner, progress)
    if number < len(left):  # the last run's summary is the one below
      _summarize_between_runs(spec, study_dir, say)
  count = write_summary(spec, study_dir)
  say('%d results; summary in %s (table.md, table.csv, lwlrap.png, '
      'results.csv)' % (count, study_dir))


def _summarize_between_runs(spec, study_dir, say):
  """The summary so far. A table or plot that fails to draw is reported and
  the study trains on, so that such a bug costs a summary, not the night's
  runs; the summary after the last run raises it."""
  try:
    write_summary(spec, study_dir)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    say('summary failed (%s: %s); the study goes on and writes it again '
        'after the last run' % (type(e).__name__, e))


def lock(study_dir):
  """An exclusive lock on the study folder for this process's life: two
  studies in one folder would train the same runs at once."""
  os.makedirs(study_dir, exist_ok=True)
  handle = open(os.path.join(study_dir, '.lock'), 'a')
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    raise StudyError('%s is in use by another study process' %
                     study_dir) from None
  return handle


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='study.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('--spec', required=True, help='the study spec (JSON)')
  parser.add_argument('--study_dir', required=True,
                      help='folder of the runs and the summary')
  parser.add_argument('--only', default='',
                      help='comma-separated configurations to run (default: '
                      'all); the summary covers every one')
  parser.add_argument('--summarize_only', action='store_true',
                      help='rebuild results, tables and plot from the eval '
                      'files; run nothing')
  return parser.parse_args(argv)


def main(argv=None, runner=None):
  """The command line; runner: the function running a command (tests)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if runner is None:
    runner = CommandRunner()
    runner.install()
  study_dir = os.path.abspath(args.study_dir)
  try:
    spec = load_spec(args.spec)
    if args.summarize_only:
      count = write_summary(spec, study_dir)
      print('%d results; summary in %s' % (count, study_dir))
      return 0
    held = lock(study_dir)
    try:
      run_study(spec, study_dir, [n for n in args.only.split(',') if n],
                runner)
    finally:
      held.close()
  except StudyError as e:
    print('study.py: error: %s' % e, file=sys.stderr)
    return 1
  except StudyStopped as e:
    print('study.py: stopped by %s%s; what is done is kept, run the same '
          'command to continue' % (e, ' during ' + e.during if e.during
                                   else ''), file=sys.stderr)
    return 128 + e.signum
  except OSError as e:
    print('study.py: error: %s' % (
        '%s: %s' % (e.filename, e.strerror) if e.filename else e),
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
