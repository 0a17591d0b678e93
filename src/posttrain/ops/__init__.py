"""Small pure tensor functions shared by every stage: logprobs, entropy, reductions, KL estimators."""
from posttrain.ops.logprobs import entropy_from_logits, naive_token_logprobs, token_logprobs
from posttrain.ops.reduce import REDUCERS, aggregate, count_sequences, masked_mean, masked_sum
from posttrain.ops.kl import KL_ESTIMATORS, kl_estimate

__all__ = [
    "token_logprobs",
    "naive_token_logprobs",
    "entropy_from_logits",
    "aggregate",
    "masked_mean",
    "masked_sum",
    "count_sequences",
    "REDUCERS",
    "kl_estimate",
    "KL_ESTIMATORS",
]
