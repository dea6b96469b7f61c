"""Benchmarks behind `make bench`: importable functions that return their measurements."""
