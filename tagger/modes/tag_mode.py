"""--mode tag: its flags, pre-flight checks and run (tagging.py tags the
files).

Plain Python at import: checked before TensorFlow is imported.
"""

from absl import flags

from tagger.core.files import UserError
from tagger.modes import mode as mode_lib
from tagger.modes import tagging

flags.DEFINE_list('tag_paths', None,
                  'Tag mode: comma-separated audio files and folders (every '
                  'audio file directly in them) to tag with '
                  '--inference_checkpoint.')
flags.DEFINE_integer('top_k', 3, 'Tag mode: classes printed per file.',
                     lower_bound=1)
flags.DEFINE_string('timeline_csv_path', None,
                    'Tag mode: where to write the scores of every example '
                    '(fname,start_seconds,<classes>), if wanted.')

FLAGS = flags.FLAGS


def list_inputs(class_names):
  data = mode_lib.ModeData(class_names)
  data.tag_files = tagging.list_files(FLAGS.tag_paths)
  # Each file is an input, and so is each folder given.
  return data, list(FLAGS.tag_paths) + data.tag_files


def run(resolved, data):
  failed = tagging.tag(resolved.model_name, resolved.hparams,
                       data.class_names, data.tag_files,
                       FLAGS.inference_checkpoint, FLAGS.top_k,
                       FLAGS.timeline_csv_path, engine=data.engine)
  if failed:
    raise UserError('%d of %d files could not be tagged (see above)' % (
        failed, len(data.tag_files)))


MODE = mode_lib.Mode(
    name='tag',
    required=('inference_checkpoint', 'tag_paths'),
    inputs=('class_map_path', 'inference_checkpoint'),
    output_files=('timeline_csv_path',), list_inputs=list_inputs, run=run,
    scores=True,
    # Tag mode reports each unreadable file (and each note) on its own, and
    # keeps stdout for the files' lines.
    scans_clips=False, stdout_is_output=True)
