"""Benchmark companions: ``bench.floor`` (the baseline server) and ``results/`` (figures)."""
