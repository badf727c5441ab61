"""The engine that scores clips for every mode, and its LiteRT (TFLite) part."""
