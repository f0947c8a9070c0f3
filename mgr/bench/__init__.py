"""Experiments that measure: the fixed-FLOPs suite (`suite`, `runner`), its statistics, report
and comparison, throughput and speed tables, scaling and depth-memory measurements, and the ARM
tier's loss check. Algebra files never measure themselves; this package does."""

from mgr.bench.suite import BenchConfig, arm_name, load_sweep, run_bench  # noqa: F401
