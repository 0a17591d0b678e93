"""Verifiable reward functions and the parallel, failure-counting combiner."""
