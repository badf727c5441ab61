"""The TFLite engine: the model part (log-mel examples [batch, frames, bands]
-> logits) as a TFLite model, run by the LiteRT interpreter with XNNPACK.

scoring.Scorer feeds it the examples its tf.data pipeline makes, exactly as
it feeds the Keras model; only the model call differs. The model comes from
an export (EXAMPLES_FILES) or is converted from the loaded checkpoint in
memory: float32, dynamic (int8 weights, float activations) or int8 (full
integer, calibrated on examples of training clips).

The file carries its run in a metadata entry named METADATA_NAME: JSON with
the model name, every hparam, the class names, the quantization and where
it came from, checked against the run before anything is scored.

The front end (STFT, mel, log) stays float: the mel energies span six
decades (the log's offset 0.001 to ~400 in a loud bin), which int8's 256
levels cannot hold, TFLite's FFT has no integer kernel, and it runs on
tf.data's threads anyway; after the log (-6.9 to +6 on recorded drums) the
int8 model's own input quantization takes over. The model's inputs and
outputs stay float32 too (the int8 model quantizes its input and
dequantizes its logits itself), so every engine takes the same examples.
The output is the logits, not the scores: an int8 sigmoid has 256 levels,
so every score below 0.002 would be 0 and tie in lwlrap's ranking; the
engine applies the sigmoid in float.
"""

import dataclasses
import json
import os
import tempfile

import numpy as np

from tagger.core import files
from tagger.core import params
from tagger.core.files import UserError

EXAMPLES_FILES = {'none': 'examples_float32.tflite',
                  'dynamic': 'examples_dynamic.tflite',
                  'int8': 'examples_int8.tflite'}
QUANTIZATIONS = tuple(EXAMPLES_FILES)
METADATA_NAME = 'dcase2019_task2'
FORMAT = 1
# Calibration: at most this many examples, at most PER_CLIP from a clip,
# from the clips in an order drawn with CALIBRATION_SEED.
CALIBRATION_EXAMPLES = 500
PER_CLIP = 4
CALIBRATION_SEED = 0


@dataclasses.dataclass(frozen=True)
class Engine:
  """What runs the model part in scoring.Scorer (--engine and the flags
  that go with it)."""
  kind: str = 'keras'  # or 'tflite'
  threads: int = None  # TFLite's threads (None: every core)
  # Converting in memory: none, dynamic or int8. With model_path: the kind
  # the file must be (None: any).
  quantize: str = None
  model_path: str = None  # an exported examples-in .tflite
  calibration_paths: tuple = ()  # clips to calibrate int8 on

  @property
  def tflite(self):
    return self.kind == 'tflite'


def default_threads():
  return os.cpu_count() or 1


# --- the runtime ------------------------------------------------------------

def interpreter(model, threads=None):
  """A LiteRT interpreter of a model (a path or bytes) on `threads` threads
  (default: every core), with XNNPACK (LiteRT's default CPU delegate)."""
  from tagger.core import runtime
  from ai_edge_litert import interpreter as litert
  source = ({'model_path': model} if isinstance(model, str)
            else {'model_content': bytes(model)})
  # Quiet: the delegate says "Created TensorFlow Lite XNNPACK delegate" when
  # the tensors are first allocated.
  try:
    with runtime.quiet_stderr():
      made = litert.Interpreter(num_threads=threads or default_threads(),
                                **source)
      made.allocate_tensors()
  except (ValueError, RuntimeError) as e:
    raise UserError('%s: LiteRT cannot run it (%s)' % (
        model if isinstance(model, str) else 'the converted model',
        first_line(e))) from None
  return made


def first_line(error):
  """An exception's first line (LiteRT's and the converter's run long)."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


class Runner:
  """examples [batch, frames, bands] -> [batch, classes] float32 scores.
  A file's graph is checked against its metadata entry (graph_mismatch)."""

  def __init__(self, model, threads=None):
    self.interpreter = interpreter(model, threads)
    if isinstance(model, str):
      problem = graph_mismatch(self.interpreter, read_metadata(model), model)
      if problem:
        raise UserError('%s: %s' % (model, problem))
    self._run = self.interpreter.get_signature_runner('serving_default')

  def logits(self, examples):
    return self._run(examples=np.asarray(examples, np.float32))['logits']

  def __call__(self, examples):
    from scipy import special
    return special.expit(self.logits(examples))


def graph_mismatch(made, entry, path):
  """What in an interpreter's graph contradicts its metadata entry, or None:
  its examples must be [batch, frames, bands] of the entry's hparams and its
  logits [batch, classes] of its class names (else the first batch fails
  deep inside LiteRT or the scores' sums)."""
  _, recorded = run_of(entry, path)
  hparams = dataclasses.replace(params.HParams(), **recorded)
  frames = hparams.geometry.example_frames
  classes = len(entry.get('class_names') or [])
  want = {'examples': ('inputs', [-1, frames, hparams.mel_bands],
                       "its metadata's hparams make examples of %d frames of "
                       '%d mel bands' % (frames, hparams.mel_bands)),
          'logits': ('outputs', [-1, classes],
                     'its metadata names %d classes' % classes)}
  signature = made.get_signature_list().get('serving_default', {})
  if any(name not in signature.get(kind, ()) for name, (kind, _, _)
         in want.items()):
    return ('its graph has no serving_default signature from examples to '
            'logits')
  runner = made.get_signature_runner('serving_default')
  details = dict(runner.get_input_details(), **runner.get_output_details())
  for name, (_, shape, meaning) in want.items():
    got = [int(n) for n in details[name]['shape_signature']]
    if got[1:] != shape[1:]:
      return 'its graph has %s %s, but %s' % (name, got, meaning)
  return None


# --- conversion -------------------------------------------------------------

def frozen(function, spec, outputs):
  """A module whose serve(spec) is the concrete `function` with the weights
  as constants (TFLite's converter would keep Keras 3 variables, which its
  interpreter reads uninitialised); outputs maps the frozen function's flat
  results to serve's dict."""
  import tensorflow as tf
  from tensorflow.python.framework import convert_to_constants
  constant = convert_to_constants.convert_variables_to_constants_v2(function)
  module = tf.Module()
  module.serve = tf.function(lambda x: outputs(constant(x)),
                             input_signature=[spec], autograph=False)
  return module


def to_tflite(module, failure, quantize='none', calibration=None):
  """module.serve as TFLite bytes of built-in ops (int8 ones for int8,
  calibrated on `calibration`, one input batch each); UserError beginning
  with `failure` if the converter fails."""
  import tensorflow as tf
  from tagger.core import runtime
  with tempfile.TemporaryDirectory() as tmp:
    tf.saved_model.save(module, tmp,
                        signatures={'serving_default': module.serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != 'none':
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == 'int8':
      converter.representative_dataset = lambda: (
          [example[None]] for example in calibration)
      converter.target_spec.supported_ops = [
          tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
      # The calibrator prints its settings on stdout.
      with runtime.quiet_stderr(), runtime.quiet_stdout():
        return converter.convert()
    except Exception as e:  # the converter raises several kinds
      raise UserError('%s failed: %s' % (failure, first_line(e))) from None


def convert(inference_model, hparams, quantize, calibration=None):
  """The model part (examples -> logits) as TFLite bytes, no metadata yet.
  calibration: the [n, frames, bands] examples int8 is calibrated on."""
  import tensorflow as tf
  frames = hparams.geometry.example_frames
  spec = tf.TensorSpec([None, frames, hparams.mel_bands], tf.float32,
                       name='examples')
  function = tf.function(lambda x: inference_model(x, training=False),
                         autograph=False).get_concrete_function(spec)
  module = frozen(function, spec, lambda results: {'logits': results[0]})
  return to_tflite(module, 'TFLite conversion (%s)' % quantize, quantize,
                   calibration)


# --- metadata ---------------------------------------------------------------

def record(model_name, hparams, class_names, quantize, checkpoint,
           statistics):
  """What the metadata entry holds: the run (as params.to_json), the class
  names, the quantization, the checkpoint it came from and the batch-norm
  statistics folded in."""
  run = json.loads(params.to_json(model_name, hparams))
  return dict(run, format=FORMAT, class_names=list(class_names),
              quantization=quantize, checkpoint=checkpoint,
              statistics=statistics, input='examples', output='logits')


def with_metadata(model, entry):
  """TFLite bytes with `entry` (a dict) as JSON in the metadata entry
  METADATA_NAME, which replaces one the model already has (read_metadata
  would read the first of two)."""
  from ai_edge_litert import schema_py_generated as schema
  from ai_edge_litert.tools import flatbuffer_utils
  tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(json.dumps(entry, sort_keys=True).encode(),
                              np.uint8)
  tree.buffers.append(buffer)
  metadata = schema.MetadataT()
  metadata.name = METADATA_NAME
  metadata.buffer = len(tree.buffers) - 1
  tree.metadata = [m for m in tree.metadata or []
                   if m.name != METADATA_NAME.encode()] + [metadata]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def read_metadata(path):
  """The metadata entry of a .tflite file; UserError naming the file if it
  is not a TFLite model or carries no entry of this project. Needs no
  TensorFlow: main.py checks the file before importing it."""
  from ai_edge_litert import schema_py_generated as schema
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise UserError('%s: cannot be read (%s)' % (path, e.strerror)) from None
  try:
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
      raise ValueError
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
      entry = model.Metadata(i)
      if entry.Name() == METADATA_NAME.encode():
        text = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
        return json.loads(text.decode())
  except Exception:  # any garbage: a flatbuffer is not validated on read
    raise UserError('%s: not a TFLite model' % path) from None
  raise UserError('%s: a TFLite model without the run it was exported from '
                  '(export the examples-in model with --mode export)' % path)


def run_of(entry, path):
  """(model name, {hparam: value}) of a metadata entry, as
  checkpoints.read_record gives a checkpoint's."""
  try:
    return params.from_json(json.dumps(entry))
  except (KeyError, TypeError, ValueError):
    raise UserError('%s: its metadata entry %s is damaged' % (
        path, METADATA_NAME)) from None


def mismatch(entry, class_names, quantize=None):
  """What in a metadata entry contradicts the run's class map or the
  quantization asked for (None: any), or None."""
  if entry.get('class_names') != list(class_names):
    return 'exported for another class map (%d classes: %s ...)' % (
        len(entry.get('class_names') or []),
        ', '.join((entry.get('class_names') or [])[:3]))
  if quantize and entry.get('quantization') != quantize:
    return 'its quantization is %s, not %s (--quantize)' % (
        entry.get('quantization'), quantize)
  return None


def run_mismatch(entry, model_name, recorded):
  """What contradicts between the model and hparams of a metadata entry and
  a checkpoint's record (model name, {hparam: value}), or None."""
  model, hparams = run_of(entry, '')
  if model != model_name:
    return 'exported from a --model %s run, not %s' % (model, model_name)
  for name in params.MODEL_DEFINING:
    if name in recorded and name in hparams and recorded[name] != hparams[
        name]:
      return 'exported with hparam %s=%s, not %s' % (name, hparams[name],
                                                     recorded[name])
  return None


# --- calibration ------------------------------------------------------------

def calibration_clips(csv_path, clip_dir, class_names):
  """The paths of the CSV's clips the pipeline can read; UserError if none
  can be (checked before any conversion)."""
  rows = files.read_labeled_csv(csv_path, clip_dir, class_names)
  paths = [os.path.join(clip_dir, fname) for fname, _ in rows]
  readable = [p for p in paths if files.inspect_clip(p)[0] is None]
  if not readable:
    raise UserError('%s: no readable clip in %s to calibrate on (%s)' % (
        csv_path, clip_dir, files.inspect_clip(paths[0])[0]))
  return readable


def calibration_examples(paths, hparams, count=CALIBRATION_EXAMPLES,
                         seed=CALIBRATION_SEED):
  """[<= count, frames, bands] examples: up to PER_CLIP from each clip, the
  clips and examples drawn with `seed`."""
  import inputs
  rng = np.random.default_rng(seed)
  chosen = []
  # Each clip gives one example or more: `count` clips are enough.
  order = [paths[i] for i in rng.permutation(len(paths))[:count]]
  for _, examples in inputs.clips_log_mel_examples(order, hparams):
    keep = rng.permutation(len(examples))[:min(PER_CLIP, count - len(chosen))]
    chosen.extend(examples[keep])
    if len(chosen) >= count:
      break
  chosen = np.stack(chosen)
  _refuse_silence(chosen, os.path.dirname(paths[0]), hparams)
  return chosen


def _refuse_silence(examples, folder, hparams):
  """UserError if the examples are digital silence: the log's floor
  everywhere, and padding (0). int8 ranges fitted to them clip every
  sound. The tolerance covers float32 rounding of the pipeline's log."""
  floor = np.log(hparams.mel_log_offset)
  if np.all(np.isclose(examples, floor, rtol=0, atol=1e-5) | (examples == 0)):
    raise UserError('%s: the calibration clips are digital silence (every '
                    'example holds only the log-mel floor, %.3g, and '
                    'padding); calibrate int8 on clips like those it will '
                    'score' % (folder, floor))
