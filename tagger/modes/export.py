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

An ensemble (--inference_checkpoint a,b,c) is exported as one SavedModel and
one model.tflite holding every member (waveform_model.WaveformModel of
several networks): scores averaged, embeddings side by side; no
examples-in model, which holds one network.

A waveform holding any NaN or infinite sample gets NaN for every output
(in the batch signature, that clip only): the model alone would turn its
NaN features into plausible scores.

Before it finishes, the export checks itself (export_checks.py), and a
failed check, an error or a stop request leaves nothing behind.
"""

import os
import re
import shutil
import stat
import tempfile

import tensorflow as tf

from tagger.core import stopping
from tagger.core.files import UserError
from tagger.engines import scoring
from tagger.engines import tflite_engine
from tagger.modes import export_checks

SAVED_MODEL = 'saved_model'
TFLITE = 'model.tflite'
CLASS_MAP = 'class_map.csv'
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
                                              name='waveform')],
               autograph=False)
  def serve(self, waveform):
    return {key: value[0]
            for key, value in self._run(waveform[None]).items()}

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32,
                                              name='waveforms')],
               autograph=False)
  def serve_batch(self, waveforms):
    return self._run(waveforms)

  @tf.function(input_signature=[], autograph=False)
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


def export(model_name, hparams, class_names, class_map_path, checkpoint_path,
           export_dir, quantize='none', calibration_paths=()):
  """Writes export_dir (see the module docstring), or nothing at all. A
  stop request (stopping.py) is acted on between the stages. quantize: the
  examples-in model written besides the float one (none, dynamic or int8,
  calibrated on calibration_paths)."""
  scorer = scoring.open_scorer(
      model_name, len(class_names), hparams, checkpoint_path,
      tflite_engine.Engine(calibration_paths=tuple(calibration_paths)), None,
      static=True)
  statistics = scorer.statistics
  stopping.check()
  # The examples-in models hold one network: an ensemble has none.
  entries = {kind: tflite_engine.record(model_name, hparams, class_names,
                                        kind, checkpoint_path, statistics)
             for kind in _kinds(quantize) if not scorer.members}
  report = _build_into(export_dir, lambda folder: _build(
      scorer, class_names, class_map_path, folder, entries))
  names = [SAVED_MODEL, TFLITE] + [tflite_engine.EXAMPLES_FILES[kind]
                                   for kind in entries]
  print('Exported %s (batch-norm statistics: %s) to %s' % (
      scorer.label, statistics, export_dir))
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
  examples_lines = []
  if entries:
    print('export: checking the examples-in models', flush=True)
    examples_lines = export_checks.check_examples_models(folder, scorer,
                                                         list(entries))
  stopping.check()
  with open(class_map_path, 'rb') as f:
    _write_file(os.path.join(folder, CLASS_MAP), f.read())
  tagger = Tagger(scorer.exported_model(), class_names,
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
    lines = export_checks.self_check(os.path.join(folder, SAVED_MODEL),
                                     os.path.join(folder, TFLITE), scorer,
                                     work)
  return lines + examples_lines


def _size(path):
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)
