"""make_class_map.py: a class map made from a training CSV's labels, and
a CSV with the wrong header refused."""

import os
import subprocess
import sys

from tagger.core import files

from support.settings import REPO
from support.text_files import write


def test_make_class_map_script(tmp_path):
  csv_text = ('fname,labels\n'
              'a.wav,"Walk_and_footsteps,Slam"\n'
              'b.wav,Bark\n'
              'c.wav,"Slam,Accordion"\n'
              '\n'
              'd.wav,Zipper_(clothing)\n')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'make_class_map.py')],
      input=csv_text, capture_output=True, text=True, cwd=REPO, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout == ('0,Accordion\n1,Bark\n2,Slam\n'
                           '3,Walk_and_footsteps\n4,Zipper_(clothing)\n')
  # The output is itself a valid class map.
  path = write(tmp_path / 'map.csv', result.stdout)
  assert files.read_class_map(path) == sorted(
      ['Walk_and_footsteps', 'Slam', 'Bark', 'Accordion', 'Zipper_(clothing)'])


def test_make_class_map_bad_header():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'make_class_map.py')],
      input='index,name\n0,Bark\n', capture_output=True, text=True, cwd=REPO,
      timeout=60)
  assert result.returncode != 0
  assert 'header' in result.stderr
  assert result.stdout == ''
