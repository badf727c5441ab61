"""Evaluation: the metrics, the reports, and eval processes sharing the work."""
