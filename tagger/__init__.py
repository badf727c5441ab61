"""The audio tagger's library, by role (the sub-packages); the original's
entry points stay at the top level (main.py, train.py, ...)."""
