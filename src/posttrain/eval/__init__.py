"""Evaluation: pass@k / maj@k / mean@k metrics, the benchmark registry, the resumable harness and the
test-time scaling table. Submodules import lazily where they need torch or a model."""
from posttrain.eval.benchmarks import BENCHMARKS, Benchmark, LoadedBenchmark, Problem, load_benchmark, resolve_data_root
from posttrain.eval.metrics import (
    EvalMetrics,
    ProblemSamples,
    Sample,
    VoteResult,
    aggregate_metrics,
    canonical_answer,
    canonical_match,
    maj_at_k,
    math_match,
    mean_at_k,
    pass_at_k,
    vote,
)

__all__ = [
    "BENCHMARKS", "Benchmark", "LoadedBenchmark", "Problem", "load_benchmark", "resolve_data_root",
    "EvalMetrics", "ProblemSamples", "Sample", "VoteResult", "aggregate_metrics", "canonical_answer",
    "canonical_match", "maj_at_k", "math_match", "mean_at_k", "pass_at_k", "vote",
]
