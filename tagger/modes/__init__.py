"""The modes of main.py: each one's flags, checks and run (X_mode.py,
plain Python), and the work of those beyond the original: export, tag
and relabel."""
