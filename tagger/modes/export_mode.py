"""--mode export: its flags, pre-flight checks and run (export.py writes
the SavedModel and TFLite models).

Plain Python at import: checked before TensorFlow is imported.
"""

import os

from absl import flags

from tagger.core import files
from tagger.core.files import UserError
from tagger.modes import mode as mode_lib

flags.DEFINE_string('export_dir', None,
                    'Folder (new or empty) to write the export of '
                    '--inference_checkpoint (a checkpoint, or an ensemble\'s '
                    'as one model) into (--mode export).')

FLAGS = flags.FLAGS


def check(hparams):
  del hparams  # checked once the checkpoint's record is read
  if ',' in FLAGS.inference_checkpoint and FLAGS.quantize not in (None,
                                                                  'none'):
    raise UserError('--quantize %s: the examples-in models hold one '
                    'checkpoint; an ensemble is exported as one SavedModel '
                    'and one model.tflite, without them' % FLAGS.quantize)
  path = FLAGS.export_dir
  if os.path.exists(path) and not (os.path.isdir(path) and
                                   not os.listdir(path)):
    raise UserError('--export_dir: %s exists and is not an empty folder' %
                    path)
  files.check_creatable_folder(path, '--export_dir')


def list_inputs(class_names):
  return mode_lib.ModeData(class_names), []


def run(resolved, data):
  from tagger.modes import export
  export.export(resolved.model_name, resolved.hparams, data.class_names,
                FLAGS.class_map_path, FLAGS.inference_checkpoint,
                FLAGS.export_dir, quantize=FLAGS.quantize or 'none',
                calibration_paths=data.engine.calibration_paths)


MODE = mode_lib.Mode(
    name='export',
    required=('inference_checkpoint', 'export_dir'),
    inputs=('class_map_path', 'inference_checkpoint'),
    made_whole=('export_dir',), list_inputs=list_inputs, run=run,
    check=check)
