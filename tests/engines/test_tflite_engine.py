"""--engine tflite (tflite_engine.py): the model part as a TFLite model run
by LiteRT scores as the Keras model does (float32 within 1e-4; int8 within
export_checks.QUANTIZED_TOLERANCE with the same top class), bad model
files are one line, calibration refuses silence and repeats byte for
byte, and new metadata keeps the converter's."""

import json
import os

import numpy as np
import pytest

from tagger.engines import tflite_engine
from support.cli import (assert_one_error, export_args, inference_with_model,
                         run_main)
from support.scores import labeled_rows, read_class_names, scorer_scores
from support.settings import HPARAMS, TAG_HPARAMS
from support.signals import write_check_clip, write_pcm_wav


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


# --- bad model files --------------------------------------------------------

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


# --- calibration ------------------------------------------------------------

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


def test_calibration_draws_its_examples_as_documented(tmp_path,
                                                     parse_hparams):
  """Clips in an order drawn with the seed, up to PER_CLIP examples of
  each drawn with it too, until `count`: worked with 6 clips of 1 to 15
  examples (one shorter than PER_CLIP) and count 11, which ends inside a
  clip; each clip's examples as the pipeline makes them alone."""
  from support.signals import pipeline_examples
  hparams = parse_hparams('')
  paths = _check_clips(tmp_path, count=6)
  paths[0] = str(tmp_path / 'short.wav')  # one example
  write_pcm_wav(paths[0], np.full(20000, 3000, np.int16))
  alone = [pipeline_examples(os.path.basename(p), str(tmp_path), hparams)
           for p in paths]
  assert len(alone[0]) == 1 and max(len(a) for a in alone) > 12
  for seed in (0, 5):
    rng = np.random.default_rng(seed)
    want = []
    for i in rng.permutation(len(paths)):
      keep = rng.permutation(len(alone[i]))[:min(4, 11 - len(want))]
      want.extend(alone[i][keep])
      if len(want) == 11:
        break
    got = tflite_engine.calibration_examples(paths, hparams, count=11,
                                             seed=seed)
    np.testing.assert_array_equal(got, np.stack(want))
  assert tflite_engine.PER_CLIP == 4


def test_int8_calibration_repeats(tagger, tagger_export, parse_hparams):
  """The checkpoint and calibration CSV that the fixture's export
  converted, converted again in this process, give the export's int8
  model byte for byte (its metadata entry put back). Its quiet clips are
  longer than PER_CLIP examples, so which examples calibrate matters
  (their ranges set the scales)."""
  from support import reference
  from tagger.engines import scoring
  from conftest import QUIET_CALIBRATION_CLIPS
  hparams = parse_hparams(TAG_HPARAMS)
  data = tagger['data']
  paths = tuple(tflite_engine.calibration_clips(
      data['calibration_csv'], data['calibration_clip_dir'],
      read_class_names()))
  quiet = [p for p in paths if os.path.basename(p).startswith('quiet')]
  assert len(quiet) == QUIET_CALIBRATION_CLIPS
  assert reference.np_num_examples(3 * 44100, hparams) > (
      tflite_engine.PER_CLIP)
  scorer = scoring.Scorer('crnn', 80, hparams, static=True,
                          engine=tflite_engine.Engine(calibration_paths=paths))
  scorer.load(tagger['checkpoint'])
  with open(tagger_export['int8'], 'rb') as f:
    exported = f.read()
  assert tflite_engine.with_metadata(
      scorer.convert('int8'),
      tflite_engine.read_metadata(tagger_export['int8'])) == exported


# --- metadata ---------------------------------------------------------------

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
