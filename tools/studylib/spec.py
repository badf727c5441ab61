"""The study spec: its JSON read, checked and held as Spec and Config."""

import dataclasses
import json
import os
import re

from tagger.core import checkpoints
import model

DATA_KEYS = ('class_map', 'train_csv', 'train_clip_dir', 'test_csv',
             'test_clip_dir')
SPEC_KEYS = DATA_KEYS + ('datasets', 'model', 'seeds', 'reference', 'configs',
                         'plots')
CONFIG_KEYS = ('hparams', 'max_steps', 'eval_steps', 'train_flags', 'model',
               'train_csv', 'train_clip_dir', 'before', 'steps_before',
               'ensemble')
# An ensemble trains nothing: its members are another configuration's runs.
ENSEMBLE_KEYS = ('ensemble', 'eval_steps')
# Flags the study sets for each run itself.
RESERVED_FLAGS = ('mode', 'model', 'hparams', 'max_steps', 'train_dir',
                  'class_map_path', 'train_clip_dir', 'train_csv_path')
NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')
# The summary's name for every dataset's results together.
POOLED = 'pooled'


class StudyError(Exception):
  """A problem reported as one line, exit status 1."""


@dataclasses.dataclass(frozen=True)
class Config:
  name: str
  model: str
  hparams: str
  max_steps: int
  eval_steps: tuple
  train_flags: tuple
  # Training steps its weights had before this run (a warm start from
  # another run): added to its steps in the results, table and plot, so
  # that it meets the reference at equal training steps. Reporting only,
  # not a run setting: it can be added to a study whose runs are done.
  steps_before: int
  # This configuration's own training data (main.py's comma-separated
  # sources), or None for the spec's; and main.py arguments run before its
  # training (e.g. a relabelling). Each may hold {seed}, {dataset} (its
  # name), {runs} (the study's runs/ folder, runs/<dataset>/ with several
  # datasets) and {run} (this run's folder).
  train_csv: str = None
  train_clip_dir: str = None
  before: tuple = ()
  # An ensemble of another configuration's runs (Ensemble), or None.
  ensemble: object = None


@dataclasses.dataclass(frozen=True)
class Ensemble:
  of: str  # the configuration whose runs are its members
  # 'seeds': each seed's row scores the mean of every seed's run at the
  # step (one model, paired with each member); 'snapshots': each run's own
  # last `count` checkpoints up to the step.
  kind: str
  count: int


@dataclasses.dataclass(frozen=True)
class Dataset:
  # None for a spec's one dataset given at its top (runs/<config>/...), or
  # one of its "datasets" (runs/<name>/<config>/...).
  name: str
  data: dict  # DATA_KEYS: absolute paths
  raw_data: dict  # DATA_KEYS: as written, recorded with each run


@dataclasses.dataclass(frozen=True)
class Spec:
  path: str
  folder: str
  datasets: tuple  # of Dataset: every configuration runs on each
  seeds: tuple
  reference: str
  configs: dict  # name: Config, in the spec's order
  # Extra plots, name: configurations drawn beside the reference, so that
  # a question (a section of a report) gets a picture of its own rather
  # than a share of one crowded with every configuration.
  plots: dict


def checkpoint_steps(max_steps):
  """The steps a training run to max_steps saves: 0, every 100, the end."""
  return sorted(set(range(0, max_steps, checkpoints.CHECKPOINT_EVERY))
                | {max_steps})


def load_spec(path):
  try:
    with open(path) as f:
      raw = json.load(f, object_pairs_hook=_Object)
  except OSError as e:
    raise StudyError('%s: cannot read (%s)' % (path, e.strerror)) from None
  except ValueError as e:
    raise StudyError('%s: not valid JSON (%s)' % (path, e)) from None
  try:
    return _parse_spec(os.path.abspath(path), raw)
  except ValueError as e:
    raise StudyError('%s: %s' % (path, e)) from None


class _Object(dict):
  """A JSON object that remembers the keys it was given more than once:
  json keeps only the last value of a key, silently."""

  def __init__(self, pairs):
    super().__init__(pairs)
    keys = [key for key, _ in pairs]
    self.repeated = [key for i, key in enumerate(keys) if key in keys[:i]]


def _no_repeated_keys(value, where=''):
  """Refuses the first key given twice in any object of the spec."""
  if isinstance(value, _Object) and value.repeated:
    what = ('configuration %r is named twice' if where == 'configs' else
            'key %r is given twice')
    raise ValueError((where + ': ' if where else '') +
                     what % value.repeated[0])
  if isinstance(value, dict):
    for key, child in value.items():
      _no_repeated_keys(child, '%s.%s' % (where, key) if where else key)


def _parse_spec(path, raw):
  if not isinstance(raw, dict):
    raise ValueError('expected a JSON object')
  _no_repeated_keys(raw)
  _no_unknown(raw, SPEC_KEYS, '')
  folder = os.path.dirname(path)
  datasets = _datasets(raw, folder)
  seeds = raw.get('seeds')
  if (not isinstance(seeds, list) or not seeds or
      not all(_is_int(s) and 1 <= s < 2 ** 31 for s in seeds) or
      len(set(seeds)) != len(seeds)):
    raise ValueError('seeds: a list of distinct integers from 1 to 2**31 - 1'
                     ' is required')
  default_model = _model(raw.get('model', 'mobilenet-v1'), 'model')
  entries = raw.get('configs')
  if not isinstance(entries, dict) or not entries:
    raise ValueError('configs: an object of configurations is required')
  configs = {}
  for name, entry in entries.items():
    configs[name] = _parse_config(name, entry, default_model, configs)
  reference = _config_name(raw.get('reference', next(iter(configs))),
                           configs, 'reference')
  if not datasets[0].name:
    _no_dataset_name(raw['configs'])
  return Spec(path, folder, datasets, tuple(seeds), reference, configs,
              _plots(raw.get('plots', {}), configs))


def _datasets(raw, folder):
  """The spec's one dataset (DATA_KEYS at its top) or its named ones."""
  if 'datasets' not in raw:
    return (_dataset(None, raw, folder, ''),)
  given = [key for key in DATA_KEYS if key in raw]
  if given:
    raise ValueError('%s: with "datasets", each dataset names its own data'
                     % given[0])
  entries = raw['datasets']
  if not isinstance(entries, dict) or not entries:
    raise ValueError('datasets: an object of datasets is required')
  for name in entries:
    if not NAME.fullmatch(name) or name == POOLED:
      raise ValueError('datasets: name %r: use letters, digits, _ . and -, '
                       'and not %r' % (name, POOLED))
  return tuple(_dataset(name, entry, folder, 'datasets.%s.' % name)
               for name, entry in entries.items())


def _no_dataset_name(entries):
  """{dataset} is a name only a spec of several datasets has."""
  for name, entry in entries.items():
    for key in ('train_csv', 'train_clip_dir', 'before', 'train_flags'):
      if '{dataset}' in json.dumps(entry.get(key, '')):
        raise ValueError('configs.%s.%s: {dataset} needs "datasets" in the '
                         'spec' % (name, key))


def _dataset(name, entry, folder, where):
  if not isinstance(entry, dict):
    raise ValueError(where[:-1] + ': expected an object')
  if name is not None:
    _no_unknown(entry, DATA_KEYS, where)
  data = {}
  for key in DATA_KEYS:
    if not isinstance(entry.get(key), str) or not entry[key]:
      raise ValueError('%s%s: a path is required' % (where, key))
    data[key] = os.path.join(folder, entry[key])
    if not os.path.exists(data[key]):
      raise ValueError('%s%s: %s does not exist' % (where, key, data[key]))
  return Dataset(name, data, {key: entry[key] for key in DATA_KEYS})


def _plots(entry, configs):
  if not isinstance(entry, dict):
    raise ValueError('plots: an object of lists of configurations is required')
  plots = {}
  for name, chosen in entry.items():
    if not NAME.fullmatch(name):
      raise ValueError('plots: %r is not a name of letters, digits, _, . and'
                       ' -' % name)
    if not isinstance(chosen, list) or not chosen:
      raise ValueError('plots.%s: a list of configurations is required' % name)
    plots[name] = tuple(_config_name(c, configs, 'plots.' + name)
                        for c in chosen)
  return plots


def _config_name(value, configs, where):
  if not isinstance(value, str) or value not in configs:
    raise ValueError('%s: %r is not one of the configs (%s)' % (
        where, value, ', '.join(configs)))
  return value


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _no_unknown(entry, known, where):
  unknown = sorted(set(entry) - set(known))
  if unknown:
    raise ValueError('%sunknown key %r (known: %s)' % (where, unknown[0],
                                                       ', '.join(known)))


def _model(name, where):
  if name not in model.MODELS:
    raise ValueError('%s: %r is not a model (%s)' % (where, name,
                                                      ', '.join(model.MODELS)))
  return name


def _parse_config(name, entry, default_model, earlier):
  where = 'configs.%s.' % name
  if not NAME.fullmatch(name):
    raise ValueError('configs: name %r: use letters, digits, _ . and -' %
                     name)
  if not isinstance(entry, dict):
    raise ValueError(where[:-1] + ': expected an object')
  _no_unknown(entry, CONFIG_KEYS, where)
  if 'ensemble' in entry:
    return _parse_ensemble(name, entry, earlier, where)
  max_steps = entry.get('max_steps')
  if not _is_int(max_steps) or max_steps < 1:
    raise ValueError(where + 'max_steps: a positive integer is required')
  for key in ('train_csv', 'train_clip_dir'):
    if key in entry and not (isinstance(entry[key], str) and entry[key]):
      raise ValueError(where + key + ': a path (or comma-separated paths) '
                       'is required')
  before = entry.get('before', [])
  if not isinstance(before, list) or not all(isinstance(a, str)
                                             for a in before):
    raise ValueError(where + 'before: a list of main.py arguments is '
                     'required')
  steps_before = entry.get('steps_before', 0)
  if not _is_int(steps_before) or steps_before < 0:
    raise ValueError(where + 'steps_before: a non-negative integer is '
                     'required')
  return Config(name, _model(entry.get('model', default_model),
                             where + 'model'),
                _hparams(entry.get('hparams', ''), where + 'hparams'),
                max_steps, _eval_steps(entry, max_steps, where),
                _train_flags(entry.get('train_flags', []), where),
                steps_before, entry.get('train_csv'),
                entry.get('train_clip_dir'), tuple(before))


def _hparams(text, where):
  from tagger.core import params  # plain Python, as main.py's own checks
  if not isinstance(text, str):
    raise ValueError(where + ': expected a "name=value,..." string')
  try:
    if 'seed' in params.parse_overrides(text):
      raise ValueError('seed is set by the study (see "seeds")')
    params.parse_hparams(text)
  except ValueError as e:
    raise ValueError('%s: %s' % (where, e)) from None
  return text.strip().strip(',')


def _eval_steps(entry, max_steps, where):
  possible = checkpoint_steps(max_steps)
  steps = entry.get('eval_steps', possible)
  if (not isinstance(steps, list) or not steps or
      not all(_is_int(s) for s in steps)):
    raise ValueError(where + 'eval_steps: a list of steps is required')
  for step in steps:
    if step not in possible:
      raise ValueError(
          '%seval_steps: %d is not a checkpoint step (0, a multiple of %d '
          'below max_steps, or max_steps=%d)' % (
              where, step, checkpoints.CHECKPOINT_EVERY, max_steps))
  return tuple(sorted(set(steps)))


def _train_flags(flags, where):
  if not isinstance(flags, list) or not all(isinstance(f, str)
                                            for f in flags):
    raise ValueError(where + 'train_flags: a list of strings is required')
  for flag in flags:
    name = flag.lstrip('-').split('=')[0]
    if name in RESERVED_FLAGS or name in ('no' + f for f in RESERVED_FLAGS):
      raise ValueError('%strain_flags: %s is set by the study' % (where,
                                                                   flag))
  return tuple(flags)


def _parse_ensemble(name, entry, earlier, where):
  """A configuration that scores an ensemble of an earlier configuration's
  runs: {"of": CONFIG, "seeds": true} or {"of": CONFIG, "snapshots": K}."""
  for key in entry:
    if key not in ENSEMBLE_KEYS:
      raise ValueError('%s%s: an ensemble trains nothing (its members are '
                       'the runs of "of"); it takes only %s' % (
                           where, key, ' and '.join(ENSEMBLE_KEYS)))
  value = entry['ensemble']
  if not isinstance(value, dict) or len(value) != 2 or not (
      'of' in value and ('seeds' in value) != ('snapshots' in value)):
    raise ValueError(where + 'ensemble: {"of": CONFIG, "seeds": true} or '
                     '{"of": CONFIG, "snapshots": K} is required')
  of = earlier.get(value['of']) if isinstance(value['of'], str) else None
  if of is None or of.ensemble:
    raise ValueError('%sensemble.of: %r is not a configuration above it that'
                     ' trains' % (where, value['of']))
  count = value.get('snapshots')
  if 'seeds' in value and value['seeds'] is not True:
    raise ValueError(where + 'ensemble.seeds: true is required')
  if count is not None and (not _is_int(count) or count < 2):
    raise ValueError(where + 'ensemble.snapshots: an integer of at least 2 '
                     'is required')
  kind = 'snapshots' if count else 'seeds'
  possible = checkpoint_steps(of.max_steps)
  if (count or 1) > len(possible):
    raise ValueError('%sensemble.snapshots: %s saves %d checkpoints' % (
        where, of.name, len(possible)))
  first = possible[(count or 1) - 1]  # each step needs `count` up to it
  steps = _eval_steps({'eval_steps': entry.get(
      'eval_steps', [s for s in of.eval_steps if s >= first])},
                      of.max_steps, where)
  if steps[0] < first:
    raise ValueError('%seval_steps: %d has fewer than %d checkpoints of %s up'
                     ' to it' % (where, steps[0], count, of.name))
  return dataclasses.replace(of, name=name, eval_steps=steps,
                             ensemble=Ensemble(of.name, kind, count or 0))
