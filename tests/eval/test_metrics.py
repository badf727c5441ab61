"""lwlrap, EER and micro-F1 against scikit-learn, hand-worked examples and a
brute-force NumPy EER."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

import evaluation
from tagger.eval import metrics


def random_truth(rng, rows, classes, p=0.25):
  truth = (rng.random((rows, classes)) < p).astype(np.float64)
  empty = truth.sum(axis=1) == 0
  truth[empty, rng.integers(0, classes, empty.sum())] = 1
  assert np.all(truth.sum(axis=1) >= 1)
  return truth


def sklearn_lwlrap(truth, scores):
  return sk_metrics.label_ranking_average_precision_score(
      truth, scores, sample_weight=truth.sum(axis=1))


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
@pytest.mark.parametrize('tied', [False, True])
def test_overall_lwlrap_equals_weighted_lrap(seed, tied):
  rng = np.random.default_rng(seed)
  rows, classes = 60, 12
  truth = random_truth(rng, rows, classes)
  scores = rng.random((rows, classes))
  if tied:
    scores = np.round(scores, 1)  # many ties within rows
  lwlrap = evaluation.Lwlrap(['c%d' % i for i in range(classes)])
  for batch in np.array_split(np.arange(rows), 3):
    lwlrap.accumulate(truth[batch], scores[batch])
  assert lwlrap.overall_lwlrap() == pytest.approx(
      sklearn_lwlrap(truth, scores), abs=1e-12)
  weights = lwlrap.per_class_weight()
  assert weights.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(weights, truth.sum(axis=0) / truth.sum())


def test_per_class_lwlrap_hand_worked():
  # Classes A, B, C.
  # clip 1: truth A, C; scores A .9, B .5, C .2.
  #   A is ranked 1st, 1 positive at or above -> 1.
  #   C is ranked 3rd, 2 positives at or above -> 2/3.
  # clip 2: truth B; scores .3 .6 .8: B is 2nd, 1 positive -> 1/2.
  # clip 3: truth A, B; scores .1 .7 .4:
  #   A is 3rd with 2 positives at or above -> 2/3; B is 1st -> 1.
  # Per class: A (1 + 2/3)/2 = 5/6, B (1/2 + 1)/2 = 3/4, C 2/3.
  # Label counts A 2, B 2, C 1 -> weights .4, .4, .2 ->
  # overall .4*5/6 + .4*3/4 + .2*2/3 = 23/30.
  truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
  scores = np.array([[.9, .5, .2], [.3, .6, .8], [.1, .7, .4]])
  lwlrap = evaluation.Lwlrap(['A', 'B', 'C'])
  lwlrap.accumulate(truth[:2], scores[:2])
  lwlrap.accumulate(truth[2:], scores[2:])
  np.testing.assert_allclose(lwlrap.per_class_lwlrap(), [5 / 6, 3 / 4, 2 / 3])
  np.testing.assert_allclose(lwlrap.per_class_weight(), [.4, .4, .2])
  assert lwlrap.overall_lwlrap() == pytest.approx(23 / 30)
  assert lwlrap.overall_lwlrap() == pytest.approx(
      sklearn_lwlrap(truth, scores))
  lines = str(lwlrap).split('\n')
  assert lines == ['Lwlrap(A) = 0.833333', 'Lwlrap(B) = 0.750000',
                   'Lwlrap(C) = 0.666667', 'Overall lwlrap = 0.766667']


def test_str_orders_classes_by_decreasing_lwlrap():
  # Class Z is always ranked first (1.0), Y second, X last.
  truth = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
  scores = np.array([[.1, .5, .9], [.1, .5, .9], [.1, .5, .9],
                     [.1, .5, .9]])
  lwlrap = evaluation.Lwlrap(['X', 'Y', 'Z'])
  lwlrap.accumulate(truth, scores)
  names = [line.split('(')[1].split(')')[0]
           for line in str(lwlrap).split('\n')[:-1]]
  per_class = lwlrap.per_class_lwlrap()
  assert per_class[2] > per_class[1] > per_class[0]
  assert names == ['Z', 'Y', 'X']
  assert str(lwlrap).split('\n')[-1] == 'Overall lwlrap = %.6f' % (
      sklearn_lwlrap(truth, scores))


def test_lwlrap_class_without_labels_has_zero_weight():
  truth = np.array([[1, 0, 0], [1, 1, 0]])
  scores = np.array([[.2, .3, .9], [.8, .1, .5]])
  lwlrap = evaluation.Lwlrap(['a', 'b', 'c'])
  lwlrap.accumulate(truth, scores)
  assert lwlrap.per_class_weight()[2] == 0
  assert lwlrap.overall_lwlrap() == pytest.approx(
      sklearn_lwlrap(truth, scores))


def test_lwlrap_rejects_wrong_shape():
  lwlrap = evaluation.Lwlrap(['a', 'b'])
  with pytest.raises(ValueError):
    lwlrap.accumulate(np.ones((2, 3)), np.ones((2, 3)))


# Sweeps thresholds from high to low and interpolates where FNR - FPR first
# drops to zero or below (tests/support/reference.py).
from support.reference import brute_force_eer  # noqa: E402


def test_eer_hand_worked_exact_crossing():
  # Positives .9, .4; negatives .6, .1. At threshold .6: one of two
  # negatives accepted (FPR 1/2) and one of two positives rejected (FNR 1/2).
  assert metrics.equal_error_rate([1, 1, 0, 0], [.9, .4, .6, .1]) == \
      pytest.approx(0.5)


def test_eer_hand_worked_interpolated_crossing():
  # Positives .9 .8 .3, negatives .7 .1. Lowering the threshold past .8 gives
  # FPR 0, FNR 1/3; past .7 gives FPR 1/2, FNR still 1/3. Between those two
  # points FNR stays 1/3 while FPR rises 0 -> 1/2, so they meet at 1/3.
  assert metrics.equal_error_rate([1, 1, 1, 0, 0],
                                     [.9, .8, .3, .7, .1]) == \
      pytest.approx(1 / 3)
  # Tied positive and negative at .5: from (FPR 0, FNR 1/2) the curve jumps
  # to (FPR 1/2, FNR 0); on that segment FNR = 1/2 - FPR, equal at 1/4.
  assert metrics.equal_error_rate([1, 0, 1, 0], [.8, .5, .5, .2]) == \
      pytest.approx(0.25)


def test_eer_perfect_and_undefined():
  assert metrics.equal_error_rate([1, 1, 0, 0], [.9, .8, .2, .1]) == 0.0
  # Perfectly wrong: every negative above every positive.
  assert metrics.equal_error_rate([0, 0, 1, 1], [.9, .8, .2, .1]) == \
      pytest.approx(1.0)
  assert metrics.equal_error_rate([1, 1, 1], [.1, .5, .9]) is None
  assert metrics.equal_error_rate([0, 0, 0], [.1, .5, .9]) is None


@pytest.mark.parametrize('seed', range(6))
def test_eer_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 80))
  truth = rng.random(n) < rng.uniform(0.2, 0.8)
  truth[0], truth[1] = True, False
  scores = rng.random(n) + 0.3 * truth
  if seed % 2:
    scores = np.round(scores, 1)
  want = brute_force_eer(truth, scores)
  assert metrics.equal_error_rate(truth.astype(int), scores) == \
      pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize('seed', range(4))
def test_micro_f1_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  truth = random_truth(rng, 40, 9)
  scores = rng.random((40, 9))
  scores[0, 0] = 0.5  # exactly the threshold counts as a positive
  want = sk_metrics.f1_score(truth, scores >= 0.5, average='micro')
  assert metrics.micro_f1(truth, scores) == pytest.approx(want)


def test_micro_f1_hand_worked():
  # Predicted positives (>= .5): (0,0) hit, (0,1) false alarm, (1,1) hit;
  # truth positives: (0,0), (1,1), (1,2) -> F1 = 2*2 / (3 + 3) = 2/3.
  truth = np.array([[1, 0, 0], [0, 1, 1]])
  scores = np.array([[.5, .7, .1], [.2, .9, .49]])
  assert metrics.micro_f1(truth, scores) == pytest.approx(2 / 3)


def test_mfom_metrics_undefined_class():
  rng = np.random.default_rng(7)
  truth = np.zeros((20, 3))
  truth[:8, 0] = 1
  truth[5:15, 1] = 1
  # Class 2 has no positive clip.
  scores = rng.random((20, 3))
  result, text = metrics.mfom_metrics(truth, scores, ['a', 'b', 'c'])
  eer_a = brute_force_eer(truth[:, 0], scores[:, 0])
  eer_b = brute_force_eer(truth[:, 1], scores[:, 1])
  assert result['class_eer'][0] == pytest.approx(eer_a)
  assert result['class_eer'][1] == pytest.approx(eer_b)
  assert result['class_eer'][2] is None
  assert result['mean_eer'] == pytest.approx((eer_a + eer_b) / 2)
  assert result['pooled_eer'] == pytest.approx(
      brute_force_eer(truth.ravel(), scores.ravel()))
  assert result['micro_f1'] == pytest.approx(sk_metrics.f1_score(
      truth, scores >= 0.5, average='micro'))
  lines = text.split('\n')
  assert 'EER(c) = undefined' in lines
  assert 'EER(a) = %.6f' % eer_a in lines
  mean_line = [l for l in lines if l.startswith('Mean EER')]
  assert mean_line == ['Mean EER = %.6f (over 2 classes with positive and '
                       'negative clips)' % ((eer_a + eer_b) / 2)]


def test_mfom_metrics_all_undefined():
  truth = np.ones((4, 2))
  result, text = metrics.mfom_metrics(truth, np.full((4, 2), .7), ['a', 'b'])
  assert result['class_eer'] == [None, None]
  assert result['mean_eer'] is None
  assert result['pooled_eer'] is None
  assert 'Mean EER = undefined' in text
  assert result['micro_f1'] == pytest.approx(1.0)
