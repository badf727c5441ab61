"""The files a run reads and writes: checked before the long work starts,
written so that a half-written output never appears.

Everything here is plain Python (no TensorFlow), so a bad class map, CSV or
audio file is reported in a second, as one line naming the file and the fault.
"""

import csv
import os
import tempfile

import numpy as np

from tagger.sound import audio

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
      # utf-8-sig: a byte-order mark, as some editors write, is skipped.
      self.file = open(self.path, newline='', encoding='utf-8-sig')
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


def parse_labels(text):
  """The class names of a CSV's `labels` field: comma-separated, blanks
  around names and empty names ignored."""
  return [label.strip() for label in text.split(',') if label.strip()]


def read_labeled_csv(csv_path, clip_dir, class_names):
  """Checks a `fname,labels` CSV against its clip folder (unless clip_dir is
  None) and the class map.

  Returns the list of (fname, [label, ...]) rows. Raises UserError listing the
  first few offending rows, clips or labels and how many there are.
  """
  if not os.path.isfile(csv_path):
    raise UserError('%s: CSV file not found' % csv_path)
  if clip_dir is not None and not os.path.isdir(clip_dir):
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
      if os.path.isabs(fname):
        # As in the original, fname names a file in the clip folder.
        bad_rows.append('line %d: %s is an absolute path; give the name of '
                        'a file in the clip folder' % (line_num, fname))
        continue
      labels = parse_labels(row[1])
      if not labels:
        bad_rows.append('line %d: no labels for %s' % (line_num, fname))
        continue
      for label in labels:
        if label not in known:
          unknown.setdefault(label, 'line %d' % line_num)
      if clip_dir is not None and not os.path.isfile(
          os.path.join(clip_dir, fname)):
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


def label_matrix(rows, class_names):
  """[rows, classes] float32 multi-hot labels of (fname, labels) rows."""
  index = {name: i for i, name in enumerate(class_names)}
  matrix = np.zeros((len(rows), len(class_names)), np.float32)
  for r, (_, labels) in enumerate(rows):
    matrix[r, [index[label] for label in labels]] = 1.0
  return matrix


def inspect_clip(path):
  """Returns (problem, num_samples, note) of an audio file: problem is None
  when the pipeline can read it (audio.inspect), else what is wrong;
  num_samples its length at 44.1 kHz; note what to tell the user (a name
  that says another format), or None."""
  try:
    clip = audio.inspect(path)
  except audio.AudioError as e:
    return str(e), 0, None
  return None, audio.num_samples(clip), clip.note


def check_clips(paths, notes=None):
  """Returns each audio file's number of samples at 44.1 kHz; raises
  UserError naming the first few unusable files, if any. notes: a list to
  which `path: note` is added for each file with a note."""
  problems, lengths = [], []
  for path in paths:
    problem, num_samples, note = inspect_clip(path)
    if problem:
      problems.append('%s: %s' % (path, problem))
    if note and notes is not None:
      notes.append('%s: %s' % (path, note))
    lengths.append(num_samples)
  if problems:
    raise UserError(_summarise('clips with unusable audio', problems))
  return lengths


def note_line(notes):
  """One line of the files' notes, the first few named, or ''."""
  return 'note: ' + _summarise('files not in the format their names say',
                               notes) if notes else ''


def _audio_file(folder, name):
  """Whether a folder's entry is named as audio and not a folder (a link,
  even a broken one, a named pipe, socket or device: check_clips then
  reports it rather than leaving it out unsaid), or is a regular file
  libsndfile can open whatever its name (a pipe is never opened)."""
  path = os.path.join(folder, name)
  if os.path.splitext(name)[1].lower() in audio.AUDIO_EXTENSIONS:
    return os.path.islink(path) or not os.path.isdir(path)
  if not os.path.isfile(path):
    return False
  try:
    audio.inspect(path)
  except (audio.AudioError, OSError):
    return False
  return True


def list_clips(clip_dir):
  """Returns the sorted names of the audio files in clip_dir: files named
  as audio (.wav, .flac, .mp3, .ogg, .m4a, ...; check_clips reports those
  that cannot be read) and any other file libsndfile can open; raises if
  there are none."""
  if not os.path.isdir(clip_dir):
    raise UserError('%s: clip folder not found' % clip_dir)
  names = sorted(n for n in os.listdir(clip_dir)
                 if _audio_file(clip_dir, n))
  if not names:
    raise UserError('%s: no audio files in this folder' % clip_dir)
  return names


def check_writable(path, flag):
  """Raises UserError unless a file can be written at `path` (its folder
  exists and is writable, and it is not a folder)."""
  if path.endswith(os.sep) or os.path.isdir(path):
    raise UserError('%s: %s is a folder, not a file' % (flag, path))
  folder = os.path.dirname(os.path.abspath(os.path.realpath(path)))
  if not os.path.isdir(folder):
    raise UserError('%s: folder %s does not exist' % (flag, folder))
  if not os.access(folder, os.W_OK | os.X_OK):
    raise UserError('%s: cannot write in folder %s (permission denied)' % (
        flag, folder))


def check_creatable_folder(path, flag):
  """Raises UserError unless a folder can be made at `path`: its nearest
  existing ancestor is a folder in which this process can create one. Tried
  with a probe folder (removed at once), not judged from permission bits:
  root passes every permission check, yet cannot write in /proc or on a
  read-only mount."""
  existing = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError('%s: cannot create %s: %s is not a folder' % (
        flag, path, existing))
  try:
    os.rmdir(tempfile.mkdtemp(dir=existing, prefix='.probe-'))
  except OSError as e:
    raise UserError('%s: cannot create %s: cannot write in %s (%s)' % (
        flag, path, existing, e.strerror)) from None


def write_atomically(path, text):
  """Writes text to path through a temporary file in the same folder and a
  rename, so readers see the old file or the whole new one, never a part.

  A link is written through (the file it points to is replaced); a replaced
  file keeps its permissions, and a new one gets the usual ones (0666 less
  the umask). An OSError names `path`, not the temporary file.
  """
  target = os.path.realpath(path)
  folder = os.path.dirname(target)
  try:
    mode = os.stat(target).st_mode & 0o7777
  except FileNotFoundError:
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
  fd, tmp = None, None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder,
                               prefix='.' + os.path.basename(target),
                               suffix='.tmp')
    with os.fdopen(fd, 'w', newline='') as f:
      fd = None
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, target)
  except OSError as e:
    _remove(tmp)
    raise OSError(e.errno, e.strerror, path) from None
  except BaseException:
    _remove(tmp)
    raise


def _remove(path):
  if path and os.path.exists(path):
    os.remove(path)
