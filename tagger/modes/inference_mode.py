"""--mode inference: its flags, pre-flight checks and run (inference.py
writes the submission).

Plain Python at import: checked before TensorFlow is imported.
"""

from absl import flags

from tagger.core import files
from tagger.modes import mode as mode_lib

flags.DEFINE_string('inference_clip_dir', None,
                    'Folder of audio clips to predict (every audio file in '
                    'it: WAV, FLAC, Ogg, MP3, AIFF, ...).')
flags.DEFINE_string('predictions_csv_path', None,
                    'Where to write the Kaggle submission CSV.')

FLAGS = flags.FLAGS


def list_inputs(class_names):
  data = mode_lib.ModeData(class_names, clip_dir=FLAGS.inference_clip_dir)
  data.fnames = files.list_clips(data.clip_dir)
  return data, data.clip_paths()


def run(resolved, data):
  import inference
  inference.infer(resolved.model_name, resolved.hparams, data.class_names,
                  data.clip_dir, data.fnames, data.sample_counts,
                  FLAGS.inference_checkpoint, FLAGS.predictions_csv_path,
                  engine=data.engine)


MODE = mode_lib.Mode(
    name='inference',
    required=('inference_checkpoint', 'inference_clip_dir',
              'predictions_csv_path'),
    inputs=('class_map_path', 'inference_checkpoint', 'inference_clip_dir'),
    output_files=('predictions_csv_path',), list_inputs=list_inputs, run=run,
    scores=True)
