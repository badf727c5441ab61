"""In-process training runs and what they leave, as the training tests
share them: train.train with its printed output, the losses it prints, the
values its checkpoints hold, and a three-step crnn run made once per test
session (the crnn_bce3 fixture; a test module takes it by assigning it to a
module-level name)."""

import contextlib
import io
import re


from tagger.core import checkpoints
from conftest import shared
from support.scores import read_class_names
from support.settings import FEW_BN_BATCHES


BASE = 'batch_size=4'  # default lr (1e-4): one Adam step moves a weight <= lr
LR = 1e-4


MFOM_KEYS = ('mfom/smooth_error_counter/alpha', 'mfom/smooth_error_counter/beta')


def run_training(dataset, model_name, hparams, train_dir, max_steps, **kwargs):
  """Runs train.train; returns its stdout. FEW_BN_BATCHES where hparams
  do not set bn_stats_batches."""
  import inputs
  from tagger.core import params
  import train
  if 'bn_stats_batches' not in hparams:
    hparams += ',' + FEW_BN_BATCHES
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train(model_name, params.parse_hparams(hparams), read_class_names(),
                [inputs.Source(dataset['train_csv'], dataset['train_clip_dir'])],
                str(train_dir), max_steps=max_steps, **kwargs)
  return out.getvalue()


def printed_losses(stdout):
  return [(int(s), float(l)) for s, l in
          re.findall(r'^step (\d+) loss (\S+) ', stdout, re.M)]


def checkpoint_reader(prefix):
  import tensorflow as tf
  return tf.train.load_checkpoint(prefix)


def saved_weight(reader, path):
  return reader.get_tensor(checkpoints.checkpoint_key(path))


def trainable_paths(model_name, hparams):
  import model as model_lib
  from tagger.core import params
  net = model_lib.build_model(model_name, 80, params.parse_hparams(hparams))
  return [v.path for v in net.trainable_variables]


def crnn_bce3_run(tmp_path_factory, dataset):
  """crnn, bce, 3 steps (read-only for the tests: copy to mutate; made
  once for every test process)."""
  def make(root):
    out = run_training(dataset, 'crnn', BASE, root / 'train', 3)
    assert [s for s, _ in printed_losses(out)] == [1, 2, 3]
    return str(root / 'train')
  return shared(tmp_path_factory, 'crnn_bce3', make)
