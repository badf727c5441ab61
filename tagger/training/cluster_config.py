"""The cluster a run of --distribution multi_worker (or auto) trains on:
the TF_CONFIG environment variable, read and checked.

Plain Python, checked before TensorFlow is imported.
"""

import json
import os

from tagger.core.files import UserError

# The task types a cluster of this program has: TensorFlow's parameter
# servers and evaluators have no part in MultiWorkerMirroredStrategy.
TASK_TYPES = ('chief', 'worker')
_EXAMPLE = ('{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}')


def check_config():
  """(cluster dict, task dict) of the TF_CONFIG environment variable, or
  (None, None) if it is not set. Raises UserError (`TF_CONFIG: what is
  wrong`) unless it is a JSON object whose "cluster" maps "chief" (one at
  most) and "worker" to lists of distinct "host:port" addresses and whose
  "task" names one of them by "type" and "index"."""
  text = os.environ.get('TF_CONFIG')
  if not text:
    return None, None
  try:
    config = json.loads(text)
  except ValueError:
    raise UserError('TF_CONFIG: not valid JSON') from None
  problem = _config_problem(config)
  if problem:
    raise UserError('TF_CONFIG: ' + problem)
  return config['cluster'], config['task']


def _json_type(value):
  if isinstance(value, bool):
    return 'true/false'
  for kind, name in ((dict, 'an object'), (list, 'a list'), (str, 'a string'),
                     ((int, float), 'a number')):
    if isinstance(value, kind):
      return name
  return 'null'


def _config_problem(config):
  if not isinstance(config, dict):
    return 'must be a JSON object like %s, not %s' % (_EXAMPLE,
                                                      _json_type(config))
  for key in ('cluster', 'task'):
    if key not in config:
      return 'no "%s" (it must be like %s)' % (key, _EXAMPLE)
  return (_cluster_problem(config['cluster']) or
          _task_problem(config['task'], config['cluster']))


def _cluster_problem(spec):
  if not isinstance(spec, dict) or not spec:
    return ('"cluster" must be an object of lists of "host:port" addresses, '
            'e.g. {"worker": ["host1:2222", "host2:2222"]}, not %s' % (
                'an empty one' if spec == {} else _json_type(spec)))
  owners = {}
  for kind, addresses in spec.items():
    if kind not in TASK_TYPES:
      return ('"cluster" lists "%s" tasks; this program runs only "chief" '
              'and "worker" tasks' % kind)
    if not isinstance(addresses, list) or not addresses:
      return ('"cluster" "%s" must be a list of "host:port" addresses, not '
              '%s' % (kind, 'an empty one' if addresses == [] else
                      _json_type(addresses)))
    if kind == 'chief' and len(addresses) > 1:
      return '"cluster" lists %d "chief" tasks; a cluster has one at most' % (
          len(addresses))
    for index, address in enumerate(addresses):
      owner = '%s %d' % (kind, index)
      if not _is_address(address):
        return '"cluster" %s: %s is not a "host:port" address' % (
            owner, json.dumps(address))
      if address in owners:
        return '"cluster": %s is the address of both %s and %s' % (
            address, owners[address], owner)
      owners[address] = owner
  return None


def _is_address(address):
  if not isinstance(address, str):
    return False
  host, _, port = address.rpartition(':')
  return bool(host.strip('[]')) and port.isdigit() and 0 < int(port) < 65536


def _task_problem(task, spec):
  if not isinstance(task, dict):
    return ('"task" must be an object like {"type": "worker", "index": 0}, '
            'not %s' % _json_type(task))
  for key in ('type', 'index'):
    if key not in task:
      return ('"task" has no "%s" (it must be like {"type": "worker", '
              '"index": 0})' % key)
  kind, index = task['type'], task['index']
  if kind not in TASK_TYPES:
    return ('"task" type %s: this program runs only "chief" and "worker" '
            'tasks' % json.dumps(kind))
  if kind not in spec:
    return '"task" type "%s" has no list in "cluster"' % kind
  if not isinstance(index, int) or isinstance(index, bool):
    return '"task" index must be a whole number, not %s' % json.dumps(index)
  count = len(spec[kind])
  if not 0 <= index < count:
    return '"task" index %d is out of range: "cluster" lists %s' % (
        index, '1 "%s" task (index 0)' % kind if count == 1 else
        '%d "%s" tasks (0 to %d)' % (count, kind, count - 1))
  return None
