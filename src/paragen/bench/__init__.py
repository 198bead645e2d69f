"""Benchmarks: every strategy measured the same way, in one run."""
