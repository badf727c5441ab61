"""Tagging (--mode tag): the top classes of any uncompressed WAV file, and
optionally a timeline of the scores of each of its examples.

Each file is read a block at a time (wav.read_samples: 8/16/24/32-bit PCM
or 32/64-bit float, any number of channels, mixed down to mono), resampled
to 44.1 kHz block by block (Source), and cut by the Reader into the chunks
the scoring pipeline cuts a 16-bit clip into (features.chunk_bounds). The
chunks go to
the scoring engine (scoring.Scorer.score_waveforms): the folded model, the
checkpoint's batch-norm statistics and batches across files, as in eval and
inference. Only a few chunks of ~8.5 s are in memory at a time, however long
the file.

A file that cannot be read is reported on a line of its own, and the others
are still tagged. Plain Python at import (main.py lists the files before
TensorFlow is imported); tag() imports the engine.
"""

import csv
import functools
import io
import math
import os
import sys

import numpy as np

import files
import stopping
import wav
from files import UserError

# resample_poly's filter has 20 * max(up, down) + 1 taps for a rate ratio
# up/down in lowest terms. Every rate up to this one has a filter of at most
# 4M taps (32 MB, copied once per block); so do the usual higher rates
# (88.2, 96, 176.4, 192, 352.8, 384, 768 kHz: down <= 2560). Beyond it, only
# odd rates (e.g. 200003 Hz) are refused.
MAX_RESAMPLING_TERM = 200000


def list_files(tag_paths):
  """The files to tag, in the order given: each path naming a file (or a
  link, even a broken one, or a named pipe, socket or device: each then
  reported as unreadable), and every .wav entry but folders directly in
  each path naming a folder, sorted by name. Raises
  UserError naming a path that does not exist or a folder without .wav
  files."""
  found = []
  for path in tag_paths:
    if os.path.isdir(path):
      try:
        names = files.list_wavs(path)
      except UserError as e:
        raise UserError('--tag_paths: %s' % e) from None
      found.extend(os.path.join(path, name) for name in names)
    elif os.path.lexists(path):
      found.append(path)
    else:
      raise UserError('--tag_paths: %s not found' % path)
  return found


@functools.lru_cache(maxsize=4)
def _lowpass(up, down):
  """The anti-aliasing filter resample_poly designs for up/down when given
  no filter (a Kaiser-windowed sinc, beta 5, cut off at the lower of the
  two Nyquist frequencies, 10 zero crossings each side), made once per
  ratio instead of once per block."""
  from scipy import signal
  largest = max(up, down)
  taps = signal.firwin(2 * 10 * largest + 1, 1.0 / largest,
                       window=('kaiser', 5.0))
  taps.flags.writeable = False
  return taps


class Source:
  """One WAV file as a 44.1 kHz mono waveform, read a block at a time.

  A file at another rate is resampled with scipy.signal.resample_poly by
  up/down = 44100 / rate in lowest terms; its length at 44.1 kHz is
  resample_poly's, ceil(frames * up / down). A block [start, end) is
  computed from the input frames the filter reaches from it (all of them:
  the filter's half-length either side), starting on a multiple of `down`,
  where the block's output grid is the whole signal's. So every block
  holds exactly the samples that resampling the whole file at once would
  give, and blocks can be read in any order and size.
  """

  def __init__(self, path, header):
    self.path = path
    self.header = header
    common = math.gcd(wav.SAMPLE_RATE, header.sample_rate)
    self.up = wav.SAMPLE_RATE // common
    self.down = header.sample_rate // common
    self.num_samples = -(-header.num_frames * self.up // self.down)

  def problem(self):
    """None, or why this file's rate cannot be resampled."""
    if max(self.up, self.down) > MAX_RESAMPLING_TERM:
      return ('sample rate %d Hz: resampling it to %d Hz needs a filter of '
              '%d taps; convert the file to a common rate first' % (
                  self.header.sample_rate, wav.SAMPLE_RATE,
                  20 * max(self.up, self.down) + 1))
    return None

  def read(self, start, end):
    """Samples [start, end) of the 44.1 kHz waveform, float32."""
    if self.up == self.down:
      return wav.read_samples(self.path, self.header, start, end - start)
    from scipy import signal
    up, down = self.up, self.down
    taps = _lowpass(up, down)
    half = (len(taps) - 1) // 2
    # Output sample m sits at input frame m * down / up and takes the input
    # frames k with |m * down - k * up| <= half.
    first = max(0, -(-(start * down - half) // up))
    stop = min(self.header.num_frames, ((end - 1) * down + half) // up + 1)
    # Output j of a block starting at input frame f is output f * up / down
    # + j of the whole signal when f * up / down is whole, i.e. f is a
    # multiple of down (up and down have no common factor).
    first -= first % down
    block = wav.read_samples(self.path, self.header, first, stop - first)
    resampled = signal.resample_poly(block.astype(np.float64), up, down,
                                     window=taps)
    offset = start - first * up // down
    return resampled[offset:offset + end - start].astype(np.float32)


def _open(path):
  """(Source, None) for a file that can be tagged, else (None, why not)."""
  # Looked at before wav opens it: opening a named pipe would wait for a
  # writer.
  problem = files.not_a_file(path)
  if problem:
    return None, problem
  try:
    header = wav.read_header(path)
  except wav.WavError as e:
    return None, str(e)
  problem = wav.sample_problem(header)
  if problem:
    return None, problem
  source = Source(path, header)
  problem = source.problem()
  return (None, problem) if problem else (source, None)


class Reader:
  """The files to tag, read for the scoring engine: each file's chunks
  (features.chunk_bounds) as a 44.1 kHz mono waveform, when tf.data asks
  for them. `failures` ({file index: message}) holds the files it cannot
  read: found when it opens them (header, format, rate), or part-way
  through (then the file's chunks stop). The reader alone writes it; the
  lines printed and the run's result read it."""

  def __init__(self, paths, hparams):
    self.hparams = hparams
    self.sources, self.failures = [], {}
    for i, path in enumerate(paths):
      source, problem = _open(path)
      if problem:
        self.failures[i] = problem
      self.sources.append(source)

  @property
  def clip_samples(self):
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
      except wav.WavError as e:
        self.failures[i] = str(e)

  def dataset(self):
    """A tf.data.Dataset of (clip index, first example index, samples,
    example count) for Scorer.score_waveforms: the chunks the scoring
    pipeline cuts a 44.1 kHz clip into, read from each readable file in
    turn."""
    import tensorflow as tf
    import features
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
  import features
  import scoring
  out, err = out or sys.stdout, err or sys.stderr
  reader = Reader(paths, hparams)
  failures = reader.failures
  top_k = min(top_k, len(class_names))
  lines = _Lines(paths, class_names, top_k, failures, out, err)
  lines.release()  # the files before the first readable one
  num_examples = [features.num_examples(n or 0, hparams)
                  for n in reader.clip_samples]
  timeline = (_Timeline(num_examples, len(class_names))
              if timeline_csv_path else None)
  readable = [i for i, n in enumerate(reader.clip_samples) if n is not None]
  if readable:
    scorer = scoring.Scorer(model_name, len(class_names), hparams,
                            engine=engine)
    statistics = scorer.load(checkpoint_path)
    print('Tagging %d files with %s (batch-norm statistics: %s%s)' % (
        len(readable), scorer.source, statistics, scorer.engine_note()),
          file=err, flush=True)
    scores = scorer.score_waveforms(
        reader.dataset(), paths, reader.clip_samples, label='tag',
        on_examples=timeline.add if timeline else None, on_clip=lines.done,
        out=err)
    for i in readable:
      if i not in failures and not np.isfinite(scores[i]).all():
        raise UserError('%s: its examples did not all arrive (did the file '
                        'change during the run?)' % paths[i])
  lines.release()  # files that failed after the last one finished
  if timeline:
    _, hop, _ = features.stft_geometry(hparams)
    example_seconds = features.example_geometry(hparams)[1] * hop / (
        wav.SAMPLE_RATE)
    tagged = [i for i in range(len(paths)) if i not in failures]
    files.write_atomically(timeline_csv_path, timeline.csv(
        paths, class_names, tagged, example_seconds))
    print('Wrote the scores of %d examples of %d files to %s' % (
        sum(num_examples[i] for i in tagged), len(tagged),
        timeline_csv_path), file=err, flush=True)
  return len(failures)
