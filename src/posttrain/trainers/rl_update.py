"""The update half of the online RL step: one optimizer step's gradient, accumulated over
micro-batches, for the policy objectives, online DPO and the PPO critic; plus the health checks.

Every micro-batch loss is normalized by counts of the whole mini-batch (tokens, sequences, the fixed
length `max_new_tokens` for ``seq-sum-norm``), so the summed gradient is independent of the split.
"""
from __future__ import annotations

import torch

from posttrain.losses.policy import entropy_bonus, kl_penalty_loss, policy_loss
from posttrain.losses.preference import PREFERENCE_LOSSES, PreferenceLogps
from posttrain.losses.value import value_loss
from posttrain.ops import aggregate, kl_estimate, masked_mean
from posttrain.trainers.rl_batch import RolloutBatch, microbatches, policy_forward
from posttrain.trainers.rl_presets import GROUP_ESTIMATORS, TOKEN_REWARD_ESTIMATORS, Algorithm

_SUMMED = ("loss", "value_loss", "pairs")  # stats that add over micro-batches; the rest are token-weighted means


def _accumulate(total: dict, st: dict, weight: float) -> None:
    for k, v in st.items():
        v = float(v)
        if k in _SUMMED:
            total[k] = total.get(k, 0.0) + v
        elif k.endswith("_max"):
            total[k] = max(total.get(k, v), v)
        else:
            total[k] = total.get(k, 0.0) + v * weight
    total["_weight"] = total.get("_weight", 0.0) + weight


def _finish(total: dict) -> dict:
    w = max(total.pop("_weight", 0.0), 1e-12)
    return {k: (v if k in _SUMMED or k.endswith("_max") else v / w) for k, v in total.items()}


def merge_stats(per_step: list[dict]) -> dict:
    """Mean of each stat over the optimizer steps of one rollout batch (max for *_max)."""
    out: dict = {}
    for st in per_step:
        for k, v in st.items():
            out.setdefault(k, []).append(v)
    return {k: (max(v) if k.endswith("_max") else sum(v) / len(v)) for k, v in out.items()}


def _inputs(batch: RolloutBatch, mb: list[int]):
    return [batch.prompt_ids[i] for i in mb], batch.completion[mb], batch.token_mask[mb]


def update_policy(model, batch: RolloutBatch, idx: list[int], alg: Algorithm, pad_id: int, temperature: float,
                  sequences_per_microbatch: int, max_new_tokens: int, share_prompts: bool = True) -> dict:
    """Backward the policy loss (+ KL-in-loss, + entropy bonus) of sequences `idx`; returns stats."""
    red = dict(num_tokens=batch.loss_mask[idx].sum().clamp_min(1), num_seqs=len(idx), fixed_length=max_new_tokens)
    total: dict = {}
    for mb in microbatches(idx, sequences_per_microbatch):
        logp, ent = policy_forward(model, *_inputs(batch, mb), pad_id, temperature, "grad" if alg.entropy_coef else "no_grad",
                                   share_prompts)
        m = batch.loss_mask[mb]
        old = batch.old_logp[mb] if batch.old_logp is not None else logp.detach()
        pl, st = policy_loss(alg.loss, logp, old, batch.advantages[mb], m, clip_low=alg.clip_low,
                             clip_high=alg.clip_high, dual_clip=alg.dual_clip)
        loss = aggregate(pl, m, alg.reducer, **red)
        if batch.ref_logp is not None:
            kl, kst = kl_penalty_loss(logp, batch.ref_logp[mb], m, alg.kl_estimator)
            if alg.kl_placement == "loss":
                loss = loss + alg.kl_coef * aggregate(kl, m, alg.reducer, **red)
            st.update(kst)
        term, est = entropy_bonus(ent, m)
        if alg.entropy_coef:
            loss = loss + alg.entropy_coef * aggregate(term, m, alg.reducer, **red)
        st.update(est)
        if batch.old_logp is None:  # fused: these are the old-policy logprobs; compare with the engine's
            st.update(_mismatch(logp.detach(), batch.rollout_logp[mb], batch.token_mask[mb]))
        loss.backward()
        st["loss"] = loss.detach()
        _accumulate(total, st, float(m.sum()))
    return _finish(total)


def _mismatch(trainer_logp, rollout_logp, mask) -> dict:
    diff = (trainer_logp - rollout_logp).abs()
    return {"rollout/logprob_abs_diff": masked_mean(diff, mask),
            "rollout/logprob_diff_max": torch.where(mask, diff, torch.zeros_like(diff)).max()}


def mismatch_stats(trainer_logp, batch: RolloutBatch) -> dict:
    return {k: float(v) for k, v in _mismatch(trainer_logp, batch.rollout_logp, batch.token_mask).items()}


def kl_shaped_rewards(alg: Algorithm, rewards, old_logp, ref_logp, token_mask):
    """KL in the reward: (rewards (N,), token_rewards (N, T) or None, mean per-token kl).

    Token-level estimators get per-token rewards -beta * kl_t (the outcome is added at the last token
    by the estimator); sequence-level ones get r - beta * sum_t kl_t.
    """
    kl = kl_estimate(old_logp, ref_logp, alg.kl_estimator) * token_mask
    mean = float(masked_mean(kl, token_mask))
    if alg.estimator in TOKEN_REWARD_ESTIMATORS:
        return rewards, -alg.kl_coef * kl, mean
    return rewards - alg.kl_coef * kl.sum(-1), None, mean


def prm_token_rewards(token_rewards, step_scores, step_mask, coef: float, baseline: float):
    """Math-Shepherd's step-by-step PPO reward: ``coef * (score - baseline)`` at each step's last token,
    added to the token-level rewards (None: there is no other per-token reward). (N, T)."""
    dense = coef * (step_scores - baseline) * step_mask.to(step_scores.dtype)
    return dense if token_rewards is None else token_rewards + dense


def dpo_pairs(batch: RolloutBatch, idx: list[int]) -> list[tuple[int, int]]:
    """(best, worst) completion by reward for each group in `idx`; groups with all-equal rewards are dropped."""
    pairs = []
    for g in torch.unique(batch.group_ids[idx]).tolist():
        members = [i for i in idx if int(batch.group_ids[i]) == g]
        r = batch.rewards[members]
        if float(r.max()) > float(r.min()):
            pairs.append((members[int(r.argmax())], members[int(r.argmin())]))
    return pairs


def update_dpo(model, batch: RolloutBatch, idx: list[int], alg: Algorithm, pad_id: int, temperature: float,
               sequences_per_microbatch: int, samples_per_prompt: int, share_prompts: bool = True) -> dict:
    """Online DPO: backward the DPO loss of on-policy (best, worst) pairs, averaged over pairs."""
    pairs = dpo_pairs(batch, idx)
    total: dict = {"pairs": 0.0}
    loss_fn = PREFERENCE_LOSSES.get("dpo")
    for chunk in microbatches(pairs, max(1, sequences_per_microbatch // 2)):
        mb = [c for c, _ in chunk] + [r for _, r in chunk]
        logp, _ = policy_forward(model, *_inputs(batch, mb), pad_id, temperature, "none", share_prompts)
        m = batch.loss_mask[mb]
        seq = (logp * m).sum(-1)
        ref = (batch.ref_logp[mb] * m).sum(-1)
        k = len(chunk)
        lp = PreferenceLogps(chosen_logps=seq[:k], rejected_logps=seq[k:], ref_chosen_logps=ref[:k], ref_rejected_logps=ref[k:])
        loss, st = loss_fn(lp, beta=alg.dpo_beta)
        loss = loss.sum() / len(pairs)
        loss.backward()
        st = {"dpo/" + key: v.mean() for key, v in st.items()}
        st.update(loss=loss.detach(), pairs=float(k))
        _accumulate(total, st, float(k))
    return _finish(total)


def update_value(critic, opt, batch: RolloutBatch, idx: list[int], alg: Algorithm, pad_id: int,
                 sequences_per_microbatch: int, max_grad_norm: float) -> dict:
    """One critic optimizer step on the clipped value loss towards the GAE returns."""
    critic.train()
    n_tok = batch.loss_mask[idx].sum().clamp_min(1)
    total: dict = {}
    for mb in microbatches(idx, sequences_per_microbatch):
        values = critic(*_inputs(batch, mb), pad_id)
        m = batch.loss_mask[mb]
        vl, st = value_loss(values, batch.values[mb], batch.returns[mb], m, clip=alg.value_clip)
        loss = alg.vf_coef * aggregate(vl, m, "token-mean", num_tokens=n_tok)
        loss.backward()
        st["value_loss"] = loss.detach()
        _accumulate(total, st, float(m.sum()))
    norm = torch.nn.utils.clip_grad_norm_(critic.parameters(), max_grad_norm)
    if not torch.isfinite(norm):
        raise FloatingPointError(f"critic gradient norm is {float(norm)}")
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {**_finish(total), "value_grad_norm": float(norm)}


def health_warnings(m: dict, alg: Algorithm, min_entropy: float, max_kl: float) -> list[str]:
    """'kind: message' for each sign in the step's metrics that the run cannot learn or is breaking."""
    out = []
    trunc = m.get("truncated_share", 0.0)
    if trunc >= 0.999:
        out.append("truncation: every completion hit max_new_tokens; rewards rarely see an answer (raise rl.max_new_tokens)")
    elif trunc >= 0.5:
        out.append(f"truncation: {trunc:.0%} of completions hit max_new_tokens")
    group_based = alg.estimator in GROUP_ESTIMATORS or alg.loss == "dpo"
    if group_based and m.get("zero_variance_group_share", 0.0) >= 0.999:
        out.append("no_signal: every group has identical rewards, so every advantage is 0 and the run cannot learn "
                   "(the task is too hard or too easy for this model; use dynamic sampling or another task)")
    if "reward_std" in m and m["reward_std"] == 0.0 and not group_based:
        out.append("no_signal: every completion got the same reward")
    if m.get("grad_norm", 1.0) == 0.0:
        out.append("zero_grad: gradient norm is 0: the update changes nothing")
    if m.get("kl", 0.0) > max_kl:
        out.append(f"kl: KL to the reference is {m['kl']:.3g} > rl.max_kl={max_kl}: the policy is running away")
    if "entropy" in m and m["entropy"] < min_entropy:
        out.append(f"entropy: policy entropy {m['entropy']:.3g} < rl.min_entropy={min_entropy}: exploration has collapsed")
    if m.get("rollout/logprob_abs_diff", 0.0) > 0.05:
        out.append(f"mismatch: rollout and trainer logprobs differ by {m['rollout/logprob_abs_diff']:.3g} per token on average")
    return out
