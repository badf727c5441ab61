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
  class_map.csv

The waveform is mono, 44.1 kHz, float32 in [-1, 1], of any length (a clip
shorter than one STFT window yields one example, as everywhere). The model
is scoring.Scorer's: batch norm folded with the statistics scoring uses
(precise ones by default). D is 1024 for MobileNet (the pooled features) and
32 for the CRNN (the GRU's output).

Before it finishes, the export checks itself: silence, white noise and a
sine give finite scores, and both files score a clip shaped like recorded
sound (check_waveform) as the CLI does (SavedModel within 1e-5, TFLite
within 5e-4, see TFLITE_TOLERANCE). A failed check leaves nothing behind.
"""

import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

import features
import files
import make_demo_data
import runtime
import scoring
import wav
from files import UserError

SAVED_MODEL = 'saved_model'
TFLITE = 'model.tflite'
CLASS_MAP = 'class_map.csv'
SAVED_MODEL_TOLERANCE = 1e-5
# For both front ends: TFLite's FFT differs from TensorFlow's most in quiet
# bins beside loud ones. On 72 real-shaped clips (check_waveform with noise
# floors of -60 dB, -80 dB and digital silence), MobileNets trained 150 steps
# scored within 8.6e-5 (log mel) and 7.0e-5 (PCEN) of --mode inference;
# 1.3e-4 has been seen with PCEN on a recorded clip.
TFLITE_TOLERANCE = 5e-4


class Tagger(tf.Module):
  """The exported computation: waveform -> features -> folded model."""

  def __init__(self, inference_model, hparams, class_names, class_map_path):
    super().__init__()
    self.hparams = hparams
    # The scoring model with its pooled features as a second output.
    self.net = keras.Model(inference_model.input, [
        inference_model.get_layer('logits').input, inference_model.output])
    self.class_map = tf.saved_model.Asset(class_map_path)
    self._class_names = tf.constant(class_names)

  def _outputs(self, examples):
    embeddings, logits = self.net(examples, training=False)
    return embeddings, tf.sigmoid(logits)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32,
                                              name='waveform')])
  def serve(self, waveform):
    log_mel = features.waveform_to_features(waveform, self.hparams)
    examples = features.log_mel_to_examples(log_mel, self.hparams)
    embeddings, scores = self._outputs(examples)
    return {'scores': scores, 'clip_scores': tf.reduce_mean(scores, axis=0),
            'embeddings': embeddings, 'log_mel': log_mel}

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32,
                                              name='waveforms')])
  def serve_batch(self, waveforms):
    log_mel = features.waveform_to_features(waveforms, self.hparams)
    examples = features.log_mel_to_examples(log_mel, self.hparams)
    shape = tf.shape(examples)  # [clips, examples, frames, bands]
    embeddings, scores = self._outputs(
        tf.reshape(examples, tf.concat([[-1], shape[2:]], 0)))
    scores = tf.reshape(scores, [shape[0], shape[1], -1])
    embeddings = tf.reshape(embeddings, [shape[0], shape[1], -1])
    return {'scores': scores, 'clip_scores': tf.reduce_mean(scores, axis=1),
            'embeddings': embeddings, 'log_mel': log_mel}

  @tf.function(input_signature=[])
  def class_names(self):
    return {'class_names': self._class_names}


class _Frozen(tf.Module):
  """serving_default with the weights as constants: TFLite's converter
  keeps Keras 3 variables as resource variables, which its interpreter then
  reads uninitialised."""

  def __init__(self, tagger):
    super().__init__()
    function = tagger.serve.get_concrete_function()
    self._structure = function.structured_outputs
    self._frozen = convert_to_constants.convert_variables_to_constants_v2(
        function)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32,
                                              name='waveform')])
  def serve(self, waveform):
    return tf.nest.pack_sequence_as(self._structure,
                                    self._frozen(waveform))


def write_tflite(tagger, path):
  """model.tflite of serving_default, built-in ops only."""
  frozen = _Frozen(tagger)
  with tempfile.TemporaryDirectory() as tmp:
    tf.saved_model.save(frozen, tmp,
                        signatures={'serving_default': frozen.serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
      model = converter.convert()
    except Exception as e:  # the converter raises several kinds
      raise UserError('export: TFLite conversion failed: %s' % (
          str(e).strip().splitlines() or [type(e).__name__])[0]) from None
  with open(path, 'wb') as f:
    f.write(model)


def tflite_runner(path):
  """A callable waveform -> outputs of the TFLite model, and its op names."""
  with runtime.quiet_stderr():  # a deprecation notice, a delegate notice
    interpreter = tf.lite.Interpreter(model_path=path)
    ops = sorted({op['op_name'] for op in interpreter._get_ops_details()})
    runner = interpreter.get_signature_runner('serving_default')
    runner(waveform=np.zeros(1, np.float32))
  return runner, ops


def check_waveform(seconds=7.3, seed=2019, floor_db=-80, lead_seconds=0.25):
  """A waveform with the dynamics of recorded sound, 16-bit: digital
  silence at the start, then a noise floor (floor_db) and events
  (make_demo_data's sounds) with sharp onsets and decays, their peaks spread
  evenly over 40 dB, quiet passages between them. Quiet bins beside loud
  ones are where TFLite's FFT and TensorFlow's differ most."""
  rng = np.random.default_rng(seed)
  rate = wav.SAMPLE_RATE
  signal = 10 ** (floor_db / 20) * rng.standard_normal(int(seconds * rate))
  signal[:int(lead_seconds * rate)] = 0
  kinds = sorted(set(make_demo_data.SOUNDS.values()))
  starts = lead_seconds + np.cumsum(rng.uniform(0.1, 1.4, int(seconds)))
  starts = starts[starts < seconds - 0.2]
  for start, level in zip(starts, rng.permutation(
      np.linspace(-40, 0, len(starts)))):
    length = min(rng.uniform(0.2, 1.0), seconds - start)
    event = make_demo_data.synth(kinds[rng.integers(len(kinds))], length, rng)
    t = np.arange(len(event)) / rate
    envelope = np.minimum(t / 0.005, 1) * np.exp(-t / rng.uniform(0.1, 0.5))
    first = int(start * rate)
    signal[first:first + len(event)] += 0.9 * 10 ** (level / 20) * (
        event * envelope / max(np.abs(event).max(), 1e-9))
  pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype('<i2')
  return pcm.astype(np.float32) / 32768.0


def _write_wav(path, samples):
  import wave
  with wave.open(path, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(wav.SAMPLE_RATE)
    w.writeframes(np.round(samples * 32768).astype('<i2').tobytes())


def self_check(saved_model_dir, tflite_path, scorer, work_dir):
  """Raises UserError unless silence, noise and a sine give finite scores
  and a real-shaped clip scores as the CLI scores it. Returns the report
  lines."""
  loaded = tf.saved_model.load(saved_model_dir)
  serve = loaded.signatures['serving_default']
  run_tflite, ops = tflite_runner(tflite_path)
  flex = [op for op in ops if op.startswith('Flex') or op == 'CUSTOM']
  if flex:
    raise UserError('export: the TFLite model needs non-built-in ops: %s' %
                    ', '.join(flex))
  rate = wav.SAMPLE_RATE
  t = np.arange(2 * rate) / rate
  probes = {
      'silence': np.zeros(rate, np.float32),
      'white noise': np.random.default_rng(0).uniform(
          -1, 1, 2 * rate).astype(np.float32),
      'a 440 Hz sine': (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
      'a 10 ms blip': np.full(441, 0.5, np.float32),
  }
  for name, waveform in probes.items():
    for kind, outputs in (('SavedModel', serve(waveform=tf.constant(
        waveform))), ('TFLite', run_tflite(waveform=waveform))):
      for key, value in outputs.items():
        if not np.all(np.isfinite(np.asarray(value))):
          raise UserError('export: %s gives non-finite %s for %s' % (
              kind, key, name))
  samples = check_waveform()
  path = os.path.join(work_dir, 'check.wav')
  _write_wav(path, samples)
  expected = scorer.score([path], files.check_wavs([path]),
                          label='export check')[0]
  lines = []
  for kind, outputs, tolerance in (
      ('SavedModel', serve(waveform=tf.constant(samples)),
       SAVED_MODEL_TOLERANCE),
      ('TFLite', run_tflite(waveform=samples), TFLITE_TOLERANCE)):
    got = np.asarray(outputs['clip_scores'], np.float64)
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
      raise UserError('export: the %s scores a clip %.2g away from --mode '
                      'inference (allowed %g)' % (kind, difference,
                                                  tolerance))
    lines.append('%s: scores of a %.1f s clip within %.1g of --mode '
                 'inference' % (kind, len(samples) / rate, difference))
  # Speed on this machine, a 30 s waveform.
  waveform = np.random.default_rng(1).uniform(-0.3, 0.3, 30 * rate).astype(
      np.float32)
  examples = features.num_examples(len(waveform), scorer.hparams)
  for kind, run in (('SavedModel', lambda: serve(waveform=tf.constant(
      waveform))), ('TFLite', lambda: run_tflite(waveform=waveform))):
    run()
    start = time.perf_counter()
    run()
    lines.append('%s: %.0f examples/s (30 s of audio, %d examples)' % (
        kind, examples / (time.perf_counter() - start), examples))
  return lines


def export(model_name, hparams, class_names, class_map_path, checkpoint_path,
           export_dir):
  """Writes export_dir (see the module docstring), or nothing at all."""
  scorer = scoring.Scorer(model_name, len(class_names), hparams, static=True)
  statistics = scorer.load(checkpoint_path)
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  building = tempfile.mkdtemp(dir=parent, prefix='.export-')
  links = tempfile.mkdtemp(prefix='export-link-')
  try:
    # TensorFlow reads a SavedModel's variables path as a glob pattern
    # (`run[1]/` would match nothing): everything goes through a link whose
    # path holds no pattern characters.
    work = os.path.join(links, 'export')
    os.symlink(building, work)
    report = _build(scorer, class_names, class_map_path, work)
    if os.path.isdir(export_dir):
      os.rmdir(export_dir)  # checked empty before the run
    os.rename(building, export_dir)
  except BaseException:
    shutil.rmtree(building, ignore_errors=True)
    raise
  finally:
    shutil.rmtree(links, ignore_errors=True)
  sizes = {name: _size(os.path.join(export_dir, name))
           for name in (SAVED_MODEL, TFLITE)}
  print('Exported %s (batch-norm statistics: %s) to %s' % (
      checkpoint_path, statistics, export_dir))
  print('  saved_model/: %.1f MB; model.tflite: %.1f MB' % (
      sizes[SAVED_MODEL] / 1e6, sizes[TFLITE] / 1e6))
  for line in report:
    print('  ' + line)


def _build(scorer, class_names, class_map_path, folder):
  """Writes the export into `folder`, checked; returns the check's report."""
  shutil.copyfile(class_map_path, os.path.join(folder, CLASS_MAP))
  tagger = Tagger(scorer.inference_model, scorer.hparams, class_names,
                  os.path.join(folder, CLASS_MAP))
  tf.saved_model.save(tagger, os.path.join(folder, SAVED_MODEL),
                      signatures={'serving_default': tagger.serve,
                                  'batch': tagger.serve_batch,
                                  'class_names': tagger.class_names})
  write_tflite(tagger, os.path.join(folder, TFLITE))
  with tempfile.TemporaryDirectory() as work:
    return self_check(os.path.join(folder, SAVED_MODEL),
                      os.path.join(folder, TFLITE), scorer, work)


def _size(path):
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)
