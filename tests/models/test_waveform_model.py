"""The waveform model's rule for non-finite samples, wherever they fall in a
waveform of several chunks: the clip gets NaN for every output, in the
exported SavedModel and the waveform TFLite model alike (a batch's other
clips are left alone: tests/modes/test_exported_model.py)."""

import json
import os
import subprocess
import sys

import numpy as np

from support.cli import subprocess_env
from support.settings import TAG_HPARAMS
from support.signals import NUM_SAMPLES, POSITIONS, non_finite_waveforms

def test_each_bad_sample_is_in_one_chunk_only(parse_hparams):
  """What the cases rely on: with the tagger's hparams, POSITIONS lie in
  the first, a middle and the last chunk, each in that one alone (chunks
  overlap)."""
  import tensorflow as tf
  from tagger.sound import features
  starts, ends, _ = (b.numpy() for b in features.chunk_bounds(
      tf.constant(NUM_SAMPLES), parse_hparams(TAG_HPARAMS)))
  assert len(starts) == 3
  holding = {name: list(np.flatnonzero((starts <= at) & (at < ends)))
             for name, at in POSITIONS.items()}
  assert holding == {'start': [0], 'middle': [1], 'end': [2]}


# Runs in a fresh interpreter with LiteRT alone, as a device runs the
# model: in a process that has run TensorFlow, LiteRT's XNNPACK delegate
# now and then turns a NaN or infinite input sample into a finite one
# (in about 1 process in 3 on a 2-core x86-64 machine; not seen without
# TensorFlow loaded, nor without the delegate). Prints, per case and
# output, [size, NaNs, finite values].
LITERT_ALONE = r'''
import json, sys
import numpy as np
from ai_edge_litert import interpreter as litert
made = litert.Interpreter(model_path=sys.argv[1])
made.allocate_tensors()
run = made.get_signature_runner('serving_default')
waveforms = np.load(sys.argv[2])
print(json.dumps({case: {key: [int(v.size), int(np.isnan(v).sum()),
                               int(np.isfinite(v).sum())]
                         for key, v in run(waveform=waveforms[case]).items()}
                  for case in waveforms.files}))
'''


def _counts(value):
  value = np.asarray(value)
  return [value.size, int(np.isnan(value).sum()),
          int(np.isfinite(value).sum())]


def test_a_non_finite_sample_in_any_chunk_gives_nan_outputs(tagger_export,
                                                            tmp_path):
  import tensorflow as tf
  cases = {case: waveform for case, (waveform, _) in
           non_finite_waveforms().items()}
  np.savez(str(tmp_path / 'waveforms.npz'), **cases)
  litert = subprocess.run(
      [sys.executable, '-c', LITERT_ALONE,
       os.path.join(tagger_export['dir'], 'model.tflite'),
       str(tmp_path / 'waveforms.npz')],
      capture_output=True, text=True, timeout=300, env=subprocess_env())
  assert litert.returncode == 0, litert.stderr[-3000:]
  counts = {'TFLite': json.loads(litert.stdout.splitlines()[-1])}
  serve = tf.saved_model.load(os.path.join(
      tagger_export['dir'], 'saved_model')).signatures['serving_default']
  counts['SavedModel'] = {
      case: {key: _counts(value) for key, value in
             serve(waveform=tf.constant(waveform)).items()}
      for case, waveform in cases.items()}
  wrong = []  # (model, case, output) of every output breaking the rule
  for kind, by_case in counts.items():
    assert sorted(by_case) == sorted(cases), kind
    for case, outputs in by_case.items():
      assert sorted(outputs) == ['clip_scores', 'embeddings', 'log_mel',
                                 'scores'], kind
      for key, (size, nans, finite) in outputs.items():
        if not size or (finite if case == 'good' else nans) != size:
          wrong.append((kind, case, key))
  assert not wrong
