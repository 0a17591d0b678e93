"""Per-token KL estimators between the policy and a reference, from sampled-token logprobs.

Schulman, "Approximating KL Divergence" (2020): with r = p_ref(x) / p(x) and x ~ p,
- k1 = -log r            (unbiased, high variance, can be negative)
- k2 = (log r)^2 / 2     (biased, low variance; its gradient is the gradient of the true KL)
- k3 = (r - 1) - log r   (unbiased, low variance, always >= 0)
`k3` is clamped to [-10, 10] in log-space before exponentiation for numerical safety (as verl's
`low_var_kl`); this is the only departure.
"""
from __future__ import annotations

import torch

from posttrain.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def _k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def _k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def _k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_r = (ref_logp - logp).clamp(-10.0, 10.0)
    return log_r.exp() - 1.0 - log_r


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    return KL_ESTIMATORS.get(kind)(logp, ref_logp)
