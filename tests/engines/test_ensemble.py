"""Ensembles (--inference_checkpoint a,b,c): inference and eval score the
mean of the members' clip scores, held to the mean of independent clip
scores of each member; tag and relabel, and the export, to the mean of
each member's own scores within 1e-6 (each member in LiteRT with --engine
tflite: modes/test_engine_flags.py); members of
another model, features or class map, a missing member, and the modes that
take one checkpoint are one line each."""

import os
import re

import numpy as np
import pytest

from support.cli import assert_one_error, check_ok, export_args, run_main
from support.scores import (
    TIE, independent_clip_scores, labeled_rows, lwlrap_bounds, overall_lwlrap,
    read_class_names, read_csv_rows, scorer_scores, truth_matrix, within)
from support.settings import CLASS_MAP, TAG_HPARAMS, TAG_STEPS
from support.tag_runs import tag_args


def _members(tagger):
  """The tagger's checkpoints at steps 0, 100 and 200: far apart enough
  that their mean is none of them."""
  return [os.path.join(tagger['train_dir'], 'model.ckpt-%d' % step)
          for step in (0, TAG_STEPS // 2, TAG_STEPS)]


def test_an_ensemble_scores_the_mean_of_its_members(tagger, tmp_path,
                                                    parse_hparams):
  data = tagger['data']
  members = _members(tagger)
  csv_path = str(tmp_path / 'predictions.csv')
  result = check_ok(run_main(
      ['--mode', 'inference', '--class_map_path', CLASS_MAP,
       '--inference_checkpoint', ','.join(members),
       '--inference_clip_dir', data['train_clip_dir'],
       '--predictions_csv_path', csv_path]))
  assert ('Scoring the mean of 3 checkpoints, %s (batch-norm statistics: '
          'precise)\n' % ', '.join(members)) in result.stdout
  rows = read_csv_rows(csv_path)[1:]
  fnames = [r[0] for r in rows]
  got = np.array([[float(v) for v in r[1:]] for r in rows])
  each = [independent_clip_scores('crnn', parse_hparams(TAG_HPARAMS), m,
                                  data['train_clip_dir'], fnames)
          for m in members]
  # The members disagree, so that their mean is none of them.
  assert min(np.abs(a - b).max() for a in each for b in each
             if a is not b) > 0.05
  np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=0,
                             atol=2 * TIE)
  # And within 1e-6 of the mean of each member's scores as inference makes
  # them alone (the same features: no NumPy-TensorFlow difference).
  paths = [os.path.join(data['train_clip_dir'], f) for f in fnames]
  alone = [scorer_scores('crnn', parse_hparams(TAG_HPARAMS), m, paths)
           for m in members]
  np.testing.assert_allclose(got, np.mean(alone, axis=0), rtol=0, atol=1e-6)
  # Eval scores the same ensemble; its result is named by the first
  # member, the untrained step 0, which alone ranks far worse.
  eval_dir = str(tmp_path / 'eval')
  result = check_ok(run_main(
      ['--mode', 'eval', '--class_map_path', CLASS_MAP,
       '--inference_checkpoint', ','.join(members),
       '--eval_csv_path', data['train_csv'],
       '--eval_clip_dir', data['train_clip_dir'], '--eval_dir', eval_dir]))
  assert 'Evaluating the mean of 3 checkpoints, ' in result.stdout
  assert os.listdir(eval_dir).count('eval-0.txt') == 1
  with open(os.path.join(eval_dir, 'eval-0.txt')) as f:
    lwlrap = overall_lwlrap(f.read())
  rows = dict(labeled_rows(data['train_csv']))
  truth = truth_matrix([(f, rows[f]) for f in fnames], read_class_names())
  assert within(lwlrap, lwlrap_bounds(truth, np.mean(each, axis=0)))
  assert not within(lwlrap, lwlrap_bounds(truth, each[0]))
  # Its progress ends with the running lwlrap over every clip.
  running = re.findall(r'^eval %s: .*, running lwlrap (\S+)$' % re.escape(
      ','.join(members)), result.stdout, re.M)
  assert running and float(running[-1]) == pytest.approx(lwlrap, abs=1e-4)


def _timeline(members, clip, folder, name):
  """[examples, classes] scores of tag's timeline for one clip, and tag's
  stderr."""
  path = str(folder / (name + '.csv'))
  result = check_ok(run_main(tag_args(members, [clip],
                                      ['--timeline_csv_path', path])))
  rows = read_csv_rows(path)[1:]
  assert rows and {r[0] for r in rows} == {clip}
  return np.array([[float(v) for v in r[2:]] for r in rows]), result


def test_tag_and_relabel_score_the_mean_of_their_members(tagger, tmp_path):
  """Tag's example scores are within 1e-6 of the mean of each member's
  own (tag's timeline); relabel adds a label at an add threshold 1e-6
  below the mean of the members' clip scores, not 1e-6 above it."""
  data = tagger['data']
  members = _members(tagger)[1:]
  fname, given = labeled_rows(data['train_csv'])[0]
  clip = os.path.join(data['train_clip_dir'], fname)
  got, result = _timeline(','.join(members), clip, tmp_path, 'ensemble')
  assert 'Tagging 1 files with the mean of 2 checkpoints, %s (' % (
      ', '.join(members)) in result.stderr
  assert result.stdout.startswith(clip + ': ')
  each = [_timeline(m, clip, tmp_path, 'member%d' % i)[0]
          for i, m in enumerate(members)]
  assert np.abs(each[0] - each[1]).max() > 0.05  # the mean is neither
  np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=0, atol=1e-6)
  # A class not given, scored well inside (0, 1) by the ensemble.
  names = read_class_names()
  clip_scores = np.mean([e.mean(axis=0) for e in each], axis=0)
  j = max((j for j in range(len(names)) if names[j] not in given),
          key=lambda j: min(clip_scores[j], 1 - clip_scores[j]))
  assert 0.02 < clip_scores[j] < 0.98
  one = tmp_path / 'one.csv'
  one.write_text('fname,labels\n%s,"%s"\n' % (fname, ','.join(given)))
  for delta, added in ((-1e-6, True), (1e-6, False)):
    out = str(tmp_path / ('relabelled%g.csv' % delta))
    result = check_ok(run_main(
        ['--mode', 'relabel', '--class_map_path', CLASS_MAP,
         '--inference_checkpoint', ','.join(members),
         '--relabel_csv_path', str(one),
         '--relabel_clip_dir', data['train_clip_dir'],
         '--relabeled_csv_path', out, '--relabel_keep_threshold', '0',
         '--relabel_add_threshold', repr(float(clip_scores[j] + delta))]))
    assert 'Relabelling with the mean of 2 checkpoints, ' in result.stdout
    labels = dict(labeled_rows(out))[fname]
    assert (names[j] in labels) == added, (delta, labels)


def _two_class_checkpoint(folder, parse_hparams):
  """The tagger's model made for a class map of 2 classes, saved without a
  record (as a run of another class map would differ: its logits)."""
  import tensorflow as tf
  import model as model_lib
  from tagger.core import checkpoints
  two = model_lib.build_model('crnn', 2, parse_hparams(TAG_HPARAMS))
  prefix = str(folder / 'model.ckpt-5')
  tf.train.Checkpoint(weights=checkpoints.checkpoint_weights(two)).write(
      prefix)
  return prefix


def test_an_exported_ensemble_scores_the_mean_of_its_members(
    tagger, tmp_path, parse_hparams):
  """One SavedModel and one model.tflite hold the ensemble: a clip's
  scores are the mean of the members' scores as inference makes them, its
  embeddings the members' side by side; no examples-in model is written."""
  import soundfile
  import tensorflow as tf
  from tagger.core import files
  from tagger.engines import scoring
  from tagger.modes import export_checks
  members = _members(tagger)[1:]
  export_dir = str(tmp_path / 'export')
  result = check_ok(run_main(export_args(','.join(members), export_dir)))
  assert 'Exported the mean of 2 checkpoints, %s (batch-norm statistics: ' \
      'precise) to %s' % (', '.join(members), export_dir) in result.stdout
  assert sorted(os.listdir(export_dir)) == ['class_map.csv', 'model.tflite',
                                            'saved_model']
  path = os.path.join(tagger['data']['train_clip_dir'],
                      labeled_rows(tagger['data']['train_csv'])[0][0])
  waveform = soundfile.read(path, dtype='float32')[0]
  each, embeddings = [], []
  for member in members:  # each alone, as inference scores it
    scorer = scoring.Scorer('crnn', 80, parse_hparams(TAG_HPARAMS))
    scorer.load(member)
    each.append(scorer.score([path], files.check_clips([path]))[0])
    embeddings.append(np.asarray(scorer.waveform_model(
        tf.constant(waveform[None]))['embeddings'][0]))
  assert np.abs(each[0] - each[1]).max() > 0.05  # the mean is neither
  serve = tf.saved_model.load(os.path.join(
      export_dir, 'saved_model')).signatures['serving_default']
  run_tflite = export_checks.tflite_runner(os.path.join(export_dir,
                                                        'model.tflite'))
  for outputs in (serve(waveform=tf.constant(waveform)),
                  run_tflite(waveform=waveform)):
    np.testing.assert_allclose(np.asarray(outputs['clip_scores']),
                               np.mean(each, axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(outputs['embeddings']),
                               np.concatenate(embeddings, -1), rtol=0,
                               atol=1e-4)


@pytest.mark.parametrize('case', ['missing', 'another model', 'export',
                                  'model file', 'other features',
                                  'another class map'])
def test_what_an_ensemble_cannot_be(tagger, mobilenet_train, tmp_path, case,
                                    request, parse_hparams):
  data = tagger['data']
  first = _members(tagger)[-1]
  other = first
  if case == 'missing':
    other = str(tmp_path / 'model.ckpt-7')
  elif case == 'another model':
    other = mobilenet_train['checkpoint']
  elif case == 'other features':  # another mel_max_hz
    other = os.path.join(request.getfixturevalue('crnn_bce3'),
                         'model.ckpt-3')
  elif case == 'another class map':
    other = _two_class_checkpoint(tmp_path, parse_hparams)
  members = first + ',' + other
  if case == 'export':
    args = export_args(members, str(tmp_path / 'export'),
                       ['--quantize', 'dynamic'])
    needles = ['--quantize dynamic: the examples-in models hold one '
               'checkpoint; an ensemble is exported as one SavedModel']
  else:
    args = ['--mode', 'inference', '--class_map_path', CLASS_MAP,
            '--inference_checkpoint', members,
            '--inference_clip_dir', data['train_clip_dir'],
            '--predictions_csv_path', str(tmp_path / 'out.csv')]
    needles = {
        'missing': ['--inference_checkpoint: checkpoint %s not found' %
                    other],
        'another model': ['%s: trained with --model mobilenet-v1, not crnn'
                          % other],
        'model file': ['--tflite_model scores one model file'],
        'other features': ['%s: trained with hparam mel_max_hz=' % other],
        'another class map': ['%s: variable ' % other,
                              ', 2] there but [',
                              ', 80] in this model: trained for 2 classes,'
                              ' and --class_map_path names 80']}[case]
    if case == 'model file':
      args += ['--engine', 'tflite', '--tflite_model', first + '.index']
  assert_one_error(run_main(args), *needles)
  assert not os.path.exists(str(tmp_path / 'out.csv'))
  assert not os.path.exists(str(tmp_path / 'export'))


def test_no_output_may_be_a_members_file(tagger, tmp_path):
  """Each member's files are inputs of the run, not the first's alone."""
  second = _members(tagger)[1]
  result = run_main(['--mode', 'inference', '--class_map_path', CLASS_MAP,
                     '--inference_checkpoint',
                     ','.join(_members(tagger)[::2] + [second]),
                     '--inference_clip_dir', tagger['data']['train_clip_dir'],
                     '--predictions_csv_path', second + '.index'])
  assert_one_error(result, '--predictions_csv_path: %s.index is '
                   '--inference_checkpoint of this run' % second)
