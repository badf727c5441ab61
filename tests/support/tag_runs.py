"""What the tests of tagging share: the 3 kHz tone the channels of the
test clip's multichannel versions differ by, the README's geometry worked
out independently (44.1 kHz lengths, examples per clip), tag's command
line, and its lines read back."""

import math

import numpy as np

from support.settings import CLASS_MAP


def bell(t):
  """A 3 kHz tone: the part the channels of the multichannel versions
  differ by, which mixing down cancels."""
  return 0.15 * np.sin(2 * np.pi * 3000 * t)


def resampled_length(frames, rate):
  """The length at 44.1 kHz: frames * 44100 / rate, rounded down."""
  g = math.gcd(44100, rate)
  return frames * (44100 // g) // (rate // g)


def num_examples(num_samples):
  """The README's framing with the default hparams: 1102-sample window,
  441-sample hop, examples of 100 frames every 50, the end padded."""
  frames = 1 + (max(num_samples, 1102) - 1102) // 441
  return -(-frames // 50)


def parse_line(line):
  """`path: Class_a 0.912, Class_b 0.301` -> (path, [(class, score)])."""
  path, tags = line.rsplit(': ', 1)
  return path, [(name, float(score)) for name, score in
                (tag.rsplit(' ', 1) for tag in tags.split(', '))]


def tag_args(checkpoint, paths, extra=()):
  return ['--mode', 'tag', '--class_map_path', CLASS_MAP,
          '--inference_checkpoint', checkpoint,
          '--tag_paths', ','.join(paths)] + list(extra)
