"""The model and hparams a mode runs with: --model and --hparams, or the
run that its checkpoint (or --tflite_model) recorded with --hparams on top.

Checked from the flags before TensorFlow is imported (hparams_from_flags),
and resolved once, into a mode.Resolved, when a checkpoint's record can be
read (resolve).
"""

import sys

from absl import flags

from tagger.core import checkpoints
from tagger.core import params
from tagger.core.files import UserError
from tagger.engines import tflite_engine
from tagger.modes import mode as mode_lib

FLAGS = flags.FLAGS

# A model file fixes its features and architecture, and the batch-norm
# statistics and weights folded into it: --hparams cannot change them.
FILE_FIXES = dict(fixed=params.MODEL_DEFINING + params.SCORING,
                  made='exported')


def parse_flag():
  """params.parse_hparams(--hparams), a problem named as the flag's."""
  try:
    return params.parse_hparams(FLAGS.hparams)
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None


def hparams_from_flags(mode):
  """The defaults with --hparams applied, checked; or None when the values
  can only be judged once merged with a run's record (an override valid on
  the recorded hparams, e.g. momentum on an SGD run, may be invalid on the
  defaults). The names and the syntax are checked either way."""
  try:
    params.parse_overrides(FLAGS.hparams)
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None
  try:
    return params.parse_hparams(FLAGS.hparams)
  except ValueError as e:
    if _may_resume_a_record(mode):
      return None
    raise UserError('--hparams: %s' % e) from None


def _may_resume_a_record(mode):
  """Whether this mode may start from a checkpoint that holds a record
  (continuous eval may wait for its first one)."""
  if FLAGS.tflite_model:
    return True  # the file records its run
  if mode.from_checkpoint:
    return checkpoints.exists(
        checkpoints.members(FLAGS.inference_checkpoint)[0])
  return mode.name == 'eval' or bool(
      checkpoints.list_checkpoints(FLAGS.train_dir))


def _starting_record(mode):
  """(checkpoint, its record) of the checkpoint this mode starts from: the
  one to score (inference; an ensemble's first: Scorer.load holds the
  others to its model and features), else the newest readable one of
  train_dir (the one a resumed run or eval starts from); (None, None) if
  there is none."""
  single = mode.from_checkpoint
  if single:
    candidates = [checkpoints.members(FLAGS.inference_checkpoint)[0]]
  else:
    candidates = [p for _, p in reversed(checkpoints.list_checkpoints(
        FLAGS.train_dir))]
  for prefix in candidates:
    try:
      return prefix, checkpoints.read_record(
          checkpoints.open_checkpoint(prefix), prefix)
    except checkpoints.DamagedCheckpoint:
      if single:
        raise
      # Training falls back past it (and says so); eval reports it.
  return None, None


def resolve(mode, hparams):
  """The mode.Resolved to run with. A checkpoint records the --model and
  hparams it was trained with; those are used, with the --hparams overrides
  applied, so that nobody has to repeat them (and nobody can score a model
  with features or an architecture it was not trained with). A checkpoint
  from before runs were recorded runs with the flags as given (hparams: as
  hparams_from_flags gave them). A --tflite_model records its run too."""
  if FLAGS.tflite_model:
    return _tflite_run(mode)
  prefix, record = _starting_record(mode)
  if record is None:
    if hparams is None:  # no record after all: the flags as given
      hparams = parse_flag()
      mode.check_resolved(hparams, None, None)
    return mode_lib.Resolved(FLAGS.model, hparams)
  resolved = _use_record(mode, *record, prefix, 'was trained with --model %s')
  mode.check_resolved(resolved.hparams, record[1], prefix)
  return resolved


def _use_record(mode, model_name, recorded, source, made_with, **fixes):
  """The Resolved of the hparams recorded in `source` with --hparams on
  top, announced; --model, if given, must be the recorded one; fixes: see
  merge."""
  if FLAGS['model'].present and FLAGS.model != model_name:
    raise UserError('--model %s: %s %s' % (FLAGS.model, source,
                                           made_with % model_name))
  hparams = merge(recorded, source, **fixes)
  changed = params.describe(hparams)
  print('Using --model %s and the hparams recorded in %s%s' % (
      model_name, source, ': ' + changed if changed else ' (the defaults)'),
        file=sys.stderr if mode.stdout_is_output else sys.stdout)
  return mode_lib.Resolved(model_name, hparams)


def _tflite_run(mode):
  """The model and hparams recorded in --tflite_model, with --hparams on
  top; a checkpoint given as well must be of the same model and hparams."""
  path = FLAGS.tflite_model
  entry = tflite_engine.read_metadata(path)
  model_name, recorded = tflite_engine.run_of(entry, path)
  if FLAGS.inference_checkpoint:
    prefix, record = _starting_record(mode)
    problem = record and tflite_engine.run_mismatch(entry, *record)
    if problem:
      raise UserError('--tflite_model: %s: %s (%s)' % (path, problem,
                                                       prefix))
  return _use_record(mode, model_name, recorded, path,
                     'was exported from a --model %s run', **FILE_FIXES)


def merge(recorded, source, fixed=params.MODEL_DEFINING, made='trained'):
  """The hparams recorded in `source` with --hparams on top, which must not
  change the `fixed` ones (params.merge)."""
  try:
    return params.merge(recorded, FLAGS.hparams, source, fixed, made)
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None
