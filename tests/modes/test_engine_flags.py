"""The engine flags (engine_flags.py): each one reaches the interpreter in
every scoring mode (a main.py whose LiteRT interpreters are spied on), a
model file of another run is refused naming the file or the flag, and bad
combinations are one line before TensorFlow is imported."""

import json
import os
import shutil

import numpy as np
import pytest

from support.cli import (assert_one_error, calibration_args, check_ok,
                         export_args, inference_with_model, main_in_process,
                         run_main)
from support.scores import labeled_rows, read_csv_rows, scorer_scores
from support.settings import CLASS_MAP, TAG_HPARAMS, TAG_STEPS


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

  # An ensemble: each member is converted and run by LiteRT.
  earlier = checkpoint.replace('-%d' % TAG_STEPS, '-%d' % (TAG_STEPS // 2))
  result, seen = _spied(base + [
      '--mode', 'tag', '--inference_checkpoint', checkpoint + ',' + earlier,
      '--tag_paths', data['train_clip_dir'], '--engine', 'tflite',
      '--quantize', 'dynamic'])
  assert seen == [(os.cpu_count(), 'dynamic')] * 2
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
