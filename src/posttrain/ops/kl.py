"""Per-token KL estimators between the policy and a reference, from sampled-token logprobs.

Schulman, "Approximating KL Divergence" (2020): with r = p_ref(x) / p(x) and x ~ p,
- k1 = -log r            (unbiased, high variance, can be negative)
- k2 = (log r)^2 / 2     (biased, low variance; its gradient is the gradient of the true KL)
- k3 = (r - 1) - log r   (unbiased, low variance, always >= 0)
Departure (as verl's ``low_var_kl``): `k3` clamps log r to [-20, 20] before exponentiating (exp
stays finite) and then clamps the k3 value itself to [-10, 10], so one token whose policy ran far
from the reference cannot dominate the loss. Beyond the clamp that token's KL gradient is 0 (as in
verl). k1 and k2 are not clamped.
"""
from __future__ import annotations

import torch

from posttrain.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")
_MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: finite in fp32 and bf16
_MAX_K3 = 10.0


@KL_ESTIMATORS.register("k1")
def _k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def _k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def _k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_r = (ref_logp - logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return (log_r.exp() - 1.0 - log_r).clamp(-_MAX_K3, _MAX_K3)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    return KL_ESTIMATORS.get(kind)(logp, ref_logp)
