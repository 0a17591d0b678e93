"""Offline preference losses (the DPO family) and unpaired losses (KTO, BCO) as pure functions.

Every paired loss has one signature, ``fn(lp: PreferenceLogps, *, beta: float, **hp)``, and returns
``(loss of shape (B,), stats)`` with stats a dict of detached 0-d tensors. Whether a loss reads the
reference model's logps is declared where it is registered (`PreferenceNeeds`, read with
``preference_needs(name)``): simpo, orpo and sft are reference-free. Hyper-parameters are named
floats with their defaults in each function's signature; an unknown name raises ``TypeError``.
Formulas follow TRL 1.16 ``DPOConfig.loss_type`` (and older TRL / the CPO, ORPO, KTO, BCO trainers
for the losses TRL 1.16 no longer has), with the differences listed below. Notation:
``h_w = log pi(y_w) - log pi_ref(y_w)``, ``h_l`` likewise, ``d = h_w - h_l``, ``ls`` = label_smoothing.

Papers:
- dpo: Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7; label_smoothing gives
  conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences").
- robust: Chowdhury et al. 2024, "Provably Robust DPO" (rDPO), Eq. 7; ls is the flip rate in [0, 0.5).
- ipo: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", Eq. 17; beta is tau.
- hinge: Zhao et al. 2023, "SLiC-HF", Eq. 1 with delta = 1/beta (as TRL).
- dpop: Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
  Eq. 3: d - lambda_dpop * max(0, log pi_ref(y_w) - log pi(y_w)).
- rpo: Pang et al. 2024, "Iterative Reasoning Preference Optimization", Eq. 1: DPO + rpo_alpha * NLL.
- simpo: Meng et al. 2024, "SimPO", Eq. 6: reference-free, length-averaged logps, margin gamma.
- orpo: Hong et al. 2024, "ORPO", Eqs. 6-7: NLL - beta * logsigmoid(log odds ratio) on
  length-averaged logps (beta is the paper's lambda).
- exo_pair: Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment", Eq. 16.
- nca_pair: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards".
- apo_zero, apo_down: D'Oosterlinck et al. 2024, "Anchored Preference Optimization", Eqs. 7-8.
- sppo_hard: Wu et al. 2024, "Self-Play Preference Optimization", Eq. 4.7 with hard P in {0, 1}.
- aot, aot_pair: Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal
  Transport" (paired and unpaired first-order stochastic dominance via sorting).
- bco_pair: Jung et al. 2024, "Binary Classifier Optimization for LLM Alignment", paired, no shift.
- sft: chosen NLL alone, for MPO-style mixtures (Wang et al. 2024, "Enhancing the Reasoning
  Ability of Multimodal LLMs via Mixed Preference Optimization", Eq. 1: dpo + bco_pair + sft).
- kto (unpaired): Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
  Optimization", Eq. 7.
- bco (unpaired): Jung et al. 2024, Eq. 9 with the running reward shift delta.

Departures (from the paper, or from TRL where TRL differs):
- dpo applies label_smoothing (cDPO) as older TRL did; TRL 1.16's "sigmoid" ignores label_smoothing.
- ipo and TRL divide each log-ratio by its completion length (TRL confirmed this with the IPO
  authors); the paper writes sequence log-ratios. Lengths are clamped to >= 1.
- rpo/orpo/sft use ``chosen_nll``, the per-example mean NLL of the chosen completion; TRL takes
  one token-mean over the batch and the RPO paper normalizes by prompt + completion length.
- orpo clamps the length-averaged logps to <= -1e-6 so log(1 - p) and its gradient stay finite.
- aot and aot_pair return losses per *sorted position*, not per example (the mean is what matters).
  ``aot_pair`` is TRL < 1.0's name; TRL 1.16 calls it ``aot_unpaired``.
- robust raises if label_smoothing is outside [0, 0.5) (TRL only warns); exo_pair needs
  label_smoothing > 0 and defaults it to the paper's 1e-3 (TRL raises at 0).
- kto returns the loss in batch order (TRL concatenates desirable then undesirable; same mean) and
  raises when no KL logps are given instead of silently using a zero reference point.
- bco takes delta from the caller; TRL's BCOTrainer updated its running mean with the current
  batch before using it. Pass the updated mean to match. BCO's density-ratio matching (UDM) is omitted.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from posttrain.registry import Registry

Stats = dict[str, Tensor]
PREFERENCE_LOSSES: Registry = Registry("preference loss")
UNPAIRED_LOSSES: Registry = Registry("unpaired preference loss")

_ORPO_MAX_AVG_LOGP = -1e-6


@dataclass(frozen=True)
class PreferenceNeeds:
    """What a (paired or unpaired) preference loss needs from its trainer, declared at registration.

    reference: it reads reference logps (``ref_*``), so the trainer keeps a frozen reference model.
    """

    reference: bool = True


def preference_needs(name: str, registry: Registry = PREFERENCE_LOSSES) -> PreferenceNeeds:
    """The `PreferenceNeeds` that loss `name` of `registry` registered with (unknown names raise)."""
    return registry.needs(name) or PreferenceNeeds()


@dataclass(frozen=True)
class PreferenceLogps:
    """Per-sequence log-probabilities of a batch of B (prompt, chosen, rejected) triples.

    chosen_logps, rejected_logps: (B,) policy log pi(y | x) summed over completion tokens.
    ref_chosen_logps, ref_rejected_logps: (B,) same under the reference model; None for
        reference-free losses (simpo, orpo, sft).
    chosen_lengths, rejected_lengths: (B,) number of completion tokens (ipo, simpo, orpo).
    chosen_nll: (B,) mean per-token NLL of the chosen completion under the policy (rpo, orpo, sft).
    """

    chosen_logps: Tensor
    rejected_logps: Tensor
    ref_chosen_logps: Optional[Tensor] = None
    ref_rejected_logps: Optional[Tensor] = None
    chosen_lengths: Optional[Tensor] = None
    rejected_lengths: Optional[Tensor] = None
    chosen_nll: Optional[Tensor] = None

    def __post_init__(self):
        _check_shapes(self, "PreferenceLogps")


@dataclass(frozen=True)
class UnpairedLogps:
    """Per-sequence log-probabilities of B unpaired (prompt, completion, desirable?) rows.

    logps, ref_logps: (B,) policy / reference log pi(y | x) summed over completion tokens.
    labels: (B,) bool, True where the completion is desirable.
    kl_logps, ref_kl_logps: (B,) policy / reference logps of mismatched (prompt, completion) pairs,
        used by KTO for its batch KL reference point; None for losses that do not need them.
    """

    logps: Tensor
    ref_logps: Tensor
    labels: Tensor
    kl_logps: Optional[Tensor] = None
    ref_kl_logps: Optional[Tensor] = None

    def __post_init__(self):
        _check_shapes(self, "UnpairedLogps")
        if self.labels.dtype != torch.bool:
            raise TypeError(f"UnpairedLogps.labels must be a bool tensor, got {self.labels.dtype}")


def _check_shapes(obj, cls: str) -> None:
    first = fields(obj)[0].name
    shape = getattr(obj, first).shape
    if len(shape) != 1:
        raise ValueError(f"{cls}.{first} must have shape (B,), got {tuple(shape)}")
    for f in fields(obj):
        t = getattr(obj, f.name)
        if t is not None and t.shape != shape:
            got, want = tuple(t.shape), tuple(shape)
            raise ValueError(f"{cls}.{f.name} has shape {got}, expected {want} like {first}")


def _register(registry: Registry, name: str, reference: bool = True) -> Callable:
    """Register ``fn(data, *, beta, **hp)``; the wrapper rejects unknown or non-float hyper-parameters.
    `reference`: the loss reads reference logps (`PreferenceNeeds`)."""

    def deco(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters.values()
        defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "beta"}

        @functools.wraps(fn)
        def wrapper(data, *, beta: float, **hp):
            _check_hps(registry.axis, name, hp, defaults)
            return fn(data, beta=beta, **hp)

        wrapper.hyperparameters = MappingProxyType(defaults)
        return registry.register(name, needs=PreferenceNeeds(reference=reference))(wrapper)

    return deco


def _check_hps(axis: str, name: str, hp: dict, accepted) -> None:
    for key, value in hp.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(accepted)) or "none"
            raise TypeError(f"{axis} '{name}' got unknown hyper-parameter '{key}'{hint} (accepts: {known})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = type(value).__name__
            raise TypeError(f"{axis} '{name}': hyper-parameter '{key}' must be a float, got {kind}")


def _need(lp, field: str, loss: str) -> Tensor:
    value = getattr(lp, field)
    if value is None:
        raise ValueError(f"preference loss '{loss}' needs {type(lp).__name__}.{field}, which is None")
    return value


def _logratios(lp: PreferenceLogps, loss: str) -> tuple[Tensor, Tensor]:
    ref_c = _need(lp, "ref_chosen_logps", loss)
    ref_r = _need(lp, "ref_rejected_logps", loss)
    return lp.chosen_logps - ref_c, lp.rejected_logps - ref_r


def _avg_logps(lp: PreferenceLogps, loss: str) -> tuple[Tensor, Tensor]:
    c_len = _need(lp, "chosen_lengths", loss).clamp(min=1)
    r_len = _need(lp, "rejected_lengths", loss).clamp(min=1)
    return lp.chosen_logps / c_len, lp.rejected_logps / r_len


def _smoothed_sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - ls) log sigma(z) - ls log sigma(-z): the BCE of z against a smoothed label."""
    loss = -F.logsigmoid(logits) * (1.0 - label_smoothing)
    if label_smoothing:
        loss = loss - F.logsigmoid(-logits) * label_smoothing
    return loss


def _pair_stats(chosen_rewards: Tensor, rejected_rewards: Tensor, **extra: Tensor) -> Stats:
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    stats = {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/margins": (c - r).mean(),
        "rewards/accuracies": (c > r).to(c.dtype).mean(),
    }
    stats.update({k: v.detach().mean() for k, v in extra.items()})
    return stats


def _ref_stats(beta: float, h_w: Tensor, h_l: Tensor, **extra: Tensor) -> Stats:
    return _pair_stats(beta * h_w, beta * h_l, **extra)


# ---------------------------------------------------------------- paired, reference-based


@_register(PREFERENCE_LOSSES, "dpo")
def dpo(lp: PreferenceLogps, *, beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, Stats]:
    """-(1 - ls) log sigma(beta d) - ls log sigma(-beta d)."""
    h_w, h_l = _logratios(lp, "dpo")
    return _smoothed_sigmoid_loss(beta * (h_w - h_l), label_smoothing), _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "robust")
def robust(lp: PreferenceLogps, *, beta: float, label_smoothing: float = 0.1) -> tuple[Tensor, Stats]:
    """(-(1 - eps) log sigma(beta d) + eps log sigma(-beta d)) / (1 - 2 eps), eps = label_smoothing."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"preference loss 'robust' needs label_smoothing in [0, 0.5), got {label_smoothing}")
    h_w, h_l = _logratios(lp, "robust")
    z = beta * (h_w - h_l)
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return loss, _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "ipo")
def ipo(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """(h_w / |y_w| - h_l / |y_l| - 1 / (2 beta))^2."""
    h_w, h_l = _logratios(lp, "ipo")
    c_len = _need(lp, "chosen_lengths", "ipo").clamp(min=1)
    r_len = _need(lp, "rejected_lengths", "ipo").clamp(min=1)
    loss = (h_w / c_len - h_l / r_len - 1.0 / (2.0 * beta)) ** 2
    return loss, _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "hinge")
def hinge(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """max(0, 1 - beta d)."""
    h_w, h_l = _logratios(lp, "hinge")
    return torch.relu(1.0 - beta * (h_w - h_l)), _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "dpop")
def dpop(lp: PreferenceLogps, *, beta: float, lambda_dpop: float = 50.0) -> tuple[Tensor, Stats]:
    """-log sigma(beta (d - lambda max(0, -h_w)))."""
    h_w, h_l = _logratios(lp, "dpop")
    penalty = torch.relu(-h_w)
    loss = -F.logsigmoid(beta * (h_w - h_l - lambda_dpop * penalty))
    return loss, _ref_stats(beta, h_w, h_l, dpop_penalty=penalty)


@_register(PREFERENCE_LOSSES, "rpo")
def rpo(lp: PreferenceLogps, *, beta: float, rpo_alpha: float = 1.0) -> tuple[Tensor, Stats]:
    """-log sigma(beta d) + rpo_alpha * chosen_nll."""
    h_w, h_l = _logratios(lp, "rpo")
    nll = _need(lp, "chosen_nll", "rpo")
    loss = -F.logsigmoid(beta * (h_w - h_l)) + rpo_alpha * nll
    return loss, _ref_stats(beta, h_w, h_l, nll=nll)


@_register(PREFERENCE_LOSSES, "exo_pair")
def exo_pair(lp: PreferenceLogps, *, beta: float, label_smoothing: float = 1e-3) -> tuple[Tensor, Stats]:
    """KL([sigma(z), sigma(-z)] || [1 - eps, eps]) with z = beta d."""
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"preference loss 'exo_pair' needs label_smoothing in (0, 1), got {label_smoothing}")
    h_w, h_l = _logratios(lp, "exo_pair")
    z = beta * (h_w - h_l)
    log_pw, log_pl = math.log1p(-label_smoothing), math.log(label_smoothing)
    loss = torch.sigmoid(z) * (F.logsigmoid(z) - log_pw) + torch.sigmoid(-z) * (F.logsigmoid(-z) - log_pl)
    return loss, _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "nca_pair")
def nca_pair(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """-log sigma(r_w) - 0.5 log sigma(-r_w) - 0.5 log sigma(-r_l), r = beta h."""
    h_w, h_l = _logratios(lp, "nca_pair")
    r_w, r_l = beta * h_w, beta * h_l
    loss = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return loss, _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "bco_pair")
def bco_pair(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """-log sigma(beta h_w) - log sigma(-beta h_l)."""
    h_w, h_l = _logratios(lp, "bco_pair")
    return -F.logsigmoid(beta * h_w) - F.logsigmoid(-beta * h_l), _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "sppo_hard")
def sppo_hard(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """(h_w - 1 / (2 beta))^2 + (h_l + 1 / (2 beta))^2."""
    h_w, h_l = _logratios(lp, "sppo_hard")
    loss = (h_w - 0.5 / beta) ** 2 + (h_l + 0.5 / beta) ** 2
    return loss, _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "apo_zero")
def apo_zero(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """1 - sigma(beta h_w) + sigma(beta h_l): push chosen up and rejected down."""
    h_w, h_l = _logratios(lp, "apo_zero")
    return 1.0 - torch.sigmoid(beta * h_w) + torch.sigmoid(beta * h_l), _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "apo_down")
def apo_down(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """sigma(beta h_w) + 1 - sigma(beta d): push both down, rejected more."""
    h_w, h_l = _logratios(lp, "apo_down")
    loss = torch.sigmoid(beta * h_w) + 1.0 - torch.sigmoid(beta * (h_w - h_l))
    return loss, _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "aot")
def aot(lp: PreferenceLogps, *, beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, Stats]:
    """Smoothed sigmoid loss of beta (sort(log pi_w - log pi_l) - sort(log ref_w - log ref_l)).

    One loss per sorted position, not per example.
    """
    h_w, h_l = _logratios(lp, "aot")
    policy_sorted = torch.sort(lp.chosen_logps - lp.rejected_logps, dim=0).values
    ref_sorted = torch.sort(lp.ref_chosen_logps - lp.ref_rejected_logps, dim=0).values
    loss = _smoothed_sigmoid_loss(beta * (policy_sorted - ref_sorted), label_smoothing)
    return loss, _ref_stats(beta, h_w, h_l)


@_register(PREFERENCE_LOSSES, "aot_pair")
def aot_pair(lp: PreferenceLogps, *, beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, Stats]:
    """Smoothed sigmoid loss of beta (sort(h_w) - sort(h_l)), per sorted position (TRL 1.16: aot_unpaired)."""
    h_w, h_l = _logratios(lp, "aot_pair")
    delta = torch.sort(h_w, dim=0).values - torch.sort(h_l, dim=0).values
    return _smoothed_sigmoid_loss(beta * delta, label_smoothing), _ref_stats(beta, h_w, h_l)


# ---------------------------------------------------------------- paired, reference-free


@_register(PREFERENCE_LOSSES, "simpo", reference=False)
def simpo(
    lp: PreferenceLogps, *, beta: float, gamma: float = 0.5, label_smoothing: float = 0.0
) -> tuple[Tensor, Stats]:
    """Smoothed sigmoid loss of beta (log pi_w / |y_w| - log pi_l / |y_l|) - gamma.

    Rewards in stats are beta * length-averaged logps (no reference).
    """
    avg_w, avg_l = _avg_logps(lp, "simpo")
    loss = _smoothed_sigmoid_loss(beta * (avg_w - avg_l) - gamma, label_smoothing)
    return loss, _pair_stats(beta * avg_w, beta * avg_l)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, branching at -ln 2 to avoid cancellation (Maechler 2012)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@_register(PREFERENCE_LOSSES, "orpo", reference=False)
def orpo(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """chosen_nll - beta log sigma(log odds(y_w) - log odds(y_l)), odds from length-averaged logps."""
    avg_w, avg_l = _avg_logps(lp, "orpo")
    avg_w, avg_l = avg_w.clamp(max=_ORPO_MAX_AVG_LOGP), avg_l.clamp(max=_ORPO_MAX_AVG_LOGP)
    nll = _need(lp, "chosen_nll", "orpo")
    log_odds = (avg_w - avg_l) - (_log1mexp(avg_w) - _log1mexp(avg_l))
    loss = nll - beta * F.logsigmoid(log_odds)
    return loss, _pair_stats(beta * avg_w, beta * avg_l, log_odds_ratio=log_odds, nll=nll)


@_register(PREFERENCE_LOSSES, "sft", reference=False)
def sft(lp: PreferenceLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """chosen_nll; beta only scales the logged rewards (beta * summed logps, no reference)."""
    nll = _need(lp, "chosen_nll", "sft")
    return nll, _pair_stats(beta * lp.chosen_logps, beta * lp.rejected_logps, nll=nll)


# ---------------------------------------------------------------- mixtures


def combined_loss(
    lp: PreferenceLogps, losses: dict[str, float], beta: float, **hp: float
) -> tuple[Tensor, Stats]:
    """sum_k w_k * loss_k(lp) per example (MPO: {"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}).

    Each hyper-parameter goes to every component that accepts it; one that no component accepts
    raises. Stats hold ``loss/<name>`` (batch mean of the unweighted component), every component's
    stats as ``<name>/<key>``, and the first component's stats unprefixed.
    """
    if not losses:
        raise ValueError("combined_loss needs at least one (name, weight)")
    fns = {name: PREFERENCE_LOSSES.get(name) for name in losses}
    accepted = {k for fn in fns.values() for k in fn.hyperparameters}
    _check_hps(PREFERENCE_LOSSES.axis, "+".join(losses), hp, accepted)
    total, stats = None, {}
    for name, weight in losses.items():
        fn = fns[name]
        part, part_stats = fn(lp, beta=beta, **{k: v for k, v in hp.items() if k in fn.hyperparameters})
        total = weight * part if total is None else total + weight * part
        if not stats:
            stats.update(part_stats)
        stats[f"loss/{name}"] = part.detach().mean()
        stats.update({f"{name}/{k}": v for k, v in part_stats.items()})
    return total, stats


# ---------------------------------------------------------------- unpaired


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x where mask, NaN when the mask is empty (no sync, no .item())."""
    count = mask.sum()
    total = torch.where(mask, x, torch.zeros_like(x)).sum()
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _unpaired_stats(rewards: Tensor, labels: Tensor, **extra: Tensor) -> Stats:
    r = rewards.detach()
    chosen, rejected = _masked_mean(r, labels), _masked_mean(r, ~labels)
    stats = {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "count/chosen": labels.sum().to(r.dtype),
        "count/rejected": (~labels).sum().to(r.dtype),
    }
    stats.update({k: v.detach() for k, v in extra.items()})
    return stats


@_register(UNPAIRED_LOSSES, "kto")
def kto(
    lp: UnpairedLogps, *, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> tuple[Tensor, Stats]:
    """w_d (1 - sigma(beta (h - z0))) if desirable else w_u (1 - sigma(beta (z0 - h))).

    h = logps - ref_logps; z0 = clamp(mean(kl_logps - ref_kl_logps), min=0), detached.
    """
    kl_logps = _need(lp, "kl_logps", "kto")
    ref_kl_logps = _need(lp, "ref_kl_logps", "kto")
    z0 = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    h = lp.logps - lp.ref_logps
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (h - z0)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - h)))
    loss = torch.where(lp.labels, desirable, undesirable)
    return loss, _unpaired_stats(beta * h, lp.labels, kl=z0)


@_register(UNPAIRED_LOSSES, "apo_zero_unpaired")
def apo_zero_unpaired(lp: UnpairedLogps, *, beta: float) -> tuple[Tensor, Stats]:
    """1 - sigma(beta h) if desirable else sigma(beta h) (APO-zero, unpaired; TRL KTOTrainer)."""
    h = lp.logps - lp.ref_logps
    loss = torch.where(lp.labels, 1.0 - torch.sigmoid(beta * h), torch.sigmoid(beta * h))
    return loss, _unpaired_stats(beta * h, lp.labels)


@_register(UNPAIRED_LOSSES, "bco")
def bco(lp: UnpairedLogps, *, beta: float, delta: float = 0.0) -> tuple[Tensor, Stats]:
    """-log sigma(r - delta) if desirable else -log sigma(delta - r), r = beta h.

    ``rewards/mean`` in stats is the batch mean of r, for the trainer's running mean of delta.
    """
    r = beta * (lp.logps - lp.ref_logps)
    loss = torch.where(lp.labels, -F.logsigmoid(r - delta), -F.logsigmoid(delta - r))
    return loss, _unpaired_stats(r, lp.labels, **{"rewards/mean": r.mean()})
