"""The checks an export must pass (export_checks.py): the self-check's
clip has the dynamics of recorded sound; the quantized model is reported
within export_checks.QUANTIZED_TOLERANCE, its figures worked by hand; an
int8 model beyond the bound is refused, exported or converted in memory;
and a stop request while the check clips are made comes before scoring."""

import os
import re
import signal

import numpy as np
import pytest

from tagger.engines import tflite_engine
from support.scores import read_class_names, read_csv_rows
from support.settings import CLASS_MAP, TAG_HPARAMS


def test_self_check_clip_has_the_dynamics_of_recorded_sound():
  """Quiet bins beside loud ones are where TFLite's FFT and TensorFlow's
  differ most, and PCEN's gain amplifies that in quiet passages: the
  self-check's clip has loud 50 ms frames, quiet passages 40 dB below
  them, sharp onsets, digital silence, and 16-bit samples."""
  from tagger.modes import export_checks
  samples = export_checks.check_waveform()
  assert len(samples) == int(7.3 * 44100)
  assert np.array_equal(samples * 32768, np.round(samples * 32768))
  frames = samples[:len(samples) // 2205 * 2205].reshape(-1, 2205)
  levels = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) +
                         1e-10)  # dBFS; digital silence -100
  loud = np.percentile(levels, 98)
  assert loud >= -20
  assert np.mean(levels < loud - 40) >= 0.15  # quiet passages
  assert np.sum(np.diff(levels) >= 20) >= 3  # onsets
  assert levels[0] == -100  # it starts with digital silence


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


# --- the quantized model's bound --------------------------------------------

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
  anything is scored; within the default bound the model is taken. The
  check is under test, not the converter: the conversion is the export's
  int8 model, which converting in memory repeats byte for byte
  (engines/test_tflite_engine.py::test_int8_calibration_repeats)."""
  from tagger.modes import export_checks
  from tagger.core import files
  from tagger.engines import scoring
  converted = []

  def exported(model, hparams, quantize, calibration=None):
    assert quantize == 'int8' and len(calibration) > 0
    converted.append(quantize)
    with open(tagger_export['int8'], 'rb') as f:
      return f.read()

  monkeypatch.setattr(tflite_engine, 'convert', exported)
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
  assert converted == ['int8', 'int8']


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
