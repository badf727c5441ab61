"""The files a run reads and writes: checked before the long work starts,
written so that a half-written output never appears.

Everything here is plain Python (no TensorFlow), so a bad class map, CSV or
WAV file is reported in a second, as one line naming the file and the fault.
"""

import csv
import os
import struct
import tempfile

SAMPLE_RATE = 44100
_SHOW = 5  # offenders named in one error line


class UserError(Exception):
  """A problem the user can fix; main.py prints it as one line and exits 1."""


def _summarise(what, offenders):
  shown = '; '.join(offenders[:_SHOW])
  more = len(offenders) - _SHOW
  return '%d %s: %s%s' % (len(offenders), what, shown,
                          ' (and %d more)' % more if more > 0 else '')


class _open_text:
  """Opens a UTF-8 CSV for reading; a read error or a byte that is not
  UTF-8 becomes a UserError naming the file."""

  def __init__(self, path):
    self.path = path

  def __enter__(self):
    try:
      self.file = open(self.path, newline='', encoding='utf-8')
    except OSError as e:
      raise UserError('%s: cannot read (%s)' % (self.path, e.strerror)) \
          from None
    return self.file

  def __exit__(self, exc_type, exc, tb):
    self.file.close()
    if isinstance(exc, UnicodeDecodeError):
      raise UserError('%s: not UTF-8 text (byte %d)' % (self.path,
                                                         exc.start)) from None


def read_class_map(path):
  """Returns the class names of an `index,name` class map, in index order."""
  if not os.path.isfile(path):
    raise UserError('%s: class map not found' % path)
  names = []
  with _open_text(path) as f:
    for line_num, row in enumerate(csv.reader(f), start=1):
      if not row:
        continue
      if len(row) != 2:
        raise UserError('%s:%d: expected "index,name", got %r' % (
            path, line_num, ','.join(row)))
      index, name = row[0].strip(), row[1].strip()
      if index != str(len(names)):
        raise UserError('%s:%d: index %r, expected %d (indices must run 0..N-1'
                        ' in order)' % (path, line_num, index, len(names)))
      if not name:
        raise UserError('%s:%d: empty class name' % (path, line_num))
      if name in names:
        raise UserError('%s:%d: duplicate class name %r' % (
            path, line_num, name))
      names.append(name)
  if not names:
    raise UserError('%s: class map is empty' % path)
  return names


def read_labeled_csv(csv_path, clip_dir, class_names):
  """Checks a `fname,labels` CSV against its clip folder and the class map.

  Returns the list of (fname, [label, ...]) rows. Raises UserError listing the
  first few offending rows, clips or labels and how many there are.
  """
  if not os.path.isfile(csv_path):
    raise UserError('%s: CSV file not found' % csv_path)
  if not os.path.isdir(clip_dir):
    raise UserError('%s: clip folder not found' % clip_dir)
  known = set(class_names)
  rows, bad_rows, missing, unknown = [], [], [], {}
  with _open_text(csv_path) as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ['fname', 'labels']:
      raise UserError('%s: header must be "fname,labels", got %r' % (
          csv_path, ','.join(header or [])))
    for line_num, row in enumerate(reader, start=2):
      if not row:
        continue
      if len(row) != 2 or not row[0].strip():
        bad_rows.append('line %d: %r' % (line_num, ','.join(row)))
        continue
      fname = row[0].strip()
      labels = [l.strip() for l in row[1].split(',') if l.strip()]
      if not labels:
        bad_rows.append('line %d: no labels for %s' % (line_num, fname))
        continue
      for label in labels:
        if label not in known:
          unknown.setdefault(label, 'line %d' % line_num)
      if not os.path.isfile(os.path.join(clip_dir, fname)):
        missing.append(fname)
      rows.append((fname, labels))
  if bad_rows:
    raise UserError('%s: %s' % (csv_path, _summarise(
        'malformed rows (want two fields, fname and quoted labels)',
        bad_rows)))
  if unknown:
    raise UserError('%s: %s' % (csv_path, _summarise(
        'labels not in the class map',
        ['%s (%s)' % item for item in unknown.items()])))
  if missing:
    raise UserError('%s: %s' % (csv_path, _summarise(
        'clips not found in %s' % clip_dir, missing)))
  if not rows:
    raise UserError('%s: no clips listed' % csv_path)
  return rows


def inspect_wav(path):
  """Returns (problem, num_samples) of a WAV file; problem is None when the
  file is a usable 44.1 kHz mono 16-bit PCM WAV, else what is wrong.

  Walks the RIFF chunks instead of decoding, so it costs one small read per
  file however long the clip is.
  """
  try:
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      head = f.read(12)
      if len(head) == 0:
        return 'empty file', 0
      if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
        return 'not a WAV file (no RIFF/WAVE header)', 0
      fmt, pos = None, 12
      while True:
        chunk = f.read(8)
        if len(chunk) < 8:
          return ('truncated: no audio data chunk' if fmt else
                  'truncated: no format chunk'), 0
        chunk_id, chunk_size = chunk[:4], struct.unpack('<I', chunk[4:])[0]
        if chunk_id == b'fmt ':
          body = f.read(16)
          if chunk_size < 16 or len(body) < 16:
            return 'truncated: format chunk', 0
          fmt = struct.unpack('<HHIIHH', body)
        elif chunk_id == b'data':
          break
        pos += 8 + chunk_size + (chunk_size & 1)
        f.seek(pos)
  except OSError as e:
    return 'cannot read (%s)' % (e.strerror or e), 0
  if fmt is None:
    return 'no format chunk before the audio data', 0
  format_tag, channels, rate, _, _, bits = fmt
  if format_tag != 1 or bits != 16:
    return ('%d-bit samples with format tag %d, expected 16-bit PCM (tag 1)' %
            (bits, format_tag)), 0
  if rate != SAMPLE_RATE:
    return 'sample rate %d Hz, expected %d' % (rate, SAMPLE_RATE), 0
  if channels != 1:
    return '%d channels, expected mono' % channels, 0
  available = size - (pos + 8)
  if chunk_size == 0 or available <= 0:
    return 'empty (no audio samples)', 0
  if available < chunk_size:
    return 'truncated: header declares %d bytes of audio, file holds %d' % (
        chunk_size, available), 0
  return None, chunk_size // 2


def check_wavs(paths):
  """Returns each WAV file's number of samples; raises UserError naming the
  first few unusable files, if any."""
  problems, lengths = [], []
  for path in paths:
    problem, num_samples = inspect_wav(path)
    if problem:
      problems.append('%s: %s' % (path, problem))
    lengths.append(num_samples)
  if problems:
    raise UserError(_summarise('clips with unusable audio', problems))
  return lengths


def list_wavs(clip_dir):
  """Returns the sorted .wav file names in clip_dir; raises if there are none."""
  if not os.path.isdir(clip_dir):
    raise UserError('%s: clip folder not found' % clip_dir)
  names = sorted(n for n in os.listdir(clip_dir)
                 if n.lower().endswith('.wav') and
                 os.path.isfile(os.path.join(clip_dir, n)))
  if not names:
    raise UserError('%s: no .wav files in this folder' % clip_dir)
  return names


def write_atomically(path, text):
  """Writes text to path through a temporary file in the same folder and a
  rename, so readers see the old file or the whole new one, never a part."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path),
                             suffix='.tmp')
  try:
    with os.fdopen(fd, 'w', newline='') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
