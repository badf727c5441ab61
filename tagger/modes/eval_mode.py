"""--mode eval: its flags, pre-flight checks and run (evaluation.py scores
the checkpoints).

Plain Python at import: checked before TensorFlow is imported.
"""

import math

from absl import flags

from tagger.core.files import UserError
from tagger.modes import mode as mode_lib

flags.DEFINE_string('eval_clip_dir', None, 'Folder of evaluation WAV clips.')
flags.DEFINE_string('eval_csv_path', None,
                    'Evaluation CSV with header "fname,labels".')
flags.DEFINE_string('eval_dir', None,
                    'Folder for eval-N.txt results and eval TensorBoard logs.')
flags.DEFINE_bool('eval_continuous', False,
                  'Keep evaluating new checkpoints as training writes them, '
                  'polling train_dir every --eval_poll_seconds; stop once '
                  'train_dir/training_finished exists and every checkpoint '
                  'has its eval-N.txt. Default: one pass over the '
                  'checkpoints there now.')
flags.DEFINE_float('eval_poll_seconds', 30.0,
                   'With --eval_continuous: seconds between looks at '
                   'train_dir for new checkpoints.')
flags.DEFINE_float('eval_idle_timeout_seconds', None,
                   'With --eval_continuous: stop with an error when no new '
                   'checkpoint has appeared for this many seconds and '
                   'training has not finished (default: wait as long as it '
                   'takes).')
flags.DEFINE_float('eval_claim_timeout_seconds', 600.0,
                   'Eval processes sharing an eval_dir claim each checkpoint '
                   'in eval-N.claim while they score it, refreshing the '
                   'claim every few seconds; a claim not refreshed for this '
                   'many seconds (its process was killed) is taken over.')
for _name in ('eval_poll_seconds', 'eval_idle_timeout_seconds',
              'eval_claim_timeout_seconds'):
  flags.register_validator(
      _name, lambda value: value is None or (math.isfinite(value) and
                                             value > 0),
      message='--%s must be a positive number of seconds' % _name)

FLAGS = flags.FLAGS


def check(hparams):
  del hparams  # checked once a checkpoint's record is read
  if not FLAGS.eval_continuous:
    for name in ('eval_poll_seconds', 'eval_idle_timeout_seconds'):
      if FLAGS[name].present:
        raise UserError('--%s is only used with --eval_continuous' % name)


def list_inputs(class_names):
  return mode_lib.labeled_inputs(class_names, FLAGS.eval_csv_path,
                                 FLAGS.eval_clip_dir)


def start(data):
  del data
  if FLAGS.eval_continuous:
    import evaluation
    # Started before training: the first checkpoint's record gives the model
    # and hparams to score with.
    evaluation.wait_for_first_checkpoint(FLAGS.train_dir,
                                         FLAGS.eval_poll_seconds,
                                         FLAGS.eval_idle_timeout_seconds)


def run(resolved, data):
  import evaluation
  evaluation.evaluate(
      resolved.model_name, resolved.hparams, data.class_names, data.rows,
      data.clip_dir, data.sample_counts, FLAGS.train_dir, FLAGS.eval_dir,
      continuous=FLAGS.eval_continuous, poll_seconds=FLAGS.eval_poll_seconds,
      claim_timeout_seconds=FLAGS.eval_claim_timeout_seconds,
      idle_timeout_seconds=FLAGS.eval_idle_timeout_seconds,
      engine=data.engine)


MODE = mode_lib.Mode(
    name='eval',
    required=('eval_clip_dir', 'eval_csv_path', 'train_dir', 'eval_dir'),
    inputs=('class_map_path', 'eval_clip_dir', 'eval_csv_path', 'train_dir'),
    output_dirs=('eval_dir',), list_inputs=list_inputs, run=run, scores=True,
    check=check, start=start)
