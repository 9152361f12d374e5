"""Benchmark tooling (installed as verifier.benchmarks): the suite runner, scoring and performance scripts."""
