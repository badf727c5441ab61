"""Tagging (--mode tag): the top classes of any audio file libsndfile
reads, and optionally a timeline of the scores of each of its examples.

Each file is read a block at a time by audio.BlockReader (decoded by
libsndfile, any number of channels mixed down to mono, resampled to
44.1 kHz by soxr), and cut by the Reader into the chunks the scoring
pipeline cuts a 16-bit clip into (features.chunk_bounds), kept as float
samples. The chunks go to
the scoring engine (scoring.Scorer.score_waveforms): the folded model, the
checkpoint's batch-norm statistics and batches across files, as in eval and
inference. Only a few chunks of ~8.5 s are in memory at a time, however long
the file.

A file that cannot be read is reported on a line of its own, and the others
are still tagged. Plain Python at import (main.py lists the files before
TensorFlow is imported); tag() imports the engine.
"""

import csv
import io
import os
import sys

import numpy as np

from tagger.sound import audio
from tagger.core import files
from tagger.core import stopping
from tagger.core.files import UserError

def list_files(tag_paths):
  """The files to tag, in the order given: each path naming a file (or a
  link, even a broken one, or a named pipe, socket or device: each then
  reported as unreadable), and every audio file directly in each path
  naming a folder (files.list_clips), sorted by name. Raises UserError
  naming a path that does not exist or a folder without audio files."""
  found = []
  for path in tag_paths:
    if os.path.isdir(path):
      try:
        names = files.list_clips(path)
      except UserError as e:
        raise UserError('--tag_paths: %s' % e) from None
      found.extend(os.path.join(path, name) for name in names)
    elif os.path.lexists(path):
      found.append(path)
    else:
      raise UserError('--tag_paths: %s not found' % path)
  return found


class Reader:
  """The files to tag, read for the scoring engine: each file's chunks
  (features.chunk_bounds) as a 44.1 kHz mono waveform, when tf.data asks
  for them. `failures` ({file index: message}) holds the files it cannot
  read: found when it opens them (header, format, rate), or part-way
  through (then the file's chunks stop). The reader alone writes it; the
  lines printed and the run's result read it."""

  def __init__(self, paths, hparams):
    self.hparams = hparams
    self.sources, self.failures, self.notes = [], {}, {}
    for i, path in enumerate(paths):
      try:
        clip = audio.inspect(path)
      except audio.AudioError as e:
        self.failures[i] = str(e)
        self.sources.append(None)
        continue
      if clip.note:
        self.notes[i] = clip.note
      self.sources.append(audio.BlockReader(path, clip))

  @property
  def sample_counts(self):
    """Each file's samples at 44.1 kHz; None for a file not read at all."""
    return [s.num_samples if s else None for s in self.sources]

  def _chunks(self, bounds):
    for i, source in enumerate(self.sources):
      if source is None:
        continue
      first = 0
      try:
        for start, end, count in zip(*bounds[i]):
          if stopping.requested():
            return  # the scorer stops at its next batch
          samples = source.read(int(start), int(end))
          yield np.int32(i), np.int32(first), samples, np.int32(count)
          first += int(count)
      except audio.AudioError as e:
        self.failures[i] = str(e)

  def dataset(self):
    """A tf.data.Dataset of (clip index, first example index, samples,
    example count) for Scorer.score_waveforms: the chunks the scoring
    pipeline cuts a 44.1 kHz clip into, read from each readable file in
    turn."""
    import tensorflow as tf
    from tagger.sound import features
    # int64: a day-long file has more samples than an int32 holds.
    bounds = {i: [b.numpy() for b in features.chunk_bounds(
        tf.constant(s.num_samples, tf.int64), self.hparams)]
              for i, s in enumerate(self.sources) if s}
    return tf.data.Dataset.from_generator(
        lambda: self._chunks(bounds),
        output_signature=(tf.TensorSpec([], tf.int32),
                          tf.TensorSpec([], tf.int32),
                          tf.TensorSpec([None], tf.float32),
                          tf.TensorSpec([], tf.int32)))


def top_classes_line(path, scores, class_names, top_k):
  """`path: Class_a 0.912, Class_b 0.301, Class_c 0.022`: the top_k classes
  by score, highest first (ties in class-map order), scores to 3 decimals."""
  order = np.argsort(-np.asarray(scores), kind='stable')[:top_k]
  return '%s: %s' % (path, ', '.join('%s %.3f' % (class_names[j], scores[j])
                                     for j in order))


class _Lines:
  """Prints each file's line, in the order of the files, as soon as it and
  every file before it are done: tags on `out`, `path: error: what` on
  `err`."""

  def __init__(self, paths, class_names, top_k, failures, out, err):
    self.paths, self.class_names, self.top_k = paths, class_names, top_k
    # The Reader's record of the files it could not read, as it grows.
    self.failures, self.out, self.err = failures, out, err
    self.scores = {}
    self.next = 0

  def done(self, i, scores):
    self.scores[i] = scores
    self.release()

  def release(self):
    while self.next < len(self.paths):
      i = self.next
      if i in self.scores:
        print(top_classes_line(self.paths[i], self.scores[i],
                               self.class_names, self.top_k),
              file=self.out, flush=True)
      elif i in self.failures:
        print('%s: error: %s' % (self.paths[i], self.failures[i]),
              file=self.err, flush=True)
      else:
        return
      self.next += 1


class _Timeline:
  """Every example's scores by file and example index."""

  def __init__(self, num_examples, num_classes):
    self.num_examples, self.num_classes = num_examples, num_classes
    self.rows = {}

  def add(self, clip_indices, example_indices, scores):
    for i in np.unique(clip_indices):
      if i not in self.rows:
        self.rows[i] = np.zeros((self.num_examples[i], self.num_classes),
                                np.float32)
      mine = clip_indices == i
      self.rows[i][example_indices[mine]] = scores[mine]

  def csv(self, paths, class_names, tagged, example_seconds):
    """Header `fname,start_seconds,<class names>`, then a row per example
    of each tagged file, in file and time order; scores as inference writes
    them (the shortest text that reads back as the same float32)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['fname', 'start_seconds'] + list(class_names))
    for i in tagged:
      for example, row in enumerate(self.rows[i]):
        writer.writerow([paths[i], repr(round(example * example_seconds, 6))]
                        + [str(s) for s in row])
    return out.getvalue()


def tag(model_name, hparams, class_names, paths, checkpoint_path, top_k,
        timeline_csv_path=None, out=None, err=None, engine=None):
  """Tags each file in `paths` with the checkpoint: prints its line (see
  top_classes_line) on `out` (stdout), or `path: error: what` on `err`
  (stderr) if it cannot be read, with the run's notes and progress. Writes
  the timeline CSV (see _Timeline.csv) if a path is given, atomically.
  Returns the number of files that could not be tagged. engine: a
  tflite_engine.Engine (default Keras)."""
  from tagger.sound import features
  from tagger.engines import scoring
  out, err = out or sys.stdout, err or sys.stderr
  reader = Reader(paths, hparams)
  failures = reader.failures
  for i, note in sorted(reader.notes.items()):
    print('%s: note: %s' % (paths[i], note), file=err, flush=True)
  top_k = min(top_k, len(class_names))
  lines = _Lines(paths, class_names, top_k, failures, out, err)
  lines.release()  # the files before the first readable one
  num_examples = [features.num_examples(n or 0, hparams)
                  for n in reader.sample_counts]
  timeline = (_Timeline(num_examples, len(class_names))
              if timeline_csv_path else None)
  readable = [i for i, n in enumerate(reader.sample_counts) if n is not None]
  if readable:
    scorer = scoring.open_scorer(
        model_name, len(class_names), hparams, checkpoint_path, engine,
        'Tagging %d files with' % len(readable), out=err)
    scores = scorer.score_waveforms(
        reader.dataset(), paths, reader.sample_counts, label='tag',
        on_examples=timeline.add if timeline else None, on_clip=lines.done,
        out=err)
    for i in readable:
      if i not in failures and not np.isfinite(scores[i]).all():
        raise UserError('%s: its examples did not all arrive (did the file '
                        'change during the run?)' % paths[i])
  lines.release()  # files that failed after the last one finished
  if timeline:
    example_seconds = (hparams.geometry.example_hop_samples /
                       audio.SAMPLE_RATE)
    tagged = [i for i in range(len(paths)) if i not in failures]
    files.write_atomically(timeline_csv_path, timeline.csv(
        paths, class_names, tagged, example_seconds))
    print('Wrote the scores of %d examples of %d files to %s' % (
        sum(num_examples[i] for i in tagged), len(tagged),
        timeline_csv_path), file=err, flush=True)
  return len(failures)
