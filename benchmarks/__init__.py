"""Benchmarks and the measurement harness: scripts that print measured ratios."""
