"""Inference: scores every .wav in a folder and writes a Kaggle submission."""

import io
import os

import scoring
from files import write_atomically


def submission_csv(fnames, class_names, scores):
  """Kaggle format: header `fname,<class names in class-map order>`."""
  out = io.StringIO()
  out.write(','.join(['fname'] + list(class_names)) + '\n')
  for fname, row in zip(fnames, scores):
    out.write(fname + ',' + ','.join('%.6f' % s for s in row) + '\n')
  return out.getvalue()


def infer(model_name, hparams, class_names, clip_dir, fnames, clip_samples,
          checkpoint_path, predictions_csv_path):
  """fnames: the sorted .wav names in clip_dir (from files.list_wavs)."""
  scorer = scoring.Scorer(model_name, len(class_names), hparams)
  scorer.load(checkpoint_path)
  scores = scorer.score([os.path.join(clip_dir, f) for f in fnames],
                        clip_samples, label='inference')  # all finite
  # Written to a temporary file and renamed only now that every clip is
  # scored: an existing submission is never replaced by a partial one.
  write_atomically(predictions_csv_path,
                   submission_csv(fnames, class_names, scores))
  print('Wrote %d clips x %d classes to %s' % (
      len(fnames), len(class_names), predictions_csv_path))
