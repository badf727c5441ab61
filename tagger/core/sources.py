"""Training sources: one or more sets of clips (a `fname,labels` CSV and its
clip folder) trained on in one run, each with its share of the training
examples and the trust its labels get (curated, or noisy: their examples
take the noisy_loss hparam's loss). Plain Python: main.py checks them before
TensorFlow is imported.
"""

import dataclasses
import math

from tagger.core.files import UserError

KINDS = ('curated', 'noisy')


@dataclasses.dataclass(frozen=True)
class Source:
  """One set of training clips: a `fname,labels` CSV and its clip folder,
  its share of the training examples (weight; None: in proportion to its
  examples, as if the sources were one CSV), and whether its labels are
  noisy."""
  csv_path: str
  clip_dir: str
  weight: float = None
  noisy: bool = False


def _split(text):
  return [item.strip() for item in (text or '').split(',')]


def from_flags(csv_paths, clip_dirs, weights='', kinds=''):
  """Sources from the comma-separated flags: --train_csv_path and
  --train_clip_dir (one entry per source, in the same order), and the
  optional --train_source_weights and --train_source_kinds. Raises
  UserError (one line) on lists of other lengths, a weight that is not a
  positive number, weights whose sum is not finite, or a kind that is not
  curated or noisy."""
  csvs, dirs = _split(csv_paths), _split(clip_dirs)
  if len(csvs) != len(dirs):
    raise UserError('--train_csv_path names %d sources but --train_clip_dir '
                    '%d; give one clip folder per CSV, in the same order' % (
                        len(csvs), len(dirs)))
  for flag, values in (('--train_csv_path', csvs),
                       ('--train_clip_dir', dirs)):
    if '' in values:
      raise UserError('%s: an empty entry in %r' % (flag, ','.join(values)))
  count = len(csvs)
  parsed_weights = [None] * count
  if weights:
    parsed_weights = _parse_weights(_split(weights), count)
  parsed_kinds = ['curated'] * count
  if kinds:
    parsed_kinds = _parse_kinds(_split(kinds), count)
  return [Source(c, d, w, k == 'noisy') for c, d, w, k in zip(
      csvs, dirs, parsed_weights, parsed_kinds)]


def _parse_weights(texts, count):
  if len(texts) != count:
    raise UserError('--train_source_weights gives %d weights for %d sources'
                    % (len(texts), count))
  weights = []
  for text in texts:
    try:
      weight = float(text)
    except ValueError:
      weight = None
    if weight is None or not weight > 0 or weight == float('inf'):
      raise UserError('--train_source_weights: %r is not a positive number'
                      % text)
    weights.append(weight)
  if not math.isfinite(sum(weights)):
    # Each share is its weight over the sum: the shares would all be 0.
    raise UserError('--train_source_weights: %s add up to more than the '
                    'largest float; only their ratios matter, give smaller '
                    'numbers' % ','.join(texts))
  return weights


def _parse_kinds(texts, count):
  if len(texts) != count:
    raise UserError('--train_source_kinds gives %d kinds for %d sources (one '
                    'of %s per --train_csv_path entry)' % (
                        len(texts), count, ', '.join(KINDS)))
  for text in texts:
    if text not in KINDS:
      raise UserError('--train_source_kinds: %r is not one of %s' % (
          text, ', '.join(KINDS)))
  return texts


def check_hparams(sources, hparams):
  """Raises UserError for hparams that have no meaning with these
  sources."""
  if len(sources) > 1 and hparams.loss != 'bce':
    raise UserError('hparam loss=%s: the MFoM objectives are defined on one '
                    'set of clips; train with one source, or loss=bce' %
                    hparams.loss)
  if any(s.noisy for s in sources) and hparams.mixup:
    raise UserError('hparam mixup=%s: a mixed example would belong to a '
                    'curated and a noisy source at once; not with a noisy '
                    'source' % hparams.mixup)
