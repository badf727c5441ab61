"""Audio files in any format libsndfile reads (WAV, RF64, FLAC, Ogg Vorbis,
Opus, MP3, AIFF, ...), for every mode: what a file holds (inspect, read
before any work starts) and its samples as a 44.1 kHz mono waveform, a
block at a time (BlockReader).

A 44.1 kHz mono 16-bit PCM WAV file, as FSDKaggle2019's clips are, is not
decoded here: inspect gives the byte offset of its samples (wav.py), and
the tf.data pipeline reads them itself (inputs.py). Every other file is
decoded by libsndfile (the soundfile package), its channels averaged and
resampled to 44.1 kHz by soxr at its VHQ setting, which measured far
better than scipy's resample_poly in quality and as fast or faster
(docs/export-and-tagging.md#formats).

Plain Python and NumPy: main.py inspects the files before TensorFlow is
imported.
"""

import collections
import contextlib
import math
import os
import stat

import numpy as np
import soundfile

from tagger.sound import wav

SAMPLE_RATE = wav.SAMPLE_RATE

# soxr's very high quality: its filter computes in double precision, so a
# block is bit for bit the whole file's (for rates whose ratio to 44.1 kHz
# soxr takes exactly; within 2e-6 for odd ones such as 44,099 Hz); its
# high quality works in single precision, with blocks only within 3e-7.
RESAMPLING_QUALITY = 'VHQ'
# A block's resampling starts this far before it and ends this far after
# it, in input seconds: past the reach of soxr's filter.
RESAMPLING_MARGIN_SECONDS = 0.1
# A compressed file's length may be an estimate (an MP3 without a Xing
# header: from its size); a file that ends this many seconds short of it
# is read with the rest as silence, one that ends earlier is truncated.
LENGTH_SLACK_SECONDS = 0.1
_COUNT_BLOCK = 4096  # frames per read when counting a damaged file's frames

# Extensions naming each format libsndfile reports, for the note on a file
# whose name says another format than its contents.
_EXTENSIONS = {
    '.wav': ('WAV', 'WAVEX', 'RF64'), '.flac': ('FLAC',),
    '.ogg': ('OGG',), '.oga': ('OGG',), '.opus': ('OGG',),
    '.mp3': ('MP3',), '.aif': ('AIFF',), '.aiff': ('AIFF',),
    '.aifc': ('AIFF',), '.rf64': ('RF64',), '.w64': ('W64',),
    '.caf': ('CAF',), '.au': ('AU',), '.snd': ('AU',),
}
# Formats libsndfile cannot read, named in the message refusing them.
_UNREADABLE = {
    '.m4a': 'an M4A (AAC or ALAC) file', '.mp4': 'an MP4 file',
    '.aac': 'an AAC file', '.m4b': 'an M4B (AAC) file',
    '.wma': 'a WMA file', '.ape': "a Monkey's Audio file",
    '.wv': 'a WavPack file', '.webm': 'a WebM file',
    '.mka': 'a Matroska audio file', '.amr': 'an AMR file',
}
AUDIO_EXTENSIONS = frozenset(_EXTENSIONS) | frozenset(_UNREADABLE)


class AudioError(Exception):
  """A file that cannot be read as audio; the message says what is wrong."""


Clip = collections.namedtuple('Clip', [
    'format',       # libsndfile's name of the container: WAV, FLAC, OGG, ...
    'rate',         # sample rate, Hz
    'channels',
    'frames',       # samples per channel, at `rate`
    'data_offset',  # of the 16-bit samples of a pipeline WAV, else -1
    'note',         # what a user should know (a name that lies), or None
])


def num_samples(clip):
  """The clip's samples at 44.1 kHz: its frames resampled, rounded down
  (at most one less than soxr's own length for the whole file)."""
  common = math.gcd(SAMPLE_RATE, clip.rate)
  return clip.frames * (SAMPLE_RATE // common) // (clip.rate // common)


@contextlib.contextmanager
def _quiet_stderr():
  """libsndfile's MP3 decoder (mpg123) prints warnings about damaged files
  on the process's stderr; each file's problem is reported as one line of
  our own instead. Only around the header reads, done before the work
  starts, when no other thread writes to stderr."""
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as null:
      os.dup2(null.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


_KINDS = ((stat.S_ISFIFO, 'a named pipe'), (stat.S_ISSOCK, 'a socket'),
          (stat.S_ISCHR, 'a character device'),
          (stat.S_ISBLK, 'a block device'), (stat.S_ISDIR, 'a folder'))


def not_a_file(path):
  """What `path` (or the file a link names) is when it is not a regular
  file, judged without opening it: opening a named pipe waits for a
  writer, for ever. None for a regular file or a path that cannot be
  looked at (inspect then says why)."""
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return None
  for test, kind in _KINDS:
    if test(mode):
      return 'not a regular file (%s)' % kind
  return None


def inspect(path):
  """The Clip of an audio file; AudioError saying what is wrong with it."""
  problem = not_a_file(path)
  if problem:
    raise AudioError(problem)
  try:
    header = wav.read_header(path)
  except wav.WavError:
    header = None
  if header and wav.pipeline_reads(header):
    return Clip('WAV', SAMPLE_RATE, 1, header.num_frames, header.data_offset,
                _name_note(path, 'WAV'))
  try:
    if os.path.getsize(path) == 0:
      raise AudioError('empty file')
  except OSError as e:
    raise AudioError('cannot read (%s)' % (e.strerror or e)) from None
  with _quiet_stderr():
    try:
      info = soundfile.info(path)
    # LibsndfileError is a RuntimeError; TypeError: a .raw name, which
    # soundfile takes as headerless samples of a rate it must be given.
    except (RuntimeError, OSError, TypeError) as e:
      raise AudioError(_unreadable(path, e)) from None
    if info.frames <= 0:
      raise AudioError('empty (no audio samples)')
    clip = Clip(info.format, info.samplerate, info.channels, info.frames, -1,
                _name_note(path, info.format))
    _check_complete(path, clip)
  return clip


def _name_note(path, container):
  """A note if the file's extension names another format than it holds."""
  ext = os.path.splitext(path)[1].lower()
  if ext in _EXTENSIONS and container not in _EXTENSIONS[ext]:
    return 'named %s but holds %s audio; read as %s' % (ext, container,
                                                        container)
  return None


def _unreadable(path, error):
  """Why libsndfile cannot open a file, as one line."""
  with open(path, 'rb') as f:
    head = f.read(12)
  ext = os.path.splitext(path)[1].lower()
  if head[4:8] == b'ftyp':
    kind = 'an MP4/M4A file (AAC or ALAC audio)'
  elif len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
    kind = 'an AAC (ADTS) stream'
  elif ext in _UNREADABLE:
    kind = _UNREADABLE[ext]
  else:
    reason = str(error).split(': ', 1)[-1].rstrip('.')
    return 'not an audio file libsndfile can read (%s)' % reason
  return ('%s, a format libsndfile cannot read; converting it to FLAC or WAV '
          'works (e.g. ffmpeg -i in%s out.flac)' % (kind, ext or '.m4a'))


def _seconds(frames, rate):
  return '%.1f s' % (frames / float(rate))


def _check_complete(path, clip):
  """AudioError if the file ends before its header says (a cut FLAC or MP3:
  its last frames cannot be reached) or its Ogg stream has no end."""
  slack = int(LENGTH_SLACK_SECONDS * clip.rate)
  try:
    with soundfile.SoundFile(path) as f:
      f.seek(max(0, clip.frames - 1 - slack))
      complete = len(f.read(1, dtype='float32')) == 1
  except (RuntimeError, OSError):
    complete = False
  if not complete:
    raise AudioError('truncated or damaged: %s of %s readable' % (
        _seconds(_readable_frames(path), clip.rate),
        _seconds(clip.frames, clip.rate)))
  if clip.format == 'OGG' and not _ogg_ends(path):
    # libsndfile takes a cut Ogg file's length from its last whole page.
    raise AudioError('truncated: the Ogg stream has no end; %s readable' %
                     _seconds(clip.frames, clip.rate))


def _readable_frames(path):
  """How many frames libsndfile decodes from the start before the file
  ends or fails (to _COUNT_BLOCK frames)."""
  count = 0
  try:
    with soundfile.SoundFile(path) as f:
      while True:
        got = len(f.read(_COUNT_BLOCK, dtype='float32'))
        count += got
        if got < _COUNT_BLOCK:
          return count
  except (RuntimeError, OSError):
    return count


def _ogg_ends(path):
  """Whether an Ogg file's last page is whole and marks the end of its
  stream (the end-of-stream flag, 0x04 of the page's header type)."""
  with open(path, 'rb') as f:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 65536))  # a page is at most 65,307 bytes
    tail = f.read()
  start = tail.rfind(b'OggS')
  if start < 0 or len(tail) < start + 27:
    return False
  segments = tail[start + 26]
  table = tail[start + 27:start + 27 + segments]
  whole = start + 27 + segments + sum(table) == len(tail)
  return len(table) == segments and whole and bool(tail[start + 5] & 0x04)


def decoded_pcm16(path, start, end, clip=None):
  """Samples [start, end) at 44.1 kHz of a file libsndfile decodes (clip:
  its inspect(), if read already), mixed down, resampled and rounded to 16
  bits as the pipeline takes every clip (FSDKaggle2019's are 16-bit; the
  rounding's noise, ~98 dB down, is far below the log-mel floor); and ''
  or what is wrong with the file."""
  try:
    samples = BlockReader(path, clip or inspect(path)).read(start, end)
  except AudioError as e:
    return np.zeros(0, np.int16), str(e)
  return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(
      np.int16), ''


def write_pcm16(path, pcm, rate=SAMPLE_RATE):
  """A 16-bit PCM WAV of int16 samples ([frames], or [frames, channels]),
  written by libsndfile: the WAV writer of the demo data, the tests and
  export's check clip."""
  pcm = np.asarray(pcm)
  if pcm.dtype != np.int16:
    raise ValueError('write_pcm16 takes int16 samples, not %s' % pcm.dtype)
  soundfile.write(path, pcm, rate, subtype='PCM_16', format='WAV')


class BlockReader:
  """One file as a 44.1 kHz mono waveform of num_samples(clip) samples,
  read a block at a time, in any order: a block is resampled from the
  input frames it spans and RESAMPLING_MARGIN_SECONDS either side,
  starting on a multiple of `down` (44100 / rate = up / down in lowest
  terms), where its output grid is the whole file's. Memory is that of a
  block, however long the file."""

  def __init__(self, path, clip):
    self.path, self.clip = path, clip
    common = math.gcd(SAMPLE_RATE, clip.rate)
    self.up, self.down = SAMPLE_RATE // common, clip.rate // common
    self.num_samples = num_samples(clip)

  def read(self, start, end):
    """Samples [start, end) of the 44.1 kHz waveform, float32; AudioError
    if the file no longer holds them."""
    if self.up == self.down:
      return self._frames(start, end - start)
    import soxr
    up, down = self.up, self.down
    margin = int(RESAMPLING_MARGIN_SECONDS * self.clip.rate)
    first = max(0, start * down // up - margin)
    first -= first % down
    stop = min(self.clip.frames, -(-end * down // up) + margin)
    block = soxr.resample(self._frames(first, stop - first), self.clip.rate,
                          SAMPLE_RATE, quality=RESAMPLING_QUALITY)
    offset = start - first * up // down
    out = block[offset:offset + end - start]
    # soxr rounds a block's length its own way: at the file's end it may
    # give one sample less than num_samples; that one is silence.
    return np.pad(out, (0, end - start - len(out)))

  def _frames(self, start, count):
    """Input frames [start, start + count), channels averaged, float32."""
    try:
      with soundfile.SoundFile(self.path) as f:
        f.seek(start)
        frames = f.read(count, dtype='float32', always_2d=True)
    except (RuntimeError, OSError) as e:
      raise AudioError('cannot read frames from %d (%s; did the file '
                       'change?)' % (start, str(e).split(': ')[-1])) from None
    if len(frames) < count:
      if start + len(frames) < self.clip.frames - int(
          LENGTH_SLACK_SECONDS * self.clip.rate):
        raise AudioError('truncated: %s of %s readable (did the file '
                         'change?)' % (_seconds(start + len(frames),
                                                self.clip.rate),
                                       _seconds(self.clip.frames,
                                                self.clip.rate)))
      frames = np.pad(frames, ((0, count - len(frames)), (0, 0)))
    bad = ~np.isfinite(frames).all(axis=1)
    if bad.any():
      raise AudioError('frame %d holds a NaN or infinite sample' % (
          start + int(np.flatnonzero(bad)[0])))
    # Summed in float64: float32 sums of 3 or more channels round by more
    # than 1e-7.
    return frames.mean(axis=1, dtype=np.float64).astype(np.float32)
