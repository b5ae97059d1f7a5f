"""Benchmarks: workloads, load drivers, reference baselines and reports (``rerankd bench``).

Heavy imports (torch, transformers, matplotlib) happen inside the functions that need them, so the
load driver runs on a machine with only the base install.
"""

__all__ = ["command", "loadgen", "reference", "report", "workload"]
