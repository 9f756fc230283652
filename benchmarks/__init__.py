"""Benchmark harness of temporal_kernels (issue 3): ``python -m benchmarks.run``.

Modules: ``shapes`` (the cases of SPEC §5), ``peers`` (the methods we compare against),
``run`` (measurement and correctness), ``report`` (CSV/JSON/console/PERFORMANCE.md), ``plots``.
"""
