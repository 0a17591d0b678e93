"""Advantage estimators: hand-computed values, looped references, and a walk over the registry."""
import math
import random

import pytest
import torch

from posttrain.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    expand_to_tokens,
    group_stats,
    zero_std_group_fraction,
)

TOL = dict(atol=1e-5, rtol=1e-5)
EPS = 1e-6

# rewards of 6 completions in 3 groups (ids non-contiguous, one singleton)
R = [1.0, 0.0, 1.0, 0.5, 0.5, 2.0]
G = [7, 7, 7, 3, 3, 9]


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def _ids(x):
    return torch.tensor(x, dtype=torch.long)


def _close(actual, expected):
    torch.testing.assert_close(actual, _t(expected), **TOL)


# ---------------------------------------------------------------- hand-computed values

STD7 = math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2)  # unbiased std of [1, 0, 1] = sqrt(1/3)


def _batch_whiten(xs):
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return [(x - mean) / (std + EPS) for x in xs]


HAND = {
    "grpo": [(1 / 3) / (STD7 + EPS), (-2 / 3) / (STD7 + EPS), (1 / 3) / (STD7 + EPS), 0.0, 0.0, 0.0],
    "dr_grpo": [1 / 3, -2 / 3, 1 / 3, 0.0, 0.0, 0.0],
    "rloo": [1 - 0.5, 0 - 1.0, 1 - 0.5, 0.0, 0.0, 0.0],
    "remax": [1 - 0.5, 0 - 0.5, 1 - 0.5, 0.5 - 0.5, 0.5 - 0.5, 2 - 0.5],
    "reinforce_pp": _batch_whiten(R),
    "reinforce_pp_baseline": _batch_whiten([1 / 3, -2 / 3, 1 / 3, 0.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_sequence_estimators_hand_values(name):
    adv, ret = ADVANTAGE_ESTIMATORS.get(name)(_t(R), _ids(G), eps=EPS, baseline_rewards=_t([0.5] * 6))
    assert adv.shape == (6,)
    _close(adv, HAND[name])
    _close(ret, R)


def test_gae_hand_values():
    # rewards [0, 0, 1] (outcome at the last token), V = [0.5, 0.2, 0.1], gamma 0.9, lam 0.8
    d2 = 1 - 0.1
    d1 = 0 + 0.9 * 0.1 - 0.2
    d0 = 0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(
        _t([1.0]), _ids([0]), values=_t([[0.5, 0.2, 0.1]]), mask=torch.ones(1, 3), gamma=0.9, lam=0.8
    )
    _close(adv, [[a0, a1, a2]])
    _close(ret, [[a0 + 0.5, a1 + 0.2, a2 + 0.1]])


def test_gae_skips_masked_positions_and_uses_token_rewards():
    # position 1 is masked (e.g. a tool output): its value 99 and reward 5 must be ignored
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(
        _t([1.0]), _ids([0]), values=_t([[0.5, 99.0, 0.1, 7.0]]), token_rewards=_t([[-0.1, 5.0, 0.0, 3.0]]),
        mask=_t([[1, 0, 1, 0]]), gamma=0.9, lam=0.8,
    )
    a2 = 0.0 + 1.0 - 0.1
    a0 = -0.1 + 0.9 * 0.1 - 0.5 + 0.72 * a2
    _close(adv, [[a0, 0.0, a2, 0.0]])
    _close(ret, [[a0 + 0.5, 0.0, a2 + 0.1, 0.0]])


def test_reinforce_pp_token_level_hand_values():
    tr = _t([[-0.1, -0.2, 9.0], [0.0, -0.1, -0.1]])
    mask = _t([[1, 1, 0], [1, 1, 1]])
    adv, ret = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(
        _t([1.0, 0.0]), _ids([0, 0]), token_rewards=tr, mask=mask, gamma=0.5, eps=EPS
    )
    # row 0: rewards [-0.1, -0.2 + 1]; G1 = 0.8, G0 = -0.1 + 0.5 * 0.8 ; row 1: [0, -0.1, -0.1]
    g = [[-0.1 + 0.5 * 0.8, 0.8], [0.0 + 0.5 * (-0.1 + 0.5 * -0.1), -0.1 + 0.5 * -0.1, -0.1]]
    _close(ret, [g[0] + [0.0], g[1]])
    w = _batch_whiten(g[0] + g[1])
    _close(adv, [w[:2] + [0.0], w[2:]])


def test_reinforce_pp_baseline_token_level_subtracts_group_mean():
    tr = torch.zeros(3, 2)
    mask = torch.ones(3, 2)
    adv, ret = ADVANTAGE_ESTIMATORS.get("reinforce_pp_baseline")(
        _t([1.0, 0.0, 3.0]), _ids([0, 0, 1]), token_rewards=tr, mask=mask, gamma=1.0, eps=EPS
    )
    _close(ret, [[0.5, 0.5], [-0.5, -0.5], [0.0, 0.0]])
    _close(adv, [_batch_whiten([0.5, 0.5, -0.5, -0.5, 0.0, 0.0])[i : i + 2] for i in (0, 2, 4)])


def test_group_stats_and_zero_std_fraction():
    mean, std, size = group_stats(_t(R), _ids(G))
    _close(mean, [2 / 3] * 3 + [0.5, 0.5, 2.0])
    _close(std, [STD7] * 3 + [0.0, 0.0, 0.0])
    _close(size, [3, 3, 3, 2, 2, 1])
    # groups of size >= 2: {7: varied, 3: all equal} -> 1/2
    _close(zero_std_group_fraction(_t(R), _ids(G)), 0.5)


def test_expand_to_tokens():
    out = expand_to_tokens(_t([2.0, -1.0]), _t([[1, 1, 0], [1, 0, 0]]))
    _close(out, [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


def test_remax_requires_baseline():
    with pytest.raises(ValueError, match="baseline_rewards"):
        ADVANTAGE_ESTIMATORS.get("remax")(_t(R), _ids(G))


def test_gae_requires_values():
    with pytest.raises(ValueError, match="values"):
        ADVANTAGE_ESTIMATORS.get("gae")(_t(R), _ids(G))


# ---------------------------------------------------------------- slow looped references


def _groups(group_ids):
    out = {}
    for i, g in enumerate(group_ids):
        out.setdefault(g, []).append(i)
    return out


def _std(xs):
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _reference_grpo(r, g, eps, scale_std=True):
    out = [0.0] * len(r)
    for idx in _groups(g).values():
        xs = [r[i] for i in idx]
        m, s = sum(xs) / len(xs), _std(xs)
        for i in idx:
            out[i] = (r[i] - m) / (s + eps) if scale_std else r[i] - m
    return out


def _reference_rloo(r, g):
    out = [0.0] * len(r)
    for idx in _groups(g).values():
        for i in idx:
            others = [r[j] for j in idx if j != i]
            out[i] = r[i] - sum(others) / len(others) if others else 0.0
    return out


def _reference_gae(rewards, values, token_rewards, mask, gamma, lam):
    out = []
    for r, v, tr, m in zip(rewards, values, token_rewards, mask):
        valid = [t for t in range(len(m)) if m[t]]
        rew = [tr[t] for t in valid]
        if valid:
            rew[-1] += r
        adv_valid, nxt_v, nxt_a = [0.0] * len(valid), 0.0, 0.0
        for k in range(len(valid) - 1, -1, -1):
            delta = rew[k] + gamma * nxt_v - v[valid[k]]
            nxt_a = delta + gamma * lam * nxt_a
            adv_valid[k], nxt_v = nxt_a, v[valid[k]]
        row = [0.0] * len(m)
        for k, t in enumerate(valid):
            row[t] = adv_valid[k]
        out.append(row)
    return out


def _random_batch(seed, n=40):
    rng = random.Random(seed)
    g = [rng.choice([11, 5, 2, 90, 31, 8, 77]) for _ in range(n)]
    r = [rng.choice([0.0, 1.0, rng.uniform(-2, 2)]) for _ in range(n)]
    return r, g


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_matches_looped_reference(seed):
    r, g = _random_batch(seed)
    _close(ADVANTAGE_ESTIMATORS.get("grpo")(_t(r), _ids(g), eps=EPS)[0], _reference_grpo(r, g, EPS))
    _close(ADVANTAGE_ESTIMATORS.get("dr_grpo")(_t(r), _ids(g))[0], _reference_grpo(r, g, EPS, scale_std=False))
    _close(ADVANTAGE_ESTIMATORS.get("rloo")(_t(r), _ids(g))[0], _reference_rloo(r, g))


@pytest.mark.parametrize("seed", range(3))
def test_gae_matches_looped_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    n, t = 5, 7
    values = torch.randn(n, t, generator=gen)
    token_rewards = torch.randn(n, t, generator=gen) * 0.1
    mask = (torch.rand(n, t, generator=gen) > 0.3).float()
    mask[0] = 0.0  # an empty row
    rewards = torch.randn(n, generator=gen)
    adv, ret = compute_advantages(
        "gae", rewards, torch.arange(n), values=values, token_rewards=token_rewards, mask=mask, gamma=0.95, lam=0.9
    )
    ref = _reference_gae(rewards.tolist(), values.tolist(), token_rewards.tolist(), mask.tolist(), 0.95, 0.9)
    _close(adv, ref)
    torch.testing.assert_close(ret, (_t(ref) + values) * mask, **TOL)


# ---------------------------------------------------------------- walk every registry entry

TOKEN_LEVEL_KW = dict(
    values=_t([[0.5, 0.2, 0.1]] * 6),
    token_rewards=torch.zeros(6, 3),
    mask=torch.ones(6, 3),
    gamma=1.0,
    lam=1.0,
)
# with zero token rewards, gamma = lam = 1 and all-ones masks, every token-level estimator's
# advantage on each token is a hand-computable function of the outcome reward
WALK_EXPECTED = {
    "grpo": HAND["grpo"],
    "dr_grpo": HAND["dr_grpo"],
    "rloo": HAND["rloo"],
    "remax": HAND["remax"],
    "reinforce_pp": [[x] * 3 for x in _batch_whiten([r for r in R for _ in range(3)])[::3]],
    "reinforce_pp_baseline": [[x] * 3 for x in _batch_whiten([a for a in HAND["dr_grpo"] for _ in range(3)])[::3]],
    # GAE with gamma = lam = 1: A_t = R - V_t
    "gae": [[r - 0.5, r - 0.2, r - 0.1] for r in R],
    # one turn (an all-ones mask), gamma = 1: every token gets the episode's GRPO advantage
    "turn_discounted": [[a] * 3 for a in HAND["grpo"]],
}


def test_registry_walk_every_estimator():
    assert set(ADVANTAGE_ESTIMATORS.names()) == set(WALK_EXPECTED), "add a hand value for every new estimator"
    for name in ADVANTAGE_ESTIMATORS.names():
        adv, ret = compute_advantages(name, _t(R), _ids(G), eps=EPS, baseline_rewards=_t([0.5] * 6), **TOKEN_LEVEL_KW)
        assert torch.isfinite(adv).all() and torch.isfinite(ret).all(), name
        assert adv.shape[0] == 6 and ret.shape == adv.shape, name
        _close(adv, WALK_EXPECTED[name])


def test_registry_rejects_duplicates_and_unknown():
    with pytest.raises(ValueError):
        ADVANTAGE_ESTIMATORS.register("grpo")(lambda *a, **k: None)
    with pytest.raises(KeyError, match="grpo"):
        ADVANTAGE_ESTIMATORS.get("grpoo")
