"""--mode relabel: a CSV of clips scored with a checkpoint, written anew with
the labels the model supports kept and those it is confident about added
(noisy_labels.relabel), for training on a noisy source with cleaner labels.
It scores with the engine eval and inference use (scoring.Scorer)."""

import csv
import io
import os

from tagger.core import files
from tagger.training import noisy_labels
from tagger.engines import scoring


def labels_csv(fnames, class_names, labels):
  """`fname,labels` text, each clip's labels in class-map order, quoted
  when there are several (as FSDKaggle2019's CSVs)."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['fname', 'labels'])
  for fname, row in zip(fnames, labels):
    writer.writerow([fname, ','.join(class_names[j]
                                     for j in range(len(row)) if row[j])])
  return out.getvalue()


def relabel(model_name, hparams, class_names, rows, clip_dir, sample_counts,
            checkpoint_path, output_path, keep_threshold, add_threshold,
            engine=None):
  """rows: the CSV's (fname, labels), checked; engine: a tflite_engine.Engine."""
  scorer = scoring.open_scorer(model_name, len(class_names), hparams,
                               checkpoint_path, engine, 'Relabelling with')
  fnames = [fname for fname, _ in rows]
  scores = scorer.score([os.path.join(clip_dir, f) for f in fnames],
                        sample_counts, label='relabel')
  labels, counts = noisy_labels.relabel(
      files.label_matrix(rows, class_names), scores, keep_threshold,
      add_threshold)
  files.write_atomically(output_path, labels_csv(fnames, class_names,
                                                 labels))
  given = sum(len(l) for _, l in rows)
  print('Relabelled %d clips (%d labels): kept %d, dropped %d, added %d '
        '(keep at score >= %g, add at >= %g); wrote %s' % (
            len(rows), given, counts['kept'], counts['dropped'],
            counts['added'], keep_threshold, add_threshold, output_path))
  return counts
