"""The flags of what runs the model in the scoring modes (--engine and the
TFLite model, threads and quantization), and of export's quantized model:
their checks and the tflite_engine.Engine they describe.

Plain Python at import: checked before TensorFlow is imported.
"""

import os

from absl import flags

from tagger.core.files import UserError
from tagger.engines import tflite_engine
from tagger.modes import records

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


def check(mode):
  """--engine and the flags that only make sense with it or with export."""
  tflite = FLAGS.engine == 'tflite'
  if FLAGS['engine'].present and not mode.scores:
    raise UserError('--engine is for eval, inference, tag and relabel, not '
                    '--mode %s' % mode.name)
  for name in ('tflite_threads', 'tflite_model'):
    if FLAGS[name].present and not tflite:
      raise UserError('--%s is only used with --engine tflite' % name)
  if FLAGS.tflite_model and mode.name == 'eval':
    raise UserError('--tflite_model: eval scores each checkpoint of '
                    '--train_dir (converted in memory); give a model file '
                    'to inference, tag or relabel')
  if (FLAGS.tflite_model and FLAGS.inference_checkpoint and
      ',' in FLAGS.inference_checkpoint):
    raise UserError('--tflite_model scores one model file: give one '
                    '--inference_checkpoint (its run), not an ensemble')
  if FLAGS.quantize and not (tflite or mode.name == 'export'):
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


def check_model_file(path):
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


def engine(class_names):
  """The tflite_engine.Engine of the flags, its files checked (a model file
  against the class map and --quantize; calibration clips readable)."""
  if FLAGS.tflite_model:
    entry = tflite_engine.read_metadata(FLAGS.tflite_model)
    problem = tflite_engine.mismatch(entry, class_names, FLAGS.quantize)
    if problem:
      raise UserError('--tflite_model: %s: %s' % (FLAGS.tflite_model,
                                                  problem))
    # The --hparams the file fixes, before TensorFlow starts.
    records.merge(tflite_engine.run_of(entry, FLAGS.tflite_model)[1],
                  FLAGS.tflite_model, **records.FILE_FIXES)
    tflite_engine.Runner(FLAGS.tflite_model, 1)  # LiteRT can run it, as described
  calibration = ()
  if FLAGS.calibration_csv_path:
    calibration = tuple(tflite_engine.calibration_clips(
        FLAGS.calibration_csv_path, FLAGS.calibration_clip_dir, class_names))
  return tflite_engine.Engine(
      kind=FLAGS.engine, threads=FLAGS.tflite_threads,
      quantize=FLAGS.quantize, model_path=FLAGS.tflite_model,
      calibration_paths=calibration)
