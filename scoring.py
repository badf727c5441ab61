"""The engine that scores clips, shared by eval and inference.

A clip's score is the mean of the sigmoid scores of all its examples.
Examples are batched across clips (tf.data decodes and computes features in
parallel with the model), and the model runs with batch norm folded into its
convolutions, which gives the same scores with less arithmetic.
"""

import datetime
import time

import numpy as np
import tensorflow as tf

import batchnorm
import checkpoints
import features
import inputs
import model as model_lib
from files import UserError

PROGRESS_EVERY_SECONDS = 10.0
# Examples per model call when scoring on CPU. Peak memory grows with it (the
# first layers' activations are 2.4 MB an example), while on CPU 16 scores as
# fast as 64: a 10-minute clip then needs ~1.1x the memory of a 5-second one.
BATCH_SIZE = 16
# On a GPU activations stay in device memory and small batches underuse it.
GPU_BATCH_SIZE = 64


class Scorer:
  """Holds a model; `load` a checkpoint, then `score` clips with it."""

  def __init__(self, model_name, num_classes, hparams, static=False):
    """static: the inference model without loops over the batch, as TFLite
    needs (model.build_model)."""
    self.model_name = model_name
    self.hparams = hparams
    self.num_classes = num_classes
    self.model = model_lib.build_model(model_name, num_classes, hparams)
    self.inference_model = batchnorm.build_inference_model(
        model_name, num_classes, hparams, static)
    frames, _ = features.example_geometry(hparams)
    self.batch_size = (GPU_BATCH_SIZE if tf.config.list_logical_devices('GPU')
                       else BATCH_SIZE)
    spec = tf.TensorSpec([None, frames, hparams.mel_bands], tf.float32)
    self._score_batch = tf.function(
        lambda examples: tf.sigmoid(self.inference_model(examples,
                                                         training=False)),
        input_signature=[spec])

  def load(self, checkpoint_path):
    """Loads a checkpoint; returns the batch-norm statistics the scores will
    use: 'precise' (bn_stats=precise and the checkpoint has them), 'moving'
    or 'none' (no batch norm)."""
    reader = checkpoints.open_checkpoint(checkpoint_path)
    mismatch = checkpoints.record_mismatch(reader, checkpoint_path,
                                           self.model_name,
                                           self.hparams)
    if mismatch:
      raise UserError('%s: %s' % (checkpoint_path, mismatch))
    checkpoints.assign_from_checkpoint(self.model.weights, reader,
                                       checkpoint_path)
    if self.hparams.bn_stats == 'precise':
      statistics = batchnorm.use_precise(self.model, reader, checkpoint_path)
    else:
      statistics = 'moving' if batchnorm.batch_norm_layers(self.model) else (
          'none')
    batchnorm.fold_batch_norm(self.model, self.inference_model)
    return statistics

  def score(self, clip_paths, clip_samples, label='Scoring', on_progress=None):
    """Returns [num_clips, num_classes] float64 clip scores.

    clip_samples (from files.check_wavs) gives each clip's length, so that
    progress counts finished clips exactly. on_progress(finished, scores), if
    given, returns extra text for the progress line (e.g. a running lwlrap).
    """
    expected = np.array([features.num_examples(n, self.hparams)
                         for n in clip_samples])
    total = int(expected.sum())
    sums = np.zeros((len(clip_paths), self.num_classes))
    counts = np.zeros(len(clip_paths), dtype=np.int64)
    start = last_report = time.time()
    done = 0

    def report():
      finished = counts == expected
      rate = done / max(time.time() - start, 1e-9)
      extra = on_progress(finished, sums / np.maximum(counts, 1)[:, None]) \
          if on_progress else ''
      print('%s: %d/%d clips, %d/%d examples, %.1f examples/s, %s left%s' % (
          label, finished.sum(), len(clip_paths), done, total, rate,
          datetime.timedelta(seconds=int((total - done) / max(rate, 1e-9))),
          extra), flush=True)

    for examples, clip_index in inputs.scoring_dataset(
        clip_paths, self.hparams, self.batch_size):
      scores = self._score_batch(examples).numpy()
      clip_index = clip_index.numpy()
      np.add.at(sums, clip_index, scores)
      counts += np.bincount(clip_index, minlength=len(clip_paths))
      done += len(clip_index)
      if time.time() - last_report >= PROGRESS_EVERY_SECONDS:
        report()
        last_report = time.time()
    report()
    if not np.array_equal(counts, expected):
      bad = int(np.flatnonzero(counts != expected)[0])
      raise UserError('%s: got %d examples, expected %d (did the file change '
                      'during the run?)' % (clip_paths[bad], counts[bad],
                                            expected[bad]))
    clip_scores = sums / counts[:, None]
    if not np.all(np.isfinite(clip_scores)):
      bad = int(np.flatnonzero(~np.all(np.isfinite(clip_scores), axis=1))[0])
      raise UserError('%s: scores are not finite (is the checkpoint '
                      'diverged?)' % clip_paths[bad])
    return clip_scores
