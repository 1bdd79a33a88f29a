"""Benchmark suites: lm-evaluation-harness tasks run on a job's base and adapted model (worker.benchmarks)."""
