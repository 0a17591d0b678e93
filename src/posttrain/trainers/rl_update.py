"""The update half of the online RL step: advantages from the (KL-shaped) rewards, one optimizer
step's gradient accumulated over micro-batches for each registered update kind (policy gradient,
online DPO) and the PPO critic; plus the health checks.

Every micro-batch loss is normalized by counts of the whole mini-batch (tokens, trained sequences,
the fixed length `max_new_tokens` for ``seq-sum-norm``), so the summed gradient is independent of the
split. A fully masked row (a truncated completion under ``mask_truncated``) is not a trained sequence
(`ops.count_sequences`, as verl).

Update kinds (`UPDATE_KINDS`): ``policy`` (the PPO family: advantages, a `POLICY_LOSSES` objective,
KL-in-loss and entropy terms) and ``dpo`` (online DPO, Guo et al. 2024: best / worst completion of a
group as a DPO pair). What a kind needs from the step (advantages, a reference model, a group size,
whole groups per mini-batch) is declared in its `UpdateKind`, so the trainer never tests loss names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from posttrain.advantages import compute_advantages, estimator_needs, expand_to_tokens, process_advantages
from posttrain.losses.policy import POLICY_LOSSES, entropy_bonus, kl_penalty_loss, policy_loss
from posttrain.losses.preference import PREFERENCE_LOSSES, PreferenceLogps, preference_needs
from posttrain.losses.value import value_loss
from posttrain.ops import aggregate, count_sequences, kl_estimate, masked_mean
from posttrain.registry import Registry
from posttrain.runtime.worker import worker_of
from posttrain.trainers.rl_batch import RolloutBatch, microbatches, policy_forward

if TYPE_CHECKING:
    from posttrain.trainers.rl_presets import Algorithm

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


def _finish(total: dict, rt=None) -> dict:
    """The accumulated stats as means (sums for `_SUMMED`, maxima for ``*_max``); with a distributed
    `rt`, over every rank's micro-batches (every rank must call it)."""
    if rt is not None and rt.distributed:
        merged: dict = {}
        for part in rt.gather_object(total):
            for k, v in part.items():
                merged[k] = max(merged.get(k, v), v) if k.endswith("_max") else merged.get(k, 0.0) + v
        total = merged
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
    """Backward the policy loss (+ KL-in-loss, + entropy bonus) of sequences `idx`; returns stats.

    `model`: a `PolicyWorker` (or a bare module). Under data parallelism `batch` is this rank's share
    and the reducers' token and sequence counts are summed over the ranks (global normalizers)."""
    w = worker_of(model)
    m_all = batch.loss_mask[idx]
    n_tok, n_seq = w.rt.all_reduce_sum(m_all.sum()), w.rt.all_reduce_sum(count_sequences(m_all))
    red = dict(num_tokens=n_tok.clamp_min(1), num_seqs=n_seq.clamp_min(1), fixed_length=max_new_tokens)
    total: dict = {}
    mbs = list(microbatches(idx, sequences_per_microbatch))
    for k, mb in enumerate(mbs):
        with w.accumulate(last=k == len(mbs) - 1):
            logp, ent = policy_forward(w.train_model, *_inputs(batch, mb), pad_id, temperature, "grad" if alg.entropy_coef else "no_grad",
                                       share_prompts)
            m = batch.loss_mask[mb]
            old = batch.old_logp[mb] if batch.old_logp is not None else logp.detach()
            pl, st = policy_loss(alg.loss, logp, old, batch.advantages[mb], m, clip_low=alg.clip_low,
                                 clip_high=alg.clip_high, dual_clip=alg.dual_clip)
            if batch.is_weights is not None:  # decoupled PPO: the behaviour policy's importance weight
                pl = pl * batch.is_weights[mb]
            elif batch.fused_is is not None:  # decoupled, fused: pi_old is this pass's own (detached) logprobs
                wts, ist = off_policy_weights(old, batch.rollout_logp[mb], m, *batch.fused_is)
                pl = pl * wts
                st.update(ist)
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
                st.update(_mismatch(logp.detach(), batch.rollout_logp[mb], batch.sampled_mask[mb]))
            w.backward(loss)
        st["loss"] = loss.detach()
        _accumulate(total, st, float(m.sum()))
    return _finish(total, w.rt)


def off_policy_weights(old_logp: torch.Tensor, behavior_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                       mode: str = "truncate") -> tuple[torch.Tensor, dict]:
    """Decoupled PPO's per-token importance weights w = pi_old / pi_behaviour (Hilton et al. 2022,
    "Batch size-invariance for policy optimization"; AReaL, Fu et al. 2025): the proximal policy
    pi_old is the trainer's policy before this update, pi_behaviour the (older) weights that sampled
    the tokens. ``truncate``: min(w, cap) (truncated importance sampling, as IMPALA's V-trace and
    verl's rollout correction); ``mask``: tokens with w > cap get weight 0 (they stay in the loss's
    normalizer). 0 off `mask`. Returns (weights, stats: ``offpolicy/is_mean``, ``is_max`` over the
    valid tokens before truncation, ``is_truncated_share``)."""
    if mode not in ("truncate", "mask"):
        raise ValueError(f"is_mode must be 'truncate' or 'mask', got {mode!r}")
    m = mask.to(old_logp.dtype)
    w = torch.exp((old_logp - behavior_logp).clamp(max=30.0)) * m
    over = (w > cap) & mask.bool()
    out = w.clamp(max=cap) if mode == "truncate" else torch.where(over, torch.zeros_like(w), w)
    n = m.sum().clamp_min(1)
    return out, {"offpolicy/is_mean": float((w * m).sum() / n), "offpolicy/is_max": float(w.max()) if w.numel() else 0.0,
                 "offpolicy/is_truncated_share": float(over.sum() / n)}


def _mismatch(trainer_logp, rollout_logp, mask) -> dict:
    diff = (trainer_logp - rollout_logp).abs()
    return {"rollout/logprob_abs_diff": masked_mean(diff, mask),
            "rollout/logprob_diff_max": torch.where(mask, diff, torch.zeros_like(diff)).max()}


def mismatch_stats(trainer_logp, batch: RolloutBatch) -> dict:
    return {k: float(v) for k, v in _mismatch(trainer_logp, batch.rollout_logp, batch.sampled_mask).items()}


def kl_shaped_rewards(alg: Algorithm, rewards, old_logp, ref_logp, token_mask):
    """KL in the reward: (rewards (N,), token_rewards (N, T) or None, mean per-token kl).

    Token-level estimators get per-token rewards -beta * kl_t (the outcome is added at the last token
    by the estimator); sequence-level ones get r - beta * sum_t kl_t.
    """
    kl = kl_estimate(old_logp, ref_logp, alg.kl_estimator) * token_mask
    mean = float(masked_mean(kl, token_mask))
    if estimator_needs(alg.estimator).token_rewards:
        return rewards, -alg.kl_coef * kl, mean
    return rewards - alg.kl_coef * kl.sum(-1), None, mean


def prm_token_rewards(token_rewards, step_scores, step_mask, coef: float, baseline: float):
    """Math-Shepherd's step-by-step PPO reward: ``coef * (score - baseline)`` at each step's last token,
    added to the token-level rewards (None: there is no other per-token reward). (N, T)."""
    dense = coef * (step_scores - baseline) * step_mask.to(step_scores.dtype)
    return dense if token_rewards is None else token_rewards + dense


def whiten(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(adv - mean) / (std + eps) over the valid tokens of the batch, 0 elsewhere (biased std)."""
    mean = masked_mean(adv, mask)
    std = masked_mean((adv - mean) ** 2, mask).sqrt()
    return (adv - mean) / (std + eps) * mask


def step_advantages(alg: Algorithm, batch: RolloutBatch, prm_coef: float = 1.0, prm_baseline: float = 0.5) -> dict:
    """(KL-shaped) rewards -> ``batch.advantages`` / ``batch.returns``; returns the step's metrics.

    KL in the reward uses the old-policy and reference logprobs (`kl_shaped_rewards`); PRM step scores
    enter the token rewards of estimators that take them, else as `process_advantages` beside the
    outcome advantage. ``whiten_advantages`` whitens over the trained tokens (PPO); a sequence-level
    advantage is first spread over its tokens (it used to be left unwhitened, silently).

    Multi-turn episodes: every mask here is the policy-token mask (`RolloutBatch.sampled_mask`), so
    env / tool tokens carry no KL and no advantage; a turn-level estimator (`EstimatorNeeds.turn_rewards`)
    gets the env's per-turn rewards in the token rewards and only the rest of the reward at the end;
    the others see the episode's (trajectory-level) reward.
    """
    m: dict = {}
    needs = estimator_needs(alg.estimator)
    steps = batch.step_scores is not None
    mask = batch.sampled_mask  # policy tokens: env / tool tokens of a multi-turn episode get no advantage
    rewards, token_rewards = batch.rewards, None
    if alg.kl_placement == "reward" and batch.ref_logp is not None:
        rewards, token_rewards, m["kl_in_reward"] = kl_shaped_rewards(alg, batch.rewards, batch.old_logp, batch.ref_logp, mask)
    if steps and needs.token_rewards:  # Math-Shepherd: step scores in the token-level reward
        token_rewards = prm_token_rewards(token_rewards, batch.step_scores, batch.step_mask, prm_coef, prm_baseline)
    if batch.token_rewards is not None and needs.turn_rewards:  # an env's per-turn rewards, where they happened
        stream = batch.token_rewards * mask
        token_rewards = stream if token_rewards is None else token_rewards + stream
        rewards = rewards - stream.sum(-1)  # the rest (penalties, KL) stays at the last token
    adv, ret = compute_advantages(
        alg.estimator, rewards, batch.group_ids, baseline_rewards=batch.baseline, values=batch.values,
        token_rewards=token_rewards, mask=mask, gamma=alg.gamma, lam=alg.lam,
    )
    if steps and not needs.token_rewards:  # DeepSeekMath process supervision beside the outcome advantage
        proc = process_advantages(batch.step_scores, batch.step_mask, batch.group_ids, mask=mask,
                                  scale_by_std=needs.process_std)
        adv = expand_to_tokens(adv, mask) + prm_coef * proc
        m["prm/advantage_abs_mean"] = float(masked_mean(proc.abs(), mask))
    if alg.whiten_advantages:
        adv = whiten(expand_to_tokens(adv, mask), batch.loss_mask)
    batch.advantages, batch.returns = adv, ret
    m["advantage_abs_mean"] = float(adv.abs().mean())
    return m


_GATHERED = ("completion", "token_mask", "loss_mask", "rollout_logp", "truncated", "rewards", "baseline", "step_scores",
             "step_mask", "policy_mask", "token_rewards", "old_logp", "ref_logp", "values")


def gather_batch(batch: RolloutBatch, rt) -> RolloutBatch:
    """The global batch of a data-parallel step from every rank's share (equal shares, padded to the
    same length): the per-sequence tensors concatenated in rank order, group ids made global. The
    Python lists (rows, prompts, completions) stay this rank's: the advantage estimators never read
    them. Every rank must call it."""
    import dataclasses

    groups = int(batch.group_ids.max()) + 1 if len(batch) else 0  # this rank's groups, as many on every rank
    fields = {name: rt.all_gather_cat(getattr(batch, name)) for name in _GATHERED if getattr(batch, name) is not None}
    return dataclasses.replace(batch, **fields, group_ids=rt.all_gather_cat(batch.group_ids + rt.rank * groups))


def global_step_advantages(alg: Algorithm, batch: RolloutBatch, rt, prm_coef: float = 1.0, prm_baseline: float = 0.5) -> dict:
    """`step_advantages` over the global batch (every batch statistic, such as PPO's whitening or
    REINFORCE++'s normalization, is over all ranks' sequences), this rank's share written back."""
    if not rt.distributed:
        return step_advantages(alg, batch, prm_coef, prm_baseline)
    full = gather_batch(batch, rt)
    m = step_advantages(alg, full, prm_coef, prm_baseline)
    n = len(batch)
    batch.advantages = full.advantages[rt.rank * n : (rt.rank + 1) * n]
    batch.returns = None if full.returns is None else full.returns[rt.rank * n : (rt.rank + 1) * n]
    return m


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
               sequences_per_microbatch: int, share_prompts: bool = True) -> dict:
    """Online DPO: backward the DPO loss of on-policy (best, worst) pairs, averaged over pairs."""
    w = worker_of(model)  # one process only (online DPO is refused under data parallelism)
    pairs = dpo_pairs(batch, idx)
    total: dict = {"pairs": 0.0}
    loss_fn = PREFERENCE_LOSSES.get("dpo")
    for chunk in microbatches(pairs, max(1, sequences_per_microbatch // 2)):
        mb = [c for c, _ in chunk] + [r for _, r in chunk]
        logp, _ = policy_forward(w.train_model, *_inputs(batch, mb), pad_id, temperature, "none", share_prompts)
        m = batch.loss_mask[mb]
        seq = (logp * m).sum(-1)
        ref = (batch.ref_logp[mb] * m).sum(-1)
        k = len(chunk)
        lp = PreferenceLogps(chosen_logps=seq[:k], rejected_logps=seq[k:], ref_chosen_logps=ref[:k], ref_rejected_logps=ref[k:])
        loss, st = loss_fn(lp, beta=alg.dpo_beta)
        loss = loss.sum() / len(pairs)
        w.backward(loss)
        st = {"dpo/" + key: v.mean() for key, v in st.items()}
        st.update(loss=loss.detach(), pairs=float(k))
        _accumulate(total, st, float(k))
    return _finish(total)


def update_value(critic, batch: RolloutBatch, idx: list[int], alg: Algorithm, pad_id: int,
                 sequences_per_microbatch: int, max_grad_norm: float, step: int = 0) -> dict:
    """One critic optimizer step (`critic`: its `PolicyWorker`) on the clipped value loss towards the
    GAE returns, normalized by the global token count."""
    critic.model.train()
    n_tok = critic.rt.all_reduce_sum(batch.loss_mask[idx].sum()).clamp_min(1)
    total: dict = {}
    mbs = list(microbatches(idx, sequences_per_microbatch))
    for k, mb in enumerate(mbs):
        with critic.accumulate(last=k == len(mbs) - 1):
            values = critic.train_model(*_inputs(batch, mb), pad_id)
            m = batch.loss_mask[mb]
            vl, st = value_loss(values, batch.values[mb], batch.returns[mb], m, clip=alg.value_clip)
            loss = alg.vf_coef * aggregate(vl, m, "token-mean", num_tokens=n_tok)
            critic.backward(loss)
        st["value_loss"] = loss.detach()
        _accumulate(total, st, float(m.sum()))
    try:
        norm, _ = critic.step(step, float(total.get("value_loss", 0.0)), max_grad_norm)
    except FloatingPointError as e:
        raise FloatingPointError(f"critic: {e}") from None
    return {**_finish(total, critic.rt), "value_grad_norm": norm}


# ----------------------------------------------------------------------------------------------
# update kinds


@dataclass(frozen=True)
class UpdateSpec:
    """How one optimizer step's forward passes are laid out (the same for every update kind)."""

    pad_id: int
    temperature: float
    sequences_per_microbatch: int
    max_new_tokens: int
    share_prompts: bool = True


@dataclass(frozen=True)
class UpdateKind:
    """One way to turn a rollout batch into a gradient, and what it needs from the step.

    backward(model, batch, idx, alg, spec) -> stats: one optimizer step's gradient over sequences `idx`.
    losses: the registry `Algorithm.loss` is looked up in (None: the kind's own name is the loss).
    advantages: the step computes advantages (the estimator runs and is validated); False: the update
      reads the rewards itself.
    reference: a frozen reference model is needed whatever the KL settings.
    min_samples_per_prompt / why: the group size below which the kind cannot work, and the reason.
    whole_groups: mini-batches are cut over whole groups in batch order, not over shuffled sequences.
    fuses_old_logp: with one optimizer step per rollout and no KL in the reward, the old-policy
      logprobs are the update's own detached logprobs (a no-grad pass saved).
    dense_rewards: accepts PRM step scores (``rl.prm_model``).
    group_signal: learns only from reward differences inside a group, whatever the estimator.
    """

    backward: Callable[..., dict]
    losses: Registry | None = None
    advantages: bool = True
    reference: bool = False
    min_samples_per_prompt: int = 1
    why: str = ""
    whole_groups: bool = False
    fuses_old_logp: bool = True
    dense_rewards: bool = True
    group_signal: bool = False


UPDATE_KINDS: Registry[UpdateKind] = Registry("RL update kind")


def _policy_backward(model, batch, idx, alg, spec: UpdateSpec) -> dict:
    return update_policy(model, batch, idx, alg, spec.pad_id, spec.temperature, spec.sequences_per_microbatch,
                         spec.max_new_tokens, share_prompts=spec.share_prompts)


def _dpo_backward(model, batch, idx, alg, spec: UpdateSpec) -> dict:
    return update_dpo(model, batch, idx, alg, spec.pad_id, spec.temperature, spec.sequences_per_microbatch,
                      share_prompts=spec.share_prompts)


UPDATE_KINDS.register("policy")(UpdateKind(_policy_backward, losses=POLICY_LOSSES))
UPDATE_KINDS.register("dpo")(UpdateKind(
    _dpo_backward, advantages=False, reference=preference_needs("dpo").reference, min_samples_per_prompt=2,
    why="a pair per prompt", whole_groups=True, fuses_old_logp=False, dense_rewards=False, group_signal=True))


def update_kind(loss: str) -> UpdateKind:
    """The kind registered under `loss` (``dpo``: online DPO), else the policy-gradient kind (`loss` is
    then a `POLICY_LOSSES` name)."""
    return UPDATE_KINDS.get(loss if loss in UPDATE_KINDS else "policy")


def health_warnings(m: dict, alg: Algorithm, min_entropy: float, max_kl: float) -> list[str]:
    """'kind: message' for each sign in the step's metrics that the run cannot learn or is breaking."""
    out = []
    trunc = m.get("truncated_share", 0.0)
    if trunc >= 0.999:
        out.append("truncation: every completion hit max_new_tokens; rewards rarely see an answer (raise rl.max_new_tokens)")
    elif trunc >= 0.5:
        out.append(f"truncation: {trunc:.0%} of completions hit max_new_tokens")
    group_based = alg.update.group_signal or estimator_needs(alg.estimator).groups
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
