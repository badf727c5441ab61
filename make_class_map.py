"""Writes a class map from an FSDKaggle2019 training CSV.

  python make_class_map.py < train_curated.csv > class_map.csv

Reads `fname,labels` rows (labels comma-separated, quoted when several) and
writes `index,name` lines, names sorted ascending, no header. Sorted, the
names are the column order of a Kaggle submission.
"""

import csv
import sys

from tagger.core import files


def class_names(rows):
  """Sorted distinct labels of `fname,labels` rows (header row included)."""
  rows = iter(rows)
  header = next(rows, None)
  if header is None or [h.strip() for h in header] != ['fname', 'labels']:
    raise ValueError('expected a "fname,labels" header, got %r' % (header,))
  return sorted({label for row in rows if len(row) >= 2
                 for label in files.parse_labels(row[1])})


def main():
  try:
    names = class_names(csv.reader(sys.stdin))
  except ValueError as e:
    sys.exit('make_class_map.py: standard input: %s' % e)
  writer = csv.writer(sys.stdout, lineterminator='\n')
  for index, name in enumerate(names):
    writer.writerow([index, name])


if __name__ == '__main__':
  main()
