"""Every --algo preset's objective, axis by axis, against a gradient computed by hand.

For each preset, and the preset with KL in the loss, KL in the reward, advantage whitening or masked
truncation switched on (an entropy bonus is on in the plain case), the trainer's own pieces
(`rl_update.step_advantages`, then the update kind's backward over micro-batches) must give the
gradient of an objective written out here in plain torch, one unpadded sequence at a time: the
advantage estimators, the KL estimators, the KL shaping, whitening, the PPO clip, the entropy term and
the reducers are all recomputed independently of the library. Deleting any of those terms from the
trainer fails at least one case.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import Completion
from posttrain.trainers.rl_batch import RolloutBatch, collate_completions, policy_forward
from posttrain.trainers.rl_presets import PRESETS, resolve_algorithm
from posttrain.trainers.rl_update import UpdateSpec, step_advantages

pytestmark = pytest.mark.usefixtures("one_thread")

TEMP, MAX_NEW, EPS_ADV, EPS_WHITEN = 0.7, 4, 1e-6, 1e-8
PROMPTS = [[1, 20, 21]] * 3 + [[1, 30, 31, 32]] * 3
COMPS = [[50, 51, 52], [53], [54, 55], [60, 61], [62, 63, 64, 65], [66]]
TRUNCATED = [False, False, False, False, True, False]  # the 4-token one hit max_new_tokens
GROUPS = [0, 0, 0, 1, 1, 1]
REWARDS = [1.0, 0.0, 0.5, 0.2, 0.9, 0.0]
GREEDY = [0.4, 0.4, 0.4, 0.3, 0.3, 0.3]  # remax's baseline-rollout reward per prompt
TOKEN_LEVEL = ("reinforce_pp", "reinforce_pp_baseline", "gae")  # estimators that take per-token rewards
VARIANTS = {
    "preset": dict(entropy_coef=0.05),
    "kl_in_loss": dict(kl_placement="loss", kl_estimator="k3", kl_coef=0.2),
    "kl_in_reward": dict(kl_placement="reward", kl_estimator="k1", kl_coef=0.2),
    "whitened": dict(whiten_advantages=True),
    "mask_truncated": dict(mask_truncated=True, entropy_coef=0.05),
}
CASES = [(a, v) for a in PRESETS if a != "online_dpo" for v in VARIANTS] + [("online_dpo", "preset"), ("online_dpo", "mask_truncated")]


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=0)


def _perturbation(seed: int, scale: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * (2 * torch.rand(len(c), generator=g) - 1) for c in COMPS]


def _padded(rows: list[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros(len(rows), max(len(r) for r in rows))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _inputs(model, pad_id):
    """Fixed old-policy / reference logprobs and values: the current logprobs shifted by up to 0.4 (old,
    so that some ratios leave the clip range) and 0.5 (reference), and random values."""
    ids, tmask, _, _, _ = collate_completions([Completion(c, [0.0] * len(c), "stop") for c in COMPS], pad_id, False)
    with torch.no_grad():
        logp, _ = policy_forward(model, PROMPTS, ids, tmask, pad_id, TEMP, "none")
    now = [logp[i, : len(c)] for i, c in enumerate(COMPS)]
    old = [a + b for a, b in zip(now, _perturbation(1, 0.4))]
    ref = [a + b for a, b in zip(now, _perturbation(2, 0.5))]
    values = _perturbation(3, 1.0)
    return old, ref, values


def _trainer_gradient(model, pad_id, alg, old, ref, values):
    comps = [Completion(c, [0.0] * len(c), "length" if t else "stop") for c, t in zip(COMPS, TRUNCATED)]
    ids, tmask, lmask, rlp, trunc = collate_completions(comps, pad_id, alg.mask_truncated)
    batch = RolloutBatch([None] * 6, PROMPTS, comps, ids, tmask, lmask, rlp, trunc, torch.tensor(GROUPS), torch.tensor(REWARDS),
                         baseline=torch.tensor(GREEDY), old_logp=_padded(old), ref_logp=_padded(ref) if alg.needs_reference else None,
                         values=_padded(values) if alg.value_model else None)
    if alg.update.advantages:
        step_advantages(alg, batch)
    model.zero_grad()
    st = alg.update.backward(model, batch, list(range(6)), alg, UpdateSpec(pad_id, TEMP, 2, MAX_NEW))
    return [p.grad.clone() for p in model.parameters()], st


# ---------------------------------------------------------------------------------- by hand


def _hand_kl(kind, logp, ref):
    log_r = ref - logp
    return {"k1": logp - ref, "k2": 0.5 * (logp - ref) ** 2, "k3": log_r.exp() - 1 - log_r}[kind]


def _group_mean_std(r, i):
    xs = [r[j] for j in range(6) if GROUPS[j] == GROUPS[i]]
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)), xs


def _whiten(rows, eps):
    flat = torch.cat(rows)
    mean, std = flat.mean(), flat.std()  # unbiased, as the estimators' batch whitening
    return [(x - mean) / (std + eps) for x in rows]


def _token_level(alg, r, token_r, values):
    """Returns-to-go (reinforce_pp*, whitened over the batch's tokens) or GAE advantages, per row."""
    out = []
    for i, c in enumerate(COMPS):
        total = token_r[i].clone()
        total[-1] += r[i]
        if alg.estimator == "gae":
            v = torch.cat([values[i], torch.zeros(1)])
            adv, running = torch.zeros(len(c)), 0.0
            for t in reversed(range(len(c))):
                running = total[t] + alg.gamma * v[t + 1] - v[t] + alg.gamma * alg.lam * running
                adv[t] = running
            out.append(adv)
        else:
            out.append(torch.flip(torch.cumsum(torch.flip(total, [0]), 0), [0]))  # gamma = 1
    return out if alg.estimator == "gae" else _whiten(out, EPS_ADV)


def _hand_advantages(alg, old, ref, values):
    r = list(REWARDS)
    token_r = [torch.zeros(len(c)) for c in COMPS]
    if alg.kl_placement == "reward" and alg.needs_reference:
        kl = [_hand_kl(alg.kl_estimator, o, f) for o, f in zip(old, ref)]
        if alg.estimator in TOKEN_LEVEL:
            token_r = [-alg.kl_coef * k for k in kl]
        else:
            r = [x - alg.kl_coef * float(k.sum()) for x, k in zip(r, kl)]
    if alg.estimator == "reinforce_pp_baseline":
        r = [x - _group_mean_std(r, i)[0] for i, x in enumerate(r)]
    kl_tokens = alg.kl_placement == "reward" and alg.needs_reference
    if alg.estimator == "gae" or (alg.estimator in TOKEN_LEVEL and kl_tokens):
        return _token_level(alg, r, token_r, values)
    if alg.estimator in ("reinforce_pp", "reinforce_pp_baseline"):
        seq = _whiten([torch.tensor([x]) for x in r], EPS_ADV)
        return [s.expand(len(c)) for s, c in zip(seq, COMPS)]
    adv = []
    for i, x in enumerate(r):
        mean, std, xs = _group_mean_std(r, i)
        adv.append({"grpo": (x - mean) / (std + EPS_ADV), "dr_grpo": x - mean, "remax": x - GREEDY[i],
                    "rloo": x - (sum(xs) - x) / (len(xs) - 1)}[alg.estimator])
    return [torch.full((len(c),), float(a)) for a, c in zip(adv, COMPS)]


def _forward_by_hand(model):
    logps, ents = [], []
    for p, c in zip(PROMPTS, COMPS):
        logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float() / TEMP
        lsm = torch.log_softmax(logits, -1)
        logps.append(lsm.gather(-1, torch.tensor(c)[:, None])[:, 0])
        ents.append(-(lsm.exp() * lsm).sum(-1))
    return logps, ents


def _reduce(alg, per_token, kept):
    rows = [x for x, k in zip(per_token, kept) if k]
    n = len(rows)  # fully masked rows are not sequences
    return {"token-mean": sum(x.sum() for x in rows) / sum(len(x) for x in rows),
            "seq-mean-token-mean": sum(x.mean() for x in rows) / n,
            "seq-mean-token-sum": sum(x.sum() for x in rows) / n,
            "seq-sum-norm": sum(x.sum() for x in rows) / (n * MAX_NEW)}[alg.reducer]


def _hand_policy_objective(model, alg, old, ref, values):
    logps, ents = _forward_by_hand(model)
    adv = _hand_advantages(alg, old, ref, values)
    kept = [not (alg.mask_truncated and t) for t in TRUNCATED]
    if alg.whiten_advantages:
        flat = torch.cat([a for a, k in zip(adv, kept) if k])
        mean, std = flat.mean(), flat.std(unbiased=False)
        adv = [(a - mean) / (std + EPS_WHITEN) for a in adv]
    per_token = []
    for lp, o, f, a, e in zip(logps, old, ref, adv, ents):
        ratio = torch.exp(lp - o)
        term = torch.maximum(-a * ratio, -a * ratio.clamp(1 - alg.clip_low, 1 + alg.clip_high))
        if alg.kl_placement == "loss" and alg.needs_reference:
            term = term + alg.kl_coef * _hand_kl(alg.kl_estimator, lp, f)
        per_token.append(term - alg.entropy_coef * e)
    return _reduce(alg, per_token, kept)


def _hand_dpo_objective(model, alg, ref):
    logps, _ = _forward_by_hand(model)
    kept = [not (alg.mask_truncated and t) for t in TRUNCATED]
    seq = [lp.sum() if k else lp.sum() * 0 for lp, k in zip(logps, kept)]
    ref_seq = [float(f.sum()) if k else 0.0 for f, k in zip(ref, kept)]
    losses = []
    for g in sorted(set(GROUPS)):
        members = [i for i in range(6) if GROUPS[i] == g]
        w, l = max(members, key=lambda i: REWARDS[i]), min(members, key=lambda i: REWARDS[i])
        losses.append(-F.logsigmoid(alg.dpo_beta * ((seq[w] - ref_seq[w]) - (seq[l] - ref_seq[l]))))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("algo,variant", CASES)
def test_every_preset_axis_has_the_hand_computed_gradient(tiny, algo, variant):
    model, tok = tiny
    alg = resolve_algorithm(algo, VARIANTS[variant], MAX_NEW)
    old, ref, values = _inputs(model, tok.pad_token_id)
    got, st = _trainer_gradient(model, tok.pad_token_id, alg, old, ref, values)
    model.zero_grad()
    if alg.update.advantages:
        want = _hand_policy_objective(model, alg, old, ref, values)
    else:
        want = _hand_dpo_objective(model, alg, ref)
    want.backward()
    assert st["loss"] == pytest.approx(float(want.detach()), abs=1e-5)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-5)
    model.zero_grad()


def test_the_cases_exercise_every_axis():
    """The hand objective is only a check where the axis is on: every preset is covered, and each axis
    is on in some case (a KL in the loss and in the reward, whitening, the entropy bonus, a kept-out row)."""
    algs = [resolve_algorithm(a, VARIANTS[v], MAX_NEW) for a, v in CASES]
    assert {a for a, _ in CASES} == set(PRESETS)
    assert any(a.kl_placement == "loss" and a.needs_reference for a in algs)
    assert any(a.kl_placement == "reward" and a.needs_reference and a.estimator in TOKEN_LEVEL for a in algs)
    assert any(a.kl_placement == "reward" and a.needs_reference and a.estimator not in TOKEN_LEVEL for a in algs)
    assert any(a.whiten_advantages and a.estimator != "gae" for a in algs) and any(a.entropy_coef > 0 for a in algs)
    assert any(a.mask_truncated for a in algs)
