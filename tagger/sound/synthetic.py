"""Synthetic sounds standing for a few classes of the class map: the clips
of the demo data set (make_demo_data.py, the tests) and the events of
export's self-check clip. Plain NumPy."""

import numpy as np

from tagger.sound.wav import SAMPLE_RATE

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


def make_clip(labels, seconds, rng):
  """A mix of the sounds of the labels at a random level over a little
  noise, within [-1, 1]."""
  mix = sum(synth(SOUNDS[label], seconds, rng) for label in labels)
  mix = mix / max(1e-9, np.max(np.abs(mix)))
  noise = 0.02 * rng.standard_normal(len(mix))
  return rng.uniform(0.3, 0.9) * mix + noise
