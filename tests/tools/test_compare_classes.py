"""compare_classes.py: per-class lwlrap of two eval reports side by side."""

import os
import re
import subprocess
import sys

import numpy as np

from support.settings import REPO
SCRIPT = os.path.join(REPO, 'tools', 'compare_classes.py')


def write_report(path, values, overall):
  lines = ['Lwlrap(%s) = %.6f' % (n, v) for n, v in values.items()]
  path.write_text('\n'.join(lines + ['Overall lwlrap = %.6f' % overall]))
  return str(path)


def run(*args):
  return subprocess.run([sys.executable, SCRIPT] + list(args),
                        capture_output=True, text=True)


def test_side_by_side_sorted_by_difference(tmp_path):
  rng = np.random.default_rng(0)
  names = ['Bark', 'Hiss', 'Purr', 'Slam', 'Zipper_(clothing)']
  first = dict(zip(names, rng.random(5)))
  second = dict(zip(names, rng.random(5)))
  del second['Slam']  # a class with no labels in the second eval set
  second['Gong'] = 0.5
  result = run(write_report(tmp_path / 'a.txt', first, 0.25),
               write_report(tmp_path / 'b.txt', second, 0.75))
  assert result.returncode == 0, result.stderr
  rows = {}
  order = []
  for line in result.stdout.splitlines()[3:]:
    name, a, b, d = line.rsplit(None, 3)
    rows[name] = (a, b, d)
    order.append(name)
  both = [n for n in names if n in second]
  expected = sorted(both, key=lambda n: -(round(second[n], 6) -
                                          round(first[n], 6)))
  assert order[:len(both)] == expected
  for n in both:
    a, b, d = rows[n]
    assert float(a) == round(first[n], 6) and float(b) == round(second[n], 6)
    assert abs(float(d) - (round(second[n], 6) - round(first[n], 6))) < 2e-6
  assert rows['Slam'][1:] == ('-', '-') and rows['Gong'][0] == '-'
  assert order[-1] == 'Overall' and rows['Overall'] == (
      '0.250000', '0.750000', '+0.500000')


def test_a_real_report_and_bad_input(tmp_path):
  from tagger.eval import metrics
  rng = np.random.default_rng(1)
  truth = (rng.random((30, 4)) < 0.4).astype(float)
  truth[truth.sum(axis=1) == 0, 0] = 1
  lwlrap = metrics.Lwlrap(['a', 'b', 'c', 'd'])
  lwlrap.accumulate(truth, rng.random((30, 4)))
  report = tmp_path / 'eval-7.txt'
  report.write_text(str(lwlrap))
  result = run(str(report), str(report))
  assert result.returncode == 0
  assert re.search(r'^Overall +%.6f +%.6f +\+0\.000000$' % (
      lwlrap.overall_lwlrap(), lwlrap.overall_lwlrap()), result.stdout, re.M)
  bad = tmp_path / 'notes.txt'
  bad.write_text('hello\n')
  result = run(str(report), str(bad))
  assert result.returncode == 1
  assert result.stderr.strip().startswith('compare_classes.py: error: %s:1:'
                                          % bad)
  assert run(str(report)).returncode == 2
