"""Process reward model: a causal-LM backbone with a linear head read at every step's separator token.

Lightman et al. 2023 ("Let's Verify Step by Step") score each step at a per-step position;
Math-Shepherd (Wang et al. 2024) reads the score at a step tag token. Here a solution is encoded as
``prompt ids + [step ids + sep ids] * S``: each step is tokenized on its own (no special tokens) and
followed by the ids of the separator string, and the head reads the backbone's last hidden state at
the last separator id of each step, giving one logit per step (log-odds that the step is correct).
Training, scoring in search and dense RL rewards all go through `encode_steps`, so the positions
are identical everywhere.

Departures: a scalar linear head on the hidden state (not two vocabulary logits "+"/"-" as in
Math-Shepherd); the backbone's LM head is not used (hidden states come from the base model, which
saves the vocabulary projection). Saved folders hold the backbone in Hugging Face format (loadable on
its own), the head (`prm_head.pt`) and `prm_config.json` (the separator).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "ProcessRewardModel", "EncodedSteps", "encode_steps", "collate_steps", "PRMScorer", "load_prm", "split_token_steps",
]


@dataclass
class EncodedSteps:
    input_ids: list[int]
    step_positions: list[int]  # index in input_ids of each step's score token (last separator id)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def prompt_ids(tokenizer, prompt, chat: bool) -> list[int]:
    """Prompt ids as the policy sees them: chat-rendered with the generation prompt, or plain text."""
    from posttrain.data import encode_prompt

    if chat and isinstance(prompt, str) and getattr(tokenizer, "chat_template", None) is not None:
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and getattr(tokenizer, "chat_template", None) is None:
        prompt = "\n".join(m["content"] for m in prompt)
    return encode_prompt(tokenizer, prompt)


def encode_steps(tokenizer, prompt, steps: Sequence[str], sep: str = "\n", chat: bool = True,
                 max_length: int | None = None) -> EncodedSteps:
    """Ids of prompt + steps, each step followed by `sep`; steps past `max_length` are dropped."""
    sep_ids = _ids(tokenizer, sep)
    if not sep_ids:
        raise ValueError(f"step separator {sep!r} encodes to no tokens")
    ids = prompt_ids(tokenizer, prompt, chat)
    positions = []
    for step in steps:
        part = _ids(tokenizer, step[: -len(sep)] if step.endswith(sep) else step) + sep_ids
        if max_length is not None and len(ids) + len(part) > max_length:
            break
        ids += part
        positions.append(len(ids) - 1)
    return EncodedSteps(ids, positions)


def split_token_steps(tokenizer, ids: list[int], sep: str) -> tuple[list[str], list[int]]:
    """Steps of a generated solution and the token index just after each step's separator.

    A step ends after the first token whose text contains `sep`; EOS is dropped. Token ids are the
    engine's, never re-tokenized: step k spans ids[ends[k-1]:ends[k]].
    """
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] == eos:
        ids = ids[:-1]
    ends = [j + 1 for j, t in enumerate(ids) if sep in tokenizer.decode([t])]
    if not ends or ends[-1] != len(ids):
        ends.append(len(ids))
    starts = [0] + ends[:-1]
    steps = [tokenizer.decode(ids[a:b], skip_special_tokens=True) for a, b in zip(starts, ends)]
    keep = [(s.rstrip("\n") if sep == "\n" else s.removesuffix(sep), e) for s, e in zip(steps, ends) if s.strip()]
    return [s for s, _ in keep], [e for _, e in keep]


def collate_steps(encoded: list[EncodedSteps], pad_id: int, labels: list[list[float]] | None = None) -> dict:
    """Right-padded batch: input_ids, attention_mask (B, T); step_positions, step_mask[, step_labels] (B, S)."""
    B = len(encoded)
    T = max(len(e.input_ids) for e in encoded)
    S = max(max(len(e.step_positions) for e in encoded), 1)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, S), dtype=torch.long)
    smask = torch.zeros((B, S), dtype=torch.bool)
    lab = torch.zeros((B, S), dtype=torch.float32)
    for b, e in enumerate(encoded):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
        att[b, : len(e.input_ids)] = 1
        n = len(e.step_positions)
        pos[b, :n] = torch.tensor(e.step_positions, dtype=torch.long)
        smask[b, :n] = True
        if labels is not None:
            lab[b, :n] = torch.tensor(labels[b][:n], dtype=torch.float32)
    out = {"input_ids": ids, "attention_mask": att, "step_positions": pos, "step_mask": smask}
    if labels is not None:
        out["step_labels"] = lab
    return out


class ProcessRewardModel(nn.Module):
    def __init__(self, lm, step_sep: str = "\n", chat: bool = True):
        super().__init__()
        self.lm = lm
        self.step_sep = step_sep
        self.chat = chat
        hidden = lm.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / hidden**0.5)
        nn.init.zeros_(self.head.bias)

    def backbone(self):
        return getattr(self.lm, self.lm.base_model_prefix, self.lm)

    def step_logits(self, input_ids, attention_mask, step_positions, step_mask=None) -> torch.Tensor:
        """(B, S) logits at `step_positions`; masked-out entries are whatever sits at index 0."""
        hidden = self.backbone()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        idx = step_positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        return self.head(hidden.gather(1, idx).to(self.head.weight.dtype)).squeeze(-1)

    def save_pretrained(self, path) -> None:
        path = Path(path)
        self.lm.save_pretrained(path)
        torch.save(self.head.state_dict(), path / "prm_head.pt")
        (path / "prm_config.json").write_text(json.dumps({"step_sep": self.step_sep, "chat": self.chat}))


def load_prm(path: str | Path):
    """(ProcessRewardModel, tokenizer) from a folder written by `save_pretrained` (or a trainer checkpoint)."""
    from posttrain.models.loading import ModelLoadError, load_model_and_tokenizer

    path = Path(path)
    if (path / "checkpoints" / "latest").exists():
        path = path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
    if not (path / "prm_head.pt").exists():
        raise ModelLoadError(f"{path}: not a PRM folder (no prm_head.pt); train one with `posttrain prm`")
    lm, tok = load_model_and_tokenizer(str(path))
    conf = json.loads((path / "prm_config.json").read_text())
    prm = ProcessRewardModel(lm, conf["step_sep"], conf.get("chat", True))
    prm.head.load_state_dict(torch.load(path / "prm_head.pt", weights_only=True))
    return prm.eval(), tok


class PRMScorer:
    """`search.PrmScorer`: step probabilities sigma(logit) for each solution's steps, batched."""

    def __init__(self, prm: ProcessRewardModel, tokenizer, batch_size: int = 32, max_length: int = 2048):
        self.prm, self.tokenizer = prm, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def score_steps(self, prompt, steps_list: list[list[str]]) -> list[list[float]]:
        enc = [encode_steps(self.tokenizer, prompt, steps, self.prm.step_sep, self.prm.chat, self.max_length)
               for steps in steps_list]
        return self.score_encoded(enc, [len(s) for s in steps_list])

    @torch.no_grad()
    def score_encoded(self, enc: list[EncodedSteps], n_steps: list[int]) -> list[list[float]]:
        """Probabilities per step; steps cut by `max_length` get the last scored step's value."""
        was = self.prm.training
        self.prm.eval()
        out: list[list[float]] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        try:
            for i in range(0, len(enc), self.batch_size):
                chunk = enc[i : i + self.batch_size]
                b = collate_steps(chunk, pad)
                probs = torch.sigmoid(self.prm.step_logits(b["input_ids"], b["attention_mask"], b["step_positions"]).float())
                for j, e in enumerate(chunk):
                    got = probs[j, : len(e.step_positions)].tolist() or [0.5]
                    out.append(got + [got[-1]] * (n_steps[i + j] - len(got)))
        finally:
            self.prm.train(was)
        return out
