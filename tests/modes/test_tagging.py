"""Tagging (tagging.py): the chunks the Reader feeds the scoring engine
make the tf.data pipeline's examples; a long file is tagged in bounded
memory by either engine, Ctrl-C stops it cleanly, and a stop request the
file reader sees first stops the run.

Long files are sparse WAV files (cheap to write) or MP3s silent but for a
second of noise every minute.
"""

import re
import signal
import struct

import numpy as np
import pytest

from support.cli import check_ok, main_in_process, Run, run_main
from support.signals import buzz, pipeline_examples, times, write_audio
from support.tag_runs import bell, num_examples, parse_line, tag_args
from support.wav_files import PCM, quantise, sample_bytes, write_frames, write_wav


def test_tag_examples_are_the_pipelines(tmp_path, parse_hparams):
  """The chunks tagging feeds the engine make the examples the tf.data
  pipeline makes from a 16-bit 44.1 kHz file, each with its index, over
  several chunks; a 48 kHz file's are those of its whole resampled
  waveform framed at once."""
  from tagger.sound import features
  from tagger.engines import scoring
  from tagger.modes import tagging
  hparams = parse_hparams()
  rng = np.random.default_rng(5)
  ints = rng.integers(-20000, 20000, int(44100 * 19.3))  # 3 chunks
  write_wav(str(tmp_path / 'a.wav'), sample_bytes(ints, 16), 44100, 16, 1)
  t = times(48000, 9.1)
  write_frames(str(tmp_path / 'b.wav'), np.stack([buzz(t), bell(t)], 1),
               48000, 24)
  reader = tagging.Reader([str(tmp_path / 'a.wav'), str(tmp_path / 'b.wav')],
                          hparams)
  sources = reader.sources
  got = [{}, {}]
  for example, clip, index in scoring.waveform_examples(
      reader.dataset(), hparams):
    assert int(index) not in got[int(clip)]
    got[int(clip)][int(index)] = example.numpy()
  pipeline = pipeline_examples('a.wav', str(tmp_path), hparams)
  assert sorted(got[0]) == list(range(len(pipeline)))
  assert len(pipeline) == num_examples(len(ints)) == 39  # 16 + 16 + 7
  # Equal up to float32 rounding: chunks and a whole clip are different
  # shapes, for which some CPUs' kernels sum in different orders.
  np.testing.assert_allclose(np.stack([got[0][i] for i in sorted(got[0])]),
                             pipeline, rtol=1e-6, atol=0)
  whole = features.waveform_to_examples(
      sources[1].read(0, sources[1].num_samples), hparams).numpy()
  assert sorted(got[1]) == list(range(len(whole)))
  np.testing.assert_allclose(np.stack([got[1][i] for i in sorted(got[1])]),
                             whole, rtol=0, atol=1e-5)


# --- long files -------------------------------------------------------------

# Both files go through audio.BlockReader (a 48 kHz stereo WAV is not one that
# tf.data reads itself), so one engine each covers both engines and both
# decoders.
@pytest.mark.parametrize('engine,ext', [('tflite', 'wav'), ('keras', 'mp3')])
def test_a_long_file_is_tagged_in_bounded_memory(tagger, tmp_path, request,
                                                 engine, ext):
  """A 30-minute file (3600 examples) is tagged with a peak resident
  memory within a margin of a 5-second file's, by either engine: a 48 kHz
  stereo WAV, and an 8 kHz mono MP3 (decoded by libsndfile a block at a
  time and resampled by soxr; 3.5 s to encode). Measured in fresh
  processes: +26 to +48 MiB with Keras (tf.data's autotuned buffers and
  allocator caches, not the file: 0.7 to 0.8 GiB for both), +33 and +42 MiB
  with TFLite (0.9 GiB for both); forked from the test's server, +26 and
  +24 MiB (0.4 and 0.5 GiB, most of it shared with the server); with the
  export's float model file, forked, +26 MiB; the MP3, forked, +25 and +34
  MiB (0.7 GiB for both). The bound, 160 MiB, is far below
  what holding the file would take: its samples alone are 303 MiB as
  float32 at 44.1 kHz mono (330 MiB of the WAV's bytes, 1.3 GiB as float64
  frames)."""
  long_path = str(tmp_path / ('long.' + ext))
  short_path = str(tmp_path / ('short.' + ext))
  write_long = write_sparse_wav if ext == 'wav' else write_sparse_mp3
  write_long(long_path, 1800)
  write_long(short_path, 5)
  flags = ['--engine', engine]
  if engine == 'tflite':  # the export's model: no conversion in either run
    flags += ['--tflite_model',
              request.getfixturevalue('tagger_export')['float32']]
  peaks = {}
  for path in (short_path, long_path):
    peak, result = _peak_rss_mib(tag_args(tagger['checkpoint'], [path],
                                          flags))
    check_ok(result)
    assert result.stdout.startswith(path + ': ')
    peaks[path] = peak
  growth = peaks[long_path] - peaks[short_path]
  assert growth < 160, peaks


def write_sparse_mp3(path, seconds, rate=8000):
  """An MP3 of `seconds`, silent but for one second of noise every
  minute, mono at 8 kHz (the cheapest to encode)."""
  rng = np.random.default_rng(0)
  samples = np.zeros(int(seconds * rate), np.float32)
  for start in range(0, len(samples), 60 * rate):
    count = min(rate, len(samples) - start)
    samples[start:start + count] = rng.standard_normal(count) * 0.1
  write_audio(path, samples, rate, format='MP3')


def test_ctrl_c_stops_tagging_cleanly(tagger, tmp_path):
  """SIGINT while a long file is being read by the Python generator inside
  tf.data: one line, exit status 130, promptly (the iterator is released
  before the interpreter exits), the lines already printed kept and no
  timeline written."""
  short_path = str(tmp_path / 'a_short.wav')
  long_path = str(tmp_path / 'b_long.wav')
  write_sparse_wav(short_path, 2)
  write_sparse_wav(long_path, 1800)
  timeline = tmp_path / 'timeline.csv'
  run = Run(tag_args(tagger['checkpoint'], [short_path, long_path],
                     ['--timeline_csv_path', str(timeline)]))
  run.wait_for(re.escape(short_path) + ': ')
  rc, out, err = run.finish(signal.SIGINT, timeout=60)
  assert rc == 130, err
  assert [parse_line(l)[0] for l in out.splitlines()] == [short_path]
  assert [l for l in err.splitlines() if l.startswith('main.py:')] == [
      'main.py: stopped: stopped by SIGINT; files written so far are '
      'complete, run the same command to do the rest']
  assert 'Traceback' not in out + err
  assert not timeline.exists()


def write_sparse_wav(path, seconds, rate=48000, channels=2):
  """A 16-bit WAV of `seconds`, silent but for one second of noise every
  minute; the silence is a hole in a sparse file, so writing it is cheap."""
  frame_bytes = 2 * channels
  frames = int(seconds * rate)
  fmt = struct.pack('<HHIIHH', PCM, channels, rate, rate * frame_bytes,
                    frame_bytes, 16)
  head = (b'RIFF' + struct.pack('<I', 36 + frames * frame_bytes) + b'WAVE' +
          b'fmt ' + struct.pack('<I', 16) + fmt + b'data' +
          struct.pack('<I', frames * frame_bytes))
  rng = np.random.default_rng(0)
  with open(path, 'wb') as f:
    f.write(head)
    for start in range(0, frames, 60 * rate):
      f.seek(len(head) + start * frame_bytes)
      count = min(rate, frames - start) * channels
      f.write(quantise(rng.standard_normal(count) * 0.1, 16).astype(
          '<i2').tobytes())
    f.truncate(len(head) + frames * frame_bytes)


# Runs main.py in this process and reports its own peak resident memory
# (VmHWM; ru_maxrss would carry over the parent's peak), as benchmark.py's
# rss_child does.
_RSS_CHILD = main_in_process(after=r'''
with open('/proc/self/status') as status:
  peak = next(int(l.split()[1]) for l in status if l.startswith('VmHWM:'))
print('peak_kib %d' % peak, file=sys.stderr)
''')


def _peak_rss_mib(args):
  # Forked where it can be: the child starts with the server's resident
  # pages, the same for every run compared.
  result = run_main(args, timeout=600, script=_RSS_CHILD)
  peak = [l for l in result.stderr.splitlines() if l.startswith('peak_kib ')]
  assert peak, result.stderr[-3000:]
  result.stderr = result.stderr.replace(peak[-1] + '\n', '')
  return int(peak[-1].split()[1]) / 1024.0, result


def test_a_stop_that_ends_the_reading_stops_tagging(tagger, tmp_path,
                                                    monkeypatch, capsys):
  """A stop request the file reader sees before its first chunk ends the
  chunks with no batch for the scorer to stop at; the scorer then stops
  the run (Stopped), rather than reporting a file whose examples did not
  all arrive."""
  from tagger.core import params
  from tagger.core import stopping
  from tagger.modes import tagging
  from support.scores import read_class_names
  from support.settings import TAG_HPARAMS
  path = str(tmp_path / 'long.wav')
  write_sparse_wav(path, 60)
  asked = []

  def requested():
    # As if SIGTERM's handler had run just now: the reader's thread sees
    # the request before the scorer's own check does.
    if not asked:
      stopping._requested.append(signal.SIGTERM)
    asked.append(True)
    return stopping._requested[0]

  monkeypatch.setattr(stopping, 'requested', requested)
  with stopping.requests():
    with pytest.raises(stopping.Stopped) as stopped:
      tagging.tag('crnn', params.parse_hparams(TAG_HPARAMS),
                  read_class_names(), [path], tagger['checkpoint'], 3)
  assert stopped.value.exit_code == 143 and asked
  assert path not in capsys.readouterr().out
