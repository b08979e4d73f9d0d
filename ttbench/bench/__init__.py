"""Benchmarks, run as `python -m ttbench.bench.<name>`; they print figures, they assert nothing."""
