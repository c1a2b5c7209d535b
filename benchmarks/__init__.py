"""Benchmarks: each prints its numbers beside a reference measured or stated in the same run."""
