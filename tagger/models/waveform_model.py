"""The one waveform-to-scores model: 44.1 kHz waveform -> log-mel examples
(features.LogMelExamples, chunk by chunk) -> the trained model with its
batch norm folded -> example scores, clip scores and embeddings.

Every mode scores through it. Export wraps __call__ in its SavedModel and
TFLite signatures. Eval, inference, tagging and relabelling (scoring.Scorer)
let tf.data make each chunk's examples with the same front end on the CPU
threads, where that is faster than in the model's ops (see README,
Performance), batch the examples of many clips together and call scores().
"""

import keras
import numpy as np
import tensorflow as tf

from tagger.sound import features


class WaveformModel(tf.Module):
  """waveform -> examples -> folded model, for one trained checkpoint (its
  weights are the inference model's, loaded by scoring.Scorer.load), or for
  an ensemble's: several inference models of the same features, given as a
  list, whose scores are averaged and whose embeddings are concatenated."""

  def __init__(self, inference_model, hparams):
    super().__init__()
    self.hparams = hparams
    self.front_end = features.LogMelExamples(hparams)
    models = (inference_model if isinstance(inference_model, list) else
              [inference_model])
    # Each scoring model with its pooled features as a second output.
    self.nets = [keras.Model(m.input, [m.get_layer('logits').input,
                                       m.output]) for m in models]
    self.num_classes = models[0].output.shape[-1]
    self.embedding_size = sum(n.outputs[0].shape[-1] for n in self.nets)

  def embed_and_score(self, examples):
    """[batch, frames, bands] -> ([batch, D] embeddings, [batch, classes]
    sigmoid scores); an ensemble's: its members' embeddings side by side,
    and the mean of their scores."""
    outputs = [net(examples, training=False) for net in self.nets]
    if len(outputs) == 1:
      return outputs[0][0], tf.sigmoid(outputs[0][1])
    return (tf.concat([e for e, _ in outputs], -1),
            tf.add_n([tf.sigmoid(l) for _, l in outputs]) / len(outputs))

  def scores(self, examples):
    return self.embed_and_score(examples)[1]

  def _chunk(self, chunk, count):
    """[clips, chunk samples] -> the chunk's first `count` examples' scores
    and embeddings [clips, count, ...], their features [clips, count x
    example hop (fewer at the end), bands], and [clips] True where every
    sample of the chunk is finite (|x| <= the largest float is False for
    NaN and inf, with TFLite's built-in ops)."""
    feature, examples = self.front_end.chunk(chunk, count)
    shape = tf.shape(examples)  # [clips, count, frames, bands]
    embeddings, scores = self.embed_and_score(
        tf.reshape(examples, tf.concat([[-1], shape[2:]], 0)))
    hop = self.hparams.geometry.example_hop_frames
    return ((tf.reshape(scores, [shape[0], count, -1]),
             tf.reshape(embeddings, [shape[0], count, -1]),
             feature[:, :count * hop]),
            tf.reduce_all(tf.abs(chunk) <= np.finfo(np.float32).max, -1))

  def __call__(self, waveforms):
    """[clips, samples] -> {scores [clips, examples, classes], clip_scores
    [clips, classes], embeddings [clips, examples, D], log_mel [clips,
    frames, bands]}. Chunk by chunk (features.chunk_bounds), so that memory
    holds one chunk's activations, not every example's, whatever the
    length. A clip with a non-finite sample gets NaN for every output (the
    model alone may turn NaN features into plausible scores)."""
    starts, ends, counts = features.chunk_bounds(tf.shape(waveforms)[1],
                                                self.hparams)
    clips = tf.shape(waveforms)[0]

    def body(i, finite, *outputs):
      parts, chunk_finite = self._chunk(waveforms[:, starts[i]:ends[i]],
                                        counts[i])
      return (i + 1, finite & chunk_finite) + tuple(
          tf.concat([o, p], 1) for o, p in zip(outputs, parts))

    # Empty, with a length the converter cannot fold to 0 (TFLite would
    # otherwise fix the loop's outputs at length 0).
    empty = tf.minimum(tf.size(starts), 0)
    initial = tuple(tf.zeros([clips, empty, n]) for n in (
        self.num_classes, self.embedding_size, self.hparams.mel_bands))
    _, finite, *outputs = tf.while_loop(
        lambda i, *_: i < tf.size(starts), body,
        (0, tf.fill([clips], True)) + initial,
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None])) +
        tuple(tf.TensorShape([None, None, o.shape[-1]]) for o in initial))
    scores, embeddings, log_mel = (
        tf.where(finite[:, None, None], o, np.float32(np.nan))
        for o in outputs)
    return {'scores': scores, 'clip_scores': tf.reduce_mean(scores, axis=1),
            'embeddings': embeddings, 'log_mel': log_mel}
