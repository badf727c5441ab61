"""Where a run ran: one line naming what its numbers depend on besides its
settings and data. TensorFlow's CPU kernels differ by vector instructions,
so a seed repeats a run bit for bit only where this line is the same."""

import importlib.metadata
import os
import platform
import subprocess

# The repository (this file is tagger/core/machine.py).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# CPU features that decide which kernels TensorFlow's CPU ops run, and with
# them the rounding of a run's numbers.
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni',
             'amx_tile')
# A git that hangs (a stale lock on a network disk) must not stop a study.
GIT_TIMEOUT_SECONDS = 30


def _cpu(cpuinfo):
  """'<model name>, family F model M, <ISA flags>' of the first CPU in
  /proc/cpuinfo, or the platform's processor where there is none."""
  fields = {}
  try:
    with open(cpuinfo, errors='replace') as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(':')
        fields[key.strip()] = value.strip()
  except OSError:
    return platform.processor() or platform.machine() or 'unknown CPU'
  flags = set(fields.get('flags', '').split())
  return '%s, family %s model %s, %s' % (
      fields.get('model name', 'unknown CPU'), fields.get('cpu family', '?'),
      fields.get('model', '?'),
      ' '.join(f for f in ISA_FLAGS if f in flags) or 'no AVX2')


def _code(folder):
  """The commit of the code in `folder`, '(modified)' when tracked files
  differ from it; 'unknown' outside a git checkout."""
  def git(*args):
    return subprocess.run(['git', '-C', folder] + list(args), text=True,
                          capture_output=True,
                          timeout=GIT_TIMEOUT_SECONDS)
  try:
    head = git('rev-parse', '--short=12', 'HEAD')
    changed = git('status', '--porcelain', '--untracked-files=no')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  if head.returncode or changed.returncode:
    return 'unknown'
  return head.stdout.strip() + (' (modified)' if changed.stdout.strip()
                                else '')


def describe(cpuinfo='/proc/cpuinfo', code_folder=REPO):
  """'<CPU>, <ISA flags>, N cores; TensorFlow V; code <commit>'. Read from
  the package metadata, so that it costs no TensorFlow import."""
  try:
    tensorflow = importlib.metadata.version('tensorflow')
  except importlib.metadata.PackageNotFoundError:
    tensorflow = 'not installed'
  return '%s, %s cores; TensorFlow %s; code %s' % (
      _cpu(cpuinfo), os.cpu_count() or '?', tensorflow, _code(code_folder))
