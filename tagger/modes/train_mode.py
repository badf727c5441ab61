"""--mode train: its flags, pre-flight checks and run (train.py trains).

Plain Python at import: checked before TensorFlow is imported.
"""

import math
import os

from absl import flags

from tagger.core import checkpoints
from tagger.core import files
from tagger.core import params
from tagger.core import sources
from tagger.core.files import UserError
from tagger.modes import mode as mode_lib
from tagger.training import cluster_config
from tagger.training import distribution

flags.DEFINE_string('train_clip_dir', None,
                    'Folder of training WAV clips; with several sources, '
                    'comma-separated folders in the order of '
                    '--train_csv_path.')
flags.DEFINE_string('train_csv_path', None,
                    'Training CSV with header "fname,labels"; several '
                    'comma-separated CSVs train on several sources in one '
                    'run (e.g. curated and noisy clips).')
flags.DEFINE_string('train_source_weights', '',
                    'With several sources: each one\'s share of the '
                    'training examples, comma-separated positive numbers '
                    '(normalised), e.g. 1,1 for half and half. Default: in '
                    'proportion to their examples.')
flags.DEFINE_string('train_source_kinds', '',
                    'With several sources: curated or noisy for each, '
                    'comma-separated. The examples of a noisy source are '
                    'trained with the noisy_loss hparam. Default: all '
                    'curated.')
flags.DEFINE_integer('epoch_num_batches', None,
                     'Batches in one epoch of the training set; needed when '
                     'the lrdecay hparam is > 0.', lower_bound=1)
flags.DEFINE_string('warmstart_checkpoint', None,
                    'Checkpoint (model.ckpt-N prefix) to warm-start from when '
                    'the warmstart hparam is 1.')
flags.DEFINE_list('warmstart_include_scopes', [],
                  'Comma-separated scopes whose variables are warm-started '
                  '(default: all). A scope matches a variable path equal to '
                  'it or starting with it plus "/".')
flags.DEFINE_list('warmstart_exclude_scopes', [],
                  'Comma-separated scopes whose variables are not '
                  'warm-started (default: none); applied after inclusions.')
flags.DEFINE_enum('distribution', 'auto', list(distribution.MODES),
                  'Training devices: none (one device), mirrored (every '
                  'local GPU), multi_worker (the cluster in TF_CONFIG), or '
                  'auto (multi_worker with a TF_CONFIG cluster, mirrored '
                  'with several GPUs, else none).')
flags.DEFINE_float('cluster_start_timeout_seconds', 600.0,
                   'With a TF_CONFIG cluster: how long each task waits for '
                   'all the others to start before it gives up, naming those '
                   'that did not answer.')
flags.DEFINE_integer('max_steps', None,
                     'Stop training after this many batches in total, '
                     'counting a resumed run\'s earlier steps (default: 1000 '
                     'epochs, as the original).', lower_bound=1)
flags.DEFINE_bool('train_cache_examples', False,
                  'Keep every training example in memory after the first '
                  'epoch (about 38.4 KB each with the default hparams), so '
                  'that later epochs need no WAV decoding or features: for '
                  'an accelerator faster than the CPU cores make examples.')
flags.DEFINE_enum('features_on', 'cpu', ['cpu', 'device'],
                  'Where training makes its log-mel examples: in the input '
                  'pipeline on the CPU (cpu), or on the training device '
                  '(device: the pipeline ships each example\'s 16-bit '
                  'samples, and the training step computes the same '
                  'example), for an accelerator the CPU cores cannot feed.')
flags.register_validator(
    'cluster_start_timeout_seconds',
    lambda value: math.isfinite(value) and value > 0,
    message='--cluster_start_timeout_seconds must be a positive number of '
    'seconds')

FLAGS = flags.FLAGS


def _sources():
  return sources.from_flags(FLAGS.train_csv_path, FLAGS.train_clip_dir,
                            FLAGS.train_source_weights,
                            FLAGS.train_source_kinds)


def _max_steps():
  """The steps the run trains to (None: 1000 epochs of the pipeline)."""
  return params.default_max_steps(FLAGS.max_steps, FLAGS.epoch_num_batches)


def check(hparams):
  if FLAGS.warmstart_checkpoint:
    # A checkpoint given by one of its files is taken as its prefix.
    FLAGS.warmstart_checkpoint = checkpoints.prefix_of(
        FLAGS.warmstart_checkpoint)
  spec, _ = cluster_config.check_config()
  if FLAGS.distribution == 'multi_worker' and not spec:
    raise UserError('--distribution=multi_worker needs the cluster in the '
                    'TF_CONFIG environment variable (see README)')
  if distribution.uses_cluster(FLAGS.distribution):
    distribution.check_port()
  if hparams is not None:
    _check_hparams(hparams)


def _check_hparams(hparams):
  sources.check_hparams(_sources(), hparams)
  try:
    params.check_schedule(hparams, _max_steps())
  except ValueError as e:
    raise UserError('--hparams: %s' % e) from None
  if hparams.lrdecay > 0 and not FLAGS.epoch_num_batches:
    raise UserError('--epoch_num_batches is required when lrdecay > 0')
  if hparams.warmstart and not FLAGS.warmstart_checkpoint:
    raise UserError('--warmstart_checkpoint is required when warmstart=1')
  if hparams.warmstart:
    checkpoints.require(FLAGS.warmstart_checkpoint, '--warmstart_checkpoint')


def check_resolved(hparams, recorded, prefix):
  """The hparams a run resumes with (recorded: its record, or None)."""
  if recorded is not None:
    _check_resumed_schedule(recorded, hparams, prefix)
  _check_hparams(hparams)


def _check_resumed_schedule(recorded, hparams, prefix):
  """A resumed cosine decay keeps the horizon its run recorded: another one
  would re-base the decay on the steps already taken (the rate would rise
  again, following neither schedule). Records made before runs recorded
  their horizon (decay_horizon=0) cannot be checked."""
  horizon = recorded.get('decay_horizon') if recorded.get(
      'cosine_decay') else 0
  if not (horizon and hparams.cosine_decay):
    return
  given = params.parse_overrides(FLAGS.hparams).get('decay_horizon')
  if (given or _max_steps()) == horizon:
    return
  asked = ('--hparams decay_horizon=%d' % given if given else
           '--max_steps %d' % FLAGS.max_steps if FLAGS.max_steps else
           'no --max_steps')
  raise UserError(
      '%s: %s decays the learning rate to step %d (its recorded '
      'decay_horizon=%d), and a resumed run keeps its schedule: resume with '
      '--max_steps %d, add decay_horizon=%d to --hparams to train on at the '
      'floor rate, or start a new --train_dir' % (
          asked, prefix, horizon, horizon, horizon, horizon))


def list_inputs(class_names):
  data = mode_lib.ModeData(class_names)
  data.sources = _sources()
  data.rows = [files.read_labeled_csv(s.csv_path, s.clip_dir, class_names)
               for s in data.sources]
  return data, [os.path.join(s.clip_dir, f)
                for s, rows in zip(data.sources, data.rows) for f, _ in rows]


def start(data):
  # Before anything else runs: a multi-worker strategy sets up the
  # collective ops of the TensorFlow runtime.
  data.strategy = distribution.make_strategy(
      FLAGS.distribution, FLAGS.cluster_start_timeout_seconds)


def run(resolved, data):
  import tensorflow as tf
  import train
  try:
    train.train(resolved.model_name, resolved.hparams, data.class_names,
                data.sources, FLAGS.train_dir,
                epoch_num_batches=FLAGS.epoch_num_batches,
                max_steps=FLAGS.max_steps,
                warmstart_checkpoint=FLAGS.warmstart_checkpoint,
                warmstart_include_scopes=FLAGS.warmstart_include_scopes,
                warmstart_exclude_scopes=FLAGS.warmstart_exclude_scopes,
                strategy=data.strategy,
                cache_examples=FLAGS.train_cache_examples,
                features_on=FLAGS.features_on)
  except tf.errors.OpError as e:
    lost = distribution.lost_tasks(e)
    if lost is None:
      raise
    raise UserError(_lost_message(lost)) from None


def _lost_message(lost):
  """What a worker says when another task of the cluster was lost."""
  found = checkpoints.list_checkpoints(FLAGS.train_dir)
  return ('training stopped: %s of the cluster was lost; the last checkpoint '
          'is %s; restart every worker with the same command to resume' % (
              ' and '.join('%s (%s)' % task for task in lost) or
              'another task', found[-1][1] if found else 'none yet'))


MODE = mode_lib.Mode(
    name='train',
    required=('train_clip_dir', 'train_csv_path', 'train_dir'),
    inputs=('class_map_path', 'train_clip_dir', 'train_csv_path',
            'warmstart_checkpoint'),
    output_dirs=('train_dir',), list_inputs=list_inputs, run=run,
    check=check, check_resolved=check_resolved, start=start)
