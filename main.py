r"""Driver for the DCASE 2019 Task 2 baseline: train, eval, inference,
export, tag or relabel.

  python main.py --mode train --model mobilenet-v1 \
      --class_map_path class_map.csv --train_clip_dir train_curated \
      --train_csv_path train.csv --train_dir train_dir

Flags and files are checked before any work starts (and before TensorFlow is
imported); a problem is reported as one line naming the flag, file or value,
with exit status 1.
"""

import os
import re
import signal
import sys

from absl import app
from absl import logging
from absl import flags

from tagger.core import checkpoints
from tagger.core import files
from tagger.core import runtime
from tagger.core import stopping
from tagger.core.files import UserError
from tagger.modes import engine_flags
from tagger.modes import eval_mode
from tagger.modes import export_mode
from tagger.modes import inference_mode
from tagger.modes import mode as mode_lib
from tagger.modes import records
from tagger.modes import relabel_mode
from tagger.modes import tag_mode
from tagger.modes import train_mode
from tagger.training import distribution


_MODE_MODULES = (train_mode, eval_mode, inference_mode, export_mode, tag_mode,
                 relabel_mode)
MODES = {m.MODE.name: m.MODE for m in _MODE_MODULES}

flags.DEFINE_enum('mode', None, list(MODES),
                  'What to do: train a model, evaluate every checkpoint of a '
                  'training run, write predictions for a folder of clips, '
                  'export a checkpoint as a SavedModel and a TFLite model, '
                  'print the top classes of any audio files, or relabel a CSV '
                  'of clips with a checkpoint.')
# --help lists the flags of every mode.
for _module in (mode_lib, engine_flags) + _MODE_MODULES:
  flags.adopt_module_key_flags(_module)

FLAGS = flags.FLAGS


def _check_flags(mode):
  """The checks every mode shares, then the mode's own; returns the
  hparams of the flags (records.hparams_from_flags)."""
  _check_flags_are_the_modes(mode)
  if FLAGS.inference_checkpoint:
    # A checkpoint given by one of its files is taken as its prefix.
    FLAGS.inference_checkpoint = ','.join(checkpoints.members(
        FLAGS.inference_checkpoint))
  engine_flags.check(mode)
  for name in ('class_map_path',) + mode.required:
    if name == 'inference_checkpoint' and FLAGS.tflite_model:
      continue  # the model file replaces it
    if not getattr(FLAGS, name):
      raise UserError('--%s is required with --mode %s' % (name, mode.name))
  hparams = records.hparams_from_flags(mode)
  mode.check(hparams)
  for flag in mode.output_dirs:
    path = getattr(FLAGS, flag)
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError('--%s: %s exists and is not a folder' % (flag, path))
  if FLAGS.inference_checkpoint and mode.from_checkpoint:
    for prefix in checkpoints.members(FLAGS.inference_checkpoint):
      checkpoints.require(prefix, '--inference_checkpoint')
  if FLAGS.tflite_model:
    engine_flags.check_model_file(FLAGS.tflite_model)
  for flag in mode.output_files:
    if getattr(FLAGS, flag):
      files.check_writable(getattr(FLAGS, flag), '--' + flag)
  return hparams


def _check_flags_are_the_modes(mode):
  """A flag that another mode declares, or a shared folder or checkpoint
  this mode does not read, is refused: it would be ignored."""
  for module in _MODE_MODULES:
    for flag in FLAGS.get_flags_for_module(module):
      if flag.present and module.MODE is not mode:
        raise UserError('--%s is for --mode %s, not --mode %s' % (
            flag.name, module.MODE.name, mode.name))
  for name in ('train_dir', 'inference_checkpoint'):
    if FLAGS[name].present and name not in mode.required + mode.inputs:
      users = [m.name for m in MODES.values()
               if name in m.required + m.inputs]
      raise UserError('--%s is for --mode %s and %s, not --mode %s' % (
          name, ', '.join(users[:-1]), users[-1], mode.name))


def run():
  if FLAGS.mode is None:
    raise UserError('--mode is required (%s or %s)' % (
        ', '.join(list(MODES)[:-1]), list(MODES)[-1]))
  mode = MODES[FLAGS.mode]
  hparams = _check_flags(mode)
  data, read_paths = mode.list_inputs(files.read_class_map(
      FLAGS.class_map_path))
  mode_lib.check_outputs(mode, read_paths + [
      p for s in data.sources or () for p in (s.csv_path, s.clip_dir)])
  if mode.scans_clips:
    notes = []
    data.sample_counts = files.check_clips(read_paths, notes)
    if notes:
      print('main.py: %s' % files.note_line(notes), file=sys.stderr)
  data.engine = engine_flags.engine(data.class_names)
  mode_lib.make_output_dirs(mode)
  tf = runtime.import_tensorflow()
  logging.set_verbosity(logging.WARNING)  # e.g. per-save saver notices
  mode.start(data)
  resolved = records.resolve(mode, hparams)
  try:
    mode.run(resolved, data)
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
