"""The architectures (layer tables and loops), their layers, batch norm for scoring, the weight average, and the waveform-in model every mode scores with."""
