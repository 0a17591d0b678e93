"""Policy objectives, KL / entropy terms and the clipped value loss: hand values and gradients."""
import math

import pytest
import torch

from posttrain.losses.policy import POLICY_LOSSES, entropy_bonus, kl_penalty_loss, policy_loss
from posttrain.losses.value import value_loss
from posttrain.ops import aggregate

TOL = dict(atol=1e-5, rtol=1e-5)

# two sequences of two tokens; ratios r = [[1.5, 0.7], [1.1, 0.5]], advantages [1, -2]
RATIOS = [[1.5, 0.7], [1.1, 0.5]]
OLD = [[-1.0, -2.0], [-0.5, -3.0]]
ADV = [1.0, -2.0]


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def _close(actual, expected):
    torch.testing.assert_close(actual, _t(expected), **TOL)


def _inputs():
    old = _t(OLD)
    logp = (old + torch.log(_t(RATIOS))).requires_grad_(True)
    return logp, old, _t(ADV), torch.ones(2, 2)


def _k3(r):
    return r - 1 - math.log(r)


def _mean(xs):
    return sum(xs) / len(xs)


ALL_R = [r for row in RATIOS for r in row]


def test_ppo_hand_values_and_gradient():
    logp, old, adv, mask = _inputs()
    loss, stats = POLICY_LOSSES.get("ppo")(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    # A=1: min(1.5, 1.2) -> -1.2 (clipped high); min(0.7, 0.8) -> -0.7
    # A=-2: min(-2.2, -2.2) -> 2.2; min(-1.0, -1.6) -> 1.6 (clipped low)
    _close(loss, [[-1.2, -0.7], [2.2, 1.6]])
    loss.sum().backward()
    _close(logp.grad, [[0.0, -1 * 0.7], [2 * 1.1, 0.0]])  # -A r where unclipped, 0 where clipped
    _close(stats["clip_frac_high"], 0.25)
    _close(stats["clip_frac_low"], 0.25)
    _close(stats["dual_clip_frac"], 0.0)
    _close(stats["ratio_mean"], _mean(ALL_R))
    _close(stats["ratio_max"], 1.5)
    _close(stats["approx_kl"], _mean([_k3(r) for r in ALL_R]))
    assert all(not v.requires_grad for v in stats.values())


def test_ppo_clip_higher_is_asymmetric():
    logp, old, adv, mask = _inputs()
    loss, stats = policy_loss("ppo", logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    _close(loss, [[-1.28, -0.7], [2.2, 1.6]])
    _close(stats["clip_frac_high"], 0.25)


def test_ppo_dual_clip_caps_negative_advantage_loss():
    old = torch.zeros(1, 2)
    logp = torch.log(_t([[4.0, 1.0]])).requires_grad_(True)
    loss, stats = policy_loss("ppo", logp, old, _t([-2.0]), torch.ones(1, 2), dual_clip=3.0)
    # r=4: max(8, 2.4) = 8 > cap 6 -> 6 ; r=1: 2 < 6 -> 2
    _close(loss, [[6.0, 2.0]])
    _close(stats["dual_clip_frac"], 0.5)
    loss.sum().backward()
    _close(logp.grad, [[0.0, 2.0]])
    without, _ = policy_loss("ppo", logp.detach(), old, _t([-2.0]), torch.ones(1, 2))
    _close(without, [[8.0, 2.0]])
    with pytest.raises(ValueError):
        policy_loss("ppo", logp, old, _t([-2.0]), torch.ones(1, 2), dual_clip=0.5)


def test_gspo_hand_values_and_gradient():
    logp, old, adv, mask = _inputs()
    loss, stats = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    s0, s1 = math.sqrt(1.5 * 0.7), math.sqrt(1.1 * 0.5)  # exp(mean log ratio)
    assert 0.8 < s0 < 1.2 and s1 < 0.8
    # seq 0: -A s0 on each token; seq 1: max(2 s1, 2 * 0.8) = 1.6 (clipped low)
    _close(loss, [[-s0, -s0], [1.6, 1.6]])
    loss.sum().backward()
    _close(logp.grad, [[-s0, -s0], [0.0, 0.0]])
    _close(stats["clip_frac_low"], 0.5)  # the two tokens of sequence 1
    _close(stats["clip_frac_high"], 0.0)
    _close(stats["ratio_mean"], (2 * s0 + 2 * s1) / 4)


def test_gspo_gradient_equals_sequence_level_objective():
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    base = old + torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.3
    mask = torch.ones(4, 6, dtype=torch.float64)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)

    logp = base.clone().requires_grad_(True)
    loss, _ = policy_loss("gspo", logp, old, adv, mask, clip_low=0.1, clip_high=0.15)
    aggregate(loss, mask, "seq-mean-token-mean").backward()

    ref = base.clone().requires_grad_(True)
    s = torch.exp(((ref - old) * mask).sum(-1) / mask.sum(-1))
    direct = -torch.minimum(s * adv, s.clamp(0.9, 1.15) * adv).mean()
    direct.backward()
    torch.testing.assert_close(logp.grad, ref.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(aggregate(loss, mask, "seq-mean-token-mean"), direct, atol=1e-10, rtol=1e-8)


def test_cispo_hand_values_and_gradient():
    logp, old, adv, mask = _inputs()
    loss, stats = POLICY_LOSSES.get("cispo")(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    w = [[1.2, 0.8], [1.1, 0.8]]  # clip(r, 0.8, 1.2), detached
    lp = logp.detach().tolist()
    _close(loss, [[-w[0][0] * 1 * lp[0][0], -w[0][1] * 1 * lp[0][1]], [w[1][0] * 2 * lp[1][0], w[1][1] * 2 * lp[1][1]]])
    loss.sum().backward()
    _close(logp.grad, [[-1.2, -0.8], [2.2, 1.6]])  # every token keeps a gradient: -w A
    _close(stats["clip_frac_high"], 0.25)
    _close(stats["clip_frac_low"], 0.5)


def test_reinforce_hand_values_and_on_policy_gradient():
    logp, old, adv, mask = _inputs()
    loss, stats = POLICY_LOSSES.get("reinforce")(logp, old, adv, mask)
    _close(loss, [[-1.5, -0.7], [2.2, 1.0]])
    on_policy = logp.detach().clone().requires_grad_(True)
    loss, stats = policy_loss("reinforce", on_policy, on_policy.detach(), adv, mask)
    _close(loss, [[-1.0, -1.0], [2.0, 2.0]])
    loss.sum().backward()
    _close(on_policy.grad, [[-1.0, -1.0], [2.0, 2.0]])
    _close(stats["approx_kl"], 0.0)


@pytest.mark.parametrize("name", ["ppo", "reinforce"])
def test_gradcheck_away_from_clip_boundaries(name):
    gen = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 4, generator=gen, dtype=torch.float64)
    logp = (old + torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.05).requires_grad_(True)
    adv = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda lp: policy_loss(name, lp, old, adv, mask)[0], (logp,))


# a (B, T) advantage and a padded batch where the padding holds garbage
def _padded_inputs():
    logp = _t([[-1.0, -2.0, float("nan")], [-0.5, float("-inf"), float("inf")]]).requires_grad_(True)
    old = _t([[-1.0, -2.5, 3.0], [-0.4, float("nan"), 0.0]])
    mask = _t([[1, 1, 0], [1, 0, 0]])
    adv = _t([[1.0, 0.5, 9.0], [-1.0, 9.0, 9.0]])
    return logp, old, adv, mask


# every registered objective on the same toy batch, against a hand-computed (B, T) value
R_PAD = [[1.0, math.exp(0.5)], [math.exp(-0.1)]]
WALK_EXPECTED = {
    "ppo": [[-1.0, -0.5 * 1.2, 0.0], [1.0 * max(R_PAD[1][0], 0.8), 0.0, 0.0]],
    "gspo": None,  # filled below: sequence ratios
    "cispo": [[-1.0 * 1.0 * -1.0, -1.2 * 0.5 * -2.0, 0.0], [math.exp(-0.1) * 1.0 * -0.5, 0.0, 0.0]],
    "reinforce": [[-1.0, -0.5 * math.exp(0.5), 0.0], [math.exp(-0.1), 0.0, 0.0]],
}
_s0, _s1 = math.exp(0.25), math.exp(-0.1)
WALK_EXPECTED["gspo"] = [[-1.0 * min(_s0, 1.2), -0.5 * min(_s0, 1.2), 0.0], [max(_s1, 0.8), 0.0, 0.0]]


def test_registry_walk_every_objective_with_padding_garbage():
    assert set(POLICY_LOSSES.names()) == set(WALK_EXPECTED), "add a hand value for every new objective"
    for name in POLICY_LOSSES.names():
        logp, old, adv, mask = _padded_inputs()
        loss, stats = POLICY_LOSSES.get(name)(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=None)
        _close(loss, WALK_EXPECTED[name])
        aggregate(loss, mask, "token-mean").backward()
        assert torch.isfinite(logp.grad).all(), name
        assert (logp.grad[mask == 0] == 0).all(), name
        assert set(stats) == {"clip_frac_low", "clip_frac_high", "dual_clip_frac", "approx_kl", "ratio_mean", "ratio_max"}
        assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad for v in stats.values()), name


def test_shape_errors():
    logp, old, adv, mask = _inputs()
    with pytest.raises(ValueError):
        policy_loss("ppo", logp, old, _t([1.0, 2.0, 3.0]), mask)
    with pytest.raises(ValueError):
        policy_loss("ppo", logp, old[:, :1], adv, mask)
    with pytest.raises(KeyError):
        policy_loss("pppo", logp, old, adv, mask)


def test_kl_penalty_loss_kinds():
    logp = _t([[-1.0, -2.0, 0.0]]).requires_grad_(True)
    ref = _t([[-1.5, -1.0, float("nan")]])
    mask = _t([[1, 1, 0]])
    k3, stats = kl_penalty_loss(logp, ref, mask, "k3")
    _close(k3, [[math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]])
    _close(stats["kl"], (math.exp(-0.5) - 0.5 + math.exp(1.0) - 2.0) / 2)
    k1, _ = kl_penalty_loss(logp, ref, mask, "k1")
    _close(k1, [[0.5, -1.0, 0.0]])
    k2, _ = kl_penalty_loss(logp, ref, mask, "k2")
    _close(k2, [[0.125, 0.5, 0.0]])
    k2.sum().backward()
    _close(logp.grad, [[0.5, -1.0, 0.0]])  # d/dlogp 0.5 (logp - ref)^2


def test_entropy_bonus():
    term, stats = entropy_bonus(_t([[1.0, 2.0, 7.0]]), _t([[1, 1, 0]]))
    _close(term, [[-1.0, -2.0, 0.0]])
    _close(stats["entropy"], 1.5)


def test_value_loss_hand_values_and_gradient():
    values = _t([[1.0, 2.0, 3.0, 1.0, 5.0]]).requires_grad_(True)
    old = _t([[0.5, 2.5, 3.1, 0.5, 0.0]])
    returns = _t([[2.0, 0.0, 3.5, 0.0, 0.0]])
    mask = _t([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    # v_clip = [0.7, 2.3, 3.0, 0.7]; max(err, err_clip)/2
    _close(loss, [[0.5 * 1.69, 0.5 * 5.29, 0.5 * 0.25, 0.5 * 1.0, 0.0]])
    loss.sum().backward()
    _close(values.grad, [[0.0, 0.0, -0.5, 1.0, 0.0]])  # clipped branch saturated -> no gradient
    _close(stats["vf_clip_frac"], 0.5)
    _close(stats["value_mean"], 7.0 / 4)
    _close(stats["value_error"], (1 + 4 + 0.25 + 1) / 4)
    plain, _ = value_loss(values.detach(), old, returns, mask, clip=None)
    _close(plain, [[0.5, 2.0, 0.125, 0.5, 0.0]])
