"""The Scorer used as a library (tagger/engines/scoring.py): batches that span
clips score as clip by clip, a second Scorer in the same process loads the
same checkpoint and scores alike, and a checkpoint of another model or
hparams is refused."""

import glob
import os

import numpy as np
import pytest

from support.scores import independent_clip_scores, labeled_rows
from support.settings import HPARAMS


def test_batched_scoring_equals_per_clip_scoring(
    mobilenet_train, dataset, inference_clips, parse_hparams, monkeypatch):
  from tagger.core import files
  from tagger.engines import scoring
  monkeypatch.setattr(scoring, 'BATCH_SIZE', 5)  # batches span clips
  hparams = parse_hparams('batch_size=5')
  paths = [os.path.join(dataset['train_clip_dir'], f)
           for f, _ in labeled_rows(dataset['validation_csv'])]
  paths += sorted(glob.glob(os.path.join(inference_clips, '*.wav')))
  samples = files.check_clips(paths)
  scorer = scoring.Scorer('mobilenet-v1', 80, hparams)
  scorer.load(mobilenet_train['checkpoint'])
  batched = scorer.score(paths, samples)
  assert batched.shape == (len(paths), 80)
  # Each clip alone: the first clips' batches span clips, and the last
  # clip ends the last batch.
  chosen = list(range(6)) + [len(paths) - 1]
  single = np.concatenate([scorer.score([paths[i]], [samples[i]])
                           for i in chosen])
  np.testing.assert_allclose(batched[chosen], single, atol=1e-5, rtol=0)
  # Clips really differ, so the comparison is not trivially satisfied.
  assert np.ptp(batched, axis=0).max() > 1e-4


def test_two_scorers_in_one_process_load_crnn_checkpoint(
    crnn_train, dataset, parse_hparams):
  """Eval/inference code used as a library: a second Scorer in the same
  process must load the same checkpoint as the first and score alike."""
  from tagger.core import files
  from tagger.engines import scoring
  hparams = parse_hparams(crnn_train['hparams'])
  checkpoint = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  fnames = [f for f, _ in labeled_rows(dataset['validation_csv'])]
  paths = [os.path.join(dataset['train_clip_dir'], f) for f in fnames]
  samples = files.check_clips(paths)
  first = scoring.Scorer('crnn', 80, hparams)
  second = scoring.Scorer('crnn', 80, hparams)
  first.load(checkpoint)
  second.load(checkpoint)
  first_scores = first.score(paths, samples)
  second_scores = second.score(paths, samples)
  np.testing.assert_allclose(second_scores, first_scores, atol=1e-6, rtol=0)
  expected = independent_clip_scores('crnn', hparams, checkpoint,
                                     dataset['train_clip_dir'], fnames)
  # NumPy and TensorFlow features differ by ~1e-5, which the CRNN's input
  # batch norm may amplify; elsewhere engine scores are held to 1e-4 too.
  np.testing.assert_allclose(first_scores, expected, atol=1e-4, rtol=0)


def test_checkpoint_of_another_model_or_hparams(crnn_train, parse_hparams):
  from tagger.core import files
  from tagger.engines import scoring
  checkpoint = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  scorer = scoring.Scorer('mobilenet-v1', 80, parse_hparams(HPARAMS))
  with pytest.raises(files.UserError,
                     match='model.ckpt-101: trained with --model crnn, not '
                     'mobilenet-v1'):
    scorer.load(checkpoint)
  scorer = scoring.Scorer('crnn', 80, parse_hparams('crnn_filters=16'))
  with pytest.raises(files.UserError,
                     match=r'trained with hparam crnn_filters=32, not 16'):
    scorer.load(checkpoint)


def test_one_scorer_scores_one_checkpoint_after_another(
    crnn_train, dataset, parse_hparams, monkeypatch):
  """As eval does over a sweep: one Scorer loads checkpoint after
  checkpoint and gives each its own scores (held to independent ones),
  from one pipeline made for the clips once; other clips get their own."""
  import inputs
  from tagger.core import files
  from tagger.engines import scoring
  made = []
  real = inputs.scoring_dataset

  def spy(paths, *args):
    made.append(list(paths))
    return real(paths, *args)

  monkeypatch.setattr(inputs, 'scoring_dataset', spy)
  hparams = parse_hparams(crnn_train['hparams'])
  fnames = [f for f, _ in labeled_rows(dataset['validation_csv'])]
  paths = [os.path.join(dataset['train_clip_dir'], f) for f in fnames]
  samples = files.check_clips(paths)
  scorer = scoring.Scorer('crnn', 80, hparams)
  got = []
  for step in (0, 101, 100):
    checkpoint = os.path.join(crnn_train['train_dir'], 'model.ckpt-%d' % step)
    scorer.load(checkpoint)
    got.append(scorer.score(paths, samples))
    np.testing.assert_allclose(got[-1], independent_clip_scores(
        'crnn', hparams, checkpoint, dataset['train_clip_dir'], fnames),
                               atol=1e-4, rtol=0)
  assert np.abs(got[0] - got[1]).max() > 1e-3  # the checkpoints differ
  assert made == [paths]
  np.testing.assert_allclose(scorer.score(paths[1:3], samples[1:3]),
                             got[2][1:3], atol=1e-6, rtol=0)
  assert made == [paths, paths[1:3]]
