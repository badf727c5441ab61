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

Instead of the data keys, "datasets": {"drums": {"class_map": ...,
"train_csv": ..., "train_clip_dir": ..., "test_csv": ..., "test_clip_dir":
...}, "instruments": {...}} names several datasets: every configuration
runs on each with the same seeds, in DIR/runs/<dataset>/<config>/seed-N,
and the summary gives each dataset its rows and plot panel, plus rows
"pooled" over them, where each (dataset, seed) pair counts as a seed: the
mean over all, and the paired difference to the reference over the pairs
both have, with its 95% t interval.

A configuration may also train on its own data ("train_csv",
"train_clip_dir": main.py's comma-separated sources, relative to the spec's
folder) and run main.py once before its training ("before": arguments,
e.g. a --mode relabel); these and train_flags may hold {seed}, {run} (the
run's folder), {runs} (the study's runs/ folder, or runs/<dataset>/) and
{dataset} (its name, with "datasets"), so that a run can
start from another configuration's run of the same seed (configurations run
in the spec's order for each seed).

A configuration may instead be an ensemble of an earlier configuration's
runs, scored by `main.py --mode eval --inference_checkpoint a,b,c`:
{"ensemble": {"of": CONFIG, "snapshots": K}} (each run's last K
checkpoints up to each step) or {"ensemble": {"of": CONFIG, "seeds":
true}} (every seed's run: one model, run last, its result in each seed's
row); it trains nothing and takes eval_steps only.

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
import fcntl
import os
import statistics
import sys
import time
import traceback

# Run as `python tools/study.py`: the project is one folder up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tagger.core import checkpoints
from tagger.core import files
from tools.studylib.report import write_summary
from tools.studylib.runner import (
    CommandRunner, StudyStopped, run_command)
from tools.studylib.runs import (
    before_command, check_settings, checkpoint_prefix, ensemble_eval_command,
    ensemble_members, eval_command, eval_file, is_finished, link_checkpoints,
    metrics_file, remove_stale_claims, run_dir, run_name, run_settings,
    train_command)
from tools.studylib.spec import StudyError, load_spec
from tools.studylib.stats import read_lwlrap


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
  """[(dataset, config, seed)] to run: seed by seed, each dataset's
  configurations in spec order."""
  names = list(spec.configs)
  if only:
    unknown = [n for n in only if n not in spec.configs]
    if unknown:
      raise StudyError('--only: %s is not a configuration of %s (%s)' % (
          unknown[0], spec.path, ', '.join(names)))
    names = [n for n in names if n in only]
  runs = [(dataset, spec.configs[n], seed) for seed in spec.seeds
          for dataset in spec.datasets for n in names]
  # An ensemble of seeds needs every seed's member: it runs last.
  return sorted(runs, key=lambda run: bool(
      run[1].ensemble and run[1].ensemble.kind == 'seeds'))


def _open_run(run, study_dir):
  """(name, folder) of a run, its folder made and its settings checked."""
  dataset, config, seed = run
  name = run_name(dataset, config.name, seed)
  folder = run_dir(study_dir, dataset, config.name, seed)
  os.makedirs(folder, exist_ok=True)
  check_settings(folder, run_settings(dataset, config, seed), name)
  return name, folder


def execute(spec, run, study_dir, runner, progress):
  dataset, config, seed = run
  name, folder = _open_run(run, study_dir)
  began = time.monotonic()
  whole = not os.path.exists(os.path.join(folder, 'train'))
  done_before = os.path.join(folder, 'before.done')
  if config.before and not os.path.exists(done_before):
    log = os.path.join(folder, 'before.log')
    progress.started(name, 'running its before command (log: %s)' % log)
    run_command(runner, before_command(dataset, config, seed, folder), log,
                spec.folder, 'before command', name)
    files.write_atomically(done_before, 'done\n')
  if not os.path.exists(checkpoint_prefix(folder, config.max_steps) +
                        '.index'):
    log = os.path.join(folder, 'train.log')
    progress.started(name, 'training to step %d (log: %s)' % (
        config.max_steps, log))
    run_command(runner, train_command(spec, dataset, config, seed, folder),
                log, spec.folder, 'training', name)
  todo = [s for s in config.eval_steps
          if not os.path.exists(eval_file(folder, s))]
  link_checkpoints(folder, todo, name)
  remove_stale_claims(folder)
  log = os.path.join(folder, 'eval.log')
  progress.started(name, 'scoring step%s %s on the test set (log: %s)' % (
      's' if len(todo) > 1 else '', ', '.join(map(str, todo)), log))
  run_command(runner, eval_command(dataset, folder), log, spec.folder,
              'eval', name)
  missing = [s for s in todo if not os.path.exists(eval_file(folder, s))]
  if missing:
    raise StudyError('%s: eval wrote no %s; see %s' % (
        name, eval_file(folder, missing[0]), log))
  last = config.eval_steps[-1]
  progress.finished(name, time.monotonic() - began, 'lwlrap %.4f at step %d'
                    % (read_lwlrap(eval_file(folder, last)), last), whole)


def execute_ensemble(spec, run, study_dir, runner, progress):
  """Scores an ensemble configuration's run: the mean of its members at
  each step (ensemble_members). The seeds' ensemble is one model: scored
  for the first seed, and its result copied for the others."""
  dataset, config, seed = run
  name, folder = _open_run(run, study_dir)
  began = time.monotonic()
  first = run_dir(study_dir, dataset, config.name, spec.seeds[0])
  for step in [s for s in config.eval_steps
               if not os.path.exists(eval_file(folder, s))]:
    members = ensemble_members(study_dir, dataset, config, seed, spec.seeds,
                               step)
    missing = [m for m in members if not checkpoints.exists(m)]
    if missing:
      raise StudyError('%s: its member %s does not exist; run %s first' % (
          name, missing[0], config.ensemble.of))
    if config.ensemble.kind == 'seeds' and os.path.exists(
        eval_file(first, step)):
      os.makedirs(os.path.join(folder, 'eval'), exist_ok=True)
      for path in (metrics_file(first, step), eval_file(first, step)):
        with open(path) as f:
          files.write_atomically(
              os.path.join(folder, 'eval', os.path.basename(path)), f.read())
      continue
    log = os.path.join(folder, 'eval.log')
    progress.started(name, 'scoring the mean of %d checkpoints at step %d '
                     '(log: %s)' % (len(members), step, log))
    run_command(runner, ensemble_eval_command(dataset, folder, members), log,
                spec.folder, 'eval', name)
    if not os.path.exists(eval_file(folder, step)):
      raise StudyError('%s: eval wrote no %s; see %s' % (
          name, eval_file(folder, step), log))
  last = config.eval_steps[-1]
  progress.finished(name, time.monotonic() - began, 'lwlrap %.4f at step %d'
                    % (read_lwlrap(eval_file(folder, last)), last), True)


def run_study(spec, study_dir, only=(), runner=None, say=print):
  """Runs what is left of the study, then writes the summary."""
  runner = runner or CommandRunner()
  runs = plan(spec, only)
  left = [(d, c, s) for d, c, s in runs
          if not is_finished(run_dir(study_dir, d, c.name, s), c)]
  datasets = ('%d datasets x ' % len(spec.datasets)
              if spec.datasets[0].name else '')
  say('Study %s: %d runs (%s%d configurations x %d seeds) in %s, %d '
      'finished already' % (spec.path, len(runs), datasets,
                            len({c.name for _, c, _ in runs}),
                            len(spec.seeds), study_dir,
                            len(runs) - len(left)))
  progress = Progress(len(runs), len(runs) - len(left), say)
  for number, run in enumerate(left, 1):
    (execute_ensemble if run[1].ensemble else execute)(
        spec, run, study_dir, runner, progress)
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
