"""The results of a study: each run's lwlrap, means with 95% Student t
intervals, and paired differences to the reference."""

import math
import os
import re
import statistics

from tools.studylib.runs import eval_file
from tools.studylib.runs import run_dir
from tools.studylib.spec import StudyError

LEVEL = 0.95


def read_lwlrap(path):
  with open(path, errors='replace') as f:
    lines = f.read().strip().splitlines()
  found = re.fullmatch(r'Overall lwlrap = (\S+)', lines[-1] if lines else '')
  try:
    return float(found.group(1))
  except (AttributeError, ValueError):
    raise StudyError('%s: last line is not "Overall lwlrap = X"' %
                     path) from None


def collect(spec, study_dir, dataset):
  """[(config, seed, step, lwlrap, eval file)] of every chosen step scored
  so far on the dataset, in spec order; step counts the configuration's
  steps_before."""
  results = []
  for config in spec.configs.values():
    for seed in spec.seeds:
      folder = run_dir(study_dir, dataset, config.name, seed)
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
  results: (config, seed, step, lwlrap, ...) tuples; a seed may be any key
  that pairs two results, such as (dataset, seed)."""
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


def pooled(results_by_dataset, reference):
  """summarize over every (dataset, seed) pair: the mean of all datasets'
  results and the paired difference to the reference over the pairs both
  have, each with its 95% t interval."""
  return summarize([(config, (name, seed), step, lwlrap)
                    for name, results in results_by_dataset.items()
                    for config, seed, step, lwlrap, _ in results], reference)
