"""Tools around the tagger: studies over seeds, the benchmark, class
comparisons and the demo data."""
