"""Benchmarks of the fleet; run them as scripts (see bench/README.md)."""
