"""The engine that scores clips, shared by eval, inference, tagging and
relabelling.

A clip's score is the mean of the sigmoid scores of all its examples, from
the waveform model (waveform_model.py): the model runs with batch norm
folded into its convolutions, which gives the same scores with less
arithmetic. The examples are made on tf.data's threads by the model's front
end (features.chunk_examples), in parallel with the model, and batched
across clips.

Eval and inference give it 16-bit 44.1 kHz mono files, which tf.data reads
itself (Scorer.score); tagging gives it waveform chunks it reads, mixes down
and resamples in Python (Scorer.score_waveforms). Both become the same
examples, batches and model calls.

The model call is the engine's (tflite_engine.Engine): the Keras model
(folded), or its TFLite conversion run by LiteRT (tflite_engine.py),
converted from the checkpoint in memory or read from an export. Everything
before it is the same for both.
"""

import sys

import numpy as np
import tensorflow as tf

from tagger.models import averaging
from tagger.models import batchnorm
from tagger.core import checkpoints
from tagger.sound import features
import inputs
import model as model_lib
from tagger.engines import clip_scores
from tagger.engines import tflite_engine
from tagger.modes import export_checks
from tagger.models import waveform_model
from tagger.core.files import UserError

# Examples per model call when scoring on CPU. Peak memory grows with it (the
# first layers' activations are 2.4 MB an example), while on CPU 16 scores as
# fast as 64: a 10-minute clip then needs ~1.1x the memory of a 5-second one.
BATCH_SIZE = 16
# On a GPU activations stay in device memory and small batches underuse it.
GPU_BATCH_SIZE = 64


def waveform_examples(chunks, hparams):
  """(clip index, first example index, samples, example count) chunks (see
  Scorer.score_waveforms) -> (example, clip index, example index), one
  element per example, in no particular order."""
  def chunk_examples(clip_index, first_example, samples, count):
    examples = features.chunk_examples(samples, count, hparams)
    return (examples, tf.fill([count], clip_index),
            first_example + tf.range(count))

  return (chunks
          .map(tf.autograph.experimental.do_not_convert(chunk_examples),
               num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
          .unbatch())


def open_scorer(model_name, num_classes, hparams, checkpoint_path, engine,
                doing, out=None, static=False):
  """A Scorer (engine: a tflite_engine.Engine, default Keras; static: see
  Scorer) loaded with a checkpoint, or with an ensemble's (several,
  comma-separated: the first scores with the others as its members),
  announced in one line that begins with `doing` (if any)."""
  paths = checkpoints.members(checkpoint_path) if checkpoint_path else [None]
  scorer = Scorer(model_name, num_classes, hparams, static, engine)
  statistics = [scorer.load(paths[0])]
  for path in paths[1:]:
    member = Scorer(model_name, num_classes, hparams, static, engine)
    # The calibration and check examples are the same for every member.
    member._calibration = scorer._calibration
    member._check_clips = scorer._check_clips
    statistics.append(member.load(path))
    scorer.members.append(member)
  scorer.label = (scorer.source if len(paths) == 1 else
                  'the mean of %d checkpoints, %s' % (len(paths),
                                                      ', '.join(paths)))
  scorer.statistics = ', '.join(dict.fromkeys(statistics))
  if doing:
    print('%s %s (batch-norm statistics: %s%s)' % (
        doing, scorer.label, scorer.statistics, scorer.engine_note()),
          file=out or sys.stdout, flush=True)
  return scorer


class Scorer:
  """Holds a model; `load` a checkpoint, then `score` clips with it."""

  def __init__(self, model_name, num_classes, hparams, static=False,
               engine=None):
    """static: the inference model without loops over the batch, as TFLite
    needs (model.build_model)."""
    self.model_name = model_name
    self.hparams = hparams
    self.num_classes = num_classes
    self.engine = engine or tflite_engine.Engine()
    self.source = None  # what scores: a checkpoint or a .tflite file
    self.batch_size = (GPU_BATCH_SIZE if tf.config.list_logical_devices('GPU')
                       else BATCH_SIZE)
    self._calibration = None
    self._check_clips = None
    # (clip paths, their scoring dataset): eval scores every checkpoint on
    # the same clips, and a dataset made once is not traced, nor its clips'
    # headers read, again for each.
    self._pipeline = None
    # Set by open_scorer: what scores (a checkpoint, or "the mean of ..."),
    # and its batch-norm statistics.
    self.label = self.statistics = None
    # An ensemble's other checkpoints (open_scorer): every example's score
    # is the mean of this model's and theirs.
    self.members = []
    if self.engine.model_path:
      return  # the file is the whole model
    self.model = model_lib.build_model(model_name, num_classes, hparams)
    self.inference_model = batchnorm.build_inference_model(
        model_name, num_classes, hparams, static or self.engine.tflite)
    # What every mode scores with; export wraps it as it is.
    self.waveform_model = waveform_model.WaveformModel(self.inference_model,
                                                       hparams)
    frames = hparams.geometry.example_frames
    spec = tf.TensorSpec([None, frames, hparams.mel_bands], tf.float32)
    # The float model: what scores with the Keras engine, and the reference
    # a model quantized in memory is checked against.
    self._keras = tf.function(self.waveform_model.scores,
                              input_signature=[spec], autograph=False)
    self._score_batch = self._keras

  def load(self, checkpoint_path):
    """Loads a checkpoint (or, with an engine's model_path, that file): its
    averaged weights if it has them (unless score_averaged=0), else its raw
    ones. Returns what the scores will use: the batch-norm statistics,
    'precise' (bn_stats=precise and the checkpoint has them for these
    weights), 'moving' or 'none' (no batch norm), followed by ' of the
    averaged weights' for those."""
    if self.engine.model_path:
      self.source = self.engine.model_path
      self._score_batch = tflite_engine.Runner(self.source,
                                               self.engine.threads)
      return tflite_engine.read_metadata(self.source).get('statistics', '?')
    self.source = checkpoint_path
    reader = checkpoints.open_checkpoint(checkpoint_path)
    mismatch = checkpoints.record_mismatch(reader, checkpoint_path,
                                           self.model_name,
                                           self.hparams)
    if mismatch:
      raise UserError('%s: %s' % (checkpoint_path, mismatch))
    checkpoints.assign_from_checkpoint(self.model.weights, reader,
                                       checkpoint_path)
    averaged = self.hparams.score_averaged and averaging.has_average(
        reader, self.model.trainable_variables)
    if averaged:
      averaging.load_average(self.model.trainable_variables, reader)
    if self.hparams.bn_stats == 'precise':
      statistics = batchnorm.use_precise(
          self.model, reader, checkpoint_path,
          averaging.PRECISE_GROUP if averaged else batchnorm.PRECISE)
    else:
      statistics = 'moving' if batchnorm.batch_norm_layers(self.model) else (
          'none')
    batchnorm.fold_batch_norm(self.model, self.inference_model)
    if self.engine.tflite:
      self._score_batch = self._converted(checkpoint_path)
    return statistics + (' of the averaged weights' if averaged else '')

  def _converted(self, checkpoint_path):
    """The loaded model part converted in memory, as a Runner; a quantized
    one is held to the bound of an export's (export_checks.check_quantized) before
    it scores anything."""
    quantize = self.engine.quantize or 'none'
    runner = tflite_engine.Runner(self.convert(quantize), self.engine.threads)
    if quantize != 'none':
      if self._check_clips is None:
        self._check_clips = export_checks.quantization_check_clips(self)
      export_checks.check_quantized(
          'the %s model converted from %s' % (quantize, checkpoint_path),
          runner, lambda examples: np.asarray(self._keras(examples)),
          self._check_clips, lead='--quantize %s: ' % quantize,
          after='nothing scored with it')
    return runner

  def convert(self, quantize):
    """The loaded model part as TFLite bytes (see tflite_engine.convert);
    int8 calibrated on the engine's calibration clips."""
    if quantize == 'int8' and self._calibration is None:
      self._calibration = tflite_engine.calibration_examples(
          self.engine.calibration_paths, self.hparams)
    return tflite_engine.convert(self.inference_model, self.hparams,
                                 quantize, self._calibration)

  def exported_model(self):
    """What export wraps: the waveform model every mode scores with; an
    ensemble's, holding every member's network."""
    if not self.members:
      return self.waveform_model
    return waveform_model.WaveformModel(
        [self.inference_model] + [m.inference_model for m in self.members],
        self.hparams)

  def score_examples(self, examples):
    """[batch, frames, bands] examples -> [batch, classes] float32 scores,
    from the engine's model: the seam between the pipeline and the
    engines. An ensemble's: the mean of its members' scores, which makes a
    clip's score the mean of their clip scores."""
    scores = np.asarray(self._score_batch(examples))
    for member in self.members:
      scores = scores + np.asarray(member._score_batch(examples))
    return scores / (1 + len(self.members))

  def engine_note(self):
    """'' for Keras, else which TFLite model and threads score."""
    if not self.engine.tflite:
      return ''
    names = {'none': 'float32', 'dynamic': 'dynamic', 'int8': 'int8'}
    kind = (names[tflite_engine.read_metadata(self.source)['quantization']]
            if self.engine.model_path else '%s, converted in memory' %
            names[self.engine.quantize or 'none'])
    return '; TFLite engine: %s, %d threads' % (
        kind, self.engine.threads or tflite_engine.default_threads())

  def score(self, clip_paths, sample_counts, label='Scoring', on_progress=None):
    """Returns [num_clips, num_classes] float64 clip scores.

    sample_counts (from files.check_clips) gives each clip's length, so that
    progress counts finished clips exactly. on_progress(finished, scores), if
    given, returns extra text for the progress line (e.g. a running lwlrap).
    """
    if self._pipeline is None or self._pipeline[0] != list(clip_paths):
      self._pipeline = (list(clip_paths), inputs.scoring_dataset(
          clip_paths, self.hparams, self.batch_size))
    return self._score(self._pipeline[1], clip_paths, sample_counts, label,
                       on_progress=on_progress)

  def score_waveforms(self, chunks, names, sample_counts, label='Scoring',
                      on_examples=None, on_clip=None, out=None):
    """Scores clips whose waveforms are made outside tf.data (tagging reads,
    mixes down and resamples them in Python); returns [num_clips,
    num_classes] float64 clip scores, NaN for each clip whose examples did
    not all arrive (a sample_counts of None: one not read at all).

    chunks: a tf.data.Dataset of (clip index int32, index of the chunk's
    first example int32, [samples] float32 44.1 kHz mono waveform, example
    count int32), one element per chunk of features.chunk_bounds(sample_counts
    of the clip): the samples [start, end) of the clip, of which `count`
    examples are kept, exactly what inputs.scoring_dataset makes from a
    16-bit file, so the examples are those of the whole-clip framing.
    Producing them one chunk at a time keeps memory bounded by a few chunks,
    however long the clip.

    on_examples(clip_indices, example_indices, scores) sees every batch's
    example scores (in no particular order); on_clip(index, score) is
    called once per clip as soon as all its examples are scored (scores
    checked finite). Progress lines go to `out` (default stdout).
    """
    batches = inputs.without_autotuning(
        waveform_examples(chunks, self.hparams).batch(self.batch_size)
        .prefetch(tf.data.AUTOTUNE))
    return self._score(batches, names, sample_counts, label,
                       on_examples=on_examples, on_clip=on_clip, out=out,
                       partial=True)

  def _score(self, batches, names, sample_counts, label, **kwargs):
    """clip_scores.score_batches with this engine, each clip's expected
    examples from its length (None: a clip not read at all)."""
    expected = np.array([0 if n is None else
                         features.num_examples(n, self.hparams)
                         for n in sample_counts], dtype=np.int64)
    return clip_scores.score_batches(self.score_examples, batches, names,
                                     expected, self.num_classes, label,
                                     **kwargs)
