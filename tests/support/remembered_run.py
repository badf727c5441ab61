"""The remembered run several test files share: a tiny CRNN trained 1 step
with RUN_HPARAMS in a folder whose name has glob characters, made once for
every test process; and the eval and inference command lines that leave
--model and --hparams to its record."""

import os

from conftest import shared
from support.cli import check_ok, run_main, train_args
from support.settings import CLASS_MAP, FEW_BN_BATCHES


# A tiny CRNN with the seed's 64 bands: features and architecture differ
# from the defaults, so scoring it with the defaults would be wrong.
RUN_HPARAMS = ('batch_size=4,lr=0.001,mel_bands=64,crnn_filters=4,' +
               FEW_BN_BATCHES)


def eval_args(train_dir, eval_dir, dataset, extra=()):
  return ['--mode', 'eval', '--class_map_path', CLASS_MAP,
          '--eval_clip_dir', dataset['train_clip_dir'],
          '--eval_csv_path', dataset['validation_csv'],
          '--train_dir', train_dir, '--eval_dir', eval_dir] + list(extra)


def inference_args(checkpoint, clip_dir, csv_path, extra=()):
  return ['--mode', 'inference', '--class_map_path', CLASS_MAP,
          '--inference_clip_dir', clip_dir,
          '--inference_checkpoint', checkpoint,
          '--predictions_csv_path', csv_path] + list(extra)


def remembered_run(tmp_path_factory, dataset):
  """crnn trained 1 step with RUN_HPARAMS in a folder whose name has glob
  characters (TensorFlow reads checkpoint prefixes as patterns); read-only
  for the tests, made once for every test process (what the remembered
  fixtures return)."""
  def make(root):
    train_dir = str(root / 'runs' / 't d[1]')
    result = check_ok(run_main(train_args(
        'crnn', dataset['train_clip_dir'], dataset['train_csv'], train_dir, 1,
        hparams=RUN_HPARAMS)))
    return {'train_dir': train_dir, 'result': result,
            'checkpoint': os.path.join(train_dir, 'model.ckpt-1')}
  return shared(tmp_path_factory, 'remembered', make)
