"""Helpers for tests, the demo and benchmarks (synthetic speech, simulated rooms)."""
