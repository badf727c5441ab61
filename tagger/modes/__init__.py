"""The modes beyond the original: export, tag and relabel."""
