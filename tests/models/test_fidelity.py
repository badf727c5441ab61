"""Where this version follows the original or the MFoM project to the
letter: the submission's number format, the eval report, Lwlrap-5%, the
original's warm-start scope names, and the CRNN / MFoM optimizer details of
Keras 2."""

import os
import re

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest

from tagger.core import files
from tagger.core import params



# --- submission precision ---------------------------------------------------

def test_submission_scores_read_back_as_the_same_float32():
  import csv
  import io
  import inference
  scores = np.array([[1e-9, 1e-9 + 1e-8, 0.12345678, 0.5],
                     [3.4567e-05, 1.0, 0.0, 2.5e-7],
                     [np.nextafter(np.float32(0.3), np.float32(1)), 0.3,
                      1e-30, 0.99999994]])
  text = inference.submission_csv(['a.wav', 'b.wav', 'c.wav'],
                                  ['w', 'x', 'y', 'z'], scores)
  rows = list(csv.reader(io.StringIO(text)))
  assert rows[0] == ['fname', 'w', 'x', 'y', 'z']
  back = np.array([[np.float32(v) for v in row[1:]] for row in rows[1:]])
  np.testing.assert_array_equal(back, scores.astype(np.float32))
  # Scores 1e-8 apart, and scores far below 5e-7, stay distinct.
  assert back[0, 0] != back[0, 1] and back[0, 0] > 0
  assert back[2, 0] != back[2, 1]
  # As NumPy prints float32s: shortest round-trip text.
  assert rows[2][1] == '3.4567e-05' and rows[1][3] == '0.12345678'
  assert rows[2][2] == '1.0'


# --- eval report ------------------------------------------------------------

def test_report_orders_ties_as_the_original():
  from tagger.eval import metrics
  names = ['Bark', 'Hiss', 'Purr', 'Slam']
  lwlrap = metrics.Lwlrap(names)
  # Every class is the top score of one clip, so all four tie at 1.0;
  # the original's sorted((lwlrap, name), reverse=True) lists them Z to A.
  lwlrap.accumulate(np.eye(4), np.eye(4) + 0.1)
  lines = str(lwlrap).split('\n')
  assert lines == ['Lwlrap(Slam) = 1.000000', 'Lwlrap(Purr) = 1.000000',
                   'Lwlrap(Hiss) = 1.000000', 'Lwlrap(Bark) = 1.000000',
                   'Overall lwlrap = 1.000000']


def test_partial_lwlrap_clips_are_a_seeded_random_five_percent():
  from tagger.eval import reports
  for n in (1, 19, 20, 101, 4481):
    chosen = reports.partial_clips(n)
    assert len(chosen) == int(0.05 * n) + 1
    assert len(set(chosen.tolist())) == len(chosen)
    assert chosen.min() >= 0 and chosen.max() < n
    np.testing.assert_array_equal(chosen, reports.partial_clips(n))
  # Random, not the first clips of the CSV.
  assert sorted(reports.partial_clips(4481).tolist()) != list(range(225))


def test_eval_report_of_a_hand_worked_case():
  """Three clips, three classes. Clip 0: Purr (true) ranked 2nd behind
  Bark -> precision 1/2; clip 1: Bark ranked 1st -> 1; clip 2: Bark 1st
  and Hiss 3rd of its two labels -> 1 and 2/3. Per class: Bark 1, Purr
  1/2, Hiss 2/3; overall (4 labels) (1 + 1 + 1/2 + 2/3) / 4 = 19/24. One
  clip (int(0.05 * 3) + 1) makes Lwlrap-5%."""
  from tagger.eval import reports
  classes = ['Bark', 'Purr', 'Hiss']
  truth = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 1]])
  scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.3, 0.2], [0.7, 0.6, 0.4]])
  result = reports.report(100, truth, scores, classes)
  assert result.step == 100
  assert result.lwlrap_text.split('\n')[-1] == 'Overall lwlrap = %f' % (
      19 / 24)
  assert result.scalars['Lwlrap'] == pytest.approx(19 / 24)
  assert result.scalars['Lwlrap/Bark'] == pytest.approx(1.0)
  assert result.scalars['Lwlrap/Purr'] == pytest.approx(0.5)
  assert result.scalars['Lwlrap/Hiss'] == pytest.approx(2 / 3)
  (clip,) = reports.partial_clips(3)
  per_clip = [0.5, 1.0, (1 + 2 / 3) / 2]
  assert result.scalars['Lwlrap-5%'] == pytest.approx(per_clip[clip])
  # Micro-F1 at 0.5: predicted Bark x3, Purr x2 (0.5, 0.6 >= 0.5);
  # true positives Bark x2, Purr x1 of 4 labels: P = 3/5, R = 3/4.
  assert result.scalars['Micro-F1'] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
  assert 'EER-mean' in result.scalars and 'Micro' in result.metrics_text
  assert result.table.splitlines()[0].startswith('    Lwlrap(')


# --- warm-start scope names of the original --------------------------------

# TF-Slim names a layer by its function's default scope, uniquified with _1,
# _2, ... in order of creation. The original creates slim.conv2d (Conv), then
# for each of 13 separable layers a slim.separable_conv2d (SeparableConv2d,
# SeparableConv2d_1, ...) and a 1x1 slim.conv2d (Conv_1, Conv_2, ...), then
# slim.fully_connected.
def slim_names():
  seen = {}

  def unique(base):
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else '%s_%d' % (base, n)

  names = [('conv0', unique('Conv'))]
  for k in range(1, 14):
    names.append(('sepconv%d/depthwise' % k, unique('SeparableConv2d')))
    names.append(('sepconv%d/pointwise' % k, unique('Conv')))
  names.append(('logits', unique('fully_connected')))
  return names


@pytest.fixture(scope='module')
def mobilenet_variables():
  import model
  net = model.build_model('mobilenet-v1', 80, params.parse_hparams())
  return net.trainable_variables


@pytest.mark.parametrize('ours,slim', slim_names())
def test_slim_scope_selects_the_same_variables(mobilenet_variables, ours,
                                               slim):
  from tagger.core import checkpoints
  from tagger.models import mobilenet
  aliased = checkpoints.select(mobilenet_variables, [slim], [],
                               mobilenet.SCOPE_ALIASES)
  expected = [v for v in mobilenet_variables
              if v.path.startswith(ours + '/') or
              v.path.startswith(ours + '_bn/')]
  assert [v.path for v in aliased] == [v.path for v in expected]
  assert aliased  # a kernel at least


def test_seed_example_excludes_the_classifier(mobilenet_variables):
  from tagger.core import checkpoints
  from tagger.models import mobilenet
  kept = checkpoints.select(mobilenet_variables, [], ['fully_connected'],
                            mobilenet.SCOPE_ALIASES)
  assert [v.path for v in kept] == [v.path for v in mobilenet_variables
                                    if not v.path.startswith('logits/')]


def test_scope_matching_nothing_is_an_error(mobilenet_variables):
  from tagger.core import checkpoints
  from tagger.models import mobilenet
  with pytest.raises(files.UserError) as e:
    checkpoints.select(mobilenet_variables, [], ['fully_conected'],
                       mobilenet.SCOPE_ALIASES)
  message = str(e.value)
  assert '--warmstart_exclude_scopes' in message
  assert "'fully_conected'" in message
  assert 'conv0, sepconv1, sepconv2' in message and 'logits' in message
  with pytest.raises(files.UserError, match='--warmstart_include_scopes'):
    checkpoints.select(mobilenet_variables, ['sepconv14'], [], {})


# --- CRNN and MFoM as Keras 2 built them ------------------------------------

def test_crnn_gru_gates_use_keras2_hard_sigmoid():
  from tagger.models import crnn
  x = np.array([-10.0, -2.5, -2.0, -1.0, 0.0, 0.3, 1.0, 2.5, 3.0, 10.0],
               np.float32)
  expected = np.array([0.0, 0.0, 0.1, 0.3, 0.5, 0.56, 0.7, 1.0, 1.0, 1.0])
  np.testing.assert_allclose(np.asarray(crnn.keras2_hard_sigmoid(x)),
                             expected, atol=1e-7)
  import model
  net = model.build_model('crnn', 5, params.parse_hparams())
  gate = net.get_layer('gru').cell.recurrent_activation
  np.testing.assert_allclose(np.asarray(gate(x)), expected, atol=1e-7)


def _gru_reference(x, kernel, recurrent, bias, gate):
  """Keras 2's GRU (reset_after=False) over [steps, features], in NumPy."""
  units = recurrent.shape[0]
  h = np.zeros(units)
  for x_t in x:
    z = gate(x_t @ kernel[:, :units] + h @ recurrent[:, :units] +
             bias[:units])
    r = gate(x_t @ kernel[:, units:2 * units] +
             h @ recurrent[:, units:2 * units] + bias[units:2 * units])
    hh = np.tanh(x_t @ kernel[:, 2 * units:] +
                 (r * h) @ recurrent[:, 2 * units:] + bias[2 * units:])
    h = z * h + (1 - z) * hh
  return h


def test_crnn_gru_matches_keras2_formulation():
  import model
  net = model.build_model('crnn', 5, params.parse_hparams())
  gru = net.get_layer('gru')
  rng = np.random.default_rng(0)
  for v in gru.weights:
    v.assign(rng.normal(0, 0.4, v.shape).astype(np.float32))
  x = rng.normal(0, 1, (2, 25, 64)).astype(np.float32)
  got = gru(x).numpy()
  cell = gru.cell
  hard = lambda v: np.clip(0.2 * v + 0.5, 0, 1)
  for row, out in zip(x, got):
    want = _gru_reference(row.astype(np.float64), cell.kernel.numpy(),
                          cell.recurrent_kernel.numpy(), cell.bias.numpy(),
                          hard)
    np.testing.assert_allclose(out, want, atol=1e-5)


def _one_input_bn_step(hparams_text, examples):
  """Moving mean of the CRNN's input batch norm after one training step from
  its initial 0."""
  import tensorflow as tf
  import model
  import train
  hparams = params.parse_hparams(hparams_text)
  net = model.build_model('crnn', 5, hparams)
  loss_fn, _ = train.step_lib.make_loss(hparams, 5)
  optimizer = train.step_lib.make_optimizer(hparams, 0)
  optimizer.build(net.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  train.step_lib.make_train_step(net, loss_fn, net.trainable_variables, optimizer,
                        step)(examples, np.zeros((len(examples), 5),
                                                 np.float32))
  return net.get_layer('input_bn').moving_mean.numpy()


def test_crnn_batch_norm_decay_is_keras2_default_unless_overridden():
  rng = np.random.default_rng(1)
  examples = rng.normal(2.0, 1.0, (3, 100, 96)).astype(np.float32)
  band_mean = examples.astype(np.float64).mean(axis=(0, 1))
  # Keras 2's momentum 0.99 by default, whatever bndecay says.
  np.testing.assert_allclose(_one_input_bn_step('bndecay=0.5', examples),
                             0.01 * band_mean, rtol=1e-4)
  np.testing.assert_allclose(_one_input_bn_step('crnn_bndecay=0.8', examples),
                             0.2 * band_mean, rtol=1e-4)


def _keras2_sgd(lr, momentum, nesterov, decay, gradients, w):
  """Keras 2.0.2's SGD: lr scaled by 1 / (1 + decay * iterations), then
  v = momentum * v - lr * g; w += v, or, with Nesterov,
  w += momentum * v - lr * g."""
  v = np.zeros_like(w)
  for iterations, g in enumerate(gradients):
    lr_t = lr / (1.0 + decay * iterations)
    v = momentum * v - lr_t * g
    w = w + (momentum * v - lr_t * g if nesterov else v)
  return w


@pytest.mark.parametrize('text,momentum,nesterov,decay', [
    ('opt=sgd', 0.0, False, 0.0),
    ('opt=sgd,momentum=0.9', 0.9, False, 0.0),
    ('opt=sgd,momentum=0.9,nesterov=1,inverse_time_decay=0.1', 0.9, True, 0.1),
])
def test_sgd_momentum_nesterov_and_inverse_time_decay(text, momentum,
                                                      nesterov, decay):
  import keras
  import train
  lr = 0.05
  hparams = params.parse_hparams(text + ',lr=%s' % lr)
  w0 = np.array([1.0, -2.0, 0.5])
  variable = keras.Variable(w0.astype(np.float32))
  optimizer = train.step_lib.make_optimizer(hparams, 0)
  optimizer.build([variable])
  rng = np.random.default_rng(2)
  gradients = [rng.normal(0, 1, 3) for _ in range(6)]
  for g in gradients:
    optimizer.apply_gradients([(g.astype(np.float32), variable)])
  np.testing.assert_allclose(
      variable.numpy(), _keras2_sgd(lr, momentum, nesterov, decay, gradients,
                                    w0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('text,fragment', [
    ('momentum=0.9', 'opt=sgd'),
    ('opt=sgd,nesterov=2', 'nesterov'),
    ('lrdecay=0.9,inverse_time_decay=1e-6', 'one learning-rate decay'),
    ('bn_stats=exact', 'bn_stats'),
    ('bn_stats_batches=0', 'bn_stats_batches'),
])
def test_bad_optimizer_and_statistics_hparams(text, fragment):
  with pytest.raises(ValueError, match=re.escape(fragment)):
    params.parse_hparams(text)
