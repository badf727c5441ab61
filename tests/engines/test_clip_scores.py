"""The scoring loop (clip_scores.py) on batches made by hand: each clip's
score is the mean of its examples' scores, whatever order they come in; a
clip short of examples, or with a non-finite score, is named."""

import io

import numpy as np
import pytest

NAMES = ['a.wav', 'b.wav', 'c.wav']
# Example scores (one class each, 2 classes) by clip: 3, 2 and 1 examples.
SCORES = {0: [[0.1, 0.9], [0.3, 0.7], [0.8, 0.2]], 1: [[0.5, 0.5], [0.0, 1.0]],
          2: [[0.25, 0.75]]}


def _batches(order, scores=SCORES):
  """Batches of 3 (examples, clip index, example index), a clip's examples
  twice in one batch; the examples are the example scores themselves,
  which the fake engine passes through."""
  import tensorflow as tf
  flat = [(clip, i) for clip, i in order]
  batches = []
  for start in range(0, len(flat), 3):
    part = flat[start:start + 3]
    batches.append((
        np.array([scores[c][i] for c, i in part], np.float32),
        tf.constant([c for c, _ in part], tf.int32),
        tf.constant([i for _, i in part], tf.int32)))
  return batches


ORDER = [(1, 1), (0, 2), (2, 0), (0, 0), (1, 0), (0, 1)]


def _score(batches, expected=(3, 2, 1), **kwargs):
  from tagger.engines import clip_scores
  out = io.StringIO()
  result = clip_scores.score_batches(
      lambda examples: examples, batches, NAMES, np.array(expected), 2,
      'Scoring', out=out, **kwargs)
  return result, out.getvalue()


def test_each_clip_score_is_the_mean_of_its_examples():
  seen, finished = [], {}
  result, out = _score(
      _batches(ORDER),
      on_examples=lambda clips, examples, scores: seen.extend(
          zip(clips.tolist(), examples.tolist())),
      on_clip=lambda index, score: finished.setdefault(index, score))
  want = np.array([np.mean(SCORES[c], axis=0) for c in range(3)])
  np.testing.assert_allclose(result, want, rtol=1e-6)
  assert sorted(seen) == sorted(ORDER)
  assert sorted(finished) == [0, 1, 2]
  for index, score in finished.items():
    np.testing.assert_allclose(score, want[index], rtol=1e-6)
  assert out.startswith('Scoring: 3/3 clips, 6/6 examples, ')


def test_a_clip_short_of_examples_is_named_unless_partial():
  from tagger.core.files import UserError
  batches = _batches(ORDER[:-1])  # clip 0's example 1 never comes
  with pytest.raises(UserError, match=r'^a\.wav: got 2 examples, expected 3'):
    _score(batches)
  result, _ = _score(_batches(ORDER[:-1]), partial=True)
  assert np.isnan(result[0]).all()
  np.testing.assert_allclose(result[1:], [np.mean(SCORES[c], axis=0)
                                          for c in (1, 2)], rtol=1e-6)


@pytest.mark.parametrize('with_on_clip', [False, True],
                         ids=['eval', 'tagging'])
def test_a_non_finite_clip_score_is_named(with_on_clip):
  """A diverged model's NaN reaches no report: eval and inference (no
  on_clip) and tagging (on_clip) both stop, naming the clip."""
  from tagger.core.files import UserError
  scores = dict(SCORES)
  scores[1] = [[0.5, np.nan], [0.0, 1.0]]
  kwargs = {'on_clip': lambda index, score: None} if with_on_clip else {}
  with pytest.raises(UserError, match=r'^b\.wav: scores are not finite'):
    _score(_batches(ORDER, scores), **kwargs)
