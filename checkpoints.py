"""Checkpoints: their names, and reading variables out of them by path.

A training run writes `train_dir/model.ckpt-N` (N = batches seen), a
tf.train.Checkpoint holding every model variable under `weights/<variable
path>`, so that warm start and scoring can select variables by name, as the
original's TF1 scopes did.

Plain Python at import: main.py checks checkpoint flags before TensorFlow is
imported; the readers below import it when called.
"""

import glob
import os
import re

from files import UserError

NAME = 'model.ckpt'


def exists(prefix):
  """True when `prefix` names a checkpoint: its .index file exists."""
  return os.path.isfile(prefix + '.index')


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
    match = re.fullmatch(re.escape(NAME) + r'-(\d+)\.index',
                         os.path.basename(index))
    if match:
      found.append((int(match.group(1)), index[:-len('.index')]))
  return sorted(found)


def checkpoint_weights(*layers):
  """{variable path: variable} of the given layers, for tf.train.Checkpoint.

  `weights`, not `variables`: Keras 3 also counts each dropout layer's RNG
  state, named by a process-wide counter, which would not match across runs.
  """
  return {v.path: v for layer in layers if layer is not None
          for v in layer.weights}


def checkpoint_key(path):
  """The key tf.train.Checkpoint gives the variable at `path` in the dict
  above ('/' and '.' escaped as the object-graph format does)."""
  escaped = path.replace('.', '..').replace('/', '.S')
  return 'weights/%s/.ATTRIBUTES/VARIABLE_VALUE' % escaped


def in_scopes(path, scopes):
  """True when a scope names the variable or one of its enclosing scopes
  (so `sepconv1` matches `sepconv1/...` but not `sepconv10/...`)."""
  return any(path == s or path.startswith(s.rstrip('/') + '/') for s in scopes)


def select(variables, include_scopes, exclude_scopes):
  """The variables in an include scope (all, if none given) and in no
  exclude scope: inclusions apply before exclusions."""
  return [v for v in variables
          if (not include_scopes or in_scopes(v.path, include_scopes))
          and not in_scopes(v.path, exclude_scopes)]


def open_checkpoint(prefix):
  """A reader for a `model.ckpt-N` prefix; UserError naming it if unusable."""
  import tensorflow as tf
  require(prefix)
  try:
    return tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise UserError('%s: unreadable checkpoint (%s)' % (
        prefix, getattr(e, 'message', e))) from None


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
      raise UserError(
          '%s: variable %s has shape %s there but %s in this model' % (
              prefix, variable.path, shapes[key], list(variable.shape)))
    try:
      variable.assign(reader.get_tensor(key))
    except tf.errors.OpError as e:
      raise UserError('%s: unreadable checkpoint (%s)' % (
          prefix, e.message.splitlines()[0])) from None
    assigned.append(variable.path)
  if missing and not missing_ok:
    raise UserError(
        '%s: %d variables of this model are not in the checkpoint (e.g. %s);'
        ' was it trained with another --model or other hparams?' % (
            prefix, len(missing), missing[0]))
  return assigned
