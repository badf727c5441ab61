"""Per-class lwlrap of two eval reports side by side.

  python tools/compare_classes.py eval_noisy/eval-9000.txt eval_curated/eval-2000.txt

Reads two `eval-N.txt` files (eval's reports: `Lwlrap(<class>) = <value>`
lines, then `Overall lwlrap = <value>`) and prints, for every class in
either, its lwlrap in each and the difference (second minus first), sorted
from the largest gain to the largest loss, then the overall lwlrap of each.
As the original's README suggests, this shows where two models (say a
noisily trained and a curated-trained checkpoint) differ class by class.
"""

import re
import sys

_LINE = re.compile(r'^Lwlrap\((.+)\) = (-?[0-9.]+(?:e-?\d+)?)$')
_OVERALL = re.compile(r'^Overall lwlrap = (-?[0-9.]+(?:e-?\d+)?)$')


class ReportError(Exception):
  pass


def read_report(path):
  """({class: lwlrap}, overall lwlrap) of an eval-N.txt report."""
  per_class, overall = {}, None
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise ReportError('%s: cannot read (%s)' % (path, e.strerror)) from None
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    match = _LINE.match(line)
    if match:
      per_class[match.group(1)] = float(match.group(2))
      continue
    match = _OVERALL.match(line)
    if match:
      overall = float(match.group(1))
      continue
    raise ReportError('%s:%d: not a line of an eval report: %r' % (
        path, number, line[:80]))
  if overall is None or not per_class:
    raise ReportError('%s: no "Overall lwlrap = ..." line or no class lines; '
                      'is it an eval-N.txt?' % path)
  return per_class, overall


def compare(first, second):
  """Rows (class, first lwlrap or None, second or None, difference or
  None), sorted by difference, largest gain first; classes in one report
  only come last."""
  names = sorted(set(first) | set(second))
  rows = [(n, first.get(n), second.get(n),
           second[n] - first[n] if n in first and n in second else None)
          for n in names]
  return sorted(rows, key=lambda r: (r[3] is None, -(r[3] or 0), r[0]))


def format_table(rows, first_path, second_path, first_overall,
                 second_overall):
  width = max([len(r[0]) for r in rows] + [len('Overall')])
  fmt = lambda v: '%9s' % ('-' if v is None else '%.6f' % v)
  sign = lambda v: '%10s' % ('-' if v is None else '%+.6f' % v)
  lines = ['first:  %s' % first_path, 'second: %s' % second_path,
           '%-*s %9s %9s %10s' % (width, 'class', 'first', 'second',
                                  'second-first')]
  for name, a, b, d in rows:
    lines.append('%-*s %s %s %s' % (width, name, fmt(a), fmt(b), sign(d)))
  lines.append('%-*s %s %s %s' % (width, 'Overall', fmt(first_overall),
                                  fmt(second_overall),
                                  sign(second_overall - first_overall)))
  return '\n'.join(lines)


def main(argv):
  if len(argv) != 3:
    print('usage: python tools/compare_classes.py FIRST/eval-N.txt '
          'SECOND/eval-M.txt', file=sys.stderr)
    return 2
  try:
    (first, first_overall), (second, second_overall) = (
        read_report(argv[1]), read_report(argv[2]))
  except ReportError as e:
    print('compare_classes.py: error: %s' % e, file=sys.stderr)
    return 1
  print(format_table(compare(first, second), argv[1], argv[2],
                     first_overall, second_overall))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
