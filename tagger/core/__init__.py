"""Settings, files, checkpoints and the process: what every mode needs before (and without) a model."""
