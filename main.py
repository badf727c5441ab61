r"""Driver for the DCASE 2019 Task 2 baseline: train, eval, inference,
export, tag or relabel.

  python main.py --mode train --model mobilenet-v1 \
      --class_map_path class_map.csv --train_clip_dir train_curated \
      --train_csv_path train.csv --train_dir train_dir

Flags and files are checked before any work starts (and before TensorFlow is
imported); a problem is reported as one line naming the flag, file or value,
with exit status 1.
"""

import dataclasses
import math
import os
import re
import signal
import sys

from absl import app
from absl import logging
from absl import flags

from tagger.core import checkpoints
from tagger.training import distribution
from tagger.core import files
import model
from tagger.core import params
from tagger.core import runtime
from tagger.core import sources
from tagger.core import stopping
from tagger.engines import tflite_engine
from tagger.core.files import UserError

flags.DEFINE_enum('mode', None,
                  ['train', 'eval', 'inference', 'export', 'tag', 'relabel'],
                  'What to do: train a model, evaluate every checkpoint of a '
                  'training run, write predictions for a folder of clips, '
                  'export a checkpoint as a SavedModel and a TFLite model, '
                  'print the top classes of any WAV files, or relabel a CSV '
                  'of clips with a checkpoint.')
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
flags.DEFINE_string('train_clip_dir', None,
                    'Folder of training WAV clips; with several sources, '
                    'comma-separated folders in the order of '
                    '--train_csv_path.')
flags.DEFINE_string('train_csv_path', None,
                    'Training CSV with header "fname,labels"; several '
                    'comma-separated CSVs train on several sources in one '
                    'run (e.g. curated and noisy clips).')
flags.DEFINE_string('train_source_weights', '',
                    'With several sources: each one\'s share of the '
                    'training examples, comma-separated positive numbers '
                    '(normalised), e.g. 1,1 for half and half. Default: in '
                    'proportion to their examples.')
flags.DEFINE_string('train_source_kinds', '',
                    'With several sources: curated or noisy for each, '
                    'comma-separated. The examples of a noisy source are '
                    'trained with the noisy_loss hparam. Default: all '
                    'curated.')
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
flags.DEFINE_float('cluster_start_timeout_seconds', 600.0,
                   'With a TF_CONFIG cluster: how long each task waits for '
                   'all the others to start before it gives up, naming those '
                   'that did not answer.')
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
flags.DEFINE_enum('features_on', 'cpu', ['cpu', 'device'],
                  'Where training makes its log-mel examples: in the input '
                  'pipeline on the CPU (cpu), or on the training device '
                  '(device: the pipeline ships each example\'s 16-bit '
                  'samples, and the training step computes the same '
                  'example), for an accelerator the CPU cores cannot feed.')
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
                    'Folder of audio clips to predict (every audio file in '
                    'it: WAV, FLAC, Ogg, MP3, AIFF, ...).')
flags.DEFINE_string('predictions_csv_path', None,
                    'Where to write the Kaggle submission CSV.')
flags.DEFINE_string('export_dir', None,
                    'Folder (new or empty) to write the export of '
                    '--inference_checkpoint into (--mode export).')
flags.DEFINE_list('tag_paths', None,
                  'Tag mode: comma-separated audio files and folders (every '
                  'audio file directly in them) to tag with '
                  '--inference_checkpoint.')
flags.DEFINE_integer('top_k', 3, 'Tag mode: classes printed per file.',
                     lower_bound=1)
flags.DEFINE_string('timeline_csv_path', None,
                    'Tag mode: where to write the scores of every example '
                    '(fname,start_seconds,<classes>), if wanted.')

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

flags.DEFINE_enum('engine', 'keras', ['keras', 'tflite'],
                  'What runs the model in eval, inference, tag and relabel: '
                  'keras (default), or tflite: a TFLite model of it (log-mel '
                  'examples in, logits out) run by LiteRT with XNNPACK, '
                  'either --tflite_model or --inference_checkpoint (each '
                  'checkpoint, in eval) converted in memory as --quantize '
                  'says. Both take the same examples from the same pipeline '
                  '(see docs/fast-cpu-scoring.md).')
flags.DEFINE_integer('tflite_threads', None,
                     'With --engine tflite: threads of the TFLite '
                     'interpreter (default: every core, os.cpu_count()).',
                     lower_bound=1)
flags.DEFINE_string('tflite_model', None,
                    'With --engine tflite in inference, tag or relabel: an '
                    'examples-in model written by --mode export '
                    '(examples_float32.tflite, examples_dynamic.tflite or '
                    'examples_int8.tflite) to score with. The model, hparams '
                    'and class names recorded in it are used and checked '
                    'against --class_map_path, --hparams and, if given, '
                    '--inference_checkpoint (then optional).')
flags.DEFINE_enum('quantize', None, list(tflite_engine.QUANTIZATIONS),
                  'Export: the examples-in model to write besides the float '
                  'one: none (default, float32 only), dynamic (int8 '
                  'weights, float activations) or int8 (full integer, '
                  'calibrated on --calibration_csv_path). With --engine '
                  'tflite: how the checkpoint is converted in memory '
                  '(default none); with --tflite_model: the kind the file '
                  'must be (default: any).')
flags.DEFINE_string('calibration_csv_path', None,
                    'With --quantize int8 (when converting): a "fname,labels" '
                    'CSV of training clips whose log-mel examples calibrate '
                    'the int8 model (at most %d examples, %d per clip, drawn '
                    'with a fixed seed).' % (tflite_engine.CALIBRATION_EXAMPLES,
                                             tflite_engine.PER_CLIP))
flags.DEFINE_string('calibration_clip_dir', None,
                    'With --quantize int8 (when converting): the folder of '
                    'the --calibration_csv_path clips.')

FLAGS = flags.FLAGS

for _name in ('relabel_keep_threshold', 'relabel_add_threshold'):
  flags.register_validator(
      _name, lambda value: 0.0 <= value <= 1.0,
      message='--%s must be a score between 0 and 1' % _name)

for _name in ('eval_poll_seconds', 'eval_idle_timeout_seconds',
              'eval_claim_timeout_seconds', 'cluster_start_timeout_seconds'):
  flags.register_validator(
      _name, lambda value: value is None or (math.isfinite(value) and
                                             value > 0),
      message='--%s must be a positive number of seconds' % _name)

@dataclasses.dataclass(frozen=True)
class _Mode:
  """What a mode needs and writes, declared once for the checks and the
  dispatch."""
  required: tuple  # flags that must be given
  inputs: tuple  # flags naming the files and folders it reads
  output_dirs: tuple = ()  # folders it writes into, made after the checks
  output_files: tuple = ()  # files or folders it creates
  run: str = ''  # the name of the function that runs it

  @property
  def runner(self):
    return globals()[self.run]

  @property
  def from_checkpoint(self):
    """It scores (or exports) --inference_checkpoint."""
    return 'inference_checkpoint' in self.required

  @property
  def scores(self):
    """It scores clips, with --engine."""
    return self.run in ('_eval', '_inference', '_tag', '_relabel')


_MODES = {
    'train': _Mode(
        required=('train_clip_dir', 'train_csv_path', 'train_dir'),
        inputs=('class_map_path', 'train_clip_dir', 'train_csv_path',
                'warmstart_checkpoint'),
        output_dirs=('train_dir',), run='_train'),
    'eval': _Mode(
        required=('eval_clip_dir', 'eval_csv_path', 'train_dir', 'eval_dir'),
        inputs=('class_map_path', 'eval_clip_dir', 'eval_csv_path',
                'train_dir'),
        output_dirs=('eval_dir',), run='_eval'),
    'inference': _Mode(
        required=('inference_checkpoint', 'inference_clip_dir',
                  'predictions_csv_path'),
        inputs=('class_map_path', 'inference_checkpoint',
                'inference_clip_dir'),
        output_files=('predictions_csv_path',), run='_inference'),
    'export': _Mode(
        required=('inference_checkpoint', 'export_dir'),
        inputs=('class_map_path', 'inference_checkpoint'),
        output_files=('export_dir',), run='_export'),
    'tag': _Mode(
        required=('inference_checkpoint', 'tag_paths'),
        inputs=('class_map_path', 'inference_checkpoint'),
        output_files=('timeline_csv_path',), run='_tag'),
    'relabel': _Mode(
        required=('inference_checkpoint', 'relabel_csv_path',
                  'relabel_clip_dir', 'relabeled_csv_path'),
        inputs=('class_map_path', 'inference_checkpoint', 'relabel_csv_path',
                'relabel_clip_dir'),
        output_files=('relabeled_csv_path',), run='_relabel'),
}


def _check_flags():
  """Checks flag combinations; returns the parsed hparams."""
  if FLAGS.mode is None:
    modes = FLAGS['mode'].parser.enum_values
    raise UserError('--mode is required (%s or %s)' % (', '.join(modes[:-1]),
                                                       modes[-1]))
  for name in ('inference_checkpoint', 'warmstart_checkpoint'):
    if getattr(FLAGS, name):
      # A checkpoint given by one of its files is taken as its prefix.
      setattr(FLAGS, name, checkpoints.prefix_of(getattr(FLAGS, name)))
  _check_engine_flags()
  for name in ('class_map_path',) + _MODES[FLAGS.mode].required:
    if name == 'inference_checkpoint' and FLAGS.tflite_model:
      continue  # the model file replaces it
    if not getattr(FLAGS, name):
      raise UserError('--%s is required with --mode %s' % (name, FLAGS.mode))
  hparams = _hparams_from_flags()
  if FLAGS.mode == 'train':
    spec, _ = distribution.check_config()
    if FLAGS.distribution == 'multi_worker' and not spec:
      raise UserError('--distribution=multi_worker needs the cluster in the '
                      'TF_CONFIG environment variable (see README)')
    if distribution.uses_cluster(FLAGS.distribution):
      distribution.check_port()
    _train_sources()
    if hparams is not None:
      _check_train_hparams(hparams)
  if FLAGS.mode == 'eval':
    _check_eval_flags()
  if FLAGS.mode == 'relabel':
    _check_relabel_flags()
  for flag in _MODES[FLAGS.mode].output_dirs:
    path = getattr(FLAGS, flag)
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError('--%s: %s exists and is not a folder' % (flag, path))
  if FLAGS.inference_checkpoint and _MODES[FLAGS.mode].from_checkpoint:
    checkpoints.require(FLAGS.inference_checkpoint, '--inference_checkpoint')
  if FLAGS.tflite_model:
    _check_model_file(FLAGS.tflite_model)
  for flag in _MODES[FLAGS.mode].output_files:
    if getattr(FLAGS, flag) and flag != 'export_dir':
      files.check_writable(getattr(FLAGS, flag), '--' + flag)
  if FLAGS.mode == 'export':
    path = FLAGS.export_dir
    if os.path.exists(path) and not (os.path.isdir(path) and
                                     not os.listdir(path)):
      raise UserError('--export_dir: %s exists and is not an empty folder' %
                      path)
    files.check_creatable_folder(path, '--export_dir')
  return hparams


def _check_model_file(path):
  """--tflite_model names a file; a folder (an export's, say) is named as
  one, with the models it holds."""
  if os.path.isdir(path):
    try:
      models = sorted(set(os.listdir(path)) &
                      set(tflite_engine.EXAMPLES_FILES.values()))
    except OSError:
      models = []
    raise UserError('--tflite_model: %s is a folder, not a .tflite file%s' % (
        path, ' (it holds %s)' % ', '.join(models) if models else ''))
  if not os.path.isfile(path):
    raise UserError('--tflite_model: %s not found' % path)


def _check_engine_flags():
  """--engine and the flags that only make sense with it or with export."""
  mode = _MODES[FLAGS.mode]
  tflite = FLAGS.engine == 'tflite'
  if FLAGS['engine'].present and not mode.scores:
    raise UserError('--engine is for eval, inference, tag and relabel, not '
                    '--mode %s' % FLAGS.mode)
  for name in ('tflite_threads', 'tflite_model'):
    if FLAGS[name].present and not tflite:
      raise UserError('--%s is only used with --engine tflite' % name)
  if FLAGS.tflite_model and FLAGS.mode == 'eval':
    raise UserError('--tflite_model: eval scores each checkpoint of '
                    '--train_dir (converted in memory); give a model file '
                    'to inference, tag or relabel')
  if FLAGS.quantize and not (tflite or FLAGS.mode == 'export'):
    raise UserError('--quantize is only used with --mode export or '
                    '--engine tflite')
  calibrating = FLAGS.quantize == 'int8' and not FLAGS.tflite_model
  for name in ('calibration_csv_path', 'calibration_clip_dir'):
    if calibrating and not getattr(FLAGS, name):
      raise UserError('--quantize int8 needs --calibration_csv_path and '
                      '--calibration_clip_dir: training clips to calibrate '
                      'on')
    if getattr(FLAGS, name) and not calibrating:
      raise UserError('--%s is only used when converting with --quantize '
                      'int8' % name)


def _engine(class_names):
  """The tflite_engine.Engine of the flags, its files checked (a model file
  against the class map and --quantize; calibration clips readable)."""
  if FLAGS.tflite_model:
    entry = tflite_engine.read_metadata(FLAGS.tflite_model)
    problem = tflite_engine.mismatch(entry, class_names, FLAGS.quantize)
    if problem:
      raise UserError('--tflite_model: %s: %s' % (FLAGS.tflite_model,
                                                  problem))
    # The --hparams the file fixes, before TensorFlow starts.
    _merge(tflite_engine.run_of(entry, FLAGS.tflite_model)[1],
           FLAGS.tflite_model, **_FILE_FIXES)
    tflite_engine.Runner(FLAGS.tflite_model, 1)  # LiteRT can run it, as described
  calibration = ()
  if FLAGS.calibration_csv_path:
    calibration = tuple(tflite_engine.calibration_clips(
        FLAGS.calibration_csv_path, FLAGS.calibration_clip_dir, class_names))
  return tflite_engine.Engine(
      kind=FLAGS.engine, threads=FLAGS.tflite_threads,
      quantize=FLAGS.quantize, model_path=FLAGS.tflite_model,
      calibration_paths=calibration)


def _check_eval_flags():
  if not FLAGS.eval_continuous:
    for name in ('eval_poll_seconds', 'eval_idle_timeout_seconds'):
      if FLAGS[name].present:
        raise UserError('--%s is only used with --eval_continuous' % name)


def _check_relabel_flags():
  keep = FLAGS.relabel_keep_threshold
  add = FLAGS.relabel_add_threshold
  if keep > add:
    raise UserError('--relabel_keep_threshold %s is above '
                    '--relabel_add_threshold %s: a given label must not need '
                    'a higher score to be kept than a new one to be added' % (
                        keep, add))


def _hparams_from_flags():
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
    if _may_resume_a_record():
      return None
    raise UserError('--hparams: %s' % e) from None


def _may_resume_a_record():
  """Whether this mode may start from a checkpoint that holds a record
  (continuous eval may wait for its first one)."""
  if FLAGS.tflite_model:
    return True  # the file records its run
  if _MODES[FLAGS.mode].from_checkpoint:
    return checkpoints.exists(FLAGS.inference_checkpoint)
  return FLAGS.mode == 'eval' or bool(
      checkpoints.list_checkpoints(FLAGS.train_dir))


def _train_sources():
  return sources.from_flags(FLAGS.train_csv_path, FLAGS.train_clip_dir,
                            FLAGS.train_source_weights,
                            FLAGS.train_source_kinds)


def _max_steps():
  """The steps the run trains to (None: 1000 epochs of the pipeline)."""
  return params.default_max_steps(FLAGS.max_steps, FLAGS.epoch_num_batches)


def _check_train_hparams(hparams):
  sources.check_hparams(_train_sources(), hparams)
  try:
    params.check_schedule(hparams, _max_steps())
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None
  if hparams.lrdecay > 0 and not FLAGS.epoch_num_batches:
    raise UserError('--epoch_num_batches is required when lrdecay > 0')
  if hparams.warmstart and not FLAGS.warmstart_checkpoint:
    raise UserError('--warmstart_checkpoint is required when warmstart=1')
  if hparams.warmstart:
    checkpoints.require(FLAGS.warmstart_checkpoint, '--warmstart_checkpoint')


def _starting_record():
  """(checkpoint, its record) of the checkpoint this mode starts from: the
  one to score (inference), else the newest readable one of train_dir (the
  one a resumed run or eval starts from); (None, None) if there is none."""
  single = _MODES[FLAGS.mode].from_checkpoint
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
  from before runs were recorded runs with the flags as given. A
  --tflite_model records its run too."""
  if FLAGS.tflite_model:
    return _tflite_run()
  prefix, record = _starting_record()
  if record is None:
    if hparams is None:  # no record after all: the flags as given
      try:
        hparams = params.parse_hparams(FLAGS.hparams)
      except ValueError as e:
        raise UserError('--hparams: %s' % e) from None
      if FLAGS.mode == 'train':
        _check_train_hparams(hparams)
    return FLAGS.model, hparams
  model_name, hparams = _use_record(*record, prefix,
                                     'was trained with --model %s')
  if FLAGS.mode == 'train':
    _check_resumed_schedule(record[1], hparams, prefix)
    _check_train_hparams(hparams)
  return model_name, hparams


def _check_resumed_schedule(recorded, hparams, prefix):
  """A resumed cosine decay keeps the horizon its run recorded: another one
  would re-base the decay on the steps already taken (the rate would rise
  again, following neither schedule). Records made before runs recorded
  their horizon (decay_horizon=0) cannot be checked."""
  horizon = recorded.get('decay_horizon') if recorded.get(
      'cosine_decay') else 0
  if not (horizon and hparams.cosine_decay):
    return
  given = params.parse_overrides(FLAGS.hparams).get('decay_horizon')
  if (given or _max_steps()) == horizon:
    return
  asked = ('--hparams decay_horizon=%d' % given if given else
           '--max_steps %d' % FLAGS.max_steps if FLAGS.max_steps else
           'no --max_steps')
  raise UserError(
      '%s: %s decays the learning rate to step %d (its recorded '
      'decay_horizon=%d), and a resumed run keeps its schedule: resume with '
      '--max_steps %d, add decay_horizon=%d to --hparams to train on at the '
      'floor rate, or start a new --train_dir' % (
          asked, prefix, horizon, horizon, horizon, horizon))


def _use_record(model_name, recorded, source, made_with, **fixes):
  """(model name, the hparams recorded in `source` with --hparams on
  top), announced; --model, if given, must be the recorded one; fixes: see
  _merge."""
  if FLAGS['model'].present and FLAGS.model != model_name:
    raise UserError('--model %s: %s %s' % (FLAGS.model, source,
                                           made_with % model_name))
  hparams = _merge(recorded, source, **fixes)
  changed = params.describe(hparams)
  # Tag mode keeps stdout for the files' lines.
  print('Using --model %s and the hparams recorded in %s%s' % (
      model_name, source, ': ' + changed if changed else ' (the defaults)'),
        file=sys.stderr if FLAGS.mode == 'tag' else sys.stdout)
  return model_name, hparams


def _tflite_run():
  """The model and hparams recorded in --tflite_model, with --hparams on
  top; a checkpoint given as well must be of the same model and hparams."""
  path = FLAGS.tflite_model
  entry = tflite_engine.read_metadata(path)
  model_name, recorded = tflite_engine.run_of(entry, path)
  if FLAGS.inference_checkpoint:
    prefix, record = _starting_record()
    problem = record and tflite_engine.run_mismatch(entry, *record)
    if problem:
      raise UserError('--tflite_model: %s: %s (%s)' % (path, problem,
                                                       prefix))
  return _use_record(model_name, recorded, path,
                     'was exported from a --model %s run', **_FILE_FIXES)


# A model file fixes its features and architecture, and the batch-norm
# statistics and weights folded into it: --hparams cannot change them.
_FILE_FIXES = dict(fixed=params.MODEL_DEFINING + params.SCORING,
                   made='exported')


def _merge(recorded, source, fixed=params.MODEL_DEFINING, made='trained'):
  """The hparams recorded in `source` with --hparams on top, which must not
  change the `fixed` ones (params.merge)."""
  try:
    return params.merge(recorded, FLAGS.hparams, source, fixed, made)
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None


def _check_outputs(read_paths):
  """Refuses an output that is one of the mode's inputs (a flag's file or
  folder, a checkpoint's files, or one of `read_paths`): it would be
  overwritten, or mixed with what it holds."""
  mode = _MODES[FLAGS.mode]
  inputs = {}
  for flag in mode.inputs + ('tflite_model', 'calibration_csv_path',
                             'calibration_clip_dir'):
    path = getattr(FLAGS, flag)
    if path:
      inputs[os.path.realpath(path)] = '--' + flag
      if flag.endswith('checkpoint'):
        for name in checkpoints.files_of(path):
          inputs[os.path.realpath(name)] = '--' + flag
  for path in read_paths:
    inputs.setdefault(os.path.realpath(path), 'an input')
  for flag in mode.output_dirs + mode.output_files:
    path = getattr(FLAGS, flag)
    if path and os.path.realpath(path) in inputs:
      raise UserError('--%s: %s is %s of this run; choose another path' % (
          flag, path, inputs[os.path.realpath(path)]))


def _make_output_dirs():
  """Creates the output folders, once every input has passed its checks."""
  for flag in _MODES[FLAGS.mode].output_dirs:
    path = getattr(FLAGS, flag)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise UserError('--%s: cannot create %s (%s)' % (flag, path,
                                                      e.strerror)) from None


@dataclasses.dataclass
class _ModeData:
  """What a mode reads, listed and checked before TensorFlow is imported."""
  class_names: list
  rows: list = None  # (fname, labels) of the mode's CSV
  clip_dir: str = ''
  fnames: list = dataclasses.field(default_factory=list)
  sample_counts: list = None  # each clip's length in samples
  sources: list = None  # training sources
  tag_files: list = None
  engine: tflite_engine.Engine = None


def _list_inputs(class_names):
  """The mode's clips (and training sources, or files to tag), and the paths
  its outputs must not be."""
  data = _ModeData(class_names)
  if FLAGS.mode == 'tag':
    from tagger.modes import tagging
    data.tag_files = tagging.list_files(FLAGS.tag_paths)
    return data, list(FLAGS.tag_paths) + data.tag_files
  if FLAGS.mode == 'inference':
    data.clip_dir = FLAGS.inference_clip_dir
    data.fnames = files.list_clips(data.clip_dir)
  elif FLAGS.mode == 'train':
    data.sources = _train_sources()
    data.rows = [files.read_labeled_csv(s.csv_path, s.clip_dir, class_names)
                  for s in data.sources]
    return data, [os.path.join(s.clip_dir, f)
                   for s, rows in zip(data.sources, data.rows)
                   for f, _ in rows]
  elif FLAGS.mode in ('eval', 'relabel'):
    data.clip_dir = getattr(FLAGS, FLAGS.mode + '_clip_dir')
    data.rows = files.read_labeled_csv(getattr(FLAGS, FLAGS.mode +
                                                '_csv_path'),
                                        data.clip_dir, class_names)
    data.fnames = [f for f, _ in data.rows]
  return data, [os.path.join(data.clip_dir, f) for f in data.fnames]


def run():
  hparams = _check_flags()
  data, read_paths = _list_inputs(files.read_class_map(FLAGS.class_map_path))
  _check_outputs(read_paths + [p for s in data.sources or ()
                               for p in (s.csv_path, s.clip_dir)])
  if FLAGS.mode != 'tag':
    # Tag mode reports each unreadable file (and each note) on its own.
    notes = []
    data.sample_counts = files.check_clips(read_paths, notes)
    if notes:
      print('main.py: %s' % files.note_line(notes), file=sys.stderr)
  data.engine = _engine(data.class_names)
  _make_output_dirs()
  tf = runtime.import_tensorflow()
  logging.set_verbosity(logging.WARNING)  # e.g. per-save saver notices
  strategy = None
  if FLAGS.mode == 'train':
    # Before anything else runs: a multi-worker strategy sets up the
    # collective ops of the TensorFlow runtime.
    strategy = distribution.make_strategy(
        FLAGS.distribution, FLAGS.cluster_start_timeout_seconds)
  if FLAGS.mode == 'eval' and FLAGS.eval_continuous:
    import evaluation
    # Started before training: the first checkpoint's record gives the model
    # and hparams to score with.
    evaluation.wait_for_first_checkpoint(FLAGS.train_dir,
                                         FLAGS.eval_poll_seconds,
                                         FLAGS.eval_idle_timeout_seconds)
  model_name, hparams = _recorded_run(hparams)
  try:
    _MODES[FLAGS.mode].runner(model_name, hparams, data, strategy)
  except tf.errors.OpError as e:
    lost = distribution.lost_tasks(e)
    if lost is not None:
      raise UserError(_lost_message(lost)) from None
    # Raised inside the TensorFlow graph, e.g. by a clip that changed after
    # the pre-flight scan.
    raise UserError(op_error_message(e)) from None


def _train(model_name, hparams, data, strategy):
  import train
  train.train(model_name, hparams, data.class_names, data.sources,
              FLAGS.train_dir, epoch_num_batches=FLAGS.epoch_num_batches,
              max_steps=FLAGS.max_steps,
              warmstart_checkpoint=FLAGS.warmstart_checkpoint,
              warmstart_include_scopes=FLAGS.warmstart_include_scopes,
              warmstart_exclude_scopes=FLAGS.warmstart_exclude_scopes,
              strategy=strategy, cache_examples=FLAGS.train_cache_examples,
              features_on=FLAGS.features_on)


def _eval(model_name, hparams, data, strategy):
  import evaluation
  evaluation.evaluate(
      model_name, hparams, data.class_names, data.rows, data.clip_dir,
      data.sample_counts, FLAGS.train_dir, FLAGS.eval_dir,
      continuous=FLAGS.eval_continuous, poll_seconds=FLAGS.eval_poll_seconds,
      claim_timeout_seconds=FLAGS.eval_claim_timeout_seconds,
      idle_timeout_seconds=FLAGS.eval_idle_timeout_seconds,
      engine=data.engine)


def _inference(model_name, hparams, data, strategy):
  import inference
  inference.infer(model_name, hparams, data.class_names, data.clip_dir,
                  data.fnames, data.sample_counts, FLAGS.inference_checkpoint,
                  FLAGS.predictions_csv_path, engine=data.engine)


def _export(model_name, hparams, data, strategy):
  from tagger.modes import export
  export.export(model_name, hparams, data.class_names, FLAGS.class_map_path,
                FLAGS.inference_checkpoint, FLAGS.export_dir,
                quantize=FLAGS.quantize or 'none',
                calibration_paths=data.engine.calibration_paths)


def _tag(model_name, hparams, data, strategy):
  from tagger.modes import tagging
  failed = tagging.tag(model_name, hparams, data.class_names,
                       data.tag_files, FLAGS.inference_checkpoint,
                       FLAGS.top_k, FLAGS.timeline_csv_path,
                       engine=data.engine)
  if failed:
    raise UserError('%d of %d files could not be tagged (see above)' % (
        failed, len(data.tag_files)))


def _relabel(model_name, hparams, data, strategy):
  from tagger.modes import relabel
  relabel.relabel(model_name, hparams, data.class_names, data.rows,
                  data.clip_dir, data.sample_counts, FLAGS.inference_checkpoint,
                  FLAGS.relabeled_csv_path, FLAGS.relabel_keep_threshold,
                  FLAGS.relabel_add_threshold, engine=data.engine)


def _lost_message(lost):
  """What a worker says when another task of the cluster was lost."""
  found = checkpoints.list_checkpoints(FLAGS.train_dir)
  return ('training stopped: %s of the cluster was lost; the last checkpoint '
          'is %s; restart every worker with the same command to resume' % (
              ' and '.join('%s (%s)' % task for task in lost) or
              'another task', found[-1][1] if found else 'none yet'))


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
    _exit(0)
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
  _exit(exit_code)


def _exit(code):
  if distribution.started():
    distribution.leave(code)
  sys.exit(code)


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
