"""TensorBoard scalars without the tensorboard package.

TensorFlow 2.21 no longer installs TensorBoard, and tf.summary.scalar needs
it; a scalar is an ordinary summary tagged for the 'scalars' plugin, which
core TensorFlow can write. Viewing the logs needs `pip install tensorboard`.
"""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))


def scalar(name, value, step):
  """Writes one scalar to the default summary writer."""
  tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                   metadata=_SCALAR)
