"""Inference: scores every audio file in a folder and writes a Kaggle submission."""

import csv
import io
import os

import numpy as np

from tagger.engines import scoring
from tagger.core.files import write_atomically


def submission_csv(fnames, class_names, scores):
  """Kaggle format: header `fname,<class names in class-map order>`, then a
  row per clip. Each score is written as the shortest text that reads back
  as the same float32 (as the original's csv writer wrote NumPy float32s:
  `3.4567e-05`, `0.12345679`), so no two different scores tie in the file."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')  # quotes `a,b.wav`
  writer.writerow(['fname'] + list(class_names))
  for fname, row in zip(fnames, np.asarray(scores, np.float32)):
    writer.writerow([fname] + [str(s) for s in row])
  return out.getvalue()


def infer(model_name, hparams, class_names, clip_dir, fnames, sample_counts,
          checkpoint_path, predictions_csv_path, engine=None):
  """fnames: the sorted audio file names in clip_dir (files.list_clips);
  engine: a tflite_engine.Engine (default Keras)."""
  scorer = scoring.open_scorer(model_name, len(class_names), hparams,
                               checkpoint_path, engine, 'Scoring')
  scores = scorer.score([os.path.join(clip_dir, f) for f in fnames],
                        sample_counts, label='inference')  # all finite
  # Written to a temporary file and renamed only now that every clip is
  # scored: an existing submission is never replaced by a partial one.
  write_atomically(predictions_csv_path,
                   submission_csv(fnames, class_names, scores))
  print('Wrote %d clips x %d classes to %s' % (
      len(fnames), len(class_names), predictions_csv_path))
