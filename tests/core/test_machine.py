"""machine.py: the line that says where a run ran."""

import os
import platform
import subprocess
import time

import tensorflow as tf

from tagger.core import machine


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512cd avx512_vnni sha_ni

processor\t: 1
model name\t: Another CPU
flags\t\t: amx_tile
"""


def _git(folder, *args):
  return subprocess.run(['git', '-C', str(folder)] + list(args), check=True,
                        capture_output=True, text=True).stdout.strip()


def test_machine_names_the_cpu_its_vector_instructions_and_the_code(
    tmp_path):
  """The first CPU's name, family, model and the vector instructions that
  change TensorFlow's kernels (in a fixed order, the others left out); the
  cores; TensorFlow's version; the commit, marked when tracked files
  differ from it."""
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(CPUINFO)
  code = tmp_path / 'code'
  code.mkdir()
  _git(code, 'init', '-q')
  (code / 'train.py').write_text('steps = 200\n')
  _git(code, 'add', 'train.py')
  _git(code, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c')
  head = _git(code, 'rev-parse', 'HEAD')[:12]
  cpu = ('Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz, family 6 model 85, '
         'avx2 fma avx512f avx512_vnni, %d cores' % os.cpu_count())
  assert machine.describe(str(cpuinfo), str(code)) == (
      '%s; TensorFlow %s; code %s' % (cpu, tf.__version__, head))
  (code / 'notes.txt').write_text('untracked\n')
  assert machine.describe(str(cpuinfo), str(code)).endswith('code ' + head)
  (code / 'train.py').write_text('steps = 1000\n')
  assert machine.describe(str(cpuinfo), str(code)).endswith(
      'code %s (modified)' % head)
  assert machine.describe(str(cpuinfo), str(tmp_path)).endswith('code unknown')
  empty = tmp_path / 'empty'
  empty.mkdir()
  _git(empty, 'init', '-q')  # a checkout without a commit
  assert machine.describe(str(cpuinfo), str(empty)).endswith('code unknown')
  cpuinfo.write_bytes(b'model name\t: Caf\xe9 CPU\nflags\t\t: avx2\n')
  assert machine.describe(str(cpuinfo), str(code)).startswith(
      'Caf\ufffd CPU, family ? model ?, avx2, ')
  # Without /proc/cpuinfo (not Linux): what the platform says.
  named = platform.processor() or platform.machine()
  assert named and machine.describe(str(tmp_path / 'none'), str(code)).startswith(
      named + ', %d cores; ' % os.cpu_count())
  cpuinfo.write_text('model name\t: Old CPU\nflags\t\t: sse2\n')
  assert machine.describe(str(cpuinfo), str(code)).startswith(
      'Old CPU, family ? model ?, no AVX2, ')


def test_a_hanging_git_leaves_the_code_unknown(tmp_path, monkeypatch):
  """A git that does not answer within the timeout is given up on: the
  line says 'code unknown' instead of the study waiting for it."""
  fake = tmp_path / 'bin'
  fake.mkdir()
  (fake / 'git').write_text('#!/bin/sh\nsleep 5\necho abcdef123456\n')
  (fake / 'git').chmod(0o755)
  monkeypatch.setenv('PATH', '%s:%s' % (fake, os.environ['PATH']))
  monkeypatch.setattr(machine, 'GIT_TIMEOUT_SECONDS', 0.5)
  started = time.monotonic()
  assert machine.describe(code_folder=str(tmp_path)).endswith('code unknown')
  assert time.monotonic() - started < 4
