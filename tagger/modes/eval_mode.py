"""--mode eval: its flags, pre-flight checks and run (evaluation.py scores
the checkpoints).

Plain Python at import: checked before TensorFlow is imported.
"""

import math
import os

from absl import flags

from tagger.core import checkpoints
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
  if bool(FLAGS.train_dir) == bool(FLAGS.inference_checkpoint):
    raise UserError('--mode eval scores the checkpoints of --train_dir, or '
                    'one model given by --inference_checkpoint (a checkpoint,'
                    ' or an ensemble\'s, comma-separated): give one of them')
  if FLAGS.inference_checkpoint:
    _check_one_model()
  if not FLAGS.eval_continuous:
    for name in ('eval_poll_seconds', 'eval_idle_timeout_seconds'):
      if FLAGS[name].present:
        raise UserError('--%s is only used with --eval_continuous' % name)


def _check_one_model():
  """The result of --inference_checkpoint is eval-N.txt, N its first
  member's step: it must be named model.ckpt-N, and not be scored yet (a
  result there may be another model's)."""
  if FLAGS.eval_continuous:
    raise UserError('--eval_continuous watches --train_dir; it does not '
                    'apply to --inference_checkpoint')
  first = checkpoints.members(FLAGS.inference_checkpoint)[0]
  step = checkpoints.step_of(first)
  if step is None:
    raise UserError('--inference_checkpoint: %s is not named model.ckpt-N; '
                    'eval names its result eval-N.txt' % first)
  result = os.path.join(FLAGS.eval_dir, 'eval-%d.txt' % step)
  if os.path.exists(result):
    raise UserError('--eval_dir: %s exists (a result of step %d, maybe of '
                    'another model); choose another --eval_dir' % (result,
                                                                   step))


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
  if FLAGS.inference_checkpoint:
    evaluation.evaluate_model(
        resolved.model_name, resolved.hparams, data.class_names, data.rows,
        data.clip_dir, data.sample_counts, FLAGS.inference_checkpoint,
        FLAGS.eval_dir, engine=data.engine)
    return
  evaluation.evaluate(
      resolved.model_name, resolved.hparams, data.class_names, data.rows,
      data.clip_dir, data.sample_counts, FLAGS.train_dir, FLAGS.eval_dir,
      continuous=FLAGS.eval_continuous, poll_seconds=FLAGS.eval_poll_seconds,
      claim_timeout_seconds=FLAGS.eval_claim_timeout_seconds,
      idle_timeout_seconds=FLAGS.eval_idle_timeout_seconds,
      engine=data.engine)


MODE = mode_lib.Mode(
    name='eval',
    required=('eval_clip_dir', 'eval_csv_path', 'eval_dir'),
    inputs=('class_map_path', 'eval_clip_dir', 'eval_csv_path', 'train_dir',
            'inference_checkpoint'),
    output_dirs=('eval_dir',), list_inputs=list_inputs, run=run, scores=True,
    check=check, start=start)
