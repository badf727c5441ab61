"""What the distributed-training tests share: the small CRNN's hparams
they train with, and free localhost ports for a cluster's tasks."""

import socket

from support.settings import FEW_BN_BATCHES


# Smooth activations and no dropout: with ReLU, float rounding that differs
# between the two runs flips an occasional unit on or off, which moves
# MobileNet's gradients by a few percent; the CRNN's ELU has no such edge.
CRNN = 'batch_size=4,crnn_filters=4,crnn_dropout=0,' + FEW_BN_BATCHES


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports
