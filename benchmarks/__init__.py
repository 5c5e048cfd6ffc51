"""Benchmarks: the built-in simulated benchmark, expert outcome runs, and metrics."""
