"""TF_CONFIG (tagger/training/cluster_config.py): each wrong shape refused
in one line naming what is wrong, a well-formed one accepted, and the check
made before anything is created or TensorFlow started."""

import json
import os

import pytest

from support.cli import assert_one_error, run_main, train_args
from support.distributed import CRNN


# --- TF_CONFIG --------------------------------------------------------------

WORKERS = {'worker': ['localhost:2222', 'localhost:2223']}
WORKER_0 = {'type': 'worker', 'index': 0}


@pytest.mark.parametrize('config,needle', [
    ('[]', 'not a list'),
    ('"worker"', 'not a string'),
    ('3', 'not a number'),
    ({'cluster': WORKERS}, 'no "task"'),
    ({'task': WORKER_0}, 'no "cluster"'),
    ({'cluster': WORKERS, 'task': 'worker'}, '"task" must be an object'),
    ({'cluster': WORKERS, 'task': {'index': 0}}, '"task" has no "type"'),
    ({'cluster': WORKERS, 'task': {'type': 'worker'}}, '"task" has no "index"'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': 2}},
     'index 2 is out of range'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': -1}},
     'index -1 is out of range'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': '0'}},
     'whole number'),
    ({'cluster': WORKERS, 'task': {'type': 'worker', 'index': True}},
     'whole number'),
    ({'cluster': WORKERS, 'task': {'type': 'ps', 'index': 0}}, '"ps"'),
    ({'cluster': WORKERS, 'task': {'type': 'chief', 'index': 0}},
     '"chief" has no list'),
    ({'cluster': ['localhost:2222'], 'task': WORKER_0},
     '"cluster" must be an object'),
    ({'cluster': {}, 'task': WORKER_0}, '"cluster" must be an object'),
    ({'cluster': {'worker': 'localhost:2222'}, 'task': WORKER_0},
     'must be a list'),
    ({'cluster': {'worker': []}, 'task': WORKER_0}, 'must be a list'),
    ({'cluster': {'worker': ['localhost']}, 'task': WORKER_0},
     '"localhost" is not a "host:port" address'),
    ({'cluster': {'worker': ['localhost:http']}, 'task': WORKER_0},
     '"localhost:http" is not'),
    ({'cluster': {'worker': ['localhost:65536']}, 'task': WORKER_0},
     '"localhost:65536" is not'),
    ({'cluster': {'worker': ['localhost:0']}, 'task': WORKER_0},
     '"localhost:0" is not'),
    ({'cluster': {'worker': [':2222']}, 'task': WORKER_0}, '":2222" is not'),
    ({'cluster': {'worker': [2222]}, 'task': WORKER_0}, '2222 is not'),
    ({'cluster': {'worker': ['a:1', 'a:1']}, 'task': WORKER_0},
     'both worker 0 and worker 1'),
    ({'cluster': dict(WORKERS, ps=['localhost:2224']), 'task': WORKER_0},
     '"ps"'),
    ({'cluster': dict(WORKERS, chief=['a:1', 'b:1']), 'task': WORKER_0},
     '2 "chief" tasks'),
])
def test_tf_config_of_the_wrong_shape(monkeypatch, config, needle):
  from tagger.training import cluster_config
  from tagger.core.files import UserError
  monkeypatch.setenv('TF_CONFIG', config if isinstance(config, str) else
                     json.dumps(config))
  with pytest.raises(UserError) as raised:
    cluster_config.check_config()
  message = str(raised.value)
  assert message.startswith('TF_CONFIG: ') and '\n' not in message, message
  assert needle in message, message


def test_tf_config_accepted(monkeypatch):
  from tagger.training import cluster_config
  # The first and last ports there are.
  config = {'cluster': {'worker': ['localhost:1', 'localhost:65535'],
                        'chief': ['[::1]:2221']},
            'task': {'type': 'worker', 'index': 1}, 'environment': 'cloud'}
  monkeypatch.setenv('TF_CONFIG', json.dumps(config))
  assert cluster_config.check_config() == (config['cluster'], config['task'])
  monkeypatch.delenv('TF_CONFIG')
  assert cluster_config.check_config() == (None, None)


def test_tf_config_checked_before_anything_is_made(tmp_path, dataset):
  """A task index out of range: one line, nothing created, TensorFlow never
  started."""
  train_dir = tmp_path / 'train'
  os.environ['TF_CONFIG'] = json.dumps({'cluster': WORKERS,
                                        'task': {'type': 'worker', 'index': 2}})
  try:
    result = run_main(train_args(
        'crnn', dataset['train_clip_dir'], dataset['train_csv'],
        str(train_dir), 1, hparams=CRNN,
        extra=['--distribution=multi_worker']))
  finally:
    del os.environ['TF_CONFIG']
  assert_one_error(result, 'TF_CONFIG', 'index 2 is out of range',
                   '2 "worker" tasks')
  assert not train_dir.exists()
