"""Benchmark tooling: per-family settings (families.yaml), the suite runner, scoring and performance scripts."""
