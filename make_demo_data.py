"""Generates a small synthetic dataset in the FSDKaggle2019 layout.

  python make_demo_data.py --out_dir demo_data

writes train_curated/ and test/ folders of 44.1 kHz mono 16-bit WAV clips,
train.csv and validation.csv (a split of the curated clips, header
"fname,labels", multi-label rows quoted) and test_labels.csv. Each of a few
classes of the canonical class map gets its own synthetic sound (tones,
noise, chirps, drum hits); about a third of the clips mix two classes.
"""

import argparse
import csv
import os
import wave

import numpy as np

from wav import SAMPLE_RATE

# Class-map names paired with the synthetic sound that stands for them.
SOUNDS = {
    'Bass_drum': 'thumps',
    'Bicycle_bell': 'bell_tone',
    'Buzz': 'sawtooth',
    'Chirp_and_tweet': 'chirps',
    'Hiss': 'hiss',
    'Church_bell': 'low_bell',
}


def synth(kind, seconds, rng):
  """One class's sound, about unit peak amplitude."""
  t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  if kind == 'thumps':
    period = rng.uniform(0.3, 0.6)
    phase = np.mod(t, period)
    return np.sin(2 * np.pi * 55 * phase) * np.exp(-phase * 18)
  if kind == 'bell_tone':
    f = rng.uniform(2800, 3200)
    return np.sin(2 * np.pi * f * t) * (0.6 + 0.4 * np.cos(2 * np.pi * 3 * t))
  if kind == 'sawtooth':
    f = rng.uniform(110, 160)
    return 0.8 * (2 * np.mod(f * t, 1.0) - 1)
  if kind == 'chirps':
    period = 0.25
    phase = np.mod(t, period) / period
    f = 2000 + 4000 * phase
    return np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * (phase < 0.6)
  if kind == 'hiss':
    noise = rng.standard_normal(len(t))
    return 0.3 * np.diff(noise, prepend=0.0)  # high-passed white noise
  if kind == 'low_bell':
    return (np.sin(2 * np.pi * 480 * t) + 0.5 * np.sin(2 * np.pi * 1210 * t)) \
        * np.exp(-np.mod(t, 1.5) * 2)
  raise ValueError(kind)


def write_wav(path, waveform):
  """Writes a float waveform in [-1, 1] as 44.1 kHz mono 16-bit PCM."""
  pcm = (np.clip(waveform, -1.0, 1.0) * 32767).astype('<i2')
  with wave.open(path, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(SAMPLE_RATE)
    w.writeframes(pcm.tobytes())


def make_clip(labels, seconds, rng):
  mix = sum(synth(SOUNDS[label], seconds, rng) for label in labels)
  mix = mix / max(1e-9, np.max(np.abs(mix)))
  noise = 0.02 * rng.standard_normal(len(mix))
  return rng.uniform(0.3, 0.9) * mix + noise


def write_clips(clip_dir, prefix, count, rng, min_seconds, max_seconds):
  """Writes `count` clips; returns their (fname, labels) rows."""
  os.makedirs(clip_dir, exist_ok=True)
  classes = sorted(SOUNDS)
  rows = []
  for i in range(count):
    num_labels = 2 if rng.random() < 0.33 else 1
    labels = sorted(rng.choice(classes, size=num_labels, replace=False))
    fname = '%s%04d.wav' % (prefix, i)
    seconds = rng.uniform(min_seconds, max_seconds)
    write_wav(os.path.join(clip_dir, fname), make_clip(labels, seconds, rng))
    rows.append((fname, labels))
  return rows


def write_csv(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(['fname', 'labels'])
    for fname, labels in rows:
      writer.writerow([fname, ','.join(labels)])


def make_dataset(out_dir, num_train=96, num_validation=24, num_test=24,
                 min_seconds=1.0, max_seconds=4.0, seed=0):
  """Writes the dataset under out_dir; returns the folder's paths."""
  rng = np.random.default_rng(seed)
  curated = os.path.join(out_dir, 'train_curated')
  test = os.path.join(out_dir, 'test')
  rows = write_clips(curated, 'c', num_train + num_validation, rng,
                     min_seconds, max_seconds)
  write_csv(os.path.join(out_dir, 'train_curated.csv'), rows)
  write_csv(os.path.join(out_dir, 'train.csv'), rows[:num_train])
  write_csv(os.path.join(out_dir, 'validation.csv'), rows[num_train:])
  test_rows = write_clips(test, 't', num_test, rng, min_seconds, max_seconds)
  write_csv(os.path.join(out_dir, 'test_labels.csv'), test_rows)
  return {'train_clip_dir': curated, 'test_clip_dir': test,
          'train_csv': os.path.join(out_dir, 'train.csv'),
          'validation_csv': os.path.join(out_dir, 'validation.csv'),
          'test_csv': os.path.join(out_dir, 'test_labels.csv')}


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out_dir', required=True)
  parser.add_argument('--num_train', type=int, default=96)
  parser.add_argument('--num_validation', type=int, default=24)
  parser.add_argument('--num_test', type=int, default=24)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  paths = make_dataset(args.out_dir, args.num_train, args.num_validation,
                       args.num_test, seed=args.seed)
  print('Wrote %s' % ', '.join(sorted(paths.values())))
