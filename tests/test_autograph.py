"""The project's functions are traced as written, never converted by
AutoGraph: none holds Python control flow on tensors, and converting them
cost about 1 s of every run's start (tagger/training/step.py). A spy on
AutoGraph's conversion (called on each trace, whatever its cache holds)
watches training, scoring, calibration and a TFLite conversion."""

import os

from support.scores import scorer_scores
from support.settings import REPO
from support.training_runs import run_training


def test_nothing_of_the_project_is_converted(dataset, tmp_path, monkeypatch,
                                             parse_hparams):
  from tensorflow.python.autograph.impl import api
  from tagger.engines import scoring
  from tagger.engines import tflite_engine
  converted = []
  convert = api._convert_actual

  def spy(entity, program_ctx):
    code = getattr(entity, '__code__', None)
    if code is not None and code.co_filename.startswith(REPO + os.sep) and (
        os.sep + '.venv' + os.sep not in code.co_filename):
      converted.append('%s (%s)' % (entity.__qualname__, code.co_filename))
    return convert(entity, program_ctx)

  monkeypatch.setattr(api, '_convert_actual', spy)
  hparams = 'batch_size=4,crnn_filters=4,ema_decay=0.9'
  run_training(dataset, 'crnn', hparams, tmp_path / 'train', 2)
  checkpoint = str(tmp_path / 'train' / 'model.ckpt-2')
  clips = sorted(os.listdir(dataset['train_clip_dir']))[:3]
  paths = [os.path.join(dataset['train_clip_dir'], c) for c in clips]
  scorer_scores('crnn', parse_hparams(hparams), checkpoint, paths)
  scorer = scoring.Scorer('crnn', 80, parse_hparams(hparams), static=True)
  scorer.load(checkpoint)
  examples = tflite_engine.calibration_examples(paths, scorer.hparams)
  assert len(examples) > 3
  scorer.convert('none')
  assert converted == []
