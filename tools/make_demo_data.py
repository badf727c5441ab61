"""Generates a small synthetic dataset in the FSDKaggle2019 layout.

  python tools/make_demo_data.py --out_dir demo_data

writes train_curated/ and test/ folders of 44.1 kHz mono 16-bit WAV clips,
train.csv and validation.csv (a split of the curated clips, header
"fname,labels", multi-label rows quoted) and test_labels.csv. Each of a few
classes of the canonical class map gets its own synthetic sound (tones,
noise, chirps, drum hits); about a third of the clips mix two classes.
"""

import argparse
import csv
import os
import sys

import numpy as np

# Run as `python tools/make_demo_data.py`: the project is one folder up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tagger.sound import audio  # noqa: E402
from tagger.sound.synthetic import SOUNDS, make_clip  # noqa: E402


def write_wav(path, waveform):
  """Writes a float waveform in [-1, 1] as 44.1 kHz mono 16-bit PCM."""
  audio.write_pcm16(path, (np.clip(waveform, -1.0, 1.0) * 32767).astype(
      np.int16))


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
