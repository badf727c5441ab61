"""main.py's command lines in the flag and input tests: a train run's flags
with overrides, an inference run's arguments, and a checkpoint that passes
main.py's pre-flight check (its .index file exists) and nothing after it."""

from support.settings import CLASS_MAP, FEW_BN_BATCHES, HPARAMS


def train_flags(dataset, train_dir, **overrides):
  flags = {'mode': 'train', 'class_map_path': CLASS_MAP,
           'train_clip_dir': dataset['train_clip_dir'],
           'train_csv_path': dataset['train_csv'],
           'train_dir': train_dir, 'hparams': 'batch_size=4,' + FEW_BN_BATCHES}
  flags.update(overrides)
  return ['--%s=%s' % (k, v) for k, v in flags.items() if v is not None]


def inference_args(clip_dir, checkpoint, csv_path, model='crnn'):
  return ['--mode', 'inference', '--model', model,
          '--class_map_path', CLASS_MAP, '--inference_clip_dir', clip_dir,
          '--inference_checkpoint', checkpoint,
          '--predictions_csv_path', csv_path, '--hparams', HPARAMS]


def write_fake_checkpoint(folder):
  """folder/model.ckpt-1, which passes main.py's pre-flight check (a .index
  file exists); what the fake_checkpoint fixtures return."""
  prefix = folder / 'model.ckpt-1'
  with open(str(prefix) + '.index', 'wb') as f:
    f.write(b'this is not a checkpoint index')
  return str(prefix)
