"""--engine tflite: the model part as a TFLite model run by LiteRT scores as
the Keras model does (float32 within 1e-4; int8 within
export_checks.QUANTIZED_TOLERANCE with the same top class), each engine flag
reaches the interpreter, bad model files and flags are one line, and an
int8 export calibrated on silence, or beyond the self-check's bound, is
refused with nothing written."""

import json
import os
import re
import shutil
import signal

import numpy as np
import pytest

from tagger.engines import tflite_engine
from conftest import (CLASS_MAP, HPARAMS, TAG_HPARAMS, calibration_args,
                      check_ok, export_args, labeled_rows, main_in_process,
                      read_class_names, read_csv_rows, run_main,
                      scorer_scores, write_check_clip, write_pcm_wav)
from support.cli import assert_one_error, inference_with_model


def _check_clips(folder, count=3):
  """WAV files of export_checks.check_waveform (recorded-sound dynamics), several
  seeds and lengths."""
  os.makedirs(str(folder), exist_ok=True)
  paths = []
  for seed in range(count):
    paths.append(os.path.join(str(folder), 'check%d.wav' % seed))
    write_check_clip(paths[-1], 3.0 + 2 * seed, seed)
  return paths


def test_float_engine_matches_keras(mobilenet_train, mobilenet_export,
                                    parse_hparams, tmp_path):
  """Through the whole pipeline, the float32 TFLite model (converted in
  memory, and the export's examples_float32.tflite) scores real-shaped
  clips within 1e-4 of the Keras model."""
  hparams = parse_hparams(HPARAMS)
  paths = _check_clips(tmp_path)
  run = lambda engine=None: scorer_scores(
      'mobilenet-v1', hparams, mobilenet_train['checkpoint'], paths, engine)
  keras = run()
  assert np.ptp(keras, axis=0).max() > 1e-4  # the clips are told apart
  exported = os.path.join(mobilenet_export['dir'], 'examples_float32.tflite')
  for engine in (tflite_engine.Engine('tflite'),
                 tflite_engine.Engine('tflite', model_path=exported)):
    np.testing.assert_allclose(run(engine), keras, atol=1e-4, rtol=0)


def test_int8_engine_on_a_trained_tiny_model(tagger, tagger_export,
                                             parse_hparams, tmp_path):
  """The exported int8 model scores real-shaped clips and the model's own
  training clips within the self-check's bound of the Keras model, and
  picks the same top class for each of those recordings."""
  from tagger.modes import export_checks
  hparams = parse_hparams(TAG_HPARAMS)
  data = tagger['data']
  recorded = [os.path.join(data['train_clip_dir'], fname)
              for fname, _ in labeled_rows(data['train_csv'])[:6]]
  paths = _check_clips(tmp_path) + recorded
  run = lambda engine=None: scorer_scores(
      'crnn', hparams, tagger['checkpoint'], paths, engine)
  keras = run()
  int8 = run(tflite_engine.Engine('tflite', model_path=tagger_export['int8']))
  difference = np.abs(int8 - keras).max()
  assert 1e-4 < difference <= export_checks.QUANTIZED_TOLERANCE, difference
  recorded_rows = slice(len(paths) - len(recorded), None)
  assert (np.argmax(int8[recorded_rows], 1) ==
          np.argmax(keras[recorded_rows], 1)).all()


def test_export_writes_and_reports_the_quantized_model(tagger_export):
  assert sorted(os.listdir(tagger_export['dir'])) == [
      'class_map.csv', 'examples_float32.tflite', 'examples_int8.tflite',
      'model.tflite', 'saved_model']
  out = tagger_export['result'].stdout
  assert re.search(r'examples_float32.tflite: example scores within \S+ of '
                   r'the Keras model', out)
  found = re.search(r'examples_int8.tflite: example scores within (\S+), '
                    r'clip scores within (\S+) of the float model on 12 '
                    r'clips, the same top class on (\d+)', out)
  assert found, out
  from tagger.modes import export_checks
  assert float(found.group(1)) <= export_checks.QUANTIZED_TOLERANCE
  for kind in ('none', 'int8'):
    entry = tflite_engine.read_metadata(os.path.join(
        tagger_export['dir'], tflite_engine.EXAMPLES_FILES[kind]))
    assert entry['quantization'] == kind
    assert entry['model'] == 'crnn'
    assert entry['hparams']['crnn_filters'] == 4
    assert entry['class_names'] == [r[1] for r in read_csv_rows(CLASS_MAP)]


def test_a_stop_while_the_check_clips_are_made_comes_before_scoring(
    tagger, tagger_export, monkeypatch, parse_hparams):
  """The export's check of its examples-in models heeds a stop request that
  arrived while its clips' examples were being made, before it scores any:
  the float model alone is checked here, so no later check would see it."""
  from tagger.modes import export_checks
  from tagger.engines import scoring
  from tagger.core import stopping
  scorer = scoring.Scorer('crnn', 80, parse_hparams(TAG_HPARAMS))
  scorer.load(tagger['checkpoint'])
  real = export_checks.quantization_check_clips
  scored = []

  def clips_then_a_stop(scorer):
    made = real(scorer)
    stopping._requested.append(signal.SIGTERM)
    return made

  monkeypatch.setattr(export_checks, 'quantization_check_clips', clips_then_a_stop)
  monkeypatch.setattr(scorer, 'score_examples', scored.append)
  with stopping.requests():
    with pytest.raises(stopping.Stopped, match='stopped by SIGTERM'):
      export_checks.check_examples_models(tagger_export['dir'], scorer, ['none'])
  assert scored == []


# --- every engine flag reaches the interpreter ------------------------------

# Runs main.py with LiteRT's Interpreter replaced by a subclass that records,
# for each interpreter made, the threads it was given, its tensors' types
# and how many batches it ran.
_SPY = main_in_process(before=r'''
import json
from ai_edge_litert import interpreter as litert
made = []
class Spy(litert.Interpreter):
  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    types = [str(d['dtype'].__name__) for d in self.get_tensor_details()]
    self.seen = {'threads': kwargs.get('num_threads'), 'runs': 0,
                 'int8': types.count('int8'),
                 'float32': types.count('float32')}
    made.append(self.seen)
  def get_signature_runner(self, *args, **kwargs):
    runner, seen = super().get_signature_runner(*args, **kwargs), self.seen
    class Counted:  # the runner (its details too), its calls counted
      def __getattr__(self, name):
        return getattr(runner, name)
      def __call__(self, **inputs):
        seen['runs'] += 1
        return runner(**inputs)
    return Counted()
litert.Interpreter = Spy
''', after="print('interpreters ' + json.dumps(made), file=sys.stderr)\n")


def _spied(args):
  """(result, [(threads, kind) of each interpreter that ran batches]) (a
  model file is also loaded once, with one thread, before the run)."""
  result = run_main(args, timeout=600, script=_SPY)
  line = [l for l in result.stderr.splitlines()
          if l.startswith('interpreters ')]
  assert line, result.stderr[-3000:]
  made = json.loads(line[-1][len('interpreters '):])
  return check_ok(result), [(s['threads'], _kind(s)) for s in made
                            if s['runs']]


def _kind(seen):
  """float32, dynamic (int8 weights, float activations) or int8 (integer
  activations too) from an interpreter's tensor types."""
  if not seen['int8']:
    return 'float32'
  return 'int8' if seen['int8'] > seen['float32'] else 'dynamic'


def test_engine_flags_reach_the_interpreter(tagger, tagger_export, tmp_path,
                                            parse_hparams):
  """Each scoring mode with its engine flags, in a main.py whose
  interpreters are spied on: --engine tflite makes one that runs the
  batches, with --tflite_threads threads (default: every core), of the
  kind --quantize asks (converted in memory) or --tflite_model is; and the
  scores are the int8 model's, not the Keras model's."""
  data = tagger['data']
  checkpoint = tagger['checkpoint']
  base = ['--class_map_path', CLASS_MAP]
  csv_path = str(tmp_path / 'predictions.csv')
  result, seen = _spied(base + [
      '--mode', 'inference', '--inference_checkpoint', checkpoint,
      '--inference_clip_dir', data['train_clip_dir'],
      '--predictions_csv_path', csv_path, '--engine', 'tflite',
      '--tflite_threads', '3', '--quantize', 'int8'] + calibration_args(data))
  assert seen == [(3, 'int8')]
  assert '; TFLite engine: int8, converted in memory, 3 threads)\n' in (
      result.stdout)
  rows = read_csv_rows(csv_path)[1:]
  keras = scorer_scores('crnn', parse_hparams(TAG_HPARAMS), checkpoint,
                  [os.path.join(data['train_clip_dir'], r[0]) for r in rows])
  assert np.abs(np.array([[float(v) for v in r[1:]] for r in rows]) -
                keras).max() > 1e-4

  result, seen = _spied(base + [
      '--mode', 'tag', '--inference_checkpoint', checkpoint, '--tag_paths',
      data['train_clip_dir'], '--engine', 'tflite', '--quantize',
      'dynamic'])
  assert seen == [(os.cpu_count(), 'dynamic')]
  assert '; TFLite engine: dynamic, converted in memory, %d threads)\n' % (
      os.cpu_count()) in result.stderr

  result, seen = _spied(base + [
      '--mode', 'relabel', '--relabel_csv_path', data['train_csv'],
      '--relabel_clip_dir', data['train_clip_dir'], '--relabeled_csv_path',
      str(tmp_path / 'relabeled.csv'), '--engine', 'tflite',
      '--tflite_threads', '3', '--tflite_model', tagger_export['int8']])
  assert seen == [(3, 'int8')]
  assert ('Relabelling with %s (batch-norm statistics: precise; TFLite '
          'engine: int8, 3 threads)\n' % tagger_export['int8']) in (
              result.stdout)

  train_dir = tmp_path / 'train'  # the last checkpoint alone
  train_dir.mkdir()
  for name in os.listdir(tagger['train_dir']):
    if name.startswith(os.path.basename(checkpoint) + '.'):
      shutil.copy(os.path.join(tagger['train_dir'], name), str(train_dir))
  result, seen = _spied(base + [
      '--mode', 'eval', '--train_dir', str(train_dir),
      '--eval_dir', str(tmp_path / 'eval'), '--eval_csv_path',
      data['train_csv'], '--eval_clip_dir', data['train_clip_dir'],
      '--engine', 'tflite', '--tflite_threads', '2'])
  assert seen == [(2, 'float32')]
  assert '; TFLite engine: float32, converted in memory, 2 threads)\n' in (
      result.stdout)


# --- bad model files and flags ----------------------------------------------

def test_a_model_file_that_is_not_one(tagger, tagger_export, tmp_path):
  """Missing, not a TFLite model, a TFLite model without this project's
  metadata (the waveform model.tflite), or one LiteRT cannot run: one line
  naming the file, nothing written."""
  garbage = tmp_path / 'garbage.tflite'
  garbage.write_bytes(b'\x1c\x00\x00\x00TFL3' + bytes(range(256)) * 4)
  text = tmp_path / 'text.tflite'
  text.write_text('hello\n')
  with open(tagger_export['int8'], 'rb') as f:
    head = f.read()
  cut = tmp_path / 'cut.tflite'
  cut.write_bytes(head[:len(head) // 2])
  cases = [(str(tmp_path / 'missing.tflite'), 'not found'),
           (str(garbage), 'not a TFLite model'),
           (str(text), 'not a TFLite model'),
           (str(cut), 'LiteRT cannot run it'),
           (os.path.join(tagger_export['dir'], 'model.tflite'),
            'without the run it was exported from')]
  for path, needle in cases:
    assert_one_error(inference_with_model(tagger['data'], path, tmp_path),
                     path, needle)
  assert not (tmp_path / 'out.csv').exists()


def _contradicting_model(exported, folder, name, change):
  """A copy of an exported model whose metadata entry, changed by
  change(entry), no longer describes its graph."""
  entry = tflite_engine.read_metadata(exported)
  change(entry)
  with open(exported, 'rb') as f:
    model = tflite_engine.with_metadata(f.read(), entry)
  path = os.path.join(str(folder), name)
  with open(path, 'wb') as f:
    f.write(model)
  return path


def test_a_model_file_whose_graph_contradicts_its_metadata(
    tagger, tagger_export, tmp_path):
  """Metadata naming other mel bands, or fewer classes, than the graph's
  tensors have: loading the file stops with one line naming it and both
  shapes (from the command line: before any clip is scored, nothing
  written)."""
  exported = tagger_export['float32']
  hparams = tflite_engine.read_metadata(exported)['hparams']
  bands = hparams['mel_bands']
  frames = round(hparams['example_window_seconds'] /
                 hparams['stft_hop_seconds'])
  classes = len(read_class_names())
  fewer = tmp_path / 'ten_classes.csv'
  fewer.write_text(''.join('%d,%s\n' % (i, name) for i, name in
                           enumerate(read_class_names()[:10])))
  other_bands = _contradicting_model(
      exported, tmp_path, 'bands.tflite',
      lambda entry: entry['hparams'].update(mel_bands=bands // 2))
  other_classes = _contradicting_model(
      exported, tmp_path, 'classes.tflite',
      lambda entry: entry.update(class_names=entry['class_names'][:10]))
  from tagger.core.files import UserError
  for path, needles in (
      (other_bands, ['examples [-1, %d, %d]' % (frames, bands),
                     '%d frames of %d mel bands' % (frames, bands // 2)]),
      (other_classes, ['logits [-1, %d]' % classes, 'names 10 classes'])):
    with pytest.raises(UserError) as raised:
      tflite_engine.Runner(path)
    assert str(raised.value).startswith(path + ': its graph has ')
    for needle in needles:
      assert needle in str(raised.value), (needle, str(raised.value))
  result = inference_with_model(tagger['data'], other_classes, tmp_path,
                                 class_map=str(fewer))
  assert_one_error(result, other_classes, 'logits [-1, %d]' % classes,
                   'names 10 classes')
  assert not (tmp_path / 'out.csv').exists()


def test_a_model_file_of_another_run(tagger, tagger_export, mobilenet_train,
                                     tmp_path):
  """Another class map, another quantization than --quantize asks, other
  hparams, a checkpoint of another model: one line naming the file or the
  flag, nothing written."""
  data = tagger['data']
  other_map = tmp_path / 'other_map.csv'
  other_map.write_text('0,Bark\n1,Meow\n')
  rows = tmp_path / 'bark.csv'
  rows.write_text('fname,labels\n%s,Bark\n' % labeled_rows(
      data['train_csv'])[0][0])
  model = tagger_export['int8']
  assert_one_error(run_main([
      '--mode', 'relabel', '--class_map_path', str(other_map),
      '--relabel_csv_path', str(rows), '--relabel_clip_dir',
      data['train_clip_dir'], '--relabeled_csv_path',
      str(tmp_path / 'out.csv'), '--engine', 'tflite', '--tflite_model',
      model]), '--tflite_model', model, 'another class map')
  assert_one_error(inference_with_model(data, model, tmp_path,
                                         ['--quantize', 'none']),
                   model, 'quantization is int8, not none')
  assert_one_error(inference_with_model(data, model, tmp_path,
                                         ['--hparams', 'mel_bands=64']),
                   '--hparams', 'mel_bands', model)
  assert_one_error(inference_with_model(
      data, model, tmp_path, ['--inference_checkpoint',
                              mobilenet_train['checkpoint']]),
                   '--tflite_model', model, 'crnn', 'mobilenet-v1')
  assert not (tmp_path / 'out.csv').exists()


@pytest.mark.parametrize('extra,needles', [
    (['--quantize', 'int8'], ['--quantize int8 needs --calibration']),
    (['--engine', 'tflite'], ['--engine', 'not --mode export']),
    (['--tflite_threads', '2'], ['--tflite_threads', '--engine tflite']),
    (['--calibration_csv_path', 'x.csv'],
     ['--calibration_csv_path', '--quantize int8']),
], ids=['int8-without-calibration', 'engine-in-export', 'threads-alone',
        'calibration-alone'])
def test_bad_engine_flags(mobilenet_train, tmp_path, extra, needles):
  result = run_main(export_args(mobilenet_train['checkpoint'],
                                str(tmp_path / 'out'), extra))
  assert_one_error(result, *needles)
  assert result.stdout == ''  # before TensorFlow and the checkpoint
  assert os.listdir(str(tmp_path)) == []


def test_calibration_csv_without_a_readable_clip(mobilenet_train, tmp_path):
  folder = tmp_path / 'clips'
  folder.mkdir()
  (folder / 'a.wav').write_text('not audio')
  (folder / 'b.wav').write_bytes(b'RIFF')
  csv_path = tmp_path / 'calibration.csv'
  csv_path.write_text('fname,labels\na.wav,Bark\nb.wav,Bark\n')
  result = run_main(export_args(
      mobilenet_train['checkpoint'], str(tmp_path / 'out'),
      ['--quantize', 'int8', '--calibration_csv_path', str(csv_path),
       '--calibration_clip_dir', str(folder)]))
  assert_one_error(result, str(csv_path), 'no readable clip')
  assert result.stdout == ''
  assert sorted(os.listdir(str(tmp_path))) == ['calibration.csv', 'clips']


def test_int8_calibrated_on_silence_is_refused(tagger, tmp_path):
  """Calibrated on digital silence, int8 would know one input value: the
  export refuses it, with one line naming the clips' folder, and nothing
  is left."""
  folder = tmp_path / 'silence'
  folder.mkdir()
  for i in range(4):
    write_pcm_wav(str(folder / ('%d.wav' % i)), np.zeros(88200, np.int16))
  csv_path = tmp_path / 'silence.csv'
  csv_path.write_text('fname,labels\n' + ''.join(
      '%d.wav,Bark\n' % i for i in range(4)))
  out = tmp_path / 'out'
  result = run_main(export_args(
      tagger['checkpoint'], str(out),
      ['--quantize', 'int8', '--calibration_csv_path', str(csv_path),
       '--calibration_clip_dir', str(folder)]))
  assert_one_error(result, str(folder) + ': ', 'digital silence', '-6.91')
  assert sorted(os.listdir(str(tmp_path))) == ['silence', 'silence.csv']


def test_calibration_examples_of_silence_and_of_a_quiet_tone(tmp_path,
                                                           parse_hparams):
  """Examples of silent clips (the log's floor in float32, and padding)
  are refused, naming the folder, from one clip or three; one clip of a
  -60 dB tone among them is a sound, and its examples rise above the
  floor."""
  from tagger.core.files import UserError
  hparams = parse_hparams('')
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / ('%d.wav' % i)))
    write_pcm_wav(paths[-1], np.zeros(30000 + 20000 * i, np.int16))
  for silent in (paths[:1], paths):
    with pytest.raises(UserError) as raised:
      tflite_engine.calibration_examples(silent, hparams)
    assert str(raised.value).startswith(str(tmp_path) + ': ')
    assert 'digital silence' in str(raised.value)
  t = np.arange(44100) / 44100
  paths.append(str(tmp_path / 'tone.wav'))
  write_pcm_wav(paths[-1], np.round(32.768 * np.sin(2 * np.pi * 1000 * t)))
  examples = tflite_engine.calibration_examples(paths, hparams)
  assert examples.max() > np.log(hparams.mel_log_offset) + 1


def _reported_int8_difference(tagger_export):
  """The largest example-score difference the fixture's export reported
  for its int8 model, as printed."""
  return re.search(r'examples_int8.tflite: example scores within (\S+),',
                   tagger_export['result'].stdout)[1]


def test_an_int8_model_beyond_the_bound_is_refused(tagger, tagger_export,
                                                   monkeypatch,
                                                   parse_hparams):
  """With the bound set to half the difference the fixture's export
  reported, the export's check of the same files refuses the int8 model
  with the same figure. (A refusal inside the export leaves nothing:
  test_export.py's test_failed_self_check_leaves_nothing.)"""
  from tagger.modes import export_checks
  from tagger.core import files
  from tagger.engines import scoring
  reported = _reported_int8_difference(tagger_export)
  bound = round(float(reported) / 2, 3)
  monkeypatch.setattr(export_checks, 'QUANTIZED_TOLERANCE', bound)
  data = tagger['data']
  paths = tflite_engine.calibration_clips(
      data['calibration_csv'], data['calibration_clip_dir'],
      read_class_names())
  scorer = scoring.Scorer('crnn', 80, parse_hparams(TAG_HPARAMS),
                          engine=tflite_engine.Engine(
                              calibration_paths=tuple(paths)))
  scorer.load(tagger['checkpoint'])
  with pytest.raises(files.UserError) as raised:
    export_checks.check_examples_models(tagger_export['dir'], scorer,
                                 ['none', 'int8'])
  assert str(raised.value).startswith(
      'export: examples_int8.tflite scores an example %s away from the '
      'float model (allowed %g; ' % (reported, bound)), str(raised.value)
  assert str(raised.value).endswith(' of 12 clips); nothing written')


def test_in_memory_quantization_is_held_to_the_same_bound(
    tagger, tagger_export, monkeypatch, parse_hparams):
  """--engine tflite quantizing a checkpoint in memory, as eval, inference,
  tag and relabel load it, is held to the export's bound: with the bound
  set to half the difference the fixture's export reported for the same
  checkpoint and calibration clips, loading stops with that figure, before
  anything is scored; within the default bound the model is taken.
  (Converted once: the check is under test.)"""
  from tagger.modes import export_checks
  from tagger.core import files
  from tagger.engines import scoring
  real_convert, converted = tflite_engine.convert, {}

  def convert_once(model, hparams, quantize, calibration=None):
    if quantize not in converted:
      converted[quantize] = real_convert(model, hparams, quantize,
                                         calibration)
    return converted[quantize]

  monkeypatch.setattr(tflite_engine, 'convert', convert_once)
  default = export_checks.QUANTIZED_TOLERANCE
  reported = _reported_int8_difference(tagger_export)
  bound = round(float(reported) / 2, 3)
  monkeypatch.setattr(export_checks, 'QUANTIZED_TOLERANCE', bound)
  data = tagger['data']
  scorer = scoring.Scorer('crnn', 80, parse_hparams(TAG_HPARAMS),
                          engine=tflite_engine.Engine(
                              'tflite', quantize='int8', calibration_paths=(
                                  tuple(tflite_engine.calibration_clips(
                                      data['calibration_csv'],
                                      data['calibration_clip_dir'],
                                      read_class_names())))))
  with pytest.raises(files.UserError) as raised:
    scorer.load(tagger['checkpoint'])
  message = str(raised.value)
  assert message.startswith(
      '--quantize int8: the int8 model converted from %s scores an example '
      '%s away from the float model (allowed %g; ' % (
          tagger['checkpoint'], reported, bound)), message
  assert message.endswith(' of 12 clips); nothing scored with it')
  monkeypatch.setattr(export_checks, 'QUANTIZED_TOLERANCE', default)
  scorer.load(tagger['checkpoint'])
  assert list(converted) == ['int8']


def test_int8_calibration_repeats(tagger, parse_hparams, tmp_path):
  """The same checkpoint and calibration CSV converted twice give the same
  int8 model, byte for byte. The clips are longer than PER_CLIP examples,
  so which examples calibrate matters (their ranges set the scales)."""
  from tools import make_demo_data
  from support import reference
  from tagger.engines import scoring
  hparams = parse_hparams(TAG_HPARAMS)
  assert reference.np_num_examples(8 * 44100, hparams) > (
      tflite_engine.PER_CLIP)
  rows = []
  for seed in range(2):
    rows.append(('long%d.wav' % seed, ['Hiss']))
    write_check_clip(str(tmp_path / rows[-1][0]), 8.0, seed=200 + seed)
  csv_path = str(tmp_path / 'calibration.csv')
  make_demo_data.write_csv(csv_path, rows)
  paths = tuple(tflite_engine.calibration_clips(csv_path, str(tmp_path),
                                                read_class_names()))
  models = []
  for _ in range(2):
    scorer = scoring.Scorer('crnn', 80, hparams, static=True,
                            engine=tflite_engine.Engine(
                                calibration_paths=paths))
    scorer.load(tagger['checkpoint'])
    models.append(scorer.convert('int8'))
  assert models[0] == models[1]


def test_quantized_differences_worked_by_hand():
  """The self-check's figures on two clips of hand-picked scores: the
  largest example difference (0.7), the largest difference of the clips'
  mean scores (0.4) and the clips whose top class agrees (1 of 2)."""
  from tagger.modes import export_checks
  reference = {0: [[0.1, 0.8, 0.3], [0.3, 0.6, 0.1]],
               1: [[0.9, 0.2, 0.1], [0.7, 0.2, 0.3]]}
  quantized = {0: [[0.2, 0.7, 0.3], [0.3, 0.6, 0.4]],
               1: [[0.2, 0.6, 0.1], [0.6, 0.3, 0.3]]}
  clips = [('a', np.zeros((2, 1, 1))), ('b', np.ones((2, 1, 1)))]

  def runner(scores):
    return lambda examples: np.array(scores[int(examples[0, 0, 0])])

  example, clip, agree = export_checks.quantized_differences(
      runner(quantized), runner(reference), clips)
  assert example == pytest.approx(0.7)
  assert clip == pytest.approx(0.4)
  assert agree == 1


def _metadata_entries(data):
  """[(name, bytes)] of a TFLite model's metadata, read with LiteRT's
  schema."""
  from ai_edge_litert import schema_py_generated as schema
  model = schema.Model.GetRootAs(data, 0)
  entries = []
  for i in range(model.MetadataLength()):
    metadata = model.Metadata(i)
    buffer = model.Buffers(metadata.Buffer())
    entries.append((metadata.Name().decode(),
                    buffer.DataAsNumpy().tobytes()))
  return entries


def test_new_metadata_replaces_ours_and_keeps_the_converters(tagger_export):
  """Rewriting the entry leaves the converter's own metadata (its minimum
  runtime version, ...) as they were, and holds one entry of ours: the new
  one."""
  with open(tagger_export['float32'], 'rb') as f:
    data = f.read()
  before = _metadata_entries(data)
  others = [e for e in before if e[0] != tflite_engine.METADATA_NAME]
  assert others and len(others) < len(before)  # the converter's and ours
  after = _metadata_entries(tflite_engine.with_metadata(data, {'a': 7}))
  assert [e for e in after if e[0] != tflite_engine.METADATA_NAME] == others
  ours = [e for e in after if e[0] == tflite_engine.METADATA_NAME]
  assert [json.loads(blob) for _, blob in ours] == [{'a': 7}]
