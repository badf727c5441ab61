"""One WAV header reader for the pre-flight check and the pipeline: odd but
valid headers give the same sample count to both, and the pipeline's
examples are those of the samples written (NumPy reference)."""

import os
import struct

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest

from tagger.core import files
from tagger.sound import wav
from support.signals import pipeline_examples

NUM_SAMPLES = 7000  # 0.16 s: one example


def chunk(chunk_id, data):
  pad = b'\x00' if len(data) % 2 else b''
  return chunk_id + struct.pack('<I', len(data)) + data + pad


def riff(chunks):
  body = b'WAVE' + b''.join(chunks)
  return b'RIFF' + struct.pack('<I', len(body)) + body


def fmt_body(tag=1, channels=1, rate=44100, bits=16):
  block = channels * bits // 8
  return struct.pack('<HHIIHH', tag, channels, rate, rate * block, block, bits)


PCM_GUID = b'\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71'
FLOAT_GUID = b'\x03' + PCM_GUID[1:]


def extensible(guid, bits=16, valid_bits=16):
  return (fmt_body(tag=0xFFFE, bits=bits) +
          struct.pack('<HHI', 22, valid_bits, 4) + guid)


def samples():
  rng = np.random.default_rng(0)
  pcm = rng.integers(-20000, 20000, NUM_SAMPLES).astype('<i2')
  pcm[:2000] //= 500  # a quiet stretch, where the log offset matters
  return pcm


PCM = samples()
DATA = chunk(b'data', PCM.tobytes())

ODD_HEADERS = {
    'plain': [chunk(b'fmt ', fmt_body()), DATA],
    'fmt_with_cbsize': [chunk(b'fmt ', fmt_body() + b'\x00\x00'), DATA],
    'odd_list_before_data': [chunk(b'fmt ', fmt_body()),
                             chunk(b'LIST', b'INFOabc'), DATA],
    'junk_and_fact_first': [chunk(b'JUNK', b'\x00' * 28),
                            chunk(b'fmt ', fmt_body()),
                            chunk(b'fact', struct.pack('<I', NUM_SAMPLES)),
                            DATA],
    'chunk_after_data': [chunk(b'fmt ', fmt_body()), DATA,
                         chunk(b'LIST', b'INFO' + b'\x7f' * 501)],
    'extensible_pcm': [chunk(b'fmt ', extensible(PCM_GUID)), DATA],
}


@pytest.mark.parametrize('name', sorted(ODD_HEADERS))
def test_preflight_and_pipeline_agree_on_odd_headers(tmp_path, name):
  from tagger.sound import features
  import inputs
  from tagger.core import params
  from support import reference
  path = tmp_path / 'odd.wav'
  path.write_bytes(riff(ODD_HEADERS[name]))
  assert files.inspect_clip(str(path)) == (None, NUM_SAMPLES, None)
  hparams = params.parse_hparams()
  got = pipeline_examples('odd.wav', str(tmp_path), hparams)
  expected = reference.np_examples(PCM.astype(np.float64) / 32768.0,
                                      reference.README_DEFAULTS)
  assert got.shape == expected.shape == (
      features.num_examples(NUM_SAMPLES, hparams), 100, 96)
  # The mel matrix's float32 rounding (checked in test_features) allows
  # ~1e-5 in the log; far below what a misread sample would change.
  np.testing.assert_allclose(got, expected, atol=5e-5, rtol=0)
  batches = list(inputs.scoring_dataset([str(path)], hparams, 4))
  assert sum(int(b[1].shape[0]) for b in batches) == got.shape[0]


def test_header_fields(tmp_path):
  path = tmp_path / 'x.wav'
  path.write_bytes(riff(ODD_HEADERS['junk_and_fact_first']))
  header = wav.read_header(str(path))
  assert header == wav.Header(format_tag=1, channels=1, sample_rate=44100,
                              bits=16, data_offset=12 + 36 + 24 + 12 + 8,
                              num_frames=NUM_SAMPLES)
  path.write_bytes(riff([chunk(b'fmt ', extensible(FLOAT_GUID, bits=32)),
                         chunk(b'data', b'\x00' * 400)]))
  header = wav.read_header(str(path))
  assert (header.format_tag, header.bits, header.num_frames) == (3, 32, 100)
  assert not wav.pipeline_reads(header)


@pytest.mark.parametrize('changes,reads', [
    ({}, True), ({'format_tag': 3}, False), ({'bits': 24}, False),
    ({'bits': 8}, False), ({'sample_rate': 48000}, False),
    ({'sample_rate': 44101}, False), ({'channels': 2}, False)])
def test_the_pipeline_reads_only_44100_hz_mono_16_bit_pcm(changes, reads):
  """Those are cut out of the file's bytes by tf.data; any other WAV goes
  to libsndfile (audio.py), which decodes it to the same values, so only
  this says which way a file takes."""
  header = wav.Header(format_tag=1, channels=1, sample_rate=44100, bits=16,
                      data_offset=44, num_frames=10)
  assert wav.pipeline_reads(header._replace(**changes)) is reads


def test_a_pipeline_wav_is_inspected_by_its_header(tmp_path):
  from tagger.sound import audio
  path = tmp_path / 'x.wav'
  path.write_bytes(riff(ODD_HEADERS['junk_and_fact_first']))
  clip = audio.inspect(str(path))
  assert clip == audio.Clip('WAV', 44100, 1, NUM_SAMPLES,
                            12 + 36 + 24 + 12 + 8, None)
