"""A study's runs: each one's folder, commands and remembered settings."""

import dataclasses
import json
import os
import re
import sys

from tagger.core import checkpoints
from tagger.core import files
from tagger.core import machine
from tools.studylib.spec import StudyError, checkpoint_steps

MAIN = os.path.join(machine.REPO, 'main.py')


def run_name(dataset, config_name, seed):
  return '/'.join(([dataset.name] if dataset.name else []) +
                  [config_name, 'seed-%d' % seed])


def run_dir(study_dir, dataset, config_name, seed):
  return os.path.join(study_dir, 'runs', *run_name(dataset, config_name,
                                                   seed).split('/'))


def eval_file(folder, step):
  return os.path.join(folder, 'eval', 'eval-%d.txt' % step)


def metrics_file(folder, step):
  return os.path.join(folder, 'eval', 'metrics-%d.txt' % step)


def checkpoint_prefix(folder, step):
  return os.path.join(folder, 'train', 'model.ckpt-%d' % step)


def is_finished(folder, config):
  return all(os.path.exists(eval_file(folder, s)) for s in config.eval_steps)


def run_hparams(config, seed):
  return ','.join(p for p in (config.hparams, 'seed=%d' % seed) if p)


def fill(text, dataset, seed, folder):
  """A configuration's text with {seed}, {dataset}, {runs} and {run} filled
  in."""
  return text.format(seed=seed, run=folder, dataset=dataset.name,
                     runs=os.path.dirname(os.path.dirname(folder)))


def _paths(spec, text, dataset, seed, folder):
  """Comma-separated paths, each relative to the spec's folder."""
  return ','.join(os.path.join(spec.folder, fill(p, dataset, seed, folder))
                  for p in text.split(','))


def train_command(spec, dataset, config, seed, folder):
  data = dataset.data
  csv_paths = (_paths(spec, config.train_csv, dataset, seed, folder)
               if config.train_csv else data['train_csv'])
  clip_dirs = (_paths(spec, config.train_clip_dir, dataset, seed, folder)
               if config.train_clip_dir else data['train_clip_dir'])
  return [sys.executable, MAIN, '--mode', 'train', '--model', config.model,
          '--class_map_path', data['class_map'],
          '--train_clip_dir', clip_dirs, '--train_csv_path', csv_paths,
          '--train_dir', os.path.join(folder, 'train'),
          '--hparams', run_hparams(config, seed),
          '--max_steps', str(config.max_steps)] + [
              fill(f, dataset, seed, folder) for f in config.train_flags]


def ensemble_members(study_dir, dataset, config, seed, seeds, step):
  """The checkpoint prefixes an ensemble configuration's run scores at
  step, the one that names the result (its step, its seed) first."""
  ensemble = config.ensemble
  if ensemble.kind == 'seeds':
    order = [seed] + [s for s in seeds if s != seed]
    return [checkpoint_prefix(run_dir(study_dir, dataset, ensemble.of, s),
                              step) for s in order]
  folder = run_dir(study_dir, dataset, ensemble.of, seed)
  steps = [s for s in checkpoint_steps(config.max_steps) if s <= step]
  return [checkpoint_prefix(folder, s) for s in steps[::-1][:ensemble.count]]


def before_command(dataset, config, seed, folder):
  return [sys.executable, MAIN, '--class_map_path', dataset.data['class_map']
          ] + [fill(a, dataset, seed, folder) for a in config.before]


def eval_command(dataset, folder):
  return [sys.executable, MAIN, '--mode', 'eval',
          '--class_map_path', dataset.data['class_map'],
          '--eval_clip_dir', dataset.data['test_clip_dir'],
          '--eval_csv_path', dataset.data['test_csv'],
          '--train_dir', os.path.join(folder, 'eval_checkpoints'),
          '--eval_dir', os.path.join(folder, 'eval')]


def ensemble_eval_command(dataset, folder, members):
  return eval_command(dataset, folder)[:-4] + [
      '--inference_checkpoint', ','.join(members),
      '--eval_dir', os.path.join(folder, 'eval')]


def run_settings(dataset, config, seed):
  """What makes a run's results what they are; max_steps and eval_steps may
  grow (training resumes, more steps are scored)."""
  if config.ensemble:
    return {'ensemble': dataclasses.asdict(config.ensemble),
            'data': dataset.raw_data}
  return {'model': config.model, 'hparams': run_hparams(config, seed),
          'train_flags': list(config.train_flags), 'data': dataset.raw_data,
          'train_csv': config.train_csv,
          'train_clip_dir': config.train_clip_dir,
          'before': list(config.before)}


def check_settings(folder, settings, name):
  """Records the run's settings, or refuses other ones than recorded: a
  resumed run would mix two recipes, and its results would be neither's."""
  path = os.path.join(folder, 'run.json')
  if not os.path.exists(path):
    files.write_atomically(path, json.dumps(settings, indent=1) + '\n')
    return
  with open(path) as f:
    recorded = json.load(f)
  for key, value in settings.items():
    if recorded.get(key) != value:
      raise StudyError(
          '%s was started with %s %s, the spec now says %s; give the '
          'configuration another name, or delete %s to redo it' % (
              name, key, json.dumps(recorded.get(key)), json.dumps(value),
              folder))


def link_checkpoints(folder, steps, name):
  """Fills eval_checkpoints/ with relative links to the files of the chosen
  checkpoints not yet scored, so that eval scores those and no others."""
  links = os.path.join(folder, 'eval_checkpoints')
  os.makedirs(links, exist_ok=True)
  for entry in os.listdir(links):
    os.remove(os.path.join(links, entry))
  for step in steps:
    prefix = checkpoint_prefix(folder, step)
    paths = checkpoints.files_of(prefix)
    if prefix + '.index' not in paths or len(paths) < 2:  # index, shards
      raise StudyError('%s: training left no checkpoint %s; delete %s to '
                       'redo the run' % (name, prefix, folder))
    for path in paths:
      os.symlink(os.path.relpath(path, links),
                 os.path.join(links, os.path.basename(path)))


def remove_stale_claims(folder):
  """Eval claims left by an eval killed outright: the study lock makes this
  process the only one scoring into the folder."""
  eval_dir = os.path.join(folder, 'eval')
  if os.path.isdir(eval_dir):
    for entry in os.listdir(eval_dir):
      if re.fullmatch(r'eval-\d+\.claim(\.\d+)?', entry):
        os.remove(os.path.join(eval_dir, entry))
