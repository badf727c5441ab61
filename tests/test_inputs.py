"""The training pipeline: every example once per epoch (matched against the
NumPy features), shuffled differently in every epoch, in batches of
batch_size."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import inputs  # noqa: E402
from tagger.sound import pcm  # noqa: E402
from tagger.core import params  # noqa: E402
from support import reference  # noqa: E402
from support.scores import read_class_names
from support.signals import write_pcm_wav

SR = 44100
# 0.3 s clips give one example each; the last clip (1.1 s) gives three.
SHORT_CLIPS = 10


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  folder = tmp_path_factory.mktemp('pipeline')
  clip_dir = folder / 'clips'
  clip_dir.mkdir()
  class_names = read_class_names()
  rng = np.random.default_rng(21)
  rows = []
  for i in range(SHORT_CLIPS + 1):
    seconds = 1.1 if i == SHORT_CLIPS else 0.3
    fname = 'clip%02d.wav' % i
    amplitude = rng.uniform(500, 20000)
    write_pcm_wav(clip_dir / fname, np.round(amplitude * rng.uniform(
        -1, 1, int(seconds * SR))).astype(np.int16))
    labels = [class_names[7 * i], class_names[7 * i + 3]] if i % 3 == 0 \
        else [class_names[7 * i]]
    rows.append((fname, labels))
  csv_path = folder / 'train.csv'
  with open(str(csv_path), 'w') as f:
    f.write('fname,labels\n')
    for fname, labels in rows:
      f.write('%s,"%s"\n' % (fname, ','.join(labels)))
  examples = []  # (clip, example, features, multi-hot)
  for c, (fname, labels) in enumerate(rows):
    multi_hot = np.zeros(len(class_names), np.float32)
    multi_hot[[class_names.index(l) for l in labels]] = 1
    features = reference.np_clip_examples(clip_dir / fname,
                                          reference.README_DEFAULTS)
    for e, example in enumerate(features):
      examples.append((c, e, example, multi_hot))
  assert len(examples) == SHORT_CLIPS + 3
  return {'csv': str(csv_path), 'clip_dir': str(clip_dir), 'rows': rows,
          'examples': examples, 'class_names': class_names}


def _identify(example, labels, clips):
  """(clip, example index) of the NumPy example this one equals."""
  diffs = [np.abs(features - example).max()
           for _, _, features, _ in clips['examples']]
  best = int(np.argmin(diffs))
  assert diffs[best] < 1e-4, diffs[best]
  assert sorted(diffs)[1] > 1e-2  # unambiguous
  clip, index, _, multi_hot = clips['examples'][best]
  np.testing.assert_array_equal(labels, multi_hot)
  return clip, index


@pytest.mark.parametrize('cache_examples', [False, True])
def test_every_example_once_per_epoch_in_a_new_order(clips, cache_examples):
  hparams = params.parse_hparams('batch_size=1')
  epochs = 3
  dataset = inputs.train_dataset(clips['csv'], clips['clip_dir'],
                                 clips['class_names'], hparams,
                                 len(clips['rows']), epochs=epochs,
                                 cache_examples=cache_examples)
  seen = []
  for examples, labels in dataset:
    assert examples.shape == (1, 100, 96) and labels.shape == (1, 80)
    seen.append(_identify(examples.numpy()[0], labels.numpy()[0], clips))
  per_epoch = len(clips['examples'])
  assert len(seen) == epochs * per_epoch
  file_order = [(c, e) for c, e, _, _ in clips['examples']]
  orders = [seen[i * per_epoch:(i + 1) * per_epoch] for i in range(epochs)]
  for order in orders:
    assert sorted(order) == file_order  # each example exactly once
    assert order != file_order  # 1 / 13! by chance
  # A new order in every epoch (two equal by chance: 3 / 13!).
  assert len({tuple(order) for order in orders}) == epochs
  # Examples, not only clips, are shuffled: the long clip's three examples
  # do not always arrive together and in order (by chance: (11/1716)^3).
  long_clip = SHORT_CLIPS
  together = 0
  for order in orders:
    at = order.index((long_clip, 0))
    together += order[at:at + 3] == [(long_clip, 0), (long_clip, 1),
                                     (long_clip, 2)]
  assert together < epochs


def test_cached_examples_are_not_read_again(clips, tmp_path):
  """With cache_examples, epochs after the first come from memory: the clips
  can be gone, and the examples are still the NumPy features."""
  import shutil
  clip_dir = tmp_path / 'clips'
  shutil.copytree(clips['clip_dir'], clip_dir)
  hparams = params.parse_hparams('batch_size=1')
  per_epoch = len(clips['examples'])
  iterator = iter(inputs.train_dataset(
      clips['csv'], str(clip_dir), clips['class_names'], hparams,
      len(clips['rows']), epochs=5, cache_examples=True))
  first = [_identify(e.numpy()[0], l.numpy()[0], clips)
           for e, l in (next(iterator) for _ in range(per_epoch))]
  shutil.rmtree(clip_dir)
  # Epoch 2 may have been read ahead already; the later ones cannot have.
  later = [_identify(e.numpy()[0], l.numpy()[0], clips) for e, l in iterator]
  assert len(later) == 4 * per_epoch
  assert sorted(first) == sorted(later[-per_epoch:]) == sorted(
      (c, e) for c, e, _, _ in clips['examples'])


def test_cached_examples_are_sharded_like_clips(clips):
  """Each of two workers gets the examples of its own clips, all of them."""
  hparams = params.parse_hparams('batch_size=1')
  seen = []
  for index in (0, 1):
    dataset = inputs.train_dataset(
        clips['csv'], clips['clip_dir'], clips['class_names'], hparams,
        len(clips['rows']), epochs=1, shard=(2, index), cache_examples=True)
    got = [_identify(e.numpy()[0], l.numpy()[0], clips) for e, l in dataset]
    assert {c for c, _ in got} == set(range(index, len(clips['rows']), 2))
    seen.extend(got)
  assert sorted(seen) == sorted((c, e) for c, e, _, _ in clips['examples'])


@pytest.mark.parametrize('batch_size,epochs,batches', [
    (5, 2, 5),   # 26 examples: 5 full batches, the last 1 dropped
    (13, 1, 1),
    (4, 3, 9),   # 39 examples: 9 full batches, 3 dropped
])
def test_batches_of_batch_size(clips, batch_size, epochs, batches):
  hparams = params.parse_hparams('batch_size=%d' % batch_size)
  dataset = inputs.train_dataset(clips['csv'], clips['clip_dir'],
                                 clips['class_names'], hparams,
                                 len(clips['rows']), epochs=epochs)
  got = list(dataset)
  assert len(got) == batches
  for examples, labels in got:
    assert examples.shape == (batch_size, 100, 96)
    assert labels.shape == (batch_size, 80)
    for example, label in zip(examples.numpy(), labels.numpy()):
      _identify(example, label, clips)


def test_repeats_without_end_by_default(clips):
  """epochs=None (what training uses with --max_steps) repeats forever."""
  hparams = params.parse_hparams('batch_size=4')
  dataset = inputs.train_dataset(clips['csv'], clips['clip_dir'],
                                 clips['class_names'], hparams,
                                 len(clips['rows']))
  count = 0
  for examples, labels in dataset.take(30):  # 120 examples > 9 epochs
    assert examples.shape == (4, 100, 96)
    count += 1
  assert count == 30


# --- features on the training device -----------------------------------------

@pytest.mark.parametrize('text', ['', 'frontend=pcen',
                                  'example_hop_seconds=0.3,mel_bands=64'])
def test_crops_make_the_pipelines_examples(tmp_path, text):
  """--features_on device: each example's 16-bit samples, made into an
  example by the training step, equal the CPU pipeline's example within
  1e-5, for a clip shorter than one STFT window, short clips and a clip of
  several chunks (whose last examples are padded)."""
  import tensorflow as tf
  from tagger.sound import features
  hparams = params.parse_hparams(text)
  rng = np.random.default_rng(4)
  paths = []
  for i, samples in enumerate((600, 13000, 44100 * 11 + 777)):
    path = str(tmp_path / ('%d.wav' % i))
    write_pcm_wav(path, rng.integers(-20000, 20000, samples))
    paths.append(path)
  offsets, counts = pcm.clip_headers(paths)
  clips = tf.data.Dataset.from_tensor_slices(
      (np.arange(3), np.array(paths), offsets, counts))
  expected = np.stack([e.numpy() for e, _ in inputs._examples(
      clips, hparams, deterministic=True)])
  crops, frames, keys = [], [], []
  for (crop, count), key in inputs._crops(clips, hparams, deterministic=True):
    crops.append(crop.numpy())
    frames.append(count.numpy())
    keys.append(int(key))
  assert len(crops) == len(expected) > features.EXAMPLES_PER_CHUNK
  assert crops[0].dtype == np.int16
  assert crops[0].shape == (hparams.geometry.crop_length,)
  got = features.crops_to_examples(pcm.to_float(np.stack(crops)),
                                   np.array(frames), hparams).numpy()
  scale = max(1.0, np.abs(expected).max())
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)
  # The padded frames are where the clips end.
  assert frames[0] == 1 and min(frames) < max(frames) == expected.shape[1]
  assert keys == sorted(keys)


def test_device_features_train_as_the_cpu_pipeline(dataset, tmp_path):
  """The same seed trains the same run with either pipeline: the same
  batches in the same order, so the same losses and weights. (SGD: Adam's
  first steps move a weight by ~lr whatever the sign of a near-zero
  gradient, which float rounding can flip.)"""
  import contextlib
  import io
  import re
  import tensorflow as tf
  import train
  hparams = params.parse_hparams('batch_size=4,crnn_filters=4,seed=77,'
                                 'crnn_dropout=0,bn_stats_batches=2,'
                                 'opt=sgd,lr=0.1,momentum=0.9')
  runs = {}
  for where in ('cpu', 'device'):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      train.train('crnn', hparams, read_class_names(), [inputs.Source(
          dataset['train_csv'], dataset['train_clip_dir'])],
                  str(tmp_path / where), max_steps=3, features_on=where)
    runs[where] = [float(l) for l in re.findall(r'^step \d+ loss (\S+)',
                                                 out.getvalue(), re.M)]
  assert len(runs['cpu']) == 3
  np.testing.assert_allclose(runs['device'], runs['cpu'], rtol=1e-5)
  cpu = tf.train.load_checkpoint(str(tmp_path / 'cpu' / 'model.ckpt-3'))
  device = tf.train.load_checkpoint(str(tmp_path / 'device' / 'model.ckpt-3'))
  for key in cpu.get_variable_to_shape_map():
    if key.startswith('weights/'):
      np.testing.assert_allclose(device.get_tensor(key), cpu.get_tensor(key),
                                 rtol=1e-4, atol=1e-5, err_msg=key)


def test_scoring_pipelines_run_without_autotuning(clips, monkeypatch):
  """Eval and inference's batches, and tagging's: tf.data's autotuning
  off (see inputs.without_autotuning), every example still there; the
  training pipeline keeps it."""
  import tensorflow as tf
  from tagger.engines import scoring
  hparams = params.parse_hparams('batch_size=4')
  paths = [os.path.join(clips['clip_dir'], f) for f, _ in clips['rows']]
  batches = inputs.scoring_dataset(paths, hparams, 4)
  assert batches.options().autotune.enabled is False
  keys = np.concatenate([k.numpy() for _, k in batches])
  assert sorted(keys) == sorted(list(range(SHORT_CLIPS)) + [SHORT_CLIPS] * 3)
  training = inputs.train_dataset(clips['csv'], clips['clip_dir'],
                                  clips['class_names'], hparams, 4, epochs=1)
  assert training.options().autotune.enabled is not False

  scorer = scoring.Scorer('crnn', 80, params.parse_hparams('crnn_filters=1'))
  seen = []
  monkeypatch.setattr(scorer, '_score', lambda batches, *args, **kwargs:
                      seen.append(batches.options().autotune.enabled))
  chunks = tf.data.Dataset.from_tensors((np.int32(0), np.int32(0),
                                         np.zeros(44100, np.float32),
                                         np.int32(1)))
  scorer.score_waveforms(chunks, ['a.wav'], [44100])
  assert seen == [False]


def test_example_cache_size_worked_by_hand(clips):
  """13 examples (10 short clips, one of three), 80 classes, defaults: 100
  frames x 96 bands of float32 and 80 float32 labels each (38,720 bytes);
  as crops, 99 hops of 441 samples and a 1,102-sample window of 16-bit
  samples, a frame count and the labels (89,846 bytes). Two sources add."""
  hparams = params.parse_hparams()
  one = [inputs.Source(clips['csv'], clips['clip_dir'])]
  names = clips['class_names']
  assert inputs.example_cache_size(one, names, hparams) == (13, 13 * 38720)
  assert inputs.example_cache_size(one, names, hparams, crops=True) == (
      13, 13 * 89846)
  assert inputs.example_cache_size(one * 2, names, hparams) == (
      26, 26 * 38720)
