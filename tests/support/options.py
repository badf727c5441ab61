"""What the option tests (test_options*.py) share: hparams from their
text, feature hparams moved from their defaults, NumPy's per-example losses
and the NumPy examples of 16-bit crops, two training sources (the
two_sources fixture), main.run() with the work of each mode recorded (the
cli fixture), and a checkpoint's raw weights. A test module takes a fixture
by assigning it to a module-level name."""

import contextlib
import inspect
import io

import numpy as np

from support import reference
from support.settings import CLASS_MAP
from support.signals import write_pcm_wav


def hparams_of(text=''):
  from tagger.core import params
  return params.parse_hparams(text)


# Feature hparams moved from their defaults, as a run may set them; the CRNN
# pools 64 bands down to one.
FEATURES = ('mel_bands=64,mel_min_hz=100,mel_max_hz=8000,mel_log_offset=0.01,'
            'stft_window_seconds=0.02,stft_hop_seconds=0.01,'
            'example_window_seconds=0.5,example_hop_seconds=0.3')


def np_bce(targets, logits):
  p = 1 / (1 + np.exp(-logits))
  return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(axis=1)


def np_noisy(name, labels, logits, value):
  """The per-example loss of docs/model.md's 'Noisy labels', in NumPy."""
  p = 1 / (1 + np.exp(-logits))
  if name == 'bce':
    return np_bce(labels * (1 - value) + 0.5 * value, logits)
  if name == 'lq':
    return (labels * (1 - p ** value) / value +
            (1 - labels) * (1 - (1 - p) ** value) / value).mean(axis=1)
  if name == 'bootstrap_soft':
    return np_bce(value * labels + (1 - value) * p, logits)
  return np_bce(value * labels + (1 - value) * (p > 0.5), logits)


def np_crop_examples(crops, frames, hparams):
  """NumPy examples of 16-bit crops: the log mel of each crop's samples
  (exactly an example's frames), frames past the clip's end zero."""
  out = []
  for crop, count in zip(np.asarray(crops), np.asarray(frames)):
    log_mel = reference.np_log_mel(crop.astype(np.float64) / 32768.0,
                                   hparams)
    assert log_mel.shape[0] == reference.example_window(hparams)
    log_mel[count:] = 0.0
    out.append(log_mel)
  return np.stack(out)


def _clips(folder, name, labels, seconds, seed):
  """A source: one noise clip per entry of labels (a class name each), with
  a CSV; returns (csv path, clip folder)."""
  clips = folder / name
  clips.mkdir()
  rng = np.random.default_rng(seed)
  lines = ['fname,labels']
  for i, (label, length) in enumerate(zip(labels, seconds)):
    # Loud and quiet stretches: the examples differ within and between clips.
    samples = rng.normal(0, 1, int(length * 44100)) * np.repeat(
        rng.uniform(300, 9000, 8), -(-int(length * 44100) // 8))[
            :int(length * 44100)]
    write_pcm_wav(clips / ('%s%d.wav' % (name, i)),
                  np.clip(samples, -32768, 32767))
    lines.append('%s%d.wav,%s' % (name, i, label))
  (folder / (name + '.csv')).write_text('\n'.join(lines) + '\n')
  return str(folder / (name + '.csv')), str(clips)


def write_two_sources(folder):
  """A curated source of 4 clips and a noisy one of 3, of other classes."""
  return [_clips(folder, 'curated', ['Bark', 'Purr', 'Hiss', 'Bark'],
                 [0.9, 1.3, 0.6, 1.1], seed=1),
          _clips(folder, 'noisy', ['Buzz', 'Gong', 'Buzz'], [1.2, 0.7, 1.0],
                 seed=2)]


def main_with_recorders(monkeypatch):
  """run(args): main.run() in this process with the work of each mode
  replaced by a recorder; returns {function name: {parameter: value}} of
  what the mode was given. The flags are reset afterwards."""
  from tagger.training import distribution
  import evaluation
  from tagger.modes import export
  import inference
  import main
  from tagger.modes import relabel
  from tagger.core import runtime
  from tagger.modes import tagging
  import train
  calls = {}

  def record(module, name, result=None):
    signature = inspect.signature(getattr(module, name))

    def recorder(*args, **kwargs):
      calls[name] = signature.bind(*args, **kwargs).arguments
      return result
    monkeypatch.setattr(module, name, recorder)

  for module, name, result in (
      (train, 'train', None), (evaluation, 'evaluate', None),
      (evaluation, 'wait_for_first_checkpoint', None),
      (inference, 'infer', None), (export, 'export', None),
      (tagging, 'tag', 0), (relabel, 'relabel', None),
      (distribution, 'make_strategy', None)):
    record(module, name, result)
  # TensorFlow has run ops in this process: its thread pools are set.
  monkeypatch.setattr(runtime, 'use_one_inter_op_thread', lambda: None)

  def run(args):
    main.FLAGS.unparse_flags()
    try:
      main.FLAGS(['main.py', '--class_map_path', CLASS_MAP] +
                 [str(a) for a in args])
      with contextlib.redirect_stdout(io.StringIO()):
        main.run()
    finally:
      main.FLAGS.unparse_flags()
    return calls
  yield run
  main.FLAGS.unparse_flags()


def raw_weight(reader, path):
  from tagger.core import checkpoints
  return reader.get_tensor(checkpoints.checkpoint_key(path)).astype(
      np.float64)
