"""The parts of tools/study.py: spec, runs, runner, stats and report."""
