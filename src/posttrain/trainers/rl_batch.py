"""Typed data of the online RL step and the pieces that fill it: rollout groups, rewards, batched
forward passes (policy logprobs, reference logprobs, critic values).

Shapes: N sequences (prompts_per_step * samples_per_prompt), T = the longest completion in the
batch. Token ids go from the rollout engine into `RolloutBatch.completion` unchanged; the trainer
never decodes and re-encodes them. Sequences are laid out as [left-padded prompt | right-padded
completion] with position ids from the attention mask, the layout the HF engine sampled with, so
logits at positions P-1 .. P+T-2 score the T completion tokens. The policy and reference passes run
each distinct prompt once and its samples on its KV cache (`completion_logits`; Prefix Grouper,
Liu et al. 2025, "Efficient GRPO Training through Shared-Prefix Forward"); the same logits and
gradients as the full layout, with the prompt computed once per group. Departure from the paper:
it regroups attention inside one forward; here the prompt pass's cache is gathered to the rows, two
Hugging Face forwards, so it works for any causal LM with a cache (peft-wrapped ones included).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from posttrain.data import Example
from posttrain.ops import entropy_from_logits, token_logprobs
from posttrain.rewards import combine_rewards, countdown_reward, exact_match, make_format_reward, math_reward
from posttrain.rewards.base import RewardOutput
from posttrain.rewards.prm import dense_step_rewards, prm_step_rewards
from posttrain.rollout import Completion


@dataclass
class RolloutBatch:
    """N completions of G prompts (each prompt's completions share a group id).

    prompt_ids: N lists of prompt token ids; completion: (N, T) long, pad where token_mask is 0.
    token_mask: (N, T) bool, generated tokens; loss_mask: (N, T) bool, tokens that are trained
      (token_mask minus truncated completions when those are masked).
    rollout_logp: (N, T) float, the engine's sampling logprobs.
    truncated: (N,) bool, hit max_new_tokens. group_ids: (N,) long.
    rewards: (N,) the combined reward; baseline: (N,) greedy-rollout reward (ReMax) or None.
    step_scores / step_mask: (N, T) float / bool, a process reward model's score (probability that the
      step is correct) at each step's last token, when the trainer has a PRM; None otherwise.
    policy_mask: (N, T) bool, the tokens the policy sampled (multi-turn: env / tool tokens are False;
      they are context, never trained); None: all of token_mask. loss_mask already excludes them.
    token_rewards: (N, T) float, an environment's per-turn rewards at each turn's last token (sums
      to rewards); None for single-turn prompts.
    Filled later in the step: old_logp / ref_logp / values (N, T), advantages (N,) or (N, T), returns,
    is_weights (N, T) under the decoupled off-policy correction.
    """

    rows: list[Example]
    prompt_ids: list[list[int]]
    completions: list[Completion]
    completion: torch.Tensor
    token_mask: torch.Tensor
    loss_mask: torch.Tensor
    rollout_logp: torch.Tensor
    truncated: torch.Tensor
    group_ids: torch.Tensor
    rewards: torch.Tensor
    baseline: torch.Tensor | None = None
    step_scores: torch.Tensor | None = None
    step_mask: torch.Tensor | None = None
    policy_mask: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None  # (N, T) decoupled PPO: pi_old / pi_behaviour per token (truncated), or None
    fused_is: tuple[float, str] | None = None  # decoupled PPO, fused: (is_cap, is_mode); the weights come from the loss pass
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def sampled_mask(self) -> torch.Tensor:
        """The policy-sampled tokens: `policy_mask`, or `token_mask` when there is none."""
        return self.token_mask if self.policy_mask is None else self.policy_mask


def prompt_text(ex: Example) -> str:
    return ex.prompt if isinstance(ex.prompt, str) else "\n".join(m["content"] for m in ex.prompt)


def is_empty_prompt(ex: Example) -> bool:
    return ex.prompt is None or not prompt_text(ex).strip()


def reward_columns(rows: list[Example], completions: list[Completion]) -> dict[str, list]:
    """Dataset columns aligned with completions: answer, extra row fields, token lengths and ids."""
    cols: dict[str, list] = {"answer": [ex.answer for ex in rows]}
    for key in {k for ex in rows for k in ex.extra}:
        cols[key] = [ex.extra.get(key) for ex in rows]
    cols["completion_lengths"] = [len(c.token_ids) for c in completions]
    cols["completion_ids"] = [list(c.token_ids) for c in completions]  # TRL's keyword for the rollout's ids
    return cols


def score(reward_fns, rows: list[Example], completions: list[Completion], timeout_s: float,
          trl_shapes: bool = True) -> RewardOutput:
    """Every reward function on the completions of `rows` (`rewards.base.combine_rewards`).

    Built-in rewards read text. With `trl_shapes` the user's functions get TRL's shapes: for a row
    whose prompt is a message list, ``prompts[i]`` is that list as given and ``completions[i]`` is
    ``[{"role": "assistant", "content": text}]``; plain-text rows stay text. The trainer turns it off
    for built-in tasks (``task:NAME``), whose prompts are message lists only to get the chat
    template: the user gave no messages, and their functions read text."""
    prompts, texts = [prompt_text(ex) for ex in rows], [c.text for c in completions]
    trl_prompts = trl_completions = None
    if trl_shapes and any(isinstance(ex.prompt, list) for ex in rows):
        chat = [isinstance(ex.prompt, list) for ex in rows]
        trl_prompts = [ex.prompt if is_chat else p for ex, p, is_chat in zip(rows, prompts, chat)]
        trl_completions = [[{"role": "assistant", "content": t}] if is_chat else t for t, is_chat in zip(texts, chat)]
    return combine_rewards(reward_fns, prompts, texts, reward_columns(rows, completions), timeout_s=timeout_s,
                           trl_prompts=trl_prompts, trl_completions=trl_completions)


def load_prm_scorer(path: str, step_sep: str, batch_size: int, max_length: int):
    """(PRMScorer, step separator) for a PRM folder written by `posttrain prm`; the PRM is frozen.
    An empty `step_sep` means the separator the PRM was trained with."""
    from posttrain.models.prm import PRMScorer, load_prm

    prm, tok = load_prm(path)
    for p in prm.parameters():
        p.requires_grad_(False)
    return PRMScorer(prm, tok, batch_size=batch_size, max_length=max_length), step_sep or prm.step_sep


def prm_step_scores(scorer, batch: RolloutBatch, tokenizer, step_sep: str) -> dict:
    """Score every step of every completion with a PRM; fills batch.step_scores / step_mask, returns metrics.

    Steps are cut from the engine's token ids with the policy's tokenizer (`rewards.prm.prm_step_rewards`);
    raises if the PRM returns a non-finite score (the caller treats any failure as "no dense reward").
    """
    steps = prm_step_rewards(scorer, [ex.prompt for ex in batch.rows], [c.text for c in batch.completions],
                             [c.token_ids for c in batch.completions], tokenizer, step_sep)
    scores, step_mask = dense_step_rewards(steps, batch.completion.shape[1])
    if not torch.isfinite(scores).all():
        raise FloatingPointError(f"PRM returned non-finite step scores ({int((~torch.isfinite(scores)).sum())} of them)")
    n_steps = step_mask.sum(-1)
    batch.step_scores, batch.step_mask = scores, step_mask
    out = {"prm/steps_per_completion": float(n_steps.float().mean()),
           "prm/no_step_completions": int((n_steps == 0).sum())}
    if step_mask.any():
        out["prm/step_score_mean"] = float(scores[step_mask].mean())
    return out


def make_task_reward(task) -> Callable:
    """The task's verifier as a reward: 1 / 0, None when no answer can be extracted."""
    extract = getattr(task, "extract", None)
    if extract is None and task.name == "countdown":
        from posttrain.rewards.countdown import extract_equation as extract

    def task_reward(prompts, completions, *, answer, **_columns):
        return [None if extract is not None and extract(c) is None else float(task.verify(c, a))
                for c, a in zip(completions, answer, strict=True)]

    task_reward.__name__ = f"{task.name}_verifier"
    return task_reward


NAMED_REWARDS: dict[str, Callable[[], Callable]] = {
    "math": lambda: math_reward,
    "format": make_format_reward,
    "countdown": lambda: countdown_reward,
    "exact": lambda: exact_match,
    "code": lambda: __import__("posttrain.rewards.code", fromlist=["code_reward"]).code_reward,  # sandboxed tests
}


def build_reward_fns(names: str, weights: dict, task) -> list[tuple[Callable, float]]:
    """`names` ('math,format'), or empty: the task's verifier for built-in tasks, math otherwise."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        return [(make_task_reward(task), 1.0)] if task is not None else [(math_reward, 1.0)]
    unknown = [n for n in chosen if n not in NAMED_REWARDS and n != "task"]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known: task, {', '.join(NAMED_REWARDS)}")
    if "task" in chosen and task is None:
        raise ValueError("reward 'task' needs a built-in task as data (task:NAME)")
    return [(make_task_reward(task) if n == "task" else NAMED_REWARDS[n](), float(weights.get(n, 1.0))) for n in chosen]


def collate_completions(completions: list[Completion], pad_id: int, mask_truncated: bool, length: int | None = None):
    """(completion ids, token_mask, loss_mask, rollout logprobs, truncated) padded to the longest (or
    to `length`: a data-parallel rank pads its share as long as the longest of every rank).

    token_mask: the tokens that exist (attended); loss_mask: those trained, which excludes tokens a
    tool or an environment injected (`Completion.token_mask` 0, see `policy_mask`)."""
    T = length or max(1, max(len(c.token_ids) for c in completions))
    ids = torch.tensor([c.token_ids + [pad_id] * (T - len(c.token_ids)) for c in completions], dtype=torch.long)
    lp = torch.tensor([list(c.logprobs) + [0.0] * (T - len(c.logprobs)) for c in completions], dtype=torch.float32)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor([len(c.token_ids) for c in completions]).unsqueeze(1)
    truncated = torch.tensor([c.finish_reason == "length" for c in completions], dtype=torch.bool)
    loss_mask = mask & ~truncated.unsqueeze(-1) if mask_truncated else mask.clone()
    sampled = policy_mask(completions, T)
    if sampled is not None:
        loss_mask &= sampled
    return ids, mask, loss_mask, lp, truncated


def policy_mask(completions: list[Completion], T: int) -> torch.Tensor | None:
    """(N, T) bool, True on policy-sampled tokens (`Completion.mask()`); None when every token is."""
    masks = [c.mask() for c in completions]
    if all(all(m) for m in masks):
        return None
    return torch.tensor([[bool(x) for x in m] + [False] * (T - len(m)) for m in masks], dtype=torch.bool)


def token_reward_stream(completions: list[Completion], T: int) -> torch.Tensor | None:
    """(N, T) per-token rewards of multi-turn episodes (`Episode.token_rewards`); None when none has one."""
    if not any(hasattr(c, "token_rewards") for c in completions):
        return None
    rows = [list(c.token_rewards()) if hasattr(c, "token_rewards") else [0.0] * len(c.token_ids) for c in completions]
    return torch.tensor([r + [0.0] * (T - len(r)) for r in rows], dtype=torch.float32)


def _left_padded(prompt_ids: list[list[int]], pad_id: int):
    """(ids, attention_mask) of the prompts left-padded to the longest, both (b, P) long."""
    P = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompt_ids], dtype=torch.long)
    attn = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompt_ids], dtype=torch.long)
    return ids, attn


def _layout(prompt_ids: list[list[int]], completion: torch.Tensor, token_mask: torch.Tensor, pad_id: int):
    """input_ids, attention_mask, position_ids of [left-padded prompt | completion] and P."""
    p_ids, p_attn = _left_padded(prompt_ids, pad_id)
    ids = torch.cat([p_ids, torch.where(token_mask, completion, torch.full_like(completion, pad_id))], dim=1)
    attn = torch.cat([p_attn, token_mask.long()], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    return ids, attn, pos, p_ids.shape[1]


def _full_logits(model, prompt_ids, completion, token_mask, pad_id: int) -> torch.Tensor:
    ids, attn, pos, P = _layout(prompt_ids, completion, token_mask, pad_id)
    T = completion.shape[1]  # only the last T + 1 positions' logits are needed (no LM head on the prompt)
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits[:, :T]


def completion_logits(model, prompt_ids, completion, token_mask, pad_id: int, share_prompts: bool = True) -> torch.Tensor:
    """(b, T, V) logits that score the T completion tokens (position t's logits predict token t).

    With ``share_prompts`` and rows that repeat a prompt (a GRPO group), each distinct prompt is run
    once and its KV cache is gathered to its rows before the completions are run on top of it
    (shared-prefix forward, as in Prefix Grouper, Liu et al. 2025). A causal model's prompt states do
    not depend on what follows, so the logits are those of the full [prompt | completion] pass, and
    autograd sums each row's gradient into the one prompt pass: the gradient is the same too (tested).
    The prompt's tokens are computed once per group instead of once per sample.
    """
    T = completion.shape[1]
    index: dict[tuple, int] = {}
    rows = [index.setdefault(tuple(p), len(index)) for p in prompt_ids]
    if not share_prompts or len(index) == len(rows):
        return _full_logits(model, prompt_ids, completion, token_mask, pad_id)
    ids, attn = _left_padded(list(index), pad_id)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    past = out.past_key_values
    if past is None:  # the model gave no cache (e.g. gradient checkpointing turns it off): no sharing
        return _full_logits(model, prompt_ids, completion, token_mask, pad_id)
    sel = torch.tensor(rows, dtype=torch.long)
    first = out.logits[:, -1][sel].unsqueeze(1)
    if T == 1:
        return first
    past.batch_select_indices(sel)  # differentiable gather: rows of a group share their prompt's states
    c_ids = torch.where(token_mask, completion, torch.full_like(completion, pad_id))[:, : T - 1]
    c_attn = torch.cat([attn[sel], token_mask[:, : T - 1].long()], dim=1)
    c_pos = pos[sel, -1:] + 1 + torch.arange(T - 1).unsqueeze(0)
    rest = model(input_ids=c_ids, attention_mask=c_attn, position_ids=c_pos, past_key_values=past, use_cache=True).logits
    return torch.cat([first, rest], dim=1)


def policy_forward(model, prompt_ids, completion, token_mask, pad_id: int, temperature: float, entropy: str = "no_grad",
                   share_prompts: bool = True):
    """(logp (b, T), entropy (b, T) or None) of the completion tokens under logits / temperature.

    entropy: "grad" (for an entropy bonus), "no_grad" (for logging) or "none".
    """
    logits = completion_logits(model, prompt_ids, completion, token_mask, pad_id, share_prompts).float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = token_logprobs(logits, completion)
    if entropy == "none":
        return logp, None
    if entropy == "grad":
        return logp, entropy_from_logits(logits)
    with torch.no_grad():
        return logp, entropy_from_logits(logits.detach())


class ValueModel(torch.nn.Module):
    """A critic: a copy of the policy's backbone (LoRA merged) with a zero-initialized scalar head."""

    def __init__(self, policy):
        super().__init__()
        base = copy.deepcopy(policy)
        if hasattr(base, "merge_and_unload") and hasattr(base, "peft_config"):
            base = base.merge_and_unload()
        self.backbone = base.get_decoder()
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self.head = torch.nn.utils.skip_init(torch.nn.Linear, base.config.hidden_size, 1)  # zeros below: no draw from the RNG
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, prompt_ids, completion, token_mask, pad_id: int) -> torch.Tensor:
        """(b, T) value of the state before each completion token."""
        ids, attn, pos, P = _layout(prompt_ids, completion, token_mask, pad_id)
        hidden = self.backbone(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
        T = completion.shape[1]
        return self.head(hidden[:, P - 1 : P + T - 1].float()).squeeze(-1)


def microbatches(indices: list[int], size: int):
    for s in range(0, len(indices), max(1, size)):
        yield indices[s : s + size]


@torch.no_grad()
def batched_no_grad(fn, batch: RolloutBatch, size: int) -> torch.Tensor:
    """Run fn(prompt_ids, completion, token_mask) -> (b, T) over micro-batches and concatenate."""
    parts = []
    for idx in microbatches(list(range(len(batch))), size):
        parts.append(fn([batch.prompt_ids[i] for i in idx], batch.completion[idx], batch.token_mask[idx]).float())
    return torch.cat(parts)
