"""The checks an export must pass before it is kept (export.py), and the
bound every quantized model is held to.

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
import time

import numpy as np
import tensorflow as tf

from tagger.core import files
from tagger.core import stopping
from tagger.core.files import UserError
from tagger.engines import tflite_engine
from tagger.sound import audio
from tagger.sound import features
from tagger.sound import synthetic
from tagger.sound import wav

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
  return clips + list(inputs.clips_log_mel_examples(
      scorer.engine.calibration_paths[:CALIBRATION_CHECK_CLIPS],
      scorer.hparams))


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
