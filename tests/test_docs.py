"""README and docs/: every link resolves (files and headings), and every flag
main.py --help lists is documented."""

import glob
import os
import re
import subprocess
import sys

from support.cli import subprocess_env
from support.settings import MAIN, REPO

LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _pages():
  return [os.path.join(REPO, 'README.md')] + sorted(
      glob.glob(os.path.join(REPO, 'docs', '*.md')))


def _prose(path):
  """A page's text without its code blocks."""
  text = open(path).read()
  return re.sub(r'```.*?```', '', text, flags=re.S)


def slug(heading):
  """GitHub's anchor of a heading."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def _anchors(path):
  return {slug(line.lstrip('#')) for line in _prose(path).splitlines()
          if re.match(r'#{1,6} ', line)}


def test_slug_of_a_heading():
  assert slug('MobileNet v1 (`--model mobilenet-v1`, default)') == (
      'mobilenet-v1---model-mobilenet-v1-default')
  assert slug('Studies: recipes compared over seeds') == (
      'studies-recipes-compared-over-seeds')


def test_every_link_resolves():
  broken = []
  for page in _pages():
    for target in LINK.findall(_prose(page)):
      if re.match(r'[a-z]+:', target):
        continue  # a web address
      path, _, anchor = target.partition('#')
      resolved = (os.path.normpath(os.path.join(os.path.dirname(page), path))
                  if path else page)
      if not os.path.exists(resolved):
        broken.append('%s: %s (no such file)' % (os.path.basename(page),
                                                 target))
      elif anchor and (not resolved.endswith('.md') or
                       anchor not in _anchors(resolved)):
        broken.append('%s: %s (no such heading)' % (os.path.basename(page),
                                                    target))
  assert not broken, '\n'.join(broken)


def test_every_flag_is_documented():
  result = subprocess.run([sys.executable, MAIN, '--help'],
                          env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
  listed = set(re.findall(r'^\s+--(?:\[no\])?(\w+):', result.stdout,
                          re.M))
  assert len(listed) > 30 and 'features_on' in listed
  text = ''.join(open(page).read() for page in _pages())
  missing = sorted(f for f in listed if '--' + f not in text)
  assert not missing


def test_readme_is_short():
  with open(os.path.join(REPO, 'README.md')) as f:
    assert len(f.read().splitlines()) <= 320
