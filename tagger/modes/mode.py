"""What a mode of main.py is: its declaration (Mode), the flags every mode
shares, what it reads (ModeData) and the run it is given (Resolved), and the
checks of its outputs that every mode makes.

Plain Python at import: main.py checks flags and files before TensorFlow is
imported.
"""

import dataclasses
import os
from typing import Callable

from absl import flags

import model
from tagger.core import checkpoints
from tagger.core import files
from tagger.core import params
from tagger.core.files import UserError

flags.DEFINE_enum('model', 'mobilenet-v1', list(model.MODELS),
                  'Model architecture.')
flags.DEFINE_string('hparams', '',
                    'Hyperparameter overrides as comma-separated name=value '
                    'pairs, e.g. batch_size=32,lr=0.01. A run records its '
                    'hparams: eval, inference, export, tag and a resumed run '
                    'start from the recorded ones and apply these on top '
                    '(those defining the features and architecture cannot '
                    'change).')
flags.DEFINE_string('class_map_path', None,
                    'CSV of "index,name" rows mapping class indices to names.')
flags.DEFINE_string('train_dir', None,
                    'Folder of model.ckpt-N checkpoints and training '
                    'TensorBoard logs.')
flags.DEFINE_string('inference_checkpoint', None,
                    'Checkpoint (model.ckpt-N prefix) to run inference with '
                    '(or, in eval, to score instead of --train_dir\'s). '
                    'Several comma-separated '
                    '(of one model and features: seeds of a run, or a run\'s '
                    'last checkpoints) score as an ensemble: the mean of '
                    'their clip scores.')

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Resolved:
  """The model and hparams a mode runs with, resolved once (from the
  flags, or the run its checkpoint or model file recorded)."""
  model_name: str
  hparams: params.HParams


@dataclasses.dataclass
class ModeData:
  """What a mode reads, listed and checked before TensorFlow is imported."""
  class_names: list
  rows: list = None  # (fname, labels) of the mode's CSV
  clip_dir: str = ''
  fnames: list = dataclasses.field(default_factory=list)
  sample_counts: list = None  # each clip's length in samples
  sources: list = None  # training sources
  tag_files: list = None
  engine: object = None  # the tflite_engine.Engine of the flags
  strategy: object = None  # training's distribution strategy

  def clip_paths(self):
    return [os.path.join(self.clip_dir, f) for f in self.fnames]


def _nothing(*_):
  return None


@dataclasses.dataclass(frozen=True)
class Mode:
  """A mode, declared once for main.py's checks and dispatch."""
  name: str
  required: tuple  # flags that must be given
  inputs: tuple  # flags naming the files and folders it reads
  # (class_names) -> (ModeData, the clip paths it reads)
  list_inputs: Callable
  run: Callable  # (Resolved, ModeData): the work, once TensorFlow is in
  output_dirs: tuple = ()  # folders it writes into, made after the checks
  output_files: tuple = ()  # files it creates
  made_whole: tuple = ()  # folders it makes itself, whole or not at all
  scores: bool = False  # it scores clips, with --engine
  check: Callable = _nothing  # (hparams or None): its pre-flight checks
  # (hparams, the record resumed or None, its checkpoint): checks of the
  # resolved hparams
  check_resolved: Callable = _nothing
  start: Callable = _nothing  # (ModeData): first work once TensorFlow is in
  scans_clips: bool = True  # the headers of every clip are read up front
  stdout_is_output: bool = False  # notices go to stderr

  @property
  def from_checkpoint(self):
    """It scores (or exports) --inference_checkpoint: a mode that needs
    one, or eval given one instead of --train_dir."""
    return 'inference_checkpoint' in self.required or bool(
        'inference_checkpoint' in self.inputs and FLAGS.inference_checkpoint)


def labeled_inputs(class_names, csv_path, clip_dir):
  """(ModeData, clip paths) of a "fname,labels" CSV of clips in clip_dir."""
  data = ModeData(class_names, clip_dir=clip_dir)
  data.rows = files.read_labeled_csv(csv_path, clip_dir, class_names)
  data.fnames = [f for f, _ in data.rows]
  return data, data.clip_paths()


def check_outputs(mode, read_paths):
  """Refuses an output that is one of the mode's inputs (a flag's file or
  folder, a checkpoint's files, or one of `read_paths`): it would be
  overwritten, or mixed with what it holds."""
  inputs = {}
  for flag in mode.inputs + ('tflite_model', 'calibration_csv_path',
                             'calibration_clip_dir'):
    path = getattr(FLAGS, flag)
    if path:
      # A checkpoint flag: each member's prefix and files.
      names = ([n for prefix in checkpoints.members(path)
                for n in [prefix] + checkpoints.files_of(prefix)]
               if flag.endswith('checkpoint') else [path])
      for name in names:
        inputs[os.path.realpath(name)] = '--' + flag
  for path in read_paths:
    inputs.setdefault(os.path.realpath(path), 'an input')
  for flag in mode.output_dirs + mode.output_files + mode.made_whole:
    path = getattr(FLAGS, flag)
    if path and os.path.realpath(path) in inputs:
      raise UserError('--%s: %s is %s of this run; choose another path' % (
          flag, path, inputs[os.path.realpath(path)]))


def make_output_dirs(mode):
  """Creates the output folders, once every input has passed its checks."""
  for flag in mode.output_dirs:
    path = getattr(FLAGS, flag)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise UserError('--%s: cannot create %s (%s)' % (flag, path,
                                                      e.strerror)) from None
