"""benchmark.py's audio measurements: the speed of each format's decoding
against WAV's, and the resamplers side by side (`python tools/benchmark.py
--audio_only` runs these alone).

Formats: the same clips as 16-bit WAV (the pipeline's own reader), FLAC,
Ogg Vorbis and MP3 (libsndfile's default settings, decoded by libsndfile
in the pipeline's threads), through inputs.scoring_dataset: decoding and
log-mel examples, no model.

Resamplers: soxr at its very high (VHQ, the one audio.py uses) and high
(HQ) qualities, and scipy's resample_poly with its default filter (what
tagging used before), on 48 kHz and 22.05 kHz signals to 44.1 kHz: the
error against the exact signal at 44.1 kHz (sums of sines, computed at
both rates), in dB below the signal; what is left of tones above 22.05 kHz
(aliases); and the time to resample a minute of mono float32 audio.
"""

import os
import time

import numpy as np

FORMATS = (('WAV', 'wav', {}), ('FLAC', 'flac', {'subtype': 'PCM_16'}),
           ('Ogg Vorbis', 'ogg', {}), ('MP3', 'mp3', {}))
TONES = 40


def format_copies(paths, out_dir):
  """{format name: paths}: the WAV files, and a copy of each in every
  other format of FORMATS."""
  import soundfile
  copies = {}
  for name, ext, kwargs in FORMATS:
    if ext == 'wav':
      copies[name] = list(paths)
      continue
    folder = os.path.join(out_dir, ext)
    os.makedirs(folder, exist_ok=True)
    copies[name] = []
    for path in paths:
      samples, rate = soundfile.read(path, dtype='float32')
      copies[name].append(os.path.join(folder, os.path.basename(path)[:-4] +
                                       '.' + ext))
      soundfile.write(copies[name][-1], samples, rate, **kwargs)
  return copies


def format_rates(copies, hparams, passes=2):
  """{format name: examples/s} of decoding and log-mel examples (no
  model), the best of `passes`, the formats taking turns within each."""
  from tagger.core import files
  import inputs

  def run(paths):
    count = 0
    for examples, _ in inputs.scoring_dataset(paths, hparams,
                                              hparams.batch_size):
      count += int(examples.shape[0])
    return count

  for paths in copies.values():
    files.check_clips(paths)
    run(paths[:1])  # tracing, and the file system's cache
  best = {name: 0.0 for name in copies}
  for _ in range(passes):
    for name, paths in copies.items():
      start = time.perf_counter()
      count = run(paths)
      best[name] = max(best[name], count / (time.perf_counter() - start))
  return best


def _tones(rate, seconds, freqs, phases):
  t = np.arange(int(seconds * rate)) / rate
  return (0.02 * np.sin(2 * np.pi * np.outer(t, freqs) + phases)).sum(axis=1)


def _resamplers():
  import soxr
  from scipy import signal

  # resample_poly takes up/down to lowest terms itself.
  return {'soxr VHQ': lambda x, rate: soxr.resample(x, rate, 44100, 'VHQ'),
          'soxr HQ': lambda x, rate: soxr.resample(x, rate, 44100, 'HQ'),
          'scipy resample_poly': lambda x, rate: signal.resample_poly(
              x, 44100, rate)}


def _db(part, whole):
  return 20 * np.log10(np.sqrt(np.mean(part ** 2)) /
                       np.sqrt(np.mean(whole ** 2)))


def resampler_rows(seconds=10.0, repeats=3):
  """[(resampler, rate, error dB, alias dB or None, seconds per minute)]:
  error of TONES tones up to 20 kHz (48 kHz input: the mel bands' top) or
  10 kHz (22.05 kHz input), aliases of tones at 22.6 to 23.9 kHz (48 kHz
  input only), the edges (1 s) left out."""
  rng = np.random.default_rng(0)
  rows = []
  for rate, top in ((48000, 20000), (22050, 10000)):
    freqs, phases = rng.uniform(20, top, TONES), rng.uniform(0, 6.3, TONES)
    signal_in = _tones(rate, seconds, freqs, phases)
    exact = _tones(44100, seconds, freqs, phases)
    high = _tones(rate, seconds, rng.uniform(22600, 23900, 10),
                  rng.uniform(0, 6.3, 10))
    core = slice(44100, len(exact) - 44100)
    for name, resample in _resamplers().items():
      got = resample(signal_in, rate)[:len(exact)]
      error = _db(got[core] - exact[core], exact[core])
      alias = (_db(resample(high, rate)[core], high) if rate == 48000
               else None)
      single = signal_in.astype(np.float32)
      start = time.perf_counter()
      for _ in range(repeats):
        resample(single, rate)
      per_minute = (time.perf_counter() - start) / repeats * 60 / seconds
      rows.append((name, rate, error, alias, per_minute))
  return rows


def resampler_lines(rows):
  return ['%s, %d Hz to 44.1 kHz: error %.1f dB%s, %.3f s per minute of '
          'audio' % (name, rate, error, '' if alias is None else
                     ', aliases %.1f dB' % alias, per_minute)
          for name, rate, error, alias, per_minute in rows]


def report(clip_dir, out_dir, hparams):
  """Prints the resamplers' lines and the rates of the clip_dir's WAV
  files in each format; returns the rates."""
  from tagger.core import files
  test_paths = [os.path.join(clip_dir, f) for f in files.list_clips(clip_dir)]
  for line in resampler_lines(resampler_rows()):
    print(line, flush=True)
  rates = format_rates(format_copies(test_paths, out_dir), hparams)
  print('Decoding and examples (no model), %d clips: %s' % (
      len(test_paths), ', '.join('%s %.0f examples/s (%.2f x WAV)' % (
          name, rate, rate / rates['WAV']) for name, rate in rates.items())),
        flush=True)
  return rates
