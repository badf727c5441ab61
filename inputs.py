"""The tf.data pipelines: audio clips to batches of log-mel examples, for
training (with multi-hot labels) and for scoring (with clip indices).

Everything after the CSV and the clips' headers are read runs inside
tf.data; no feature is precomputed or stored. The features are
features.py's; the samples pcm.py's: a 44.1 kHz mono 16-bit WAV clip
(FSDKaggle2019's) is cut out of the file's bytes by tf.data's own ops, any
other file decoded by libsndfile in the pipeline's threads, a chunk at a
time.

A long clip is cut into chunks of EXAMPLES_PER_CHUNK examples, each chunk
carrying the extra samples its last example needs and decoded on its own, so
that memory stays bounded (no whole-clip float waveform or STFT) while every
example equals the one whole-clip framing would give.
"""

import os

import numpy as np
import tensorflow as tf

from tagger.sound import features
from tagger.sound import pcm
from tagger.core import files
from tagger.core.sources import Source  # noqa: F401  (inputs.Source)

from tagger.sound.features import (  # noqa: F401  (inputs.EXAMPLES_...)
    EXAMPLES_PER_CHUNK)

EXAMPLE_SHUFFLE_BUFFER = 20000
# The pipeline's functions hold no Python control flow on tensors, so they
# are traced as written: AutoGraph's conversion would only slow each start.
_as_written = tf.autograph.experimental.do_not_convert


def _chunks(clips, hparams, deterministic, offsets):
  """(key, path, data offset, num samples) clips -> (key, 16-bit samples of
  a chunk, example count, index of its first example, clip samples), one
  per chunk of features.chunk_bounds. offsets: every clip's data offset
  (see pcm.readers)."""
  read, samples = pcm.readers(offsets)

  def chunks(key, path, data_offset, num_samples):
    contents = read(path, data_offset, num_samples)
    starts, ends, counts = features.chunk_bounds(num_samples, hparams)
    firsts = tf.range(tf.size(starts, tf.int64)) * features.EXAMPLES_PER_CHUNK
    return tf.data.Dataset.from_tensor_slices(
        (starts, ends, counts, firsts)).map(
            lambda s, e, c, f: (key, samples(contents, path, data_offset, s,
                                             e), c, f, num_samples))

  return clips.interleave(_as_written(chunks),
                          num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=deterministic)


def _examples(clips, hparams, deterministic=False, offsets=(0,)):
  """(key, path, data offset, num samples) clips -> (example, key) pairs,
  one per example. `key` rides along unchanged: the multi-hot labels when
  training, the clip's index when scoring. deterministic: in clip order
  (else in the order the parallel reads finish, which is faster).
  offsets: the clips' data offsets (pcm.readers; by default, WAVs the
  pipeline reads itself)."""
  def chunk_examples(key, samples, count, first, num_samples):
    del first, num_samples
    examples = features.chunk_examples(pcm.to_float(samples), count,
                                       hparams)
    return examples, tf.repeat(key[None], count, axis=0)

  return (_chunks(clips, hparams, deterministic, offsets)
          .map(_as_written(chunk_examples),
               num_parallel_calls=tf.data.AUTOTUNE,
               deterministic=deterministic)
          .unbatch())


def _crops(clips, hparams, deterministic=False, offsets=(0,)):
  """As _examples, but ((16-bit crop, frames), key) pairs: the samples each
  example is made of and how many of its frames the clip holds, for
  features.crops_to_examples on the training device."""
  def chunk_crops(key, samples, count, first, num_samples):
    crops = features.chunk_crops(samples, count, hparams)
    frames = features.crop_frames(num_samples, first, count, hparams)
    return (crops, frames), tf.repeat(key[None], count, axis=0)

  return (_chunks(clips, hparams, deterministic, offsets)
          .map(_as_written(chunk_crops), num_parallel_calls=tf.data.AUTOTUNE,
               deterministic=deterministic)
          .unbatch())


def _indexed_clips(paths):
  """((clip index, path, data offset, num samples) clips, data offsets)."""
  offsets, counts = pcm.clip_headers(paths)
  return tf.data.Dataset.from_tensor_slices(
      (np.arange(len(paths), dtype=np.int32),
       np.asarray(paths, dtype=object).astype(str), offsets, counts)), offsets


def clips_log_mel_examples(paths, hparams):
  """(path, [num_examples, example_window, mel_bands] float32 examples) of
  each clip, in order and as they are made: the pipeline's own examples
  (_examples), for the int8 calibration and export's checks. One pipeline
  for all the clips: one made per clip is traced anew each time (~0.3 s
  of CPU a clip)."""
  clips, offsets = _indexed_clips(paths)
  batches = without_autotuning(_examples(
      clips, hparams, deterministic=True, offsets=offsets).batch(
          features.EXAMPLES_PER_CHUNK))
  held, index = [], 0
  for batch, keys in batches.as_numpy_iterator():
    cuts = np.flatnonzero(np.diff(keys)) + 1
    for part, key in zip(np.split(batch, cuts), keys[np.r_[0, cuts]]):
      if held and key != index:
        yield paths[index], np.concatenate(held)
        held = []
      held.append(part)
      index = key
  if held:
    yield paths[index], np.concatenate(held)


def _labeled_clips(csv_path, clip_dir, class_names):
  """(multi-hot labels, clip paths) of a `fname,labels` CSV."""
  rows = files.read_labeled_csv(csv_path, None, class_names)
  return (files.label_matrix(rows, class_names),
          [os.path.join(clip_dir, fname) for fname, _ in rows])


def parse_csv_records(csv_path, clip_dir, class_names):
  """A dataset of (multi-hot labels, clip path), one per CSV row."""
  return tf.data.Dataset.from_tensor_slices(
      _labeled_clips(csv_path, clip_dir, class_names))


def example_count(csv_path, clip_dir, class_names, hparams):
  """The examples of a CSV's clips."""
  _, paths = _labeled_clips(csv_path, clip_dir, class_names)
  return sum(features.num_examples(int(n), hparams)
             for n in pcm.clip_headers(paths)[1])


def example_cache_size(sources, class_names, hparams, crops=False):
  """(examples, bytes) that --train_cache_examples keeps in memory for the
  training sources: each example's float32 log-mel values (or, with crops,
  its 16-bit samples and frame count) and float32 multi-hot labels."""
  count = sum(example_count(s.csv_path, s.clip_dir, class_names, hparams)
              for s in sources)
  frames = hparams.geometry.example_frames
  each = (2 * hparams.geometry.crop_length + 4 if crops else
          4 * frames * hparams.mel_bands)
  return count, count * (each + 4 * len(class_names))


def _shuffled_examples(csv_path, clip_dir, class_names, hparams, num_clips,
                       shard, cache_examples, seed, crops):
  """One source's (example, labels) pairs, shuffled (see train_dataset)."""
  labels, paths = _labeled_clips(csv_path, clip_dir, class_names)
  headers = pcm.clip_headers(paths)
  clips = tf.data.Dataset.from_tensor_slices((labels, paths) + headers)
  if shard is not None:
    clips = clips.shard(*shard)
  deterministic = seed is not None
  clip_seed, example_seed = (None, None) if seed is None else (seed, seed + 1)
  make = _crops if crops else _examples
  if cache_examples:
    # A buffer of every clip's examples (a worker holds its share of them):
    # a uniform shuffle of the whole cache each epoch.
    total = sum(features.num_examples(int(n), hparams) for n in headers[1])
    return (make(clips, hparams, deterministic, headers[0]).cache()
            .shuffle(max(total, 1), seed=example_seed,
                     reshuffle_each_iteration=True))
  clips = clips.shuffle(num_clips, seed=clip_seed,
                        reshuffle_each_iteration=True)
  return make(clips, hparams, deterministic, headers[0]).shuffle(
      EXAMPLE_SHUFFLE_BUFFER, seed=example_seed)


def _batched(examples, hparams, batch_size):
  return (examples
          .batch(batch_size or hparams.batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))


def train_dataset(csv_path, clip_dir, class_names, hparams, num_clips,
                  epochs=None, batch_size=None, shard=None,
                  cache_examples=False, seed=None, crops=False):
  """Shuffled, repeated batches of (examples, multi-hot labels) for training:
  clips shuffled (in a buffer of num_clips) every epoch, their examples
  shuffled in a buffer of EXAMPLE_SHUFFLE_BUFFER.

  cache_examples: every example is computed once, in the first epoch, and
  kept in memory (about 38.4 KB each with the default hparams); each epoch
  then shuffles all of them at once instead of clips and a buffer, so the
  CPU does no WAV decoding or feature work after the first epoch.

  batch_size (default hparams.batch_size) and shard = (count, index) serve
  distributed training: a worker reads every count-th clip from the index-th
  and batches a replica's share of the batch.

  seed: the shuffles are seeded and the examples come in an order that
  depends on the clips' order only, so that a run repeats exactly.

  crops: each example comes as the 16-bit samples it is made of and its
  frame count ((crop, frames), labels; see _crops), for the training step
  to make the example on the device; in the same order, for the same
  seed, as the examples themselves."""
  examples = _shuffled_examples(csv_path, clip_dir, class_names, hparams,
                                num_clips, shard, cache_examples, seed, crops)
  return _batched(examples.repeat(epochs), hparams, batch_size)


def source_weights(sources, class_names, hparams):
  """Each source's share of the training examples: its weight, or, for
  sources without one, its share of the examples of all of them."""
  if all(s.weight is not None for s in sources):
    weights = [s.weight for s in sources]
  else:
    weights = [example_count(s.csv_path, s.clip_dir, class_names, hparams)
               for s in sources]
  return [w / sum(weights) for w in weights]


def sources_dataset(sources, class_names, hparams, epochs=None,
                    batch_size=None, shard=None, cache_examples=False,
                    seed=None, crops=False):
  """train_dataset over several sources (inputs.Source): each source's
  examples shuffled and repeated on their own, every example of a batch
  drawn from a source chosen at random by source_weights. With a noisy
  source each example's labels come as (multi-hot labels, 1.0 if its
  source is noisy else 0.0)."""
  streams = []
  marked = any(s.noisy for s in sources)
  for i, source in enumerate(sources):
    rows = files.read_labeled_csv(source.csv_path, None, class_names)
    stream = _shuffled_examples(
        source.csv_path, source.clip_dir, class_names, hparams, len(rows),
        shard, cache_examples, None if seed is None else seed + 3 * i,
        crops).repeat(epochs)
    if marked:
      flag = tf.constant(float(source.noisy))
      stream = stream.map(_as_written(lambda example, labels, flag=flag: (
          example, (labels, flag))))
    streams.append(stream)
  chosen = tf.data.Dataset.sample_from_datasets(
      streams, source_weights(sources, class_names, hparams),
      seed=None if seed is None else seed + 2)
  return _batched(chosen, hparams, batch_size)


def statistics_dataset(csv_path, clip_dir, class_names, hparams,
                       num_batches, seed=0, more_sources=()):
  """A fixed set of num_batches training batches of examples (no labels),
  for batch-norm statistics: the first num_batches x batch_size examples
  of the clips in a seeded order (repeated if the set is smaller), in a
  seeded order, kept in memory after the first pass. The order comes from
  NumPy, not from TensorFlow's seeds (which depend on the process's global
  seed), so every process of a run (a resumed one too) uses the same
  examples. more_sources (inputs.Source): their clips too, as if one CSV."""
  labels, paths = _labeled_clips(csv_path, clip_dir, class_names)
  for source in more_sources:
    more_labels, more_paths = _labeled_clips(source.csv_path,
                                             source.clip_dir, class_names)
    labels, paths = np.concatenate([labels, more_labels]), paths + more_paths
  offsets, counts = pcm.clip_headers(paths)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(paths))
  clips = tf.data.Dataset.from_tensor_slices(
      (labels[order], np.asarray(paths)[order], offsets[order],
       counts[order]))
  total = num_batches * hparams.batch_size
  shuffled = rng.permutation(total)
  return (_examples(clips, hparams, deterministic=True, offsets=offsets)
          .map(_as_written(lambda examples, _: examples))
          .repeat()
          .take(total)
          .batch(total)
          .map(_as_written(lambda examples: tf.gather(examples, shuffled)))
          .unbatch()
          .batch(hparams.batch_size, drop_remainder=True)
          .cache())


def scoring_dataset(clip_paths, hparams, batch_size):
  """Batches of (examples, clip_index) over many clips, for eval/inference.

  Short clips share a batch and long clips spread over several, so every
  batch is full but the last; a clip's examples may arrive in any order.
  """
  clips, offsets = _indexed_clips(clip_paths)
  return without_autotuning(_examples(clips, hparams, offsets=offsets)
                            .batch(batch_size)
                            .prefetch(tf.data.AUTOTUNE))


def without_autotuning(batches):
  """A scoring pipeline with tf.data's autotuning off (parallel calls and
  prefetch at their starting sizes). With it on, deleting the exhausted
  iterator waits for the autotuner's thread: 2.8 to 3.0 s in 2 of 4 runs
  scoring 60 clips (7.4 s of work) with MobileNet on 2 quiet cores, up to
  20 s under load; the scoring loop takes as long without it
  (docs/fast-cpu-scoring.md)."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return batches.with_options(options)
