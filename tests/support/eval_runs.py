"""Eval runs in the tests: train_dirs of copied checkpoints, eval's command
line (without --model or --hparams: eval reads them from the checkpoints'
record), evaluation.evaluate in-process under a time limit, and what the
runs leave (the checkpoints a process evaluated, and the markers and
claims in eval_dir)."""

import os
import re
import shutil
import signal

from support.settings import CLASS_MAP


LONG = 600  # seconds a test waits for a process before failing


def copy_checkpoint(source, train_dir, step):
  """Copies the checkpoint `source` to train_dir/model.ckpt-<step>, its
  .index last and by a rename, so that it appears whole (as a listing
  finds checkpoints by their .index)."""
  folder, base = os.path.split(source)
  for name in os.listdir(folder):
    if name.startswith(base + '.') and not name.endswith('.index'):
      shutil.copy(os.path.join(folder, name), os.path.join(
          train_dir, 'model.ckpt-%d' % step + name[len(base):]))
  temporary = os.path.join(train_dir, '.copying')
  shutil.copy(source + '.index', temporary)
  os.replace(temporary, os.path.join(train_dir, 'model.ckpt-%d.index' % step))


def train_dir_maker(tmp_path, checkpoint):
  """make(steps, name='train'): a train_dir in tmp_path holding
  model.ckpt-N for each step, all copies of `checkpoint` (what the
  make_train_dir fixtures return)."""

  def make(steps, name='train'):
    train_dir = tmp_path / name
    train_dir.mkdir()
    for step in steps:
      copy_checkpoint(checkpoint, str(train_dir), step)
    return str(train_dir)

  return make


def eval_args(dataset, train_dir, eval_dir, *extra):
  # No --model or --hparams: eval reads them from the checkpoints' record.
  return ['--mode', 'eval', '--class_map_path', CLASS_MAP,
          '--eval_clip_dir', dataset['train_clip_dir'],
          '--eval_csv_path', dataset['validation_csv'],
          '--train_dir', train_dir, '--eval_dir', eval_dir] + list(extra)


def prefixes(train_dir, steps):
  return [os.path.join(train_dir, 'model.ckpt-%d' % s) for s in steps]


def checkpoints_evaluated(stdout):
  """The checkpoints a process evaluated, in order, from its report lines."""
  return re.findall(r'^Checkpoint (\S+) \(', stdout, re.M)


def markers(eval_dir):
  return sorted(n for n in os.listdir(eval_dir)
                if re.fullmatch(r'eval-\d+\.txt', n))


def claim_files(eval_dir):
  return sorted(n for n in os.listdir(eval_dir) if '.claim' in n)


class _TimedOut(Exception):
  pass


def evaluate_in_process(dataset, train_dir, eval_dir, **options):
  """evaluation.evaluate on the validation clips; fails the test if it
  has not returned within LONG seconds."""
  import evaluation
  from tagger.core import files
  from tagger.core import params
  from support.scores import labeled_rows, read_class_names
  from support.settings import HPARAMS
  rows = labeled_rows(dataset['validation_csv'])
  samples = files.check_clips([os.path.join(dataset['train_clip_dir'], f)
                              for f, _ in rows])

  def time_out(signum, frame):
    raise _TimedOut('evaluate did not return within %d s' % LONG)

  previous = signal.signal(signal.SIGALRM, time_out)
  signal.alarm(LONG)
  try:
    evaluation.evaluate('mobilenet-v1', params.parse_hparams(HPARAMS),
                        read_class_names(), rows, dataset['train_clip_dir'],
                        samples, train_dir, eval_dir, **options)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
