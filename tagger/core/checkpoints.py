"""Checkpoints: their names, and reading variables out of them by path.

A training run writes `train_dir/model.ckpt-N` (N = batches seen), a
tf.train.Checkpoint holding every model variable under `weights/<variable
path>`, so that warm start and scoring can select variables by name, as the
original's TF1 scopes did.

Plain Python at import: main.py checks checkpoint flags before TensorFlow is
imported; the readers below import it when called.
"""

import atexit
import glob
import os
import re
import shutil
import tempfile

from tagger.core import params
from tagger.core.files import UserError

NAME = 'model.ckpt'
# A training run saves a checkpoint every this many steps, and at its end.
CHECKPOINT_EVERY = 100
# Present in train_dir (holding the final step) once a run has finished, so
# that a continuous eval knows no checkpoint will follow; removed when a run
# (re)starts.
FINISHED_FILE = 'training_finished'
# The checkpoint entry that records the run's --model and hparams.
RECORD_KEY = 'run/.ATTRIBUTES/VARIABLE_VALUE'


def prefix_of(path):
  """The checkpoint prefix of a path that may name one of its files
  (`model.ckpt-5.index`, `model.ckpt-5.data-00000-of-00001`)."""
  return re.sub(r'\.(index|data-\d+-of-\d+)$', '', path)


def members(flag_value):
  """The checkpoint prefixes of an --inference_checkpoint value: one, or an
  ensemble's, comma-separated (each may name one of its files)."""
  return [prefix_of(p) for p in flag_value.split(',')]


def step_of(prefix):
  """N of a model.ckpt-N prefix, else None."""
  match = re.fullmatch(re.escape(NAME) + r'-(\d+)', os.path.basename(prefix))
  return int(match.group(1)) if match else None


def exists(prefix):
  """True when `prefix` names a checkpoint: its .index file exists."""
  return os.path.isfile(prefix + '.index')


def files_of(prefix):
  """The paths of a checkpoint's files (its .index and data shards)."""
  folder, base = os.path.split(prefix)
  try:
    names = os.listdir(folder or '.')
  except OSError:
    return []
  return [os.path.join(folder, name) for name in names
          if re.fullmatch(re.escape(base) + r'\.(index|data-\d+-of-\d+)',
                          name)]


def require(prefix, flag=None):
  """Raises UserError unless `prefix` names a checkpoint; the message starts
  with the flag that gave it, if any."""
  if exists(prefix):
    return
  hint = (' (give a model.ckpt-N prefix inside it)' if os.path.isdir(prefix)
          else '')
  raise UserError('%scheckpoint %s not found: no file %s.index%s' % (
      flag + ': ' if flag else '', prefix, prefix, hint))


def list_checkpoints(train_dir):
  """[(N, prefix)] of the model.ckpt-N checkpoints in train_dir, oldest
  first. Works for relative and absolute paths alike."""
  found = []
  for index in glob.glob(os.path.join(glob.escape(train_dir),
                                      NAME + '-*.index')):
    step = step_of(index[:-len('.index')])
    if step is not None:
      found.append((step, index[:-len('.index')]))
  return sorted(found)


# TensorFlow reads a checkpoint prefix as a glob pattern (and writes it
# literally): a prefix with these characters is read through links.
_PATTERN = re.compile(r'[*?\[\]]')
_links = []  # the temporary folder of links, once made; removed at exit


def readable(prefix):
  """A prefix TensorFlow can read the checkpoint at `prefix` by: itself, or,
  if it holds glob characters (`runs/t d[1]/model.ckpt-5`), links to its
  files in a temporary folder."""
  if not _PATTERN.search(prefix):
    return prefix
  if not _links:
    _links.append(tempfile.mkdtemp(prefix='checkpoint-links-'))
    atexit.register(shutil.rmtree, _links[0], True)
  target = tempfile.mkdtemp(dir=_links[0])
  folder, base = os.path.split(os.path.abspath(prefix))
  for name in os.listdir(folder):
    if name.startswith(base + '.'):
      os.symlink(os.path.join(folder, name),
                 os.path.join(target, 'ckpt' + name[len(base):]))
  return os.path.join(target, 'ckpt')


def checkpoint_weights(*layers):
  """{variable path: variable} of the given layers, for tf.train.Checkpoint.

  `weights`, not `variables`: Keras 3 also counts each dropout layer's RNG
  state, named by a process-wide counter, which would not match across runs.
  """
  return {v.path: v for layer in layers if layer is not None
          for v in layer.weights}


def checkpoint_key(path, group='weights'):
  """The key tf.train.Checkpoint gives the variable at `path` in a dict like
  the one above saved as `group` ('/' and '.' escaped as the object-graph
  format does)."""
  escaped = path.replace('.', '..').replace('/', '.S')
  return '%s/%s/.ATTRIBUTES/VARIABLE_VALUE' % (group, escaped)


def in_scopes(path, scopes):
  """True when a scope names the variable or one of its enclosing scopes
  (so `sepconv1` matches `sepconv1/...` but not `sepconv10/...`)."""
  return any(path == s or path.startswith(s.rstrip('/') + '/') for s in scopes)


def _expand(scopes, aliases):
  return [name for scope in scopes
          for name in aliases.get(scope.rstrip('/'), [scope])]


def select(variables, include_scopes, exclude_scopes, aliases=None):
  """The variables in an include scope (all, if none given) and in no
  exclude scope: inclusions apply before exclusions. `aliases` maps other
  names of scopes (the original's) to this model's scopes.

  Raises UserError naming a scope that matches no variable at all, with the
  model's top-level scopes: such a scope is a typo, never a request.
  """
  aliases = aliases or {}
  for flag, scopes in (('--warmstart_include_scopes', include_scopes),
                       ('--warmstart_exclude_scopes', exclude_scopes)):
    for scope in scopes:
      if not any(in_scopes(v.path, _expand([scope], aliases))
                 for v in variables):
        top = []
        for v in variables:
          if v.path.split('/')[0] not in top:
            top.append(v.path.split('/')[0])
        raise UserError('%s: scope %r matches no variable of this model (its '
                        'scopes: %s)' % (flag, scope, ', '.join(top)))
  include = _expand(include_scopes, aliases)
  exclude = _expand(exclude_scopes, aliases)
  return [v for v in variables
          if (not include or in_scopes(v.path, include))
          and not in_scopes(v.path, exclude)]


class DamagedCheckpoint(UserError):
  """A checkpoint whose files exist but cannot be read."""


def damaged(prefix, error):
  """DamagedCheckpoint naming the prefix and what reading it raised."""
  text = getattr(error, 'message', None) or str(error) or type(error).__name__
  return DamagedCheckpoint('%s: unreadable checkpoint (%s)' % (
      prefix, text.strip().splitlines()[0]))


def open_checkpoint(prefix):
  """A reader for a `model.ckpt-N` prefix; UserError naming it if it is
  missing, DamagedCheckpoint if it cannot be read."""
  import tensorflow as tf
  require(prefix)
  try:
    return tf.train.load_checkpoint(readable(prefix))
  except (tf.errors.OpError, ValueError, IndexError) as e:
    raise damaged(prefix, e) from None


def assign_from_checkpoint(variables, reader, prefix, missing_ok=False):
  """Assigns each variable its value in the checkpoint; returns the paths
  assigned. A shape mismatch, or (unless missing_ok) an absent variable,
  raises UserError naming the variable."""
  import tensorflow as tf
  shapes = reader.get_variable_to_shape_map()
  assigned, missing = [], []
  for variable in variables:
    key = checkpoint_key(variable.path)
    if key not in shapes:
      missing.append(variable.path)
      continue
    if list(shapes[key]) != list(variable.shape):
      raise UserError(_shape_mismatch(prefix, variable.path, shapes[key],
                                      list(variable.shape)))
    try:
      variable.assign(reader.get_tensor(key))
    except (tf.errors.OpError, IndexError) as e:
      # A truncated data file raises IndexError.
      raise damaged(prefix, e) from None
    assigned.append(variable.path)
  if missing and not missing_ok:
    raise UserError(
        '%s: %d variables of this model are not in the checkpoint (e.g. %s);'
        ' was it trained with another --model or other hparams?' % (
            prefix, len(missing), missing[0]))
  return assigned


def _shape_mismatch(prefix, path, there, here):
  """The error of a variable whose shape differs; for the classifier
  (model.py's `logits` layer) differing in its classes alone, in the class
  map's words too."""
  text = '%s: variable %s has shape %s there but %s in this model' % (
      prefix, path, there, here)
  if path.startswith('logits/') and list(there[:-1]) == here[:-1]:
    text += ': trained for %d classes, and --class_map_path names %d' % (
        there[-1], here[-1])
  return text


def read_record(reader, prefix):
  """(model name, {hparam: value}) recorded in a checkpoint, or None for a
  checkpoint written before runs were recorded."""
  if RECORD_KEY not in reader.get_variable_to_shape_map():
    return None
  import tensorflow as tf
  try:
    value = reader.get_tensor(RECORD_KEY)
  except (tf.errors.OpError, IndexError) as e:
    raise damaged(prefix, e) from None
  return params.from_json(value.decode() if isinstance(value, bytes)
                          else str(value))


def record_mismatch(reader, prefix, model_name, hparams):
  """What contradicts the checkpoint's record in this model and hparams
  (another --model, or another value of a MODEL_DEFINING hparam), or None.
  A checkpoint without a record contradicts nothing."""
  record = read_record(reader, prefix)
  if record is None:
    return None
  recorded_model, recorded = record
  if recorded_model != model_name:
    return 'trained with --model %s, not %s' % (recorded_model, model_name)
  for name in params.MODEL_DEFINING:
    if name in recorded and recorded[name] != getattr(hparams, name):
      return 'trained with hparam %s=%s, not %s' % (
          name, recorded[name], getattr(hparams, name))
  return None
