"""The tests' shared settings: paths, and the hparams of the trained runs
the fixtures make (tests/conftest.py)."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
MAIN = os.path.join(REPO, 'main.py')
# PreciseBN over 2 batches, not the default 20, in the tests' training runs:
# the same computation, and a third less time for a short run (the 20
# batches' examples are made and passed at every save).
FEW_BN_BATCHES = 'bn_stats_batches=2'
CLASS_MAP = os.path.join(REPO, 'class_map.csv')
# Tiny batches, and a batch norm decay fast enough that after a few steps the
# moving statistics are those of the batches (with the default 0.9997, or even
# 0.5, the inference-mode scores of a 3-step MobileNet are the same for every
# clip to 1e-7, and comparisons against them would prove little).
HPARAMS = 'batch_size=4,lr=0.001,bndecay=0.01,' + FEW_BN_BATCHES
CRNN_HPARAMS = 'batch_size=4,lr=0.001,crnn_bndecay=0.9,' + FEW_BN_BATCHES
SAMPLE_RATE = 44100


# A tiny CRNN that recognises the synthetic sounds. Its mel bands stop at
# 8 kHz (mel_max_hz), inside the flat passband of every version of the test
# clip: a 22.05 kHz file holds nothing above 11.025 kHz, and
# resample_poly's filter is within 0.1 dB only up to 85% of the lower
# Nyquist frequency (9.4 kHz for 22.05 kHz), so with the default 20 kHz the
# comparison would measure what a 22.05 kHz file cannot hold, not the reader
# (support/tag_runs.py's test clip).
TAG_HPARAMS = ('batch_size=8,lr=0.03,crnn_filters=4,crnn_dropout=0,'
               'mel_max_hz=8000,bn_stats_batches=2,seed=1')
TAG_STEPS = 200
