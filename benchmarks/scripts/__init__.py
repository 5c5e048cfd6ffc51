"""Measurement scripts, each run as `python -m benchmarks.scripts.<name>` from a checkout: throughput,
load, report scale, startup, provenance effect and speed, GPU smoke, complementarity. Unlike the
evaluation library in `benchmarks`, they measure the whole product, so they may import coe's
orchestration (tests/test_layering.py)."""
