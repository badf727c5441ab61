"""Sound in: audio files of any format, the WAV offsets tf.data reads, the log-mel features, synthetic sounds."""
