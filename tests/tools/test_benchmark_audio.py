"""benchmark_audio.py: the resamplers ranked on tones, and each format's
decoding rate on copies of the same clips, timed by a clock that moves by
set amounts."""

import os

import numpy as np

from tagger.core import params
from support.clocks import Clock


def test_resampler_rows_rank_the_resamplers(monkeypatch):
  """On 2 s of tones: soxr's errors far below resample_poly's (whose
  filter is -6 dB at the lower Nyquist frequency), aliases removed; and
  the time per minute is the mean of the repeats scaled to 60 s."""
  from tools import benchmark_audio
  rows = benchmark_audio.resampler_rows(seconds=3.0, repeats=1)
  by = {(name, rate): (error, alias) for name, rate, error, alias, _ in rows}
  assert len(rows) == 6 and all(r[4] > 0 for r in rows)
  for rate in (48000, 22050):
    assert by['soxr VHQ', rate][0] < by['soxr HQ', rate][0] + 1
    assert by['soxr HQ', rate][0] < by['scipy resample_poly', rate][0] - 20
    assert by['scipy resample_poly', rate][0] < -25
  assert by['soxr VHQ', 48000][1] < -100 < by['scipy resample_poly',
                                               48000][1] < -5
  assert by['soxr VHQ', 22050][1] is None
  # The figures of its fixed tones (seed 0), as docs/audio-formats.md
  # shows them for 10 s.
  assert round(by['soxr VHQ', 48000][0], 1) == -84.8
  assert round(by['scipy resample_poly', 22050][0], 1) == -41.1
  # A clock that does not start at 0: a time is a difference of two readings.
  monkeypatch.setattr(benchmark_audio.time, 'perf_counter', Clock(
      *[100.0, 100.5] * 6))
  rows = benchmark_audio.resampler_rows(seconds=2.0, repeats=2)
  assert [r[4] for r in rows] == [7.5] * 6  # 0.25 s per 2 s of audio
  # By default 10 s, 3 repeats: 3 s for 3 repeats, 6 s per minute; the
  # timed repeats resample the float32 tones, 3 times for each rate.
  timed = []

  def fake(x, rate):
    if x.dtype == np.float32:
      timed.append(rate)
    return np.ones(441000)

  monkeypatch.setattr(benchmark_audio, '_resamplers', lambda: {'fake': fake})
  monkeypatch.setattr(benchmark_audio.time, 'perf_counter', Clock(
      *[50.0, 53.0] * 2))
  assert [r[4] for r in benchmark_audio.resampler_rows()] == [6.0, 6.0]
  assert timed == [48000] * 3 + [22050] * 3
  np.testing.assert_allclose(benchmark_audio._db(np.full(8, 0.1),
                                                 np.ones(3)), -20.0)
  np.testing.assert_allclose(benchmark_audio._tones(8, 1.0, [1.0, 2.0],
                                                    [0.0, 0.5]),
                             0.02 * (np.sin(np.pi * np.arange(8) / 4) +
                                     np.sin(np.pi * np.arange(8) / 2 + 0.5)))
  lines = benchmark_audio.resampler_lines([('r', 48000, -70.04, -130.0, 0.25),
                                           ('r', 22050, -50.0, None, 1.0)])
  assert lines == [
      'r, 48000 Hz to 44.1 kHz: error -70.0 dB, aliases -130.0 dB, 0.250 s '
      'per minute of audio',
      'r, 22050 Hz to 44.1 kHz: error -50.0 dB, 1.000 s per minute of audio']


def test_format_rates_decode_copies_of_the_same_clips(tmp_path, monkeypatch,
                                                      capsys):
  from tools import benchmark_audio
  from tools import make_demo_data
  clip_dir = tmp_path / 'clips'
  clip_dir.mkdir()
  rng = np.random.default_rng(0)
  for i, seconds in enumerate((1.0, 9.0)):
    make_demo_data.write_wav(str(clip_dir / ('c%d.wav' % i)),
                             make_demo_data.make_clip(['Hiss'], seconds, rng))
  monkeypatch.setattr(benchmark_audio, 'resampler_rows', lambda: [])
  hparams = params.HParams()
  rates = benchmark_audio.report(str(clip_dir), str(tmp_path / 'out'),
                                 hparams)
  assert list(rates) == ['WAV', 'FLAC', 'Ogg Vorbis', 'MP3']
  assert all(rate > 0 for rate in rates.values())
  assert sorted(os.listdir(str(tmp_path / 'out'))) == ['flac', 'mp3', 'ogg']
  assert sorted(os.listdir(str(tmp_path / 'out' / 'mp3'))) == ['c0.mp3',
                                                               'c1.mp3']
  out = capsys.readouterr().out
  assert out.startswith('Decoding and examples (no model), 2 clips: WAV ')
  assert 'examples/s (1.00 x WAV), FLAC ' in out
  # Every example of every copy, each pass: 2 + 18 examples, timed by a
  # clock that moves 40 s a format in the first pass, 80 s in the second:
  # the best pass counts (0.5 examples/s, below any starting guess of 1).
  monkeypatch.setattr(benchmark_audio.time, 'perf_counter',
                      Clock(*[10.0, 50.0] * 4 + [10.0, 90.0] * 4))
  copies = benchmark_audio.format_copies(
      [str(clip_dir / 'c0.wav'), str(clip_dir / 'c1.wav')],
      str(tmp_path / 'again'))
  assert benchmark_audio.format_rates(copies, hparams) == {
      'WAV': 0.5, 'FLAC': 0.5, 'Ogg Vorbis': 0.5, 'MP3': 0.5}
