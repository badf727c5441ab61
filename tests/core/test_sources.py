"""Several training sources in one run: their shares of the examples, the
noisy source's loss in the training step, relabelling a CSV with a
checkpoint, and the one-line errors of bad source flags."""

import contextlib
import io
import os
import re

import numpy as np
import pytest


from support.cli import assert_one_error, check_ok, run_main, train_args
from support.scores import labeled_rows, read_class_names
from support.settings import CLASS_MAP
from support.signals import write_pcm_wav


def _source_csv(folder, name, label, count, seconds=0.4, seed=0):
  """count clips of `seconds` of noise, all labelled `label`."""
  clips = folder / name
  clips.mkdir()
  rng = np.random.default_rng(seed)
  with open(str(folder / (name + '.csv')), 'w') as f:
    f.write('fname,labels\n')
    for i in range(count):
      write_pcm_wav(clips / ('%d.wav' % i), rng.integers(
          -9000, 9000, int(seconds * 44100)))
      f.write('%d.wav,%s\n' % (i, label))
  return str(folder / (name + '.csv')), str(clips)


@pytest.fixture(scope='module')
def two_sources(tmp_path_factory):
  folder = tmp_path_factory.mktemp('sources')
  return {'a': _source_csv(folder, 'a', 'Bark', 6, seed=1),
          'b': _source_csv(folder, 'b', 'Purr', 9, seed=2)}


@pytest.mark.parametrize('weights,share_a', [((3.0, 1.0), 0.75),
                                             ((None, None), 6 / 15)])
def test_each_source_gives_its_share_of_the_examples(two_sources, weights,
                                                     share_a):
  """Over 150 batches of 8, the fraction of source a's examples (all
  labelled Bark) is within 4.5 standard deviations of its weight's share,
  or, without weights, of its share of the examples (6 of 15 one-example
  clips). A noisy source's examples are marked 1, a curated one's 0."""
  import inputs
  from tagger.core import params
  hparams = params.parse_hparams('batch_size=8')
  class_names = read_class_names()
  sources = [inputs.Source(*two_sources['a'], weight=weights[0]),
             inputs.Source(*two_sources['b'], weight=weights[1], noisy=True)]
  assert inputs.source_weights(sources, class_names, hparams)[0] == (
      pytest.approx(share_a))
  bark, purr = class_names.index('Bark'), class_names.index('Purr')
  from_a = total = 0
  for _, (labels, noisy) in inputs.sources_dataset(
      sources, class_names, hparams, seed=11).take(150):
    labels, noisy = labels.numpy(), noisy.numpy()
    is_a = labels[:, bark] == 1
    assert np.array_equal(is_a, labels[:, purr] == 0)
    np.testing.assert_array_equal(noisy, (~is_a).astype(np.float32))
    from_a += is_a.sum()
    total += len(is_a)
  sigma = np.sqrt(share_a * (1 - share_a) / total)
  assert abs(from_a / total - share_a) < 4.5 * sigma


@pytest.fixture(scope='module')
def three_sources(tmp_path_factory):
  """(csv, clip folder, label) of three sources of 3, 5 and 8
  one-example clips."""
  folder = tmp_path_factory.mktemp('three_sources')
  return [_source_csv(folder, name, label, count, seed=seed) + (label,)
          for name, label, count, seed in (('a', 'Bark', 3, 1),
                                           ('b', 'Purr', 5, 2),
                                           ('c', 'Hiss', 8, 3))]


def test_each_of_three_sources_gets_its_weight_share(three_sources):
  """--train_source_weights 1,2,5 as main.py reads it: over 150 batches of
  8, each source's fraction of the examples (told apart by their labels)
  is within 4.5 standard deviations of its weight over the sum. Any other
  order of the weights moves two shares by at least 0.125, and shares by
  the sources' sizes (3, 5, 8 clips) by at least 0.0625; 4.5 standard
  deviations are at most 0.044 here."""
  import inputs
  from tagger.core import params
  from tagger.core import sources as sources_lib
  weights = np.array([1.0, 2.0, 5.0])
  share = weights / weights.sum()
  sources = sources_lib.from_flags(
      ','.join(csv for csv, _, _ in three_sources),
      ','.join(clips for _, clips, _ in three_sources),
      ','.join('%g' % w for w in weights))
  class_names = read_class_names()
  columns = [class_names.index(label) for _, _, label in three_sources]
  counts = np.zeros(3)
  for _, labels in inputs.sources_dataset(
      sources, class_names, params.parse_hparams('batch_size=8'),
      seed=11).take(150):
    labels = labels.numpy()[:, columns]
    np.testing.assert_array_equal(labels.sum(axis=1), 1)
    counts += labels.sum(axis=0)
  assert counts.sum() == 1200
  sigma = np.sqrt(share * (1 - share) / counts.sum())
  assert (np.abs(counts / counts.sum() - share) < 4.5 * sigma).all(), (
      counts / counts.sum(), share)


def _batch_loss(hparams, labels, noisy, logits):
  """The loss of a batch with a noisy source, in NumPy: BCE (with lsmooth)
  for curated examples; lq for noisy ones."""
  p = 1 / (1 + np.exp(-logits))
  smooth = labels * (1 - hparams.lsmooth) + 0.5 * hparams.lsmooth
  bce = -(smooth * np.log(p) + (1 - smooth) * np.log(1 - p)).mean(axis=1)
  q = hparams.lq_q
  lq = (labels * (1 - p ** q) / q + (1 - labels) * (1 - (1 - p) ** q) /
        q).mean(axis=1)
  return np.where(noisy > 0, lq, bce).mean()


def test_noisy_examples_get_the_noisy_loss_in_the_step(two_sources,
                                                       tmp_path):
  """The first step's loss (printed by the run) is the NumPy loss of its
  batch under the step-0 weights: BCE for the curated examples and lq for
  the noisy ones. The batch is rebuilt with the run's seed (the pipeline
  is deterministic for a seed)."""
  from tagger.core import params
  from tagger.core import sources as sources_lib
  import train
  from support.scores import load_model_from_checkpoint
  hparams = params.parse_hparams(
      'batch_size=8,crnn_filters=4,crnn_dropout=0,seed=21,noisy_loss=lq,'
      'lsmooth=0.1,weights_init_stddev=0.5,bn_stats_batches=1')
  sources = sources_lib.from_flags(
      ','.join(two_sources[k][0] for k in 'ab'),
      ','.join(two_sources[k][1] for k in 'ab'), '1,1', 'curated,noisy')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train('crnn', hparams, read_class_names(), sources,
                str(tmp_path / 'train'), max_steps=1)
  assert 'Source 2 (noisy): ' in out.getvalue()
  (loss,) = re.findall(r'^step 1 loss (\S+) ', out.getvalue(), re.M)
  # The same first batch, from a pipeline built as the run built it.
  import tensorflow as tf
  tf.keras.utils.set_random_seed(hparams.seed)
  examples, (labels, noisy) = next(iter(train._dataset(
      tf.distribute.get_strategy(), sources, read_class_names(), hparams,
      None, seed=hparams.seed)))
  noisy = noisy.numpy()
  assert 0 < noisy.sum() < len(noisy)
  net = load_model_from_checkpoint('crnn', hparams, str(
      tmp_path / 'train' / 'model.ckpt-0'))
  logits = net(examples, training=True).numpy().astype(np.float64)
  expected = _batch_loss(hparams, labels.numpy(), noisy, logits)
  assert float(loss) == pytest.approx(expected, rel=1e-4)
  curated_only = _batch_loss(hparams, labels.numpy(), 0 * noisy, logits)
  assert abs(curated_only - expected) > 1e-2


def _between(values, quantile):
  """A threshold near the quantile that no score is within 1e-4 of (the
  engine's scores and the NumPy ones differ by ~1e-6)."""
  values = np.unique(values)
  start = int(quantile * (len(values) - 1))
  for i in list(range(start, len(values) - 1)) + list(range(start)):
    if values[i + 1] - values[i] > 2e-4:
      return float(values[i] + values[i + 1]) / 2
  raise AssertionError('no gap between the scores')


def test_relabel_writes_the_rules_applied_to_the_scores(crnn_train, dataset,
                                                        tmp_path):
  """--mode relabel scores the CSV with the checkpoint (a plain model on
  NumPy features here) and writes labels by noisy_labels.relabel's rules,
  in class-map order; the counts it prints are those of the rules."""
  from support.scores import independent_clip_scores
  from tagger.core import files
  from tagger.training import noisy_labels
  from tagger.core import params
  out_path = str(tmp_path / 'relabelled.csv')
  prefix = os.path.join(crnn_train['train_dir'], 'model.ckpt-101')
  rows = labeled_rows(dataset['train_csv'])
  class_names = read_class_names()
  scores = independent_clip_scores(
      'crnn', params.parse_hparams(crnn_train['hparams']), prefix,
      dataset['train_clip_dir'], [f for f, _ in rows])
  given = files.label_matrix(rows, class_names)
  # keep < add, as the flags must be (swapped, they are refused): the
  # lowest given label's score is below the top 0.5% of the others', so the
  # thresholds drop given labels (bar a clip's last) and add others.
  keep = _between(scores[given == 1], 0.0)
  add = _between(scores[given == 0], 0.995)
  assert keep < add
  expected, counts = noisy_labels.relabel(given, scores, keep, add)
  assert counts['added'] > 0
  result = check_ok(run_main([
      '--mode', 'relabel', '--class_map_path', CLASS_MAP,
      '--inference_checkpoint', prefix,
      '--relabel_csv_path', dataset['train_csv'],
      '--relabel_clip_dir', dataset['train_clip_dir'],
      '--relabeled_csv_path', out_path,
      '--relabel_keep_threshold', repr(keep),
      '--relabel_add_threshold', repr(add)]))
  written = labeled_rows(out_path)
  assert [f for f, _ in written] == [f for f, _ in rows]
  for (fname, labels), row in zip(written, expected):
    assert labels == [class_names[j] for j in np.flatnonzero(row)], fname
  assert 'kept %(kept)d, dropped %(dropped)d, added %(added)d' % counts in (
      result.stdout)
  assert counts['dropped'] + counts['added'] > 0


@pytest.mark.parametrize('flags,needles', [
    ({'train_clip_dir': '{clips}'}, ['--train_csv_path names 2 sources',
                                     '--train_clip_dir 1']),
    ({'train_source_weights': '1,0'}, ['--train_source_weights', "'0'"]),
    ({'train_source_weights': '1,x'}, ['--train_source_weights', "'x'"]),
    ({'train_source_weights': '1e308,1e308'},
     ['--train_source_weights: 1e308,1e308 add up to more than the largest '
      'float']),
    ({'train_source_weights': '1'}, ['1 weights for 2 sources']),
    ({'train_source_kinds': 'curated,noisy,noisy'},
     ['--train_source_kinds gives 3 kinds for 2 sources']),
    ({'train_source_kinds': 'curated,dirty'}, ["'dirty'"]),
    ({'hparams': 'loss=mfom_microf1'}, ['loss=mfom_microf1', 'one source']),
    ({'hparams': 'mixup=0.3', 'train_source_kinds': 'curated,noisy'},
     ['mixup=0.3', 'noisy source']),
], ids=['clip-dirs', 'zero-weight', 'bad-weight', 'overflowing-weights',
         'weight-count',
        'kind-count', 'bad-kind', 'mfom', 'mixup'])
def test_bad_sources_are_one_line_before_work(dataset, tmp_path, flags,
                                              needles):
  values = {'train_csv_path': dataset['train_csv'] + ',' +
                              dataset['validation_csv'],
            'train_clip_dir': '{clips},{clips}'}
  values.update(flags)
  args = train_args('crnn', dataset['train_clip_dir'], dataset['train_csv'],
                    str(tmp_path / 'train'), 1)
  for name, value in values.items():
    value = value.replace('{clips}', dataset['train_clip_dir'])
    if '--' + name in args:
      args[args.index('--' + name) + 1] = value
    else:
      args += ['--' + name, value]
  assert_one_error(run_main(args), *needles)
  assert not os.path.exists(str(tmp_path / 'train'))


@pytest.mark.parametrize('flag,value,needle', [
    ('--relabel_keep_threshold', '1.5', 'between 0 and 1'),
    ('--relabel_add_threshold', '-0.1', 'between 0 and 1'),
    ('--relabeled_csv_path', '/nonexistent/dir/out.csv', 'does not exist'),
])
def test_bad_relabel_flags_are_one_line(dataset, tmp_path, flag, value,
                                        needle):
  args = ['--mode', 'relabel', '--class_map_path', CLASS_MAP,
          '--inference_checkpoint', str(tmp_path / 'model.ckpt-1'),
          '--relabel_csv_path', dataset['train_csv'],
          '--relabel_clip_dir', dataset['train_clip_dir'],
          '--relabeled_csv_path', str(tmp_path / 'out.csv')]
  with open(str(tmp_path / 'model.ckpt-1.index'), 'w') as f:
    f.write('not read before the flags are checked')
  if flag in args:
    args[args.index(flag) + 1] = value
  else:
    args += [flag, value]
  assert_one_error(run_main(args), flag, needle)
  assert not os.path.exists(str(tmp_path / 'out.csv'))


def test_keep_threshold_above_add_threshold_is_refused(dataset, tmp_path):
  """Keep at 0.9 and add at 0.1 would drop a given label scored 0.72 and
  add one scored 0.14: one line naming both flags and values, before the
  checkpoint is read, nothing written."""
  prefix = str(tmp_path / 'model.ckpt-1')
  with open(prefix + '.index', 'w') as f:
    f.write('not read before the flags are checked')
  result = run_main([
      '--mode', 'relabel', '--class_map_path', CLASS_MAP,
      '--inference_checkpoint', prefix,
      '--relabel_csv_path', dataset['train_csv'],
      '--relabel_clip_dir', dataset['train_clip_dir'],
      '--relabeled_csv_path', str(tmp_path / 'out.csv'),
      '--relabel_keep_threshold', '0.9', '--relabel_add_threshold', '0.1'])
  assert_one_error(result, '--relabel_keep_threshold 0.9 is above '
                   '--relabel_add_threshold 0.1')
  assert result.stdout == ''
  assert os.listdir(str(tmp_path)) == ['model.ckpt-1.index']


def test_sources_described_with_their_shares(two_sources, capsys):
  """The line each source gets at the start of a run: numbered from 1, its
  kind, clips, labels and share in percent."""
  import inputs
  from tagger.core import params
  import train
  sources = [inputs.Source(*two_sources['a'], weight=3.0),
             inputs.Source(*two_sources['b'], weight=1.0, noisy=True)]
  train._describe_sources(sources, read_class_names(),
                          params.parse_hparams('batch_size=8'))
  assert capsys.readouterr().out.splitlines() == [
      'Source 1 (curated): %s, 6 clips, 6 labels, 75.0%% of the examples'
      % two_sources['a'][0],
      'Source 2 (noisy): %s, 9 clips, 9 labels, 25.0%% of the examples'
      % two_sources['b'][0]]
