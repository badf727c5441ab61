"""--mode export: a checkpoint as a SavedModel and a TFLite model that take a
waveform, for use outside this project.

export_dir/
  saved_model/   signatures:
                   serving_default  waveform [samples] ->
                       scores [examples, classes], clip_scores [classes],
                       embeddings [examples, D], log_mel [frames, bands]
                   batch            waveforms [clips, samples] -> the same
                                    with a leading clips axis
                   class_names      () -> class_names [classes]
                 and the asset class_map.csv
  model.tflite   serving_default, TFLite's built-in ops only
  examples_float32.tflite   the model part alone, for --engine tflite:
                 examples [batch, frames, bands] -> logits [batch, classes]
  examples_dynamic.tflite or examples_int8.tflite   the same quantized
                 (--quantize dynamic or int8)
  class_map.csv

The waveform is mono, 44.1 kHz, float32 in [-1, 1], of any length (a clip
shorter than one STFT window yields one example, as everywhere). The model
is scoring.Scorer's: batch norm folded with the statistics scoring uses
(precise ones by default). D is 1024 for MobileNet (the pooled features) and
32 for the CRNN (the GRU's output). log_mel holds what the examples are made
of: the log mel, or the mel energies with frontend=pcen.

Both files run a loop over the chunks the scoring pipeline cuts a clip into
(features.chunk_bounds: 16 examples, ~8.5 s, each), so the examples are the
whole clip's while only one chunk's activations are in memory: serving a
10-minute waveform with MobileNet peaks 0.1 GB (SavedModel) and 0.45 GB
(TFLite, which copies the waveform into its loop) above a 10 s one, where
one batch of every example took 5.9 GB and 5.8 GB more.

A waveform holding any NaN or infinite sample gets NaN for every output
(in the batch signature, that clip only): the model alone would turn its
NaN features into plausible scores.

Before it finishes, the export checks itself: a real-shaped clip
(check_waveform) scores as --mode inference scores it, within
SAVED_MODEL_TOLERANCE (1e-5) and TFLITE_TOLERANCE (5e-4); silence, noise, a
sine and a blip give finite outputs and a NaN or inf sample NaN ones. A
failed check, an error or a stop request leaves nothing behind. The TFLite
bound, for both front ends: its FFT differs from TensorFlow's most in quiet
bins beside loud ones, so clips with quiet passages differ most. On 72
real-shaped clips of 3-12 s (noise floors of -60 dB, -80 dB and digital
silence; 2-core x86-64, no GPU), MobileNets trained 150 steps scored within
8.6e-5 (log mel) and 7.0e-5 (PCEN) of --mode inference, the SavedModel
within 3e-7; 1.3e-4 has been seen with PCEN on a recorded clip.

The examples-in models (tflite_engine.py) are checked too: the float32 one
gives the Keras model's example scores within EXAMPLES_TOLERANCE (the same
arithmetic, no FFT), and a quantized one the float one's example scores
within QUANTIZED_TOLERANCE on QUANTIZED_CHECK_CLIPS real-shaped clips (and a
few calibration clips); the report gives the largest example and clip score
differences and on how many clips the top class agrees. The same check
(check_quantized) holds a model --engine tflite quantizes in memory. See
docs/fast-cpu-scoring.md for the bound's measurements.
"""

import os
import re
import shutil
import stat
import tempfile
import time

import numpy as np
import tensorflow as tf

from tagger.sound import audio
from tagger.sound import features
from tagger.core import files
from tagger.engines import scoring
from tagger.core import stopping
from tagger.sound import synthetic
from tagger.engines import tflite_engine
from tagger.sound import wav
from tagger.core.files import UserError

SAVED_MODEL = 'saved_model'
TFLITE = 'model.tflite'
CLASS_MAP = 'class_map.csv'
SAVED_MODEL_TOLERANCE = 1e-5
# For both front ends; the measurements are in the module docstring.
TFLITE_TOLERANCE = 5e-4
EXAMPLES_TOLERANCE = 1e-4
# On example scores: a quantized model's largest difference from the float
# one over the check clips. Measured (see docs/fast-cpu-scoring.md): int8
# 0.06 to 0.22, dynamic 0.01 to 0.04 (0.18 and 0.06 on 150 recorded test
# clips); int8 calibrated on silence 0.86 to 0.88, or on clips without
# quiet passages 0.53 to 0.72.
QUANTIZED_TOLERANCE = 0.6
QUANTIZED_CHECK_CLIPS = 8  # check_waveform seeds 0 .. 7
CALIBRATION_CHECK_CLIPS = 4


class Tagger(tf.Module):
  """The exported signatures: a thin wrapper of the waveform model that
  every mode scores with (waveform_model.py), and the class names."""

  def __init__(self, model, class_names, class_map_path):
    super().__init__()
    self.model = model
    self.class_map = tf.saved_model.Asset(class_map_path)
    self._class_names = tf.constant(class_names)

  def _run(self, waveforms):
    return self.model(waveforms)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32,
                                              name='waveform')])
  def serve(self, waveform):
    return {key: value[0]
            for key, value in self._run(waveform[None]).items()}

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32,
                                              name='waveforms')])
  def serve_batch(self, waveforms):
    return self._run(waveforms)

  @tf.function(input_signature=[])
  def class_names(self):
    return {'class_names': self._class_names}


def write_tflite(tagger, path):
  """model.tflite of serving_default, built-in ops only."""
  function = tagger.serve.get_concrete_function()
  module = tflite_engine.frozen(
      function, tf.TensorSpec([None], tf.float32, name='waveform'),
      lambda results: tf.nest.pack_sequence_as(function.structured_outputs,
                                               results))
  _write_file(path, tflite_engine.to_tflite(module,
                                            'export: TFLite conversion'))


def tflite_ops(path):
  """The names of the ops of a TFLite model, in all its subgraphs (the
  loop's body is one): builtin names, or a custom op's own (Flex...)."""
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils
  names = {code: name for name, code in vars(schema.BuiltinOperator).items()
           if not name.startswith('_')}
  ops = set()
  for code in flatbuffer_utils.read_model(path).operatorCodes:
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    custom = builtin == schema.BuiltinOperator.CUSTOM
    ops.add(code.customCode.decode() if custom else names[builtin])
  return sorted(ops)


def tflite_runner(path):
  """A callable waveform -> outputs of the TFLite model, run by LiteRT."""
  runner = tflite_engine.interpreter(path).get_signature_runner(
      'serving_default')
  runner(waveform=np.zeros(1, np.float32))
  return runner


def check_waveform(seconds=7.3, seed=2019, floor_db=-80, lead_seconds=0.25):
  """A waveform with the dynamics of recorded sound, 16-bit: digital
  silence at the start, then a noise floor (floor_db) and events
  (synthetic.py's sounds) with sharp onsets and decays, their peaks spread
  evenly over 40 dB, quiet passages between them. Quiet bins beside loud
  ones are where TFLite's FFT and TensorFlow's differ most."""
  rng = np.random.default_rng(seed)
  rate = wav.SAMPLE_RATE
  signal = 10 ** (floor_db / 20) * rng.standard_normal(int(seconds * rate))
  signal[:int(lead_seconds * rate)] = 0
  kinds = sorted(set(synthetic.SOUNDS.values()))
  starts = lead_seconds + np.cumsum(rng.uniform(0.1, 1.4, int(seconds)))
  starts = starts[starts < seconds - 0.2]
  for start, level in zip(starts, rng.permutation(
      np.linspace(-40, 0, len(starts)))):
    length = min(rng.uniform(0.2, 1.0), seconds - start)
    event = synthetic.synth(kinds[rng.integers(len(kinds))], length, rng)
    t = np.arange(len(event)) / rate
    envelope = np.minimum(t / 0.005, 1) * np.exp(-t / rng.uniform(0.1, 0.5))
    first = int(start * rate)
    signal[first:first + len(event)] += 0.9 * 10 ** (level / 20) * (
        event * envelope / max(np.abs(event).max(), 1e-9))
  pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype('<i2')
  return pcm.astype(np.float32) / 32768.0


def _write_wav(path, samples):
  audio.write_pcm16(path, np.round(samples * 32768).astype(np.int16))


def self_check(saved_model_dir, tflite_path, scorer, work_dir):
  """Raises UserError unless silence, noise and a sine give finite scores,
  a non-finite sample gives NaN, and a real-shaped clip scores as the CLI
  scores it. Returns the report lines. A stop request is acted on between
  the steps."""
  serve = tf.saved_model.load(saved_model_dir).signatures['serving_default']
  flex = [op for op in tflite_ops(tflite_path)
          if op.startswith('Flex') or op == 'CUSTOM']
  if flex:
    raise UserError('export: the TFLite model needs non-built-in ops: %s' %
                    ', '.join(flex))
  run_tflite = tflite_runner(tflite_path)
  runs = (('SavedModel', lambda w: serve(waveform=tf.constant(w))),
          ('TFLite', lambda w: run_tflite(waveform=w)))
  lines = _check_clip(runs, scorer, work_dir)
  _check_probes(runs)
  return lines + _speed(runs, scorer.hparams)


def _check_clip(runs, scorer, work_dir):
  """Both score check_waveform() as --mode inference does, within their
  tolerances; returns the report lines."""
  samples = check_waveform()
  path = os.path.join(work_dir, 'check.wav')
  _write_wav(path, samples)
  expected = scorer.score([path], files.check_clips([path]),
                          label='export check')[0]
  lines = []
  for (kind, run), tolerance in zip(runs, (SAVED_MODEL_TOLERANCE,
                                           TFLITE_TOLERANCE)):
    stopping.check()
    got = np.asarray(run(samples)['clip_scores'], np.float64)
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
      raise UserError('export: the %s scores a clip %.2g away from --mode '
                      'inference (allowed %g)' % (kind, difference,
                                                  tolerance))
    lines.append('%s: scores of a %.1f s clip within %.1g of --mode '
                 'inference' % (kind, len(samples) / wav.SAMPLE_RATE,
                                difference))
  return lines


def _check_probes(runs):
  """Silence, noise, a sine and a blip give finite outputs; a NaN or an inf
  sample gives NaN outputs."""
  rate = wav.SAMPLE_RATE
  t = np.arange(2 * rate) / rate
  probes = {
      'silence': np.zeros(rate, np.float32),
      'white noise': np.random.default_rng(0).uniform(
          -1, 1, 2 * rate).astype(np.float32),
      'a 440 Hz sine': (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
      'a 10 ms blip': np.full(441, 0.5, np.float32),
  }
  for bad in (np.nan, np.inf):
    waveform = probes['a 440 Hz sine'].copy()
    waveform[rate] = bad
    probes['a %s sample' % bad] = waveform
  for name, waveform in probes.items():
    want = np.isnan if name.endswith(' sample') else np.isfinite
    for kind, run in runs:
      stopping.check()
      for key, value in run(waveform).items():
        if not np.all(want(np.asarray(value))):
          raise UserError('export: %s gives %s %s for %s' % (
              kind, 'non-NaN' if want is np.isnan else 'non-finite', key,
              name))


def _speed(runs, hparams):
  """Examples/s of each on a 30 s waveform, on this machine."""
  waveform = np.random.default_rng(1).uniform(
      -0.3, 0.3, 30 * wav.SAMPLE_RATE).astype(np.float32)
  examples = features.num_examples(len(waveform), hparams)
  lines = []
  for kind, run in runs:
    stopping.check()
    run(waveform)
    start = time.perf_counter()
    run(waveform)
    lines.append('%s: %.0f examples/s (30 s of audio, %d examples)' % (
        kind, examples / (time.perf_counter() - start), examples))
  return lines


def export(model_name, hparams, class_names, class_map_path, checkpoint_path,
           export_dir, quantize='none', calibration_paths=()):
  """Writes export_dir (see the module docstring), or nothing at all. A
  stop request (stopping.py) is acted on between the stages. quantize: the
  examples-in model written besides the float one (none, dynamic or int8,
  calibrated on calibration_paths)."""
  scorer = scoring.Scorer(model_name, len(class_names), hparams, static=True,
                          engine=tflite_engine.Engine(
                              calibration_paths=tuple(calibration_paths)))
  statistics = scorer.load(checkpoint_path)
  stopping.check()
  entries = {kind: tflite_engine.record(model_name, hparams, class_names,
                                        kind, checkpoint_path, statistics)
             for kind in _kinds(quantize)}
  report = _build_into(export_dir, lambda folder: _build(
      scorer, class_names, class_map_path, folder, entries))
  names = [SAVED_MODEL, TFLITE] + [tflite_engine.EXAMPLES_FILES[kind]
                                   for kind in entries]
  print('Exported %s (batch-norm statistics: %s) to %s' % (
      checkpoint_path, statistics, export_dir))
  print('  ' + '; '.join('%s%s: %.1f MB' % (
      name, '/' if name == SAVED_MODEL else '',
      _size(os.path.join(export_dir, name)) / 1e6) for name in names))
  for line in report:
    print('  ' + line)


def _build_into(export_dir, build):
  """build(folder) -> report, run on a new folder that becomes export_dir
  once it is complete: export_dir ends whole or as it was, and no temporary
  folder remains. An OSError or TensorFlow error about a file of the export
  names --export_dir, not the temporary paths it is written through."""
  parent = os.path.dirname(os.path.abspath(export_dir))
  building = links = work = None
  try:
    os.makedirs(parent, exist_ok=True)
    building = tempfile.mkdtemp(dir=parent, prefix='.export-')
    # TensorFlow reads a SavedModel's variables path as a glob pattern
    # (`run[1]/` would match nothing): everything goes through a link whose
    # path holds no pattern characters.
    links = tempfile.mkdtemp(prefix='export-link-')
    work = os.path.join(links, 'export')
    os.symlink(building, work)
    report = build(work)
    _move_into_place(building, export_dir)
    return report
  except BaseException as e:
    if building:
      shutil.rmtree(building, ignore_errors=True)
    named = _writing_error(e, [p for p in (work, building, export_dir) if p],
                           export_dir)
    if named:
      raise named from None
    raise
  finally:
    if links:
      shutil.rmtree(links, ignore_errors=True)


def _move_into_place(building, export_dir):
  """Renames the built folder to export_dir, over the empty folder the run
  was checked to find there or over one made now, with that folder's mode:
  mkdtemp made the build 0o700; a new folder has 0o777 less the umask, as
  mkdir makes it, and an existing one keeps its own."""
  made = not os.path.isdir(export_dir)
  if made:
    os.mkdir(export_dir)
  try:
    os.chmod(building, stat.S_IMODE(os.stat(export_dir).st_mode))
    os.rename(building, export_dir)  # replaces an empty folder atomically
  except BaseException:
    if made:
      os.rmdir(export_dir)
    raise


def _writing_error(error, folders, export_dir):
  """A UserError naming --export_dir for an OSError or a TensorFlow error
  about a path in `folders` (where the export is written, through paths
  that mean nothing to the user), else None."""
  if isinstance(error, OSError):
    path, reason = error.filename, error.strerror or str(error)
  elif isinstance(error, tf.errors.OpError):
    # TensorFlow's file errors read `{{node...}} path; reason [Op:...]`.
    found = re.search(r'(\S+); ([^\[\n]*)', error.message)
    path, reason = found.groups() if found else (None, None)
  else:
    return None
  for folder in folders:
    if path and (path == folder or path.startswith(folder + os.sep)):
      inside = os.path.relpath(path, folder).split(os.sep)[0]
      return UserError('--export_dir: cannot write %s (%s); nothing written'
                       % (os.path.normpath(os.path.join(export_dir, inside)),
                          reason.strip()))
  return None


def _write_file(path, data):
  """Writes bytes to path; an OSError names it (a failed write does not)."""
  try:
    with open(path, 'wb') as f:
      f.write(data)
  except OSError as e:
    raise OSError(e.errno, e.strerror or str(e), path) from None


def _kinds(quantize):
  """The examples-in models to write: the float one, and a quantized one."""
  return ('none',) + ((quantize,) if quantize != 'none' else ())


def _build(scorer, class_names, class_map_path, folder, entries):
  """Writes the export into `folder`, checked; returns the check's report.
  entries: {quantization: metadata entry} of the examples-in models."""
  # The examples-in models first: a quantized one that fails its check
  # fails the export before the long stages.
  for kind, entry in entries.items():
    stopping.check()
    print('export: converting the model part to TFLite (%s)' % kind,
          flush=True)
    _write_file(os.path.join(folder, tflite_engine.EXAMPLES_FILES[kind]),
                tflite_engine.with_metadata(scorer.convert(kind), entry))
  print('export: checking the examples-in models', flush=True)
  examples_lines = check_examples_models(folder, scorer, list(entries))
  stopping.check()
  with open(class_map_path, 'rb') as f:
    _write_file(os.path.join(folder, CLASS_MAP), f.read())
  tagger = Tagger(scorer.waveform_model, class_names,
                  os.path.join(folder, CLASS_MAP))
  print('export: writing the SavedModel', flush=True)
  tf.saved_model.save(tagger, os.path.join(folder, SAVED_MODEL),
                      signatures={'serving_default': tagger.serve,
                                  'batch': tagger.serve_batch,
                                  'class_names': tagger.class_names})
  stopping.check()
  print('export: converting it to TFLite', flush=True)
  write_tflite(tagger, os.path.join(folder, TFLITE))
  stopping.check()
  print('export: checking both', flush=True)
  with tempfile.TemporaryDirectory() as work:
    lines = self_check(os.path.join(folder, SAVED_MODEL),
                       os.path.join(folder, TFLITE), scorer, work)
  return lines + examples_lines


def check_examples_models(folder, scorer, kinds):
  """The float examples-in model gives the Keras model's example scores; a
  quantized one the float one's within QUANTIZED_TOLERANCE.
  Returns the report lines."""
  files_ = tflite_engine.EXAMPLES_FILES
  runners = {kind: tflite_engine.Runner(os.path.join(folder, files_[kind]))
             for kind in kinds}
  clips = quantization_check_clips(scorer)
  stopping.check()
  examples = clips[0][1]
  difference = float(np.abs(runners['none'](examples) -
                            scorer.score_examples(examples)).max())
  if not difference <= EXAMPLES_TOLERANCE:
    raise UserError('export: %s scores examples %.2g away from the Keras '
                    'model (allowed %g)' % (files_['none'], difference,
                                            EXAMPLES_TOLERANCE))
  lines = ['%s: example scores within %.1g of the Keras model' % (
      files_['none'], difference)]
  for kind in kinds[1:]:
    lines.append(check_quantized(files_[kind], runners[kind],
                                 runners['none'], clips))
  return lines


def quantization_check_clips(scorer):
  """[(name, examples)]: real-shaped clips (check_waveform, several seeds)
  and the first few calibration clips."""
  clips = [('check_waveform(seed=%d)' % seed, features.waveform_to_examples(
      tf.constant(check_waveform(seed=seed)), scorer.hparams).numpy())
           for seed in range(QUANTIZED_CHECK_CLIPS)]
  import inputs
  for path in scorer.engine.calibration_paths[:CALIBRATION_CHECK_CLIPS]:
    folder, name = os.path.split(path)
    clips.append((path, inputs.clip_to_log_mel_examples(
        name, folder, scorer.hparams).numpy()))
  return clips


def quantized_differences(quantized, reference, clips):
  """(largest example-score difference, largest clip-score difference,
  clips whose top class agrees) of two examples-in runners."""
  example, clip, agree = 0.0, 0.0, 0
  for _, examples in clips:
    stopping.check()
    got, want = quantized(examples), reference(examples)
    example = max(example, float(np.abs(got - want).max()))
    got, want = got.mean(axis=0), want.mean(axis=0)
    clip = max(clip, float(np.abs(got - want).max()))
    agree += int(np.argmax(got) == np.argmax(want))
  return example, clip, agree


def check_quantized(name, quantized, reference, clips, lead='export: ',
                    after='nothing written'):
  """The bound every quantized model is held to, exported or converted in
  memory: its example scores (quantized: examples -> scores) within
  QUANTIZED_TOLERANCE of the float model's (reference) on the check clips
  (quantization_check_clips). Returns the report line; a refusal is a
  UserError: lead, name, the figures, then `after`."""
  example, clip, agree = quantized_differences(quantized, reference, clips)
  if not example <= QUANTIZED_TOLERANCE:
    raise UserError('%s%s scores an example %.2g away from the float model '
                    '(allowed %g; clip scores up to %.2g away, top class the '
                    'same on %d of %d clips); %s' % (
                        lead, name, example, QUANTIZED_TOLERANCE, clip,
                        agree, len(clips), after))
  return ('%s: example scores within %.2g, clip scores within %.2g of the '
          'float model on %d clips, the same top class on %d' % (
              name, example, clip, len(clips), agree))


def _size(path):
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)
