"""Log-mel features and the tf.data pipelines against an independent NumPy
implementation of the baseline's feature definition."""

import os
import sys
import wave

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest
import tensorflow as tf

import features
import files
import inputs
import make_demo_data
import params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 44100
WINDOW = int(round(SR * 0.025))  # 1102 (Python round of 1102.5: banker's)
HOP = 441
FFT = 2048
BANDS = 96
EXAMPLE_FRAMES = 100
EXAMPLE_HOP = 50


# ---------------------------------------------------------------- reference


def read_wav_samples(path):
  with wave.open(path, 'rb') as w:
    assert w.getframerate() == SR and w.getnchannels() == 1
    data = w.readframes(w.getnframes())
  return np.frombuffer(data, dtype='<i2').astype(np.float64) / 32768.0


def np_mel_matrix(num_bins=FFT // 2 + 1, bands=BANDS, lo=20.0, hi=20000.0):
  """tf.signal.linear_to_mel_weight_matrix's definition, in NumPy."""
  def hz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)
  bin_mel = hz_to_mel(np.linspace(0.0, SR / 2.0, num_bins))[:, None]
  edges = np.linspace(hz_to_mel(lo), hz_to_mel(hi), bands + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  lower_slope = (bin_mel - lower) / (center - lower)
  upper_slope = (upper - bin_mel) / (upper - center)
  weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
  weights[0, :] = 0.0  # the DC bin contributes nothing
  return weights


MEL = np_mel_matrix()


def np_num_frames(num_samples):
  num_samples = max(num_samples, WINDOW)  # a short clip is padded to a window
  return 1 + (num_samples - WINDOW) // HOP


def np_num_examples(num_samples):
  return -(-np_num_frames(num_samples) // EXAMPLE_HOP)


def np_log_mel(samples):
  samples = np.asarray(samples, np.float64)
  if len(samples) < WINDOW:
    samples = np.pad(samples, (0, WINDOW - len(samples)))
  n = np.arange(WINDOW)
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WINDOW)  # periodic Hann
  num_frames = np_num_frames(len(samples))
  index = HOP * np.arange(num_frames)[:, None] + n[None, :]
  frames = samples[index] * hann
  magnitude = np.abs(np.fft.rfft(frames, n=FFT, axis=1))
  return np.log(magnitude @ MEL + 0.001)


def np_examples(samples):
  log_mel = np_log_mel(samples)
  num_frames = log_mel.shape[0]
  count = -(-num_frames // EXAMPLE_HOP)
  padded = np.zeros((count * EXAMPLE_HOP + EXAMPLE_FRAMES, BANDS))
  padded[:num_frames] = log_mel
  return np.stack([padded[i * EXAMPLE_HOP:i * EXAMPLE_HOP + EXAMPLE_FRAMES]
                   for i in range(count)])


def write_noise(path, num_samples, seed, amplitude=0.5):
  rng = np.random.default_rng(seed)
  make_demo_data.write_wav(str(path),
                           amplitude * rng.uniform(-1, 1, num_samples))
  return read_wav_samples(str(path))


def tf_examples(tmp_path, name, hparams=None):
  return inputs.clip_to_log_mel_examples(
      name, str(tmp_path), hparams or params.parse_hparams()).numpy()


# -------------------------------------------------------------------- tests


def test_reference_geometry_matches_brief():
  window, hop, fft = features.stft_geometry(params.parse_hparams())
  assert (window, hop, fft) == (1102, 441, 2048)
  assert features.example_geometry(params.parse_hparams()) == (100, 50)


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
  np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
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
  np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


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
  np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


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
  np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


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
    want = inputs.clip_to_log_mel_examples(names[clip], str(tmp_path),
                                           hparams).numpy()
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
