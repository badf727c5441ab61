"""What the tests share besides conftest.py's fixtures: the fork server,
the independent NumPy and plain-Keras references, and helpers."""
