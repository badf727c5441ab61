"""Log-mel features and the tf.data pipelines against an independent NumPy
implementation of the baseline's feature definition."""

import os
import types

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest
import tensorflow as tf

from tagger.sound import features
from tagger.core import files
import inputs
from tools import make_demo_data
from tagger.core import params

from support import reference  # noqa: E402
from support.signals import pipeline_examples, write_pcm_wav

from support.settings import REPO
SR = 44100

# The README's feature definition, written out (not read from params.py), so
# that a moved default fails the comparisons below.
README_DEFAULTS = reference.README_DEFAULTS
WINDOW = int(round(SR * 0.025))  # 1102 (Python round of 1102.5: banker's)
HOP = 441
FFT = 2048
BANDS = 96
EXAMPLE_FRAMES = 100
EXAMPLE_HOP = 50

# Every feature hparam moved from its default.
OTHER_FEATURES = ('stft_window_seconds=0.02,stft_hop_seconds=0.005,'
                  'mel_bands=64,mel_min_hz=50,mel_max_hz=8000,'
                  'mel_log_offset=0.01,example_window_seconds=0.5,'
                  'example_hop_seconds=0.25')
OTHER_NAMESPACE = types.SimpleNamespace(
    stft_window_seconds=0.02, stft_hop_seconds=0.005, mel_bands=64,
    mel_min_hz=50, mel_max_hz=8000, mel_log_offset=0.01,
    example_window_seconds=0.5, example_hop_seconds=0.25)

# Tolerances, measured on noise with loud, quiet (+-3 LSB) and silent
# stretches: TensorFlow computes the STFT and the mel matrix in float32 (its
# triangle weights differ from float64 by up to ~1e-5), which gives up to
# ~1.3e-5 with the default features. With OTHER_FEATURES the lowest of 64
# mel bands above 50 Hz span only a couple of bins of a 1024-point FFT,
# where those weight errors weigh most: up to ~3.4e-5. (A pure tone would
# need ~1e-3: its far bins hold leakage far below the float32 rounding of
# the peak bin, so the clips here are noise-like.)
ATOL = 2e-5
ATOL_OTHER = 5e-5


def np_mel_matrix(num_bins=FFT // 2 + 1, bands=BANDS, lo=20.0, hi=20000.0):
  assert num_bins == FFT // 2 + 1
  return reference.np_mel_matrix(types.SimpleNamespace(
      **{**vars(README_DEFAULTS), 'mel_bands': bands, 'mel_min_hz': lo,
         'mel_max_hz': hi}))


MEL = np_mel_matrix()


def read_wav_samples(path):
  return reference.read_wav_samples(path)


def np_num_frames(num_samples):
  return reference.np_num_frames(num_samples, README_DEFAULTS)


def np_num_examples(num_samples):
  return reference.np_num_examples(num_samples, README_DEFAULTS)


def np_examples(samples):
  return reference.np_examples(samples, README_DEFAULTS)


def write_noise(path, num_samples, seed, amplitude=0.5):
  rng = np.random.default_rng(seed)
  make_demo_data.write_wav(str(path),
                           amplitude * rng.uniform(-1, 1, num_samples))
  return read_wav_samples(str(path))


def write_loud_quiet_silent(path, seconds, seed):
  """Noise in half-second stretches of amplitude 0.9, 0.3, 1e-4 (a few
  LSB, where log(mel + offset) is dominated by the offset) and exact digital
  silence, in a random order. Returns the samples as read back."""
  rng = np.random.default_rng(seed)
  num_samples = int(seconds * SR)
  stretch = SR // 2
  levels = np.resize(rng.permutation([0.9, 0.3, 1e-4, 0.0]),
                     -(-num_samples // stretch))
  noise = rng.uniform(-1, 1, num_samples) * np.repeat(levels, stretch)[
      :num_samples]
  write_pcm_wav(path, np.round(noise * 32767).astype(np.int16))
  return read_wav_samples(str(path))


def tf_examples(tmp_path, name, hparams=None):
  return pipeline_examples(name, str(tmp_path),
                           hparams or params.parse_hparams())


# -------------------------------------------------------------------- tests


def test_reference_geometry_matches_brief():
  geometry = params.parse_hparams().geometry
  assert (geometry.window, geometry.hop, geometry.fft_length) == (1102, 441,
                                                                  2048)
  assert (geometry.example_frames, geometry.example_hop_frames) == (100, 50)


def test_mel_matrix_reference_matches_tf_definition():
  tf_matrix = tf.signal.linear_to_mel_weight_matrix(
      num_mel_bins=96, num_spectrogram_bins=1025, sample_rate=44100,
      lower_edge_hertz=20.0, upper_edge_hertz=20000.0).numpy()
  # TF computes in float32 (mel values ~4000), hence ~1e-5 differences.
  np.testing.assert_allclose(tf_matrix, MEL, atol=5e-5)


def test_noise_clip_spanning_two_chunks_matches_numpy(tmp_path):
  num_samples = int(10.3 * SR)
  samples = write_noise(tmp_path / 'noise.wav', num_samples, seed=1)
  expected = np_examples(samples)
  # 1029 frames -> 21 examples: more than one chunk of 16.
  assert expected.shape[0] == 21 > inputs.EXAMPLES_PER_CHUNK
  got = tf_examples(tmp_path, 'noise.wav')
  assert got.dtype == np.float32
  assert got.shape == (21, 100, 96)
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
  # The zero padding of the last example is really zeros in log-mel space.
  frames = np_num_frames(num_samples)
  tail = frames - 20 * EXAMPLE_HOP
  assert np.all(got[-1, tail:] == 0.0)
  assert np.all(np.abs(got[-1, :tail]) > 0)


def test_forty_second_clip_chunked_equals_whole_clip_numpy(tmp_path):
  num_samples = 40 * SR + 12345
  samples = write_noise(tmp_path / 'long.wav', num_samples, seed=2,
                        amplitude=0.3)
  expected = np_examples(samples)
  got = tf_examples(tmp_path, 'long.wav')
  assert got.shape == expected.shape == (np_num_examples(num_samples), 100, 96)
  assert got.shape[0] > 4 * inputs.EXAMPLES_PER_CHUNK
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize('frames', [800, 801])
def test_chunk_boundary_example_counts(tmp_path, frames):
  # 800 frames = exactly 16 examples (one full chunk); 801 needs a 17th
  # example holding a single frame.
  num_samples = WINDOW + (frames - 1) * HOP
  samples = write_noise(tmp_path / 'b.wav', num_samples, seed=frames)
  expected = np_examples(samples)
  assert expected.shape[0] == -(-frames // 50)
  got = tf_examples(tmp_path, 'b.wav')
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize('num_samples', [
    100,                      # shorter than one 25 ms window
    WINDOW - 1,
    WINDOW,                   # exactly one frame
    WINDOW + HOP - 1,         # still one frame
    WINDOW + 49 * HOP,        # 50 frames: exactly one example hop
    WINDOW + 50 * HOP,        # 51 frames: two examples
    WINDOW + 99 * HOP,        # 100 frames: exactly one example window
    WINDOW + 100 * HOP,       # 101 frames
    SR,                       # 1 s
    3 * SR,
])
def test_num_examples_and_shapes_for_many_lengths(tmp_path, num_samples):
  hparams = params.parse_hparams()
  assert features.num_examples(num_samples, hparams) == \
      np_num_examples(num_samples)
  samples = write_noise(tmp_path / 'c.wav', num_samples, seed=num_samples)
  got = tf_examples(tmp_path, 'c.wav', hparams)
  expected = np_examples(samples)
  assert got.shape == (np_num_examples(num_samples), 100, 96)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_clip_of_100_samples_gives_one_finite_example(tmp_path):
  write_noise(tmp_path / 'tiny.wav', 100, seed=7)
  got = tf_examples(tmp_path, 'tiny.wav')
  assert got.shape == (1, 100, 96)
  assert np.all(np.isfinite(got))
  assert features.num_examples(100, params.parse_hparams()) == 1


def test_num_examples_formula_on_exact_multiples():
  hparams = params.parse_hparams()
  for k in range(1, 40):
    # k*50 frames exactly -> k examples; one more frame -> k + 1.
    n = WINDOW + (k * 50 - 1) * HOP
    assert features.num_examples(n, hparams) == k
    assert features.num_examples(n + HOP, hparams) == k + 1
    assert features.num_examples(n + HOP - 1, hparams) == k


def test_parse_csv_records_multi_hot_and_paths(tmp_path):
  class_names = files.read_class_map(os.path.join(REPO, 'class_map.csv'))
  csv_path = tmp_path / 'train.csv'
  csv_path.write_text('fname,labels\n'
                      'a.wav,"Walk_and_footsteps,Slam"\n'
                      'b.wav,Bark\n'
                      '\n'
                      'c.wav,"Purr,Bark,Zipper_(clothing)"\n')
  clip_dir = str(tmp_path / 'clips')
  records = list(inputs.parse_csv_records(str(csv_path), clip_dir,
                                          class_names))
  assert len(records) == 3
  expected = [('a.wav', ['Walk_and_footsteps', 'Slam']),
              ('b.wav', ['Bark']),
              ('c.wav', ['Purr', 'Bark', 'Zipper_(clothing)'])]
  for (multi_hot, path), (fname, labels) in zip(records, expected):
    want = np.zeros(len(class_names), np.float32)
    for label in labels:
      want[class_names.index(label)] = 1.0
    assert multi_hot.numpy().dtype == np.float32
    np.testing.assert_array_equal(multi_hot.numpy(), want)
    assert path.numpy().decode() == clip_dir + os.sep + fname


def test_scoring_dataset_yields_every_example_once(tmp_path):
  hparams = params.parse_hparams()
  lengths = [int(2.7 * SR), 100, int(0.6 * SR), int(1.3 * SR), WINDOW]
  names = []
  for i, n in enumerate(lengths):
    names.append('clip%d.wav' % i)
    write_noise(tmp_path / names[-1], n, seed=100 + i)
  paths = [str(tmp_path / name) for name in names]
  examples, indices, batch_sizes = [], [], []
  for batch_examples, batch_indices in inputs.scoring_dataset(paths, hparams, 5):
    batch_sizes.append(int(batch_indices.shape[0]))
    examples.append(batch_examples.numpy())
    indices.append(batch_indices.numpy())
  examples = np.concatenate(examples)
  indices = np.concatenate(indices)
  total = sum(np_num_examples(n) for n in lengths)
  assert len(indices) == total
  # Every batch is full except possibly the last.
  assert all(b == 5 for b in batch_sizes[:-1])
  assert 1 <= batch_sizes[-1] <= 5
  assert len(batch_sizes) == -(-total // 5)
  for clip, n in enumerate(lengths):
    got = examples[indices == clip]
    assert got.shape[0] == np_num_examples(n), clip
    want = pipeline_examples(names[clip], str(tmp_path), hparams)
    assert want.shape[0] == got.shape[0]
    # Match examples up by content: each dataset example must equal a
    # distinct example of the clip.
    used = set()
    for example in got:
      diffs = np.abs(want - example[None]).max(axis=(1, 2))
      j = int(np.argmin(diffs))
      assert diffs[j] < 1e-4
      assert j not in used
      used.add(j)
    assert used == set(range(want.shape[0]))


# ------------------------------------------ quiet, silent, non-default hparams


def test_quiet_and_silent_stretches_match_numpy(tmp_path):
  """Near-silence and digital silence, where log(mel + 0.001) is dominated by
  the offset, across a chunk boundary (18 examples)."""
  samples = write_loud_quiet_silent(tmp_path / 'q.wav', 8.7, seed=11)
  expected = np_examples(samples)
  assert expected.shape == (18, 100, 96)
  got = tf_examples(tmp_path, 'q.wav')
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
  # The quiet and silent frames are really there: digital silence at the
  # offset's floor log(0.001) = -6.9078, and quiet bands whose mel is below
  # ten times the offset (log(mel + 0.001) < floor + log(11)).
  floor = np.log(0.001)
  assert np.sum(np.abs(expected - floor) < 1e-9) > 1000
  assert np.sum((expected > floor + 1e-3) &
                (expected < floor + np.log(11))) > 5000
  np.testing.assert_allclose(got[np.abs(expected - floor) < 1e-9], floor,
                             atol=1e-6, rtol=0)


@pytest.mark.parametrize('flags,namespace', [
    ('', README_DEFAULTS), (OTHER_FEATURES, OTHER_NAMESPACE)],
    ids=['defaults', 'other'])
def test_digital_silence_is_log_of_the_offset(tmp_path, flags, namespace):
  num_samples = int(1.7 * SR)
  write_pcm_wav(tmp_path / 's.wav', np.zeros(num_samples, np.int16))
  hparams = params.parse_hparams(flags)
  got = tf_examples(tmp_path, 's.wav', hparams)
  frames = reference.np_num_frames(num_samples, namespace)
  count = reference.np_num_examples(num_samples, namespace)
  window = reference.example_window(namespace)
  hop = reference.example_hop(namespace)
  assert got.shape == (count, window, namespace.mel_bands)
  floor = np.log(namespace.mel_log_offset)
  for i, example in enumerate(got):
    real = max(0, min(window, frames - i * hop))  # frames before the padding
    np.testing.assert_allclose(example[:real], floor, atol=1e-6, rtol=0)
    assert np.all(example[real:] == 0.0)


def test_other_feature_hparams_match_numpy(tmp_path):
  samples = write_loud_quiet_silent(tmp_path / 'o.wav', 6.3, seed=12)
  hparams = params.parse_hparams(OTHER_FEATURES)
  expected = reference.np_examples(samples, OTHER_NAMESPACE)
  # 882-sample window, 220-sample hop (round(220.5) rounds half to even),
  # 1024-point FFT; 100-frame examples with a 50-frame hop; 64 bands.
  assert reference.stft_window(OTHER_NAMESPACE) == 882
  assert reference.stft_hop(OTHER_NAMESPACE) == 220
  assert reference.fft_length(OTHER_NAMESPACE) == 1024
  frames = reference.np_num_frames(len(samples), OTHER_NAMESPACE)
  assert expected.shape == (-(-frames // 50), 100, 64)
  assert expected.shape[0] > inputs.EXAMPLES_PER_CHUNK
  got = tf_examples(tmp_path, 'o.wav', hparams)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=ATOL_OTHER, rtol=0)
  # The offset matters here: log(0 + 0.01) in the silent stretches.
  silent = np.abs(expected - np.log(0.01)) < 1e-9
  assert silent.sum() > 1000
  np.testing.assert_allclose(got[silent], np.log(0.01), atol=1e-6, rtol=0)


def test_other_feature_hparams_example_counts(tmp_path):
  hparams = params.parse_hparams(OTHER_FEATURES)
  ns = OTHER_NAMESPACE
  window, hop = reference.stft_window(ns), reference.stft_hop(ns)
  lengths = [1, 100, window - 1, window, window + hop - 1, window + hop,
             window + 49 * hop, window + 50 * hop, window + 99 * hop,
             window + 100 * hop, SR // 2, SR, 3 * SR + 17, 10 * SR]
  for n in lengths:
    assert features.num_examples(n, hparams) == \
        reference.np_num_examples(n, ns), n
  # The defaults count differently for the same lengths (the test means
  # something).
  assert [reference.np_num_examples(n, ns) for n in lengths] != [
      reference.np_num_examples(n, README_DEFAULTS) for n in lengths]
  for n in (100, window + 50 * hop, SR):
    samples = write_noise(tmp_path / 'n.wav', n, seed=n)
    got = tf_examples(tmp_path, 'n.wav', hparams)
    expected = reference.np_examples(samples, ns)
    assert got.shape == expected.shape == (
        reference.np_num_examples(n, ns), 100, 64), n
    np.testing.assert_allclose(got, expected, atol=ATOL_OTHER, rtol=0)


def test_a_chunk_reads_exactly_the_samples_of_its_examples():
  """A chunk spans its examples' hops and one example's crop, no more (a
  longer one reads and frames samples for nothing), cut at the clip's end;
  the counts add up to the clip's examples."""
  hparams = params.HParams()
  hop = hparams.geometry.hop
  example_hop = hparams.geometry.example_hop_frames
  num_samples = 44100 * 120 + 1234
  starts, ends, counts = (t.numpy() for t in features.chunk_bounds(
      tf.constant(num_samples), hparams))
  full = ((features.EXAMPLES_PER_CHUNK - 1) * example_hop * hop +
          hparams.geometry.crop_length)
  assert len(starts) > 2
  np.testing.assert_array_equal(ends, np.minimum(starts + full, num_samples))
  assert ends[-1] == num_samples
  assert counts.sum() == features.num_examples(num_samples, hparams)
