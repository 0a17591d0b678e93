"""Rollouts with a Hugging Face causal LM: batched, left-padded, KV-cached sampling.

A plain decode loop rather than `model.generate`, so that the sampling logprobs, stop strings and
seeding are ours and exact: position ids come from the attention mask (left padding safe), each
sampled token's logprob is taken under the temperature-scaled distribution (the one the trainer
recomputes), and greedy decoding reports logprobs at temperature 1.
"""
from __future__ import annotations

from typing import Sequence

import torch

from posttrain.rollout.base import Completion, SamplingParams


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


class HFEngine:
    """RolloutEngine over the live policy module (weights are shared, so it is always on-policy)."""

    def __init__(self, model, tokenizer, sequences_per_batch: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.sequences_per_batch = sequences_per_batch

    def update_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        flat = [list(p) for p in prompts for _ in range(params.n)]
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))  # less padding per batch
        results: list[Completion | None] = [None] * len(flat)
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(order), self.sequences_per_batch):
                idx = order[s : s + self.sequences_per_batch]
                for i, c in zip(idx, self._generate_batch([flat[i] for i in idx], params, gen)):
                    results[i] = c
        finally:
            self.model.train(was_training)
        return [results[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _generate_batch(self, prompts, params: SamplingParams, gen) -> list[Completion]:
        B, P = len(prompts), max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = self.tokenizer.eos_token_id
        ids = torch.full((B, P), pad, dtype=torch.long)
        mask = torch.zeros((B, P), dtype=torch.long)
        for b, p in enumerate(prompts):
            if not p:
                raise ValueError("empty prompt (no tokens) given to the rollout engine")
            ids[b, P - len(p) :] = torch.tensor(p)
            mask[b, P - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        past, last_pos = out.past_key_values, pos[:, -1]
        logits = out.logits[:, -1].float()
        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        reason: list[str | None] = [None] * B
        stop_hit: list[str | None] = [None] * B
        for _ in range(params.max_new_tokens):
            tok, lp = self._sample(logits, params, gen)
            for b in range(B):
                if reason[b] is None:
                    tokens[b].append(int(tok[b]))
                    logps[b].append(float(lp[b]))
                    if eos is not None and tokens[b][-1] == eos:
                        reason[b] = "stop"
                    elif params.stop:
                        tail = self.tokenizer.decode(tokens[b][-16:], skip_special_tokens=True)
                        hit = next((s for s in params.stop if tail.endswith(s)), None)
                        if hit is not None:
                            reason[b], stop_hit[b] = "stop", hit
            if all(r is not None for r in reason):
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=tok.view(B, 1), attention_mask=mask, position_ids=last_pos.view(B, 1),
                past_key_values=past, use_cache=True,
            )
            past, logits = out.past_key_values, out.logits[:, -1].float()
        return [
            Completion(
                token_ids=tokens[b], logprobs=logps[b], finish_reason=reason[b] or "length",
                text=self.tokenizer.decode(tokens[b], skip_special_tokens=True), stop_reason=stop_hit[b],
            )
            for b in range(B)
        ]

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams, gen):
        if params.temperature <= 0:
            tok = logits.argmax(-1)
            return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
        scaled = logits / params.temperature
        logp = torch.log_softmax(scaled, -1)
        probs = _top_p_filter(scaled, params.top_p).softmax(-1)
        tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
