"""MobileNet v1's width multiplier (width; tagger/models/mobilenet.py): the
kernel weights of the model built against a count from the layer table,
the README's figures, and a warm start between widths refused."""

import numpy as np
import pytest

from tagger.core import params
from support.cli import assert_one_error, run_main, train_args


# --- width multiplier -------------------------------------------------------

TABLE = [(1, 16, 'conv'), (1, 64, 'sep'), (2, 128, 'sep'), (1, 128, 'sep'),
         (2, 256, 'sep'), (1, 256, 'sep'), (2, 512, 'sep')] + [
             (1, 512, 'sep')] * 5 + [(2, 1024, 'sep'), (1, 1024, 'sep')]


def counts(width, classes=80):
  """Kernel weights and multiplies of MobileNet v1 at a width multiplier,
  from the layer table (depths int(d * width), at least 8)."""
  h, w, cin = 100, 96, 1
  weights = multiplies = 0
  for stride, depth, kind in TABLE:
    depth = max(8, int(depth * width))
    h, w = -(-h // stride), -(-w // stride)
    if kind == 'conv':
      weights += 9 * cin * depth
      multiplies += h * w * 9 * cin * depth
    else:
      weights += 9 * cin + cin * depth
      multiplies += h * w * (9 * cin + cin * depth)
    cin = depth
  return weights + cin * classes, multiplies + cin * classes


@pytest.mark.parametrize('width', [0.5, 1.0, 2.0])
def test_width_multiplier_sizes(width):
  import model
  net = model.build_model('mobilenet-v1', 80, params.parse_hparams(
      'width=%s' % width))
  kernels = sum(int(np.prod(v.shape)) for v in net.weights
                if v.path.endswith('/kernel'))
  weights, _ = counts(width)
  assert kernels == weights
  if width == 1.0:
    assert weights == 3265120  # the baseline's table


def test_width_multiplier_readme_figures():
  assert counts(0.5) == (847920, 111494656)
  assert counts(2.0) == (12807360, 1702303744)


def test_warm_start_between_widths_is_refused(tmp_path, dataset,
                                              mobilenet_train):
  """The shared run has the default width, 1.0."""
  assert_one_error(run_main(train_args(
      'mobilenet-v1', dataset['train_clip_dir'], dataset['train_csv'],
      str(tmp_path / 'half'), 1,
      hparams='batch_size=4,width=0.5,warmstart=1',
      extra=['--warmstart_checkpoint', mobilenet_train['checkpoint']])),
                   '--warmstart_checkpoint', 'width=1.0', 'not 0.5')
