"""Odd but valid inputs work: CSVs and class maps with any line ending or a
BOM, clip names with commas and quotes in the submission, a WAV whose byte
offsets pass 2**31 or one written through a pipe; an absolute fname or a
dangling link among the clips is one line before any work."""

import csv
import io
import os
import struct

import numpy as np
import pytest

from support.cli import assert_one_error, run_main, train_args
from support.scores import labeled_rows, read_class_names
from support.settings import CLASS_MAP
from support.signals import (pipeline_examples, write_pcm_wav,
                             write_sparse_wav)
from support.remembered_run import inference_args




# --- CSVs and class maps ----------------------------------------------------

@pytest.mark.parametrize('newline,bom', [('\r', ''), ('\r\n', ''),
                                         ('\n', '\ufeff'), ('\r', '\ufeff')])
def test_line_endings_and_bom(tmp_path, dataset, newline, bom):
  from tagger.core import files
  import inputs
  from tagger.core import params
  rows = labeled_rows(dataset['train_csv'])
  text = bom + newline.join(['fname,labels'] + [
      '%s,"%s"' % (f, ','.join(labels)) for f, labels in rows]) + newline
  csv_path = tmp_path / 'train.csv'
  csv_path.write_bytes(text.encode('utf-8'))
  class_map = tmp_path / 'class_map.csv'
  with open(CLASS_MAP, encoding='utf-8') as f:
    class_map.write_bytes((bom + f.read().replace('\n', newline)).encode())
  class_names = files.read_class_map(str(class_map))
  assert class_names == read_class_names()
  assert files.read_labeled_csv(str(csv_path), dataset['train_clip_dir'],
                                class_names) == rows
  batch = next(iter(inputs.train_dataset(
      str(csv_path), dataset['train_clip_dir'], class_names,
      params.parse_hparams('batch_size=4'), len(rows))))
  assert tuple(batch[0].shape) == (4, 100, 96)


def test_clip_names_with_commas_survive_the_submission():
  import inference
  names = ['a,b.wav', 'quote"d.wav', 'plain.wav']
  text = inference.submission_csv(names, read_class_names(),
                                  np.full((3, 80), 0.25))
  rows = list(csv.reader(io.StringIO(text)))
  assert [len(r) for r in rows] == [81] * 4
  assert [r[0] for r in rows[1:]] == names


def test_absolute_fname_is_refused_before_any_work(tmp_path, dataset):
  clip = os.path.join(dataset['train_clip_dir'], 'c0000.wav')
  csv_path = tmp_path / 'train.csv'
  csv_path.write_text('fname,labels\nc0001.wav,Hiss\n%s,Hiss\n' % clip)
  train_dir = tmp_path / 'train'
  assert_one_error(run_main(train_args(
      'crnn', dataset['train_clip_dir'], str(csv_path), str(train_dir), 1)),
                   str(csv_path), 'line 3', clip, 'absolute path')
  assert not train_dir.exists()


# --- audio ------------------------------------------------------------------

def test_dangling_link_among_inference_clips(tmp_path, remembered):
  folder = tmp_path / 'clips'
  folder.mkdir()
  write_pcm_wav(folder / 'a.wav', np.zeros(5000, np.int16))
  os.symlink(str(tmp_path / 'gone.wav'), str(folder / 'b.wav'))
  assert_one_error(run_main(inference_args(
      remembered['checkpoint'], str(folder), str(tmp_path / 'p.csv'))),
                   str(folder / 'b.wav'), 'cannot read')


def test_byte_offsets_of_a_seven_hour_clip(tmp_path):
  """Past 6.8 hours a 16-bit file's byte offsets pass 2**31: the last
  chunk of a 7-hour clip is read where the header says it is."""
  import tensorflow as tf
  from tagger.sound import features
  from tagger.sound import pcm
  from tagger.core import params
  path = str(tmp_path / 'long.wav')
  frames = write_sparse_wav(path, 7)
  offsets, counts = pcm.clip_headers([path])
  assert (offsets[0], counts[0]) == (44, frames)
  hparams = params.parse_hparams()
  starts, ends, _ = features.chunk_bounds(tf.constant(counts[0]), hparams)
  position, length = pcm.byte_range(tf.constant(offsets[0]), starts[-1],
                                       ends[-1])
  assert int(ends[-1]) == frames
  assert int(position) == 44 + 2 * int(starts[-1]) > 2 ** 31
  assert int(position) + int(length) == 44 + 2 * frames


def test_streamed_wav_is_read_to_the_end(tmp_path):
  """Written through a pipe: the data chunk's size is 0xFFFFFFFF."""
  from tagger.core import params
  from support import reference
  samples = np.random.default_rng(0).integers(-9000, 9000, 30000)
  write_pcm_wav(tmp_path / 'piped.wav', samples)
  raw = bytearray((tmp_path / 'piped.wav').read_bytes())
  raw[40:44] = struct.pack('<I', 0xFFFFFFFF)
  raw[4:8] = struct.pack('<I', 0xFFFFFFFF)
  (tmp_path / 'piped.wav').write_bytes(bytes(raw))
  hparams = params.parse_hparams()
  got = pipeline_examples('piped.wav', str(tmp_path), hparams)
  expected = reference.np_examples(samples / 32768.0, hparams)
  np.testing.assert_allclose(got, expected, atol=5e-5, rtol=0)
