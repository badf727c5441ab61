r"""Driver for the DCASE 2019 Task 2 baseline: train, eval, inference,
export or tag.

  python main.py --mode train --model mobilenet-v1 \
      --class_map_path class_map.csv --train_clip_dir train_curated \
      --train_csv_path train.csv --train_dir train_dir

Flags and files are checked before any work starts (and before TensorFlow is
imported); a problem is reported as one line naming the flag, file or value,
with exit status 1.
"""

import math
import os
import re
import signal
import sys

from absl import app
from absl import logging
from absl import flags

import checkpoints
import distribution
import files
import model
import params
import runtime
import stopping
from files import UserError

flags.DEFINE_enum('mode', None,
                  ['train', 'eval', 'inference', 'export', 'tag'],
                  'What to do: train a model, evaluate every checkpoint of a '
                  'training run, write predictions for a folder of clips, '
                  'export a checkpoint as a SavedModel and a TFLite model, or '
                  'print the top classes of any WAV files.')
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
flags.DEFINE_string('train_clip_dir', None, 'Folder of training WAV clips.')
flags.DEFINE_string('train_csv_path', None,
                    'Training CSV with header "fname,labels".')
flags.DEFINE_integer('epoch_num_batches', None,
                     'Batches in one epoch of the training set; needed when '
                     'the lrdecay hparam is > 0.', lower_bound=1)
flags.DEFINE_string('warmstart_checkpoint', None,
                    'Checkpoint (model.ckpt-N prefix) to warm-start from when '
                    'the warmstart hparam is 1.')
flags.DEFINE_list('warmstart_include_scopes', [],
                  'Comma-separated scopes whose variables are warm-started '
                  '(default: all). A scope matches a variable path equal to '
                  'it or starting with it plus "/".')
flags.DEFINE_list('warmstart_exclude_scopes', [],
                  'Comma-separated scopes whose variables are not '
                  'warm-started (default: none); applied after inclusions.')
flags.DEFINE_enum('distribution', 'auto', list(distribution.MODES),
                  'Training devices: none (one device), mirrored (every '
                  'local GPU), multi_worker (the cluster in TF_CONFIG), or '
                  'auto (multi_worker with a TF_CONFIG cluster, mirrored '
                  'with several GPUs, else none).')
flags.DEFINE_string('train_dir', None,
                    'Folder of model.ckpt-N checkpoints and training '
                    'TensorBoard logs.')
flags.DEFINE_integer('max_steps', None,
                     'Stop training after this many batches in total, '
                     'counting a resumed run\'s earlier steps (default: 1000 '
                     'epochs, as the original).', lower_bound=1)
flags.DEFINE_bool('train_cache_examples', False,
                  'Keep every training example in memory after the first '
                  'epoch (about 38.4 KB each with the default hparams), so '
                  'that later epochs need no WAV decoding or features: for '
                  'an accelerator faster than the CPU cores make examples.')
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
flags.DEFINE_string('inference_checkpoint', None,
                    'Checkpoint (model.ckpt-N prefix) to run inference with.')
flags.DEFINE_string('inference_clip_dir', None,
                    'Folder of WAV clips to predict (every .wav in it).')
flags.DEFINE_string('predictions_csv_path', None,
                    'Where to write the Kaggle submission CSV.')
flags.DEFINE_string('export_dir', None,
                    'Folder (new or empty) to write the export of '
                    '--inference_checkpoint into (--mode export).')
flags.DEFINE_list('tag_paths', None,
                  'Tag mode: comma-separated WAV files and folders (every '
                  '.wav directly in them) to tag with --inference_checkpoint.')
flags.DEFINE_integer('top_k', 3, 'Tag mode: classes printed per file.',
                     lower_bound=1)
flags.DEFINE_string('timeline_csv_path', None,
                    'Tag mode: where to write the scores of every example '
                    '(fname,start_seconds,<classes>), if wanted.')

FLAGS = flags.FLAGS

for _name in ('eval_poll_seconds', 'eval_idle_timeout_seconds',
              'eval_claim_timeout_seconds'):
  flags.register_validator(
      _name, lambda value: value is None or (math.isfinite(value) and
                                             value > 0),
      message='--%s must be a positive number of seconds' % _name)

_REQUIRED = {
    'train': ('train_clip_dir', 'train_csv_path', 'train_dir'),
    'eval': ('eval_clip_dir', 'eval_csv_path', 'train_dir', 'eval_dir'),
    'inference': ('inference_checkpoint', 'inference_clip_dir',
                  'predictions_csv_path'),
    'export': ('inference_checkpoint', 'export_dir'),
    'tag': ('inference_checkpoint', 'tag_paths'),
}


def _check_flags():
  """Checks flag combinations; returns the parsed hparams."""
  if FLAGS.mode is None:
    modes = FLAGS['mode'].enum_values
    raise UserError('--mode is required (%s or %s)' % (', '.join(modes[:-1]),
                                                       modes[-1]))
  for name in ('inference_checkpoint', 'warmstart_checkpoint'):
    if getattr(FLAGS, name):
      # A checkpoint given by one of its files is taken as its prefix.
      setattr(FLAGS, name, checkpoints.prefix_of(getattr(FLAGS, name)))
  for name in ('class_map_path',) + _REQUIRED[FLAGS.mode]:
    if not getattr(FLAGS, name):
      raise UserError('--%s is required with --mode %s' % (name, FLAGS.mode))
  try:
    hparams = params.parse_hparams(FLAGS.hparams)
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None
  if FLAGS.mode == 'train':
    _check_decay_flags(hparams)
    try:
      spec, _ = distribution.cluster()
    except ValueError:
      raise UserError('TF_CONFIG: not valid JSON') from None
    if FLAGS.distribution == 'multi_worker' and not spec:
      raise UserError('--distribution=multi_worker needs the cluster in the '
                      'TF_CONFIG environment variable (see README)')
    if hparams.warmstart and not FLAGS.warmstart_checkpoint:
      raise UserError('--warmstart_checkpoint is required when warmstart=1')
    if hparams.warmstart:
      checkpoints.require(FLAGS.warmstart_checkpoint,
                          '--warmstart_checkpoint')
  if FLAGS.mode == 'eval':
    _check_eval_flags()
  for flag in _output_dirs():
    path = getattr(FLAGS, flag)
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError('--%s: %s exists and is not a folder' % (flag, path))
  if FLAGS.mode == 'export':
    checkpoints.require(FLAGS.inference_checkpoint, '--inference_checkpoint')
    path = FLAGS.export_dir
    if os.path.exists(path) and not (os.path.isdir(path) and
                                     not os.listdir(path)):
      raise UserError('--export_dir: %s exists and is not an empty folder' %
                      path)
    files.check_creatable_folder(path, '--export_dir')
  if FLAGS.mode == 'inference':
    checkpoints.require(FLAGS.inference_checkpoint, '--inference_checkpoint')
    files.check_writable(FLAGS.predictions_csv_path,
                         '--predictions_csv_path')
  if FLAGS.mode == 'tag':
    checkpoints.require(FLAGS.inference_checkpoint, '--inference_checkpoint')
    if FLAGS.timeline_csv_path:
      files.check_writable(FLAGS.timeline_csv_path, '--timeline_csv_path')
  return hparams


def _check_eval_flags():
  if not FLAGS.eval_continuous:
    for name in ('eval_poll_seconds', 'eval_idle_timeout_seconds'):
      if FLAGS[name].present:
        raise UserError('--%s is only used with --eval_continuous' % name)


def _check_decay_flags(hparams):
  if hparams.lrdecay > 0 and not FLAGS.epoch_num_batches:
    raise UserError('--epoch_num_batches is required when lrdecay > 0')


def _starting_record():
  """(checkpoint, its record) of the checkpoint this mode starts from: the
  one to score (inference), else the newest readable one of train_dir (the
  one a resumed run or eval starts from); (None, None) if there is none."""
  single = FLAGS.mode in ('inference', 'export', 'tag')
  if single:
    candidates = [FLAGS.inference_checkpoint]
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


def _recorded_run(hparams):
  """The model and hparams to run with. A checkpoint records the --model and
  hparams it was trained with; those are used, with the --hparams overrides
  applied, so that nobody has to repeat them (and nobody can score a model
  with features or an architecture it was not trained with). A checkpoint
  from before runs were recorded runs with the flags as given."""
  prefix, record = _starting_record()
  if record is None:
    return FLAGS.model, hparams
  model_name, recorded = record
  if FLAGS['model'].present and FLAGS.model != model_name:
    raise UserError('--model %s: %s was trained with --model %s' % (
        FLAGS.model, prefix, model_name))
  try:
    hparams = params.merge(recorded, FLAGS.hparams, prefix)
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None
  changed = params.describe(hparams)
  # Tag mode keeps stdout for the files' lines.
  print('Using --model %s and the hparams recorded in %s%s' % (
      model_name, prefix, ': ' + changed if changed else ' (the defaults)'),
        file=sys.stderr if FLAGS.mode == 'tag' else sys.stdout)
  if FLAGS.mode == 'train':
    _check_decay_flags(hparams)
  return model_name, hparams


def _output_dirs():
  """Flags of the folders this mode writes into."""
  return {'train': ('train_dir',), 'eval': ('eval_dir',)}.get(FLAGS.mode, ())


def _make_output_dirs():
  """Creates the output folders, once every input has passed its checks."""
  for flag in _output_dirs():
    path = getattr(FLAGS, flag)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise UserError('--%s: cannot create %s (%s)' % (flag, path,
                                                      e.strerror)) from None


def run():
  hparams = _check_flags()
  class_names = files.read_class_map(FLAGS.class_map_path)
  if FLAGS.mode == 'export':
    clip_dir, fnames = '', []
  elif FLAGS.mode == 'tag':
    import tagging
    tag_files = tagging.list_files(FLAGS.tag_paths)
  elif FLAGS.mode == 'inference':
    clip_dir = FLAGS.inference_clip_dir
    fnames = files.list_wavs(clip_dir)
  else:
    csv_path, clip_dir = getattr(FLAGS, FLAGS.mode + '_csv_path'), getattr(
        FLAGS, FLAGS.mode + '_clip_dir')
    rows = files.read_labeled_csv(csv_path, clip_dir, class_names)
    fnames = [f for f, _ in rows]
  if FLAGS.mode != 'tag':
    # Tag mode reads any WAV, and reports each unreadable one on its own.
    samples = files.check_wavs([os.path.join(clip_dir, f) for f in fnames])

  _make_output_dirs()
  tf = runtime.import_tensorflow()
  logging.set_verbosity(logging.WARNING)  # e.g. per-save saver notices
  strategy = None
  if FLAGS.mode == 'train':
    # Before anything else runs: a multi-worker strategy sets up the
    # collective ops of the TensorFlow runtime.
    strategy = distribution.make_strategy(FLAGS.distribution)
  if FLAGS.mode == 'eval' and FLAGS.eval_continuous:
    import evaluation
    # Started before training: the first checkpoint's record gives the model
    # and hparams to score with.
    evaluation.wait_for_first_checkpoint(FLAGS.train_dir,
                                         FLAGS.eval_poll_seconds,
                                         FLAGS.eval_idle_timeout_seconds)
  model_name, hparams = _recorded_run(hparams)
  try:
    if FLAGS.mode == 'train':
      import train
      train.train(model_name, hparams, class_names, FLAGS.train_csv_path,
                  FLAGS.train_clip_dir, len(rows), FLAGS.train_dir,
                  epoch_num_batches=FLAGS.epoch_num_batches,
                  max_steps=FLAGS.max_steps,
                  warmstart_checkpoint=FLAGS.warmstart_checkpoint,
                  warmstart_include_scopes=FLAGS.warmstart_include_scopes,
                  warmstart_exclude_scopes=FLAGS.warmstart_exclude_scopes,
                  strategy=strategy,
                  cache_examples=FLAGS.train_cache_examples)
    elif FLAGS.mode == 'eval':
      import evaluation
      evaluation.evaluate(
          model_name, hparams, class_names, rows, FLAGS.eval_clip_dir,
          samples, FLAGS.train_dir, FLAGS.eval_dir,
          continuous=FLAGS.eval_continuous,
          poll_seconds=FLAGS.eval_poll_seconds,
          claim_timeout_seconds=FLAGS.eval_claim_timeout_seconds,
          idle_timeout_seconds=FLAGS.eval_idle_timeout_seconds)
    elif FLAGS.mode == 'export':
      import export
      export.export(model_name, hparams, class_names, FLAGS.class_map_path,
                    FLAGS.inference_checkpoint, FLAGS.export_dir)
    elif FLAGS.mode == 'tag':
      failed = tagging.tag(model_name, hparams, class_names, tag_files,
                           FLAGS.inference_checkpoint, FLAGS.top_k,
                           FLAGS.timeline_csv_path)
      if failed:
        raise UserError('%d of %d files could not be tagged (see above)' % (
            failed, len(tag_files)))
    else:
      import inference
      inference.infer(model_name, hparams, class_names,
                      FLAGS.inference_clip_dir, fnames, samples,
                      FLAGS.inference_checkpoint, FLAGS.predictions_csv_path)
  except tf.errors.OpError as e:
    # Raised inside the TensorFlow graph, e.g. by a clip that changed after
    # the pre-flight scan.
    raise UserError(op_error_message(e)) from None


def op_error_message(error):
  """One line from a TensorFlow error: the data of a failed tf.debugging
  assertion (`file: what`) if there is one, else the error's own text."""
  found = re.search(r'assertion failed: ((?:\[[^\]\n]*\] ?)+)', error.message)
  if found:
    parts = re.findall(r'\[([^\]]*)\]', found.group(1))
    return '%s: %s' % (parts[0], ' '.join(parts[1:]))
  text = re.sub(r'^\{\{[^}]*\}\}\s*', '', error.message.strip())
  return text.splitlines()[0] if text else type(error).__name__


def main(argv):
  if len(argv) > 1:
    _fail('unexpected arguments: %s' % ' '.join(argv[1:]))
  try:
    with stopping.requests():
      run()
  except UserError as e:
    _fail(str(e), getattr(e, 'exit_code', 1))
  except KeyboardInterrupt:
    # Ctrl-C before the stop handlers are in place.
    _fail('stopped by SIGINT; ' + stopping.RERUN, 128 + signal.SIGINT)
  except OSError as e:
    # A file system fault in the middle of a run (disk full, permissions).
    _fail('%s: %s' % (e.filename, e.strerror) if e.filename else str(e))


def _fail(message, exit_code=1):
  prefix = 'stopped' if exit_code > 128 else 'error'
  print('main.py: %s: %s' % (prefix, message), file=sys.stderr)
  sys.exit(exit_code)


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except SystemExit:
    # absl exits with status 1 after printing --help; asking for help is no
    # error.
    if any(a.split('=')[0] in ('-h', '-?', '--help', '--helpshort',
                               '--helpfull') for a in argv[1:]):
      sys.exit(0)
    raise


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
