"""--mode relabel: its flags, pre-flight checks and run (relabel.py writes
the relabelled CSV).

Plain Python at import: checked before TensorFlow is imported.
"""

from absl import flags

from tagger.core.files import UserError
from tagger.modes import mode as mode_lib

flags.DEFINE_string('relabel_csv_path', None,
                    'Relabel mode: the "fname,labels" CSV of the clips to '
                    'relabel (e.g. the noisy set).')
flags.DEFINE_string('relabel_clip_dir', None,
                    'Relabel mode: the folder of those clips.')
flags.DEFINE_string('relabeled_csv_path', None,
                    'Relabel mode: where to write the relabelled CSV.')
flags.DEFINE_float('relabel_keep_threshold', 0.2,
                   'Relabel mode: a given label is kept where the model '
                   'scores it at least this (else dropped).')
flags.DEFINE_float('relabel_add_threshold', 0.8,
                   'Relabel mode: a label not given is added where the model '
                   'scores it at least this.')
for _name in ('relabel_keep_threshold', 'relabel_add_threshold'):
  flags.register_validator(
      _name, lambda value: 0.0 <= value <= 1.0,
      message='--%s must be a score between 0 and 1' % _name)

FLAGS = flags.FLAGS


def check(hparams):
  del hparams  # checked once the checkpoint's record is read
  keep = FLAGS.relabel_keep_threshold
  add = FLAGS.relabel_add_threshold
  if keep > add:
    raise UserError('--relabel_keep_threshold %s is above '
                    '--relabel_add_threshold %s: a given label must not need '
                    'a higher score to be kept than a new one to be added' % (
                        keep, add))


def list_inputs(class_names):
  return mode_lib.labeled_inputs(class_names, FLAGS.relabel_csv_path,
                                 FLAGS.relabel_clip_dir)


def run(resolved, data):
  from tagger.modes import relabel
  relabel.relabel(resolved.model_name, resolved.hparams, data.class_names,
                  data.rows, data.clip_dir, data.sample_counts,
                  FLAGS.inference_checkpoint, FLAGS.relabeled_csv_path,
                  FLAGS.relabel_keep_threshold, FLAGS.relabel_add_threshold,
                  engine=data.engine)


MODE = mode_lib.Mode(
    name='relabel',
    required=('inference_checkpoint', 'relabel_csv_path', 'relabel_clip_dir',
              'relabeled_csv_path'),
    inputs=('class_map_path', 'inference_checkpoint', 'relabel_csv_path',
            'relabel_clip_dir'),
    output_files=('relabeled_csv_path',), list_inputs=list_inputs, run=run,
    scores=True, check=check)
