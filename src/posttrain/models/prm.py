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
its own), the head (`prm_head.pt`) and `prm_config.json` (the separator, the options).

Option ``likelihood_features`` (off by default; not in the papers): the head also reads three
log-likelihoods under the backbone's own LM head, of the step's ids, of the whole solution prefix up
to the step, and of the prefix's least likely id (`ProcessRewardModel.step_likelihood`). A
backbone that can solve the task (e.g. a stronger checkpoint than the policy, as in
`benchmarks/scaling_task.py`) then marks a step it would not have written, even when, as with a
shallow model, its hidden state at the step's separator cannot recompute the step to check it.
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
    prompt_length: int = 0  # ids before the first step (the first step spans prompt_length..step_positions[0])


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
    n_prompt = len(ids)
    positions = []
    for step in steps:
        part = _ids(tokenizer, step[: -len(sep)] if step.endswith(sep) else step) + sep_ids
        if max_length is not None and len(ids) + len(part) > max_length:
            break
        ids += part
        positions.append(len(ids) - 1)
    return EncodedSteps(ids, positions, n_prompt)


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
    """Right-padded batch: input_ids, attention_mask (B, T); step_positions, step_mask[, step_labels] (B, S);
    prompt_lengths (B,)."""
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
    out = {"input_ids": ids, "attention_mask": att, "step_positions": pos, "step_mask": smask,
           "prompt_lengths": torch.tensor([e.prompt_length for e in encoded], dtype=torch.long)}
    if labels is not None:
        out["step_labels"] = lab
    return out


class ProcessRewardModel(nn.Module):
    def __init__(self, lm, step_sep: str = "\n", chat: bool = True, likelihood_features: bool = False):
        super().__init__()
        self.lm = lm
        self.step_sep = step_sep
        self.chat = chat
        self.likelihood_features = likelihood_features
        hidden = lm.config.hidden_size
        extra = 3 if likelihood_features else 0
        self.head = nn.Linear(hidden + extra, 1)
        nn.init.normal_(self.head.weight, std=1.0 / hidden**0.5)
        if extra:
            nn.init.zeros_(self.head.weight[:, hidden:])
        nn.init.zeros_(self.head.bias)

    def backbone(self):
        return getattr(self.lm, self.lm.base_model_prefix, self.lm)

    def step_logits(self, input_ids, attention_mask, step_positions, step_mask=None, prompt_lengths=None) -> torch.Tensor:
        """(B, S) logits at `step_positions`; masked-out entries are whatever sits at index 0.

        With `likelihood_features` the head also reads `step_likelihood` (needs `prompt_lengths`,
        which `collate_steps` gives)."""
        hidden = self.backbone()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        idx = step_positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        feats = hidden.gather(1, idx)
        if self.likelihood_features:
            if prompt_lengths is None:
                raise ValueError("a PRM with likelihood_features needs prompt_lengths (collate_steps gives them)")
            feats = torch.cat([feats.float(), self.step_likelihood(hidden, input_ids, step_positions, prompt_lengths)], -1)
        return self.head(feats.to(self.head.weight.dtype)).squeeze(-1)

    def forward(self, input_ids, attention_mask, step_positions, step_mask=None, prompt_lengths=None) -> torch.Tensor:
        """`step_logits` (the forward a DDP wrapper or an FSDP2 root runs)."""
        return self.step_logits(input_ids, attention_mask, step_positions, step_mask, prompt_lengths)

    def step_likelihood(self, hidden, input_ids, step_positions, prompt_lengths) -> torch.Tensor:
        """(B, S, 3) log-likelihoods under the backbone's own LM head: of each step's ids, of the whole
        solution prefix up to and including the step (the prefix is what a Math-Shepherd label
        scores), and of the prefix's least likely id. Step k spans the ids after step k-1's score
        token (after the prompt for k = 0) up to its own."""
        logits = self.lm.get_output_embeddings()(hidden[:, :-1]).float()
        lp = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        lp = torch.nn.functional.pad(lp, (1, 0))  # lp[:, t] = log p(ids[t] | ids[:t]); 0 at t = 0
        first = prompt_lengths[:, None].to(step_positions)
        starts = torch.cat([first, step_positions[:, :-1] + 1], 1)
        t = torch.arange(lp.size(1), device=lp.device)
        end = t <= step_positions[..., None]  # (B, S, T)
        step, prefix = end & (t >= starts[..., None]), end & (t >= first[..., None])
        per = lp[:, None, :].expand_as(end)
        least = per.masked_fill(~prefix, 0.0).amin(-1)  # log-likelihoods are <= 0; an empty span gives 0
        return torch.stack([(per * step).sum(-1), (per * prefix).sum(-1), least], -1)

    def save_pretrained(self, path, state_dict: dict | None = None) -> None:
        """The language model as a Hugging Face folder, the head as ``prm_head.pt``; `state_dict`: the
        whole module's state (``lm.*``, ``head.*``; an FSDP2 model's, gathered) saved instead of its own."""
        path = Path(path)
        if state_dict is None:
            self.lm.save_pretrained(path)
            head = self.head.state_dict()
        else:
            self.lm.save_pretrained(path, state_dict={k[3:]: v for k, v in state_dict.items() if k.startswith("lm.")})
            head = {k[5:]: v for k, v in state_dict.items() if k.startswith("head.")}
        torch.save(head, path / "prm_head.pt")
        (path / "prm_config.json").write_text(json.dumps({"step_sep": self.step_sep, "chat": self.chat,
                                                          "likelihood_features": self.likelihood_features}))


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
    prm = ProcessRewardModel(lm, conf["step_sep"], conf.get("chat", True), conf.get("likelihood_features", False))
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
                dev = next(self.prm.parameters()).device
                b = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                probs = torch.sigmoid(self.prm(b["input_ids"], b["attention_mask"], b["step_positions"],
                                               prompt_lengths=b["prompt_lengths"]).float()).cpu()
                for j, e in enumerate(chunk):
                    got = probs[j, : len(e.step_positions)].tolist() or [0.5]
                    out.append(got + [got[-1]] * (n_steps[i + j] - len(got)))
        finally:
            self.prm.train(was)
        return out
