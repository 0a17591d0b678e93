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
        # Token bookkeeping stays in tensors: one (B, max_new_tokens) buffer, a `done` mask, and
        # the length of each completion; Python loops over rows only for stop strings.
        tokens = torch.full((B, params.max_new_tokens), pad, dtype=torch.long)
        logps = torch.zeros((B, params.max_new_tokens))
        lengths = torch.zeros(B, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        stop_hit: list[str | None] = [None] * B
        for t in range(params.max_new_tokens):
            tok, lp = self._sample(logits, params, gen)
            live = ~done
            tokens[live, t] = tok[live]
            logps[live, t] = lp[live]
            lengths += live.long()
            if eos is not None:
                done |= live & (tok == eos)
            if params.stop:
                for b in live.nonzero().flatten().tolist():
                    if done[b]:
                        continue
                    tail = self.tokenizer.decode(tokens[b, max(0, t - 15) : t + 1].tolist(), skip_special_tokens=True)
                    hit = next((s for s in params.stop if tail.endswith(s)), None)
                    if hit is not None:
                        done[b], stop_hit[b] = True, hit
            if bool(done.all()) or t == params.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=tok.view(B, 1), attention_mask=mask, position_ids=last_pos.view(B, 1),
                past_key_values=past, use_cache=True,
            )
            past, logits = out.past_key_values, out.logits[:, -1].float()
        token_lists, lp_lists, done_list = tokens.tolist(), logps.tolist(), done.tolist()
        texts = self.tokenizer.batch_decode([token_lists[b][: int(lengths[b])] for b in range(B)], skip_special_tokens=True)
        return [
            Completion(
                token_ids=token_lists[b][: int(lengths[b])], logprobs=lp_lists[b][: int(lengths[b])],
                finish_reason="stop" if done_list[b] else "length", text=texts[b], stop_reason=stop_hit[b],
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
