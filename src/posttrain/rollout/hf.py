"""Rollouts with a Hugging Face causal LM: batched, left-padded, KV-cached sampling.

A plain decode loop rather than `model.generate`, so that the sampling logprobs, stop strings and
seeding are ours and exact: position ids come from the attention mask (left padding safe), each
sampled token's logprob is taken under the temperature-scaled distribution (the one the trainer
recomputes), and greedy decoding reports logprobs at temperature 1.

Two things keep the loop cheap, as in vLLM's scheduler but without its machinery:
- prefix sharing: a prompt's ``n`` completions share one prefill; its KV cache is repeated ``n``
  times afterwards (prompts are batched whole, ``sequences_per_batch // n`` at a time);
- finished rows leave the batch: when a completion ends (EOS or a stop string), its row is dropped
  from the KV cache, so a long completion does not keep its finished neighbours decoding.
Sampling draws one uniform per original row and step (inverse CDF), so which rows are still in the
batch never changes what another row samples.

The forward passes go through `posttrain.models.fast.LeanDecoder` (fused projections, a preallocated
KV cache, no per-step mask building) when the model is a plain Llama/Qwen2/Mistral; any other model
(a peft-wrapped policy, another architecture, ``lean=False``) runs the Hugging Face forward with its
dynamic cache. Both give the same tokens (tested).
"""
from __future__ import annotations

from typing import Sequence

import torch

from posttrain.models import fast
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
    """RolloutEngine over a Hugging Face module. Colocated with the trainer it holds the live policy
    module, so `update_weights` with that module's `PolicyWeights` only records the version (no copy);
    any other weights are loaded into its module by name (strict: a missing or unknown name is an error)."""

    def __init__(self, model, tokenizer, sequences_per_batch: int = 64, lean: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.sequences_per_batch = sequences_per_batch
        self.lean = lean
        self.version = 0

    def update_weights(self, named_weights, version: int) -> None:
        if getattr(named_weights, "source", None) is not self.model:
            from posttrain.rollout.vllm import _plain_model

            target = _plain_model(self.model)
            if target is not self.model:
                raise ValueError("HFEngine over a LoRA module takes only that module's own PolicyWeights")
            state = dict(named_weights)
            missing = set(target.state_dict()) - set(state)
            unknown = set(state) - set(target.state_dict())
            if missing or unknown:
                raise ValueError(f"update_weights: missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]}")
            with torch.no_grad():
                for k, v in target.state_dict().items():
                    v.copy_(state[k])
        self.version = int(version)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"empty prompt (no tokens) at index {i} given to the rollout engine")
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        if params.seeds is not None and len(params.seeds) != len(prompts):
            raise ValueError(f"SamplingParams.seeds has {len(params.seeds)} seeds for {len(prompts)} prompts")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
        results: list[list[Completion]] = [[] for _ in prompts]
        copies = min(params.n, self.sequences_per_batch)  # rows per prompt in one batch
        per_batch = max(1, self.sequences_per_batch // copies)
        was_training = self.model.training
        self.model.eval()
        # packed once per call: the live module may have been updated in place since the last call
        runner = fast.LeanDecoder(self.model) if self.lean and fast.supports(self.model) else _HFRunner(self.model)
        try:
            for s in range(0, len(order), per_batch):
                idx = order[s : s + per_batch]
                for done in range(0, params.n, copies):  # n > sequences_per_batch: a prompt in chunks
                    c = min(copies, params.n - done)
                    streams = None if params.seeds is None else [(params.seeds[i], done + k) for i in idx for k in range(c)]
                    comps = self._generate_batch(runner, [list(prompts[i]) for i in idx], c, params, gen, streams)
                    for j, i in enumerate(idx):
                        results[i].extend(comps[j * c : (j + 1) * c])
        finally:
            self.model.train(was_training)
        return results

    def _generate_batch(self, runner, prompts, copies: int, params: SamplingParams, gen, streams=None) -> list[Completion]:
        """`copies` completions of each prompt, prompt-major: row j * copies + k is prompt j's k-th.
        `streams`: (seed, copy) per row: the row's uniforms come from its own generator."""
        U, P = len(prompts), max(len(p) for p in prompts)
        B = U * copies
        uniforms = None
        if streams is not None and params.temperature > 0:
            uniforms = torch.stack([torch.rand(params.max_new_tokens, generator=torch.Generator().manual_seed(
                (int(seed) * 1_000_003 + int(k)) % (2**63 - 1))) for seed, k in streams])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = self.tokenizer.eos_token_id
        dev = next(self.model.parameters()).device  # the bookkeeping lives beside the model (no copy per token)
        ids = torch.full((U, P), pad, dtype=torch.long)
        mask = torch.zeros((U, P), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, P - len(p) :] = torch.tensor(p)
            mask[b, P - len(p) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        if uniforms is not None:
            uniforms = uniforms.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = runner.prefill(ids, mask, pos, capacity=P + params.max_new_tokens)
        last_pos = pos[:, -1]
        if copies > 1:  # one prefill per prompt, its cache shared by the prompt's completions
            runner.repeat_rows(copies)
            mask, last_pos, logits = (x.repeat_interleave(copies, dim=0) for x in (mask, last_pos, logits))
        # Token bookkeeping stays in tensors indexed by the original row; `rows` maps the rows still
        # in the batch to it. Python loops over rows only for stop strings.
        tokens = torch.full((B, params.max_new_tokens), pad, dtype=torch.long, device=dev)
        logps = torch.zeros((B, params.max_new_tokens), device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        stop_hit: list[str | None] = [None] * B
        rows = torch.arange(B, device=dev)
        for t in range(params.max_new_tokens):
            tok, lp = self._sample(logits, params, gen, rows, B, None if uniforms is None else uniforms[rows, t])
            tokens[rows, t], logps[rows, t] = tok, lp
            lengths[rows] += 1
            fin = tok == eos if eos is not None else torch.zeros_like(tok, dtype=torch.bool)
            if params.stop:
                for j, b in enumerate(rows.tolist()):
                    if fin[j]:
                        continue
                    tail = self.tokenizer.decode(tokens[b, max(0, t - 15) : t + 1].tolist(), skip_special_tokens=True)
                    hit = next((s for s in params.stop if tail.endswith(s)), None)
                    if hit is not None:
                        fin[j], stop_hit[b] = True, hit
            done[rows[fin]] = True
            n_fin = int(fin.sum())  # the loop's one device-to-host read per token (on a GPU: one sync)
            if n_fin == len(fin) or t == params.max_new_tokens - 1:
                break
            if n_fin:  # drop finished rows from the batch and the KV cache
                keep = (~fin).nonzero().flatten()
                runner.select_rows(keep)
                rows, tok, mask, last_pos = rows[keep], tok[keep], mask[keep], last_pos[keep]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long, device=dev)], dim=1)
            last_pos = last_pos + 1
            logits = runner.decode(tok, mask, last_pos)
        token_lists, lp_lists, done_list, lengths = tokens.tolist(), logps.tolist(), done.tolist(), lengths.cpu()
        texts = self.tokenizer.batch_decode([token_lists[b][: int(lengths[b])] for b in range(B)], skip_special_tokens=True)
        return [
            Completion(
                token_ids=token_lists[b][: int(lengths[b])], logprobs=lp_lists[b][: int(lengths[b])],
                finish_reason="stop" if done_list[b] else "length", text=texts[b], stop_reason=stop_hit[b],
                token_mask=[1] * int(lengths[b]), policy_version=self.version,
            )
            for b in range(B)
        ]

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams, gen, rows: torch.Tensor, batch: int, u=None):
        """Sample one token per live row; `rows` are their original indices among `batch` rows; `u`:
        the rows' uniforms (per-row streams), else drawn from `gen`."""
        if params.temperature <= 0:
            tok = logits.argmax(-1)
            return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
        scaled = logits / params.temperature
        logp = torch.log_softmax(scaled, -1)
        cdf = _top_p_filter(scaled, params.top_p).softmax(-1).cumsum(-1)
        if u is None:
            u = torch.rand(batch, generator=gen).to(rows.device)[rows]  # every original row draws, live or not
        tok = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


class _HFRunner:
    """The Hugging Face forward with its dynamic cache (any causal LM, peft-wrapped ones included),
    behind the same calls as `fast.LeanDecoder`: prefill, decode, repeat_rows, select_rows."""

    def __init__(self, model):
        self.model, self.past = model, None

    def prefill(self, ids, mask, pos, capacity: int) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1].float()

    def decode(self, tok, mask, pos) -> torch.Tensor:
        out = self.model(input_ids=tok.view(-1, 1), attention_mask=mask, position_ids=pos.view(-1, 1),
                         past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1].float()

    def repeat_rows(self, copies: int) -> None:
        self.past.batch_repeat_interleave(copies)

    def select_rows(self, keep) -> None:
        self.past.batch_select_indices(keep)
