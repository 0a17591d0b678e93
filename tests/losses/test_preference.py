"""Formula tests for posttrain.losses.preference against plain-`math` hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses.preference import (
    PREFERENCE_LOSSES,
    UNPAIRED_LOSSES,
    PreferenceLogps,
    UnpairedLogps,
    combined_loss,
)

# A 3-pair toy batch, as plain floats for the hand computations.
C = [-5.0, -7.5, -3.2]  # policy chosen logps (summed)
R = [-6.0, -6.5, -8.1]  # policy rejected logps
RC = [-5.5, -7.0, -4.0]  # reference chosen logps
RR = [-5.8, -7.2, -7.0]  # reference rejected logps
LC = [4.0, 6.0, 3.0]  # chosen lengths
LR = [5.0, 4.0, 7.0]  # rejected lengths
NLL = [1.2, 0.9, 1.4]  # mean chosen NLL
BETA = 0.1


def t(xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def batch(grad=False) -> PreferenceLogps:
    return PreferenceLogps(t(C, grad), t(R, grad), t(RC), t(RR), t(LC), t(LR), t(NLL, grad))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def smoothed(z, ls):
    return -(1 - ls) * logsig(z) - ls * logsig(-z)


def hw(i):
    return C[i] - RC[i]


def hl(i):
    return R[i] - RR[i]


def log1mexp(x):
    return math.log(-math.expm1(x))


def hand_aot(b, ls, paired_ref):
    if paired_ref:
        pol = sorted(C[i] - R[i] for i in range(3))
        ref = sorted(RC[i] - RR[i] for i in range(3))
    else:
        pol = sorted(hw(i) for i in range(3))
        ref = sorted(hl(i) for i in range(3))
    return [smoothed(b * (p - q), ls) for p, q in zip(pol, ref)]


def hand_orpo(i, b):
    aw, al = C[i] / LC[i], R[i] / LR[i]
    log_odds = (aw - al) - (log1mexp(aw) - log1mexp(al))
    return NLL[i] - b * logsig(log_odds)


def hand_robust(i, b, eps):
    z = b * (hw(i) - hl(i))
    return (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps)


def hand_exo(i, b, eps):
    z = b * (hw(i) - hl(i))
    return sig(z) * (logsig(z) - math.log(1 - eps)) + sig(-z) * (logsig(-z) - math.log(eps))


# name, hp, per-example hand value (or whole list for the sorted aot losses)
HAND = [
    ("dpo", {}, lambda i, b: -logsig(b * (hw(i) - hl(i)))),
    ("dpo", {"label_smoothing": 0.2}, lambda i, b: smoothed(b * (hw(i) - hl(i)), 0.2)),
    ("robust", {"label_smoothing": 0.1}, lambda i, b: hand_robust(i, b, 0.1)),
    ("robust", {"label_smoothing": 0.3}, lambda i, b: hand_robust(i, b, 0.3)),
    ("ipo", {}, lambda i, b: (hw(i) / LC[i] - hl(i) / LR[i] - 1 / (2 * b)) ** 2),
    ("hinge", {}, lambda i, b: max(0.0, 1 - b * (hw(i) - hl(i)))),
    ("dpop", {"lambda_dpop": 5.0}, lambda i, b: -logsig(b * (hw(i) - hl(i) - 5.0 * max(0.0, RC[i] - C[i])))),
    ("rpo", {"rpo_alpha": 0.5}, lambda i, b: -logsig(b * (hw(i) - hl(i))) + 0.5 * NLL[i]),
    ("simpo", {"gamma": 0.3}, lambda i, b: -logsig(b * (C[i] / LC[i] - R[i] / LR[i]) - 0.3)),
    ("simpo", {"gamma": 0.3, "label_smoothing": 0.1}, lambda i, b: smoothed(b * (C[i] / LC[i] - R[i] / LR[i]) - 0.3, 0.1)),
    ("orpo", {}, hand_orpo),
    ("exo_pair", {"label_smoothing": 0.01}, lambda i, b: hand_exo(i, b, 0.01)),
    ("nca_pair", {}, lambda i, b: -logsig(b * hw(i)) - 0.5 * logsig(-b * hw(i)) - 0.5 * logsig(-b * hl(i))),
    ("apo_zero", {}, lambda i, b: 1 - sig(b * hw(i)) + sig(b * hl(i))),
    ("apo_down", {}, lambda i, b: sig(b * hw(i)) + 1 - sig(b * (hw(i) - hl(i)))),
    ("sppo_hard", {}, lambda i, b: (hw(i) - 0.5 / b) ** 2 + (hl(i) + 0.5 / b) ** 2),
    ("aot", {"label_smoothing": 0.1}, lambda i, b: hand_aot(b, 0.1, True)[i]),
    ("aot_pair", {}, lambda i, b: hand_aot(b, 0.0, False)[i]),
    ("bco_pair", {}, lambda i, b: -logsig(b * hw(i)) - logsig(-b * hl(i))),
    ("sft", {}, lambda i, b: NLL[i]),
]


@pytest.mark.parametrize("beta", [BETA, 0.7])
@pytest.mark.parametrize("name,hp,hand", HAND, ids=[f"{n}-{hp}" for n, hp, _ in HAND])
def test_formula_matches_hand(name, hp, hand, beta):
    loss, stats = PREFERENCE_LOSSES.get(name)(batch(), beta=beta, **hp)
    expected = [hand(i, beta) for i in range(3)]
    assert loss.shape == (3,)
    assert loss.tolist() == pytest.approx(expected, abs=1e-5, rel=1e-6)


def test_every_loss_has_a_formula_test():
    assert {name for name, _, _ in HAND} == set(PREFERENCE_LOSSES.names())


def test_hinge_is_active_on_this_batch():
    # guard: with these values the hinge is non-zero for every pair, so the formula test bites
    assert all(1 - BETA * (hw(i) - hl(i)) > 0 for i in range(3))


def test_reward_stats_match_hand():
    _, stats = PREFERENCE_LOSSES.get("dpo")(batch(), beta=BETA)
    cw = [BETA * hw(i) for i in range(3)]
    cl = [BETA * hl(i) for i in range(3)]
    assert stats["rewards/chosen"].item() == pytest.approx(sum(cw) / 3, abs=1e-9)
    assert stats["rewards/rejected"].item() == pytest.approx(sum(cl) / 3, abs=1e-9)
    assert stats["rewards/margins"].item() == pytest.approx((sum(cw) - sum(cl)) / 3, abs=1e-9)
    assert stats["rewards/accuracies"].item() == pytest.approx(sum(a > b for a, b in zip(cw, cl)) / 3)
    _, simpo_stats = PREFERENCE_LOSSES.get("simpo")(batch(), beta=BETA)
    assert simpo_stats["rewards/chosen"].item() == pytest.approx(sum(BETA * C[i] / LC[i] for i in range(3)) / 3)


def test_dpo_without_smoothing_is_minus_logsigmoid_of_beta_margin():
    lp = batch()
    margin = (lp.chosen_logps - lp.ref_chosen_logps) - (lp.rejected_logps - lp.ref_rejected_logps)
    loss, _ = PREFERENCE_LOSSES.get("dpo")(lp, beta=0.3, label_smoothing=0.0)
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(0.3 * margin), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ gradients


def hand_grad(name, i, b):
    """d loss_i / d (chosen_logps_i, rejected_logps_i) for dpo, ipo, simpo."""
    if name == "dpo":
        g = -b * sig(-b * (hw(i) - hl(i)))
        return g, -g
    if name == "ipo":
        inner = hw(i) / LC[i] - hl(i) / LR[i] - 1 / (2 * b)
        return 2 * inner / LC[i], -2 * inner / LR[i]
    if name == "simpo":
        s = sig(-(b * (C[i] / LC[i] - R[i] / LR[i]) - 0.5))
        return -b * s / LC[i], b * s / LR[i]
    raise KeyError(name)


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo"])
def test_gradient_matches_hand_derivative(name):
    lp = batch(grad=True)
    loss, _ = PREFERENCE_LOSSES.get(name)(lp, beta=BETA)
    loss.sum().backward()
    expected = [hand_grad(name, i, BETA) for i in range(3)]
    assert lp.chosen_logps.grad.tolist() == pytest.approx([g[0] for g in expected], abs=1e-8)
    assert lp.rejected_logps.grad.tolist() == pytest.approx([g[1] for g in expected], abs=1e-8)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES.names()))
def test_gradcheck(name):
    fn = PREFERENCE_LOSSES.get(name)

    def f(c, r, nll):
        lp = PreferenceLogps(c, r, t(RC), t(RR), t(LC), t(LR), nll)
        return fn(lp, beta=0.5)[0]

    assert torch.autograd.gradcheck(f, (t(C, True), t(R, True), t(NLL, True)))


# ------------------------------------------------------------------ every registered entry


def toy_unpaired(grad=False) -> UnpairedLogps:
    return UnpairedLogps(
        logps=t([-4.0, -6.0, -5.0], grad),
        ref_logps=t([-4.5, -5.0, -5.5]),
        labels=torch.tensor([True, False, True]),
        kl_logps=t([-7.0, -6.0, -8.0], grad),
        ref_kl_logps=t([-7.5, -6.2, -8.1]),
    )


def _check_output(loss, stats, data, grads_of):
    assert loss.shape == (3,)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    grads = [g.grad for g in grads_of if g.grad is not None]
    assert grads, "no gradient reached the policy inputs"
    assert all(torch.isfinite(g).all() for g in grads)
    for key, value in stats.items():
        assert isinstance(value, torch.Tensor) and not value.requires_grad, key


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES.names()))
def test_walk_paired_registry(name):
    lp = batch(grad=True)
    loss, stats = PREFERENCE_LOSSES.get(name)(lp, beta=BETA)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(stats)
    _check_output(loss, stats, lp, [lp.chosen_logps, lp.rejected_logps, lp.chosen_nll])


@pytest.mark.parametrize("name", sorted(UNPAIRED_LOSSES.names()))
def test_walk_unpaired_registry(name):
    lp = toy_unpaired(grad=True)
    loss, stats = UNPAIRED_LOSSES.get(name)(lp, beta=BETA)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(stats)
    _check_output(loss, stats, lp, [lp.logps])


def test_registries_hold_the_expected_names():
    assert set(PREFERENCE_LOSSES.names()) == {
        "dpo", "robust", "ipo", "hinge", "dpop", "rpo", "simpo", "orpo", "exo_pair", "nca_pair",
        "apo_zero", "apo_down", "sppo_hard", "aot", "aot_pair", "bco_pair", "sft",
    }
    assert set(UNPAIRED_LOSSES.names()) == {"kto", "bco", "apo_zero_unpaired"}


# ------------------------------------------------------------------ errors


def test_unknown_hyperparameter_raises_with_clear_message():
    with pytest.raises(TypeError, match=r"preference loss 'simpo'.*unknown hyper-parameter 'gama'.*did you mean 'gamma'"):
        PREFERENCE_LOSSES.get("simpo")(batch(), beta=BETA, gama=0.5)
    with pytest.raises(TypeError, match=r"'ipo'.*unknown hyper-parameter 'label_smoothing'.*accepts: none"):
        PREFERENCE_LOSSES.get("ipo")(batch(), beta=BETA, label_smoothing=0.1)
    with pytest.raises(TypeError, match=r"unpaired preference loss 'kto'.*'desirable_weigth'"):
        UNPAIRED_LOSSES.get("kto")(toy_unpaired(), beta=BETA, desirable_weigth=1.0)


def test_tensor_hyperparameter_raises():
    with pytest.raises(TypeError, match="must be a float"):
        PREFERENCE_LOSSES.get("dpo")(batch(), beta=BETA, label_smoothing=torch.tensor(0.1))


def test_missing_inputs_raise():
    lp = PreferenceLogps(t(C), t(R))
    with pytest.raises(ValueError, match="'dpo' needs PreferenceLogps.ref_chosen_logps"):
        PREFERENCE_LOSSES.get("dpo")(lp, beta=BETA)
    with pytest.raises(ValueError, match="chosen_lengths"):
        PREFERENCE_LOSSES.get("simpo")(lp, beta=BETA)
    with pytest.raises(ValueError, match="shape"):
        PreferenceLogps(t(C), t(R[:2]))


def test_hyperparameter_ranges():
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        PREFERENCE_LOSSES.get("robust")(batch(), beta=BETA, label_smoothing=0.5)
    with pytest.raises(ValueError, match="exo_pair"):
        PREFERENCE_LOSSES.get("exo_pair")(batch(), beta=BETA, label_smoothing=0.0)


# ------------------------------------------------------------------ combined


def test_combined_loss_is_weighted_sum_and_routes_hps():
    lp = batch()
    loss, stats = combined_loss(lp, {"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=BETA, label_smoothing=0.1)
    expected = [
        0.8 * smoothed(BETA * (hw(i) - hl(i)), 0.1) + 0.2 * (-logsig(BETA * hw(i)) - logsig(-BETA * hl(i))) + NLL[i]
        for i in range(3)
    ]
    assert loss.tolist() == pytest.approx(expected, abs=1e-9)
    assert stats["loss/sft"].item() == pytest.approx(sum(NLL) / 3)
    assert stats["rewards/chosen"] is stats["dpo/rewards/chosen"]
    assert "bco_pair/rewards/margins" in stats
    with pytest.raises(TypeError, match="unknown hyper-parameter 'gamma'"):
        combined_loss(lp, {"dpo": 1.0, "sft": 1.0}, beta=BETA, gamma=0.5)
    with pytest.raises(KeyError, match="did you mean 'dpo'"):
        combined_loss(lp, {"dpoo": 1.0}, beta=BETA)
    with pytest.raises(ValueError):
        combined_loss(lp, {}, beta=BETA)


# ------------------------------------------------------------------ unpaired formulas


def test_kto_formula_and_gradient():
    lp = toy_unpaired(grad=True)
    w_d, w_u, b = 1.5, 0.7, 0.4
    loss, stats = UNPAIRED_LOSSES.get("kto")(lp, beta=b, desirable_weight=w_d, undesirable_weight=w_u)
    z0 = max(0.0, ((-7.0 + 7.5) + (-6.0 + 6.2) + (-8.0 + 8.1)) / 3)
    h = [-4.0 + 4.5, -6.0 + 5.0, -5.0 + 5.5]
    labels = [True, False, True]
    expected = [w_d * (1 - sig(b * (h[i] - z0))) if labels[i] else w_u * (1 - sig(b * (z0 - h[i]))) for i in range(3)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-9)
    assert stats["kl"].item() == pytest.approx(z0)
    loss.sum().backward()
    s = [sig(b * (h[i] - z0)) for i in range(3)]
    hand = [-w_d * b * s[i] * (1 - s[i]) if labels[i] else w_u * b * s[i] * (1 - s[i]) for i in range(3)]
    assert lp.logps.grad.tolist() == pytest.approx(hand, abs=1e-9)
    assert lp.kl_logps.grad is None or torch.all(lp.kl_logps.grad == 0)  # reference point is detached


def test_kto_reference_point_clamped_at_zero_and_required():
    lp = toy_unpaired()
    lp = UnpairedLogps(lp.logps, lp.ref_logps, lp.labels, t([-9.0, -9.0, -9.0]), t([-7.0, -7.0, -7.0]))
    loss, stats = UNPAIRED_LOSSES.get("kto")(lp, beta=1.0)
    assert stats["kl"].item() == 0.0
    assert loss[0].item() == pytest.approx(1 - sig(0.5), abs=1e-9)
    with pytest.raises(ValueError, match="kl_logps"):
        UNPAIRED_LOSSES.get("kto")(UnpairedLogps(lp.logps, lp.ref_logps, lp.labels), beta=1.0)


def test_bco_formula_and_reward_mean():
    lp = toy_unpaired()
    b, delta = 0.5, 0.1
    loss, stats = UNPAIRED_LOSSES.get("bco")(lp, beta=b, delta=delta)
    r = [b * 0.5, b * -1.0, b * 0.5]
    expected = [-logsig(r[0] - delta), -logsig(delta - r[1]), -logsig(r[2] - delta)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-9)
    assert stats["rewards/mean"].item() == pytest.approx(sum(r) / 3)
    assert stats["rewards/chosen"].item() == pytest.approx(0.25)
    assert stats["count/rejected"].item() == 1


def test_apo_zero_unpaired_formula():
    lp = toy_unpaired()
    loss, _ = UNPAIRED_LOSSES.get("apo_zero_unpaired")(lp, beta=0.5)
    assert loss.tolist() == pytest.approx([1 - sig(0.25), sig(-0.5), 1 - sig(0.25)], abs=1e-9)


def test_unpaired_stats_nan_when_no_rejected():
    lp = toy_unpaired()
    lp = UnpairedLogps(lp.logps, lp.ref_logps, torch.ones(3, dtype=torch.bool), lp.kl_logps, lp.ref_kl_logps)
    _, stats = UNPAIRED_LOSSES.get("bco")(lp, beta=0.5)
    assert math.isnan(stats["rewards/rejected"].item())
    with pytest.raises(TypeError, match="bool"):
        UnpairedLogps(lp.logps, lp.ref_logps, torch.ones(3))
