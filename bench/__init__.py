"""Benchmarks printing figures: python -m bench.<name>."""
