"""pcm.py: which clips the pipeline reads itself. A 44.1 kHz mono 16-bit
WAV's samples are cut out of its bytes by tf.data's ops, alone or in a
list with other files; only the others go to libsndfile (a spy on
audio.decoded_pcm16), and both ways give the same samples."""

import numpy as np
import pytest

from support.signals import write_audio, write_pcm_wav


@pytest.mark.parametrize('kinds', [('wav',), ('flac',), ('wav', 'flac'),
                                   ('flac', 'wav', 'wav')])
def test_only_other_files_go_to_libsndfile(tmp_path, monkeypatch, kinds,
                                           parse_hparams):
  import inputs
  from tagger.sound import audio
  samples = np.random.default_rng(3).integers(-3000, 3000, 30000)
  paths = []
  for i, kind in enumerate(kinds):
    paths.append(str(tmp_path / ('%d.%s' % (i, kind))))
    if kind == 'wav':
      write_pcm_wav(paths[-1], samples)
    else:
      write_audio(paths[-1], samples / 32768.0, subtype='PCM_16')
  decoded = []
  real = audio.decoded_pcm16

  def spy(path, *args):
    decoded.append(path)
    return real(path, *args)

  monkeypatch.setattr(audio, 'decoded_pcm16', spy)
  batches = list(inputs.scoring_dataset(paths, parse_hparams(''), 64))
  assert sorted(set(decoded)) == [p for p in paths if p.endswith('.flac')]
  examples = np.concatenate([b[0].numpy() for b in batches])
  clips = np.concatenate([b[1].numpy() for b in batches])
  for i in range(1, len(paths)):  # the same samples, the same examples
    np.testing.assert_array_equal(np.sort(examples[clips == i], axis=0),
                                  np.sort(examples[clips == 0], axis=0))
