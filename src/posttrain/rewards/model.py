"""A trained reward model as a reward function: batch-scores (prompt, completion) pairs.

`RewardModelScorer(folder)` loads an `AutoModelForSequenceClassification` folder (what `posttrain
rm` writes to ``OUT/model``) and its tokenizer. It tokenizes exactly as the trainer does (prompt ids
from the chat template or the text, then the completion with EOS / end-of-turn), so a pair gets the
score it would get in training. It is both

- a reward function in the `posttrain.rewards.base` interface:
  ``scorer(prompts, completions, **columns) -> list[float]`` (for RL and `combine_rewards`), and
- a search scorer: ``scorer.score(prompt, completions) -> list[float]`` (best-of-N).

Prompts must be in the style the reward model was trained on: a list of {role, content} messages for
conversational data, a string for plain text. Sequences are sorted by length before batching so each
batch pads little; scores come back in the input order.
"""
from __future__ import annotations

from pathlib import Path

import torch


class RewardModelScorer:
    __name__ = "reward_model"

    def __init__(self, model, tokenizer=None, *, sequences_per_batch: int = 32, max_length: int = 1024):
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from posttrain.models import attention

            folder = Path(model)
            if not (folder / "config.json").exists():
                raise FileNotFoundError(f"{folder}: not a reward model folder (no config.json)")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder)
            model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation=attention.register())
        if tokenizer is None:
            raise ValueError("RewardModelScorer needs a tokenizer when given a model object")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"a reward model has one output (num_labels=1), this one has {model.config.num_labels}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.sequences_per_batch, self.max_length = sequences_per_batch, max_length

    def _encode(self, prompt, completion) -> tuple[list[int], list[int]]:
        from posttrain.data import encode_prompt
        from posttrain.sequences import tokenize_response, truncate_pair

        p, c, _ = truncate_pair(encode_prompt(self.tokenizer, prompt), tokenize_response(self.tokenizer, prompt, completion), self.max_length)
        return p, c

    @torch.no_grad()
    def score_pairs(self, prompts: list, completions: list) -> list[float]:
        """One scalar reward per (prompt, completion), in input order."""
        from posttrain.sequences import sequence_batch

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        encoded = [self._encode(p, c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
        out = [0.0] * len(encoded)
        device = next(self.model.parameters()).device
        for s in range(0, len(order), self.sequences_per_batch):
            idx = order[s : s + self.sequences_per_batch]
            batch = sequence_batch([encoded[i][0] for i in idx], [encoded[i][1] for i in idx], self.tokenizer.pad_token_id)
            r = self.model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False).logits[:, 0]
            for i, v in zip(idx, r.float().tolist()):
                out[i] = v
        return out

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        return self.score_pairs(list(prompts), list(completions))

    def score(self, prompt, completions: list) -> list[float]:
        return self.score_pairs([prompt] * len(completions), list(completions))
