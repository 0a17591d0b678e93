"""Pieces the preference trainer and the reward-model trainer share: loading preference pairs
(task-generated or from files), tokenizing them once, and the concatenated chosen+rejected batch.

A pair is tokenized as ``prompt_ids`` plus ``chosen_ids`` / ``rejected_ids`` (each response ends in
EOS / end-of-turn) and never re-tokenized afterwards. A batch of B pairs is one (2B, T) right-padded
tensor, chosen rows first, so one forward pass scores both sides (as TRL's collator lays them out).
Over-long sequences keep the end of the prompt and the start of the response (counted).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from posttrain.config import ConfigError
from posttrain.data import DataError, Example, encode_prompt, load_examples
from posttrain.data.collate import IGNORE
from posttrain.logging import console, warn
from posttrain.ops import masked_sum, token_logprobs
from posttrain.sequences import SequenceBatch, sequence_batch, tokenize_response  # noqa: F401  (moved down; re-exported)
from posttrain.sequences import truncate_pair as _truncate  # noqa: F401  (the old private name, re-exported)


@dataclass
class TokenizedPair:
    """One (prompt, chosen, rejected) triple as token ids; `margin` is an optional per-pair float."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float | None = None
    where: str = ""


def tokenize_pairs(tokenizer, examples: list[Example], max_length: int, margin_column: str = "") -> list[TokenizedPair]:
    out, truncated = [], 0
    for ex in examples:
        p = encode_prompt(tokenizer, ex.prompt)
        c = tokenize_response(tokenizer, ex.prompt, ex.chosen)
        r = tokenize_response(tokenizer, ex.prompt, ex.rejected)
        if c == r:
            raise DataError(f"{ex.where}: chosen and rejected tokenize to the same ids")
        pc, c, t1 = _truncate(p, c, max_length)
        pr, r, t2 = _truncate(p, r, max_length)
        truncated += t1 or t2
        p = pc if len(pc) <= len(pr) else pr
        margin = None
        if margin_column:
            value = ex.extra.get(margin_column)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{ex.where}: field '{margin_column}': expected a number (the pair's margin), got {value!r}")
            margin = float(value)
        out.append(TokenizedPair(p, c, r, margin, ex.where))
    if truncated:
        warn(f"{truncated}/{len(out)} pairs truncated to data.max_length={max_length}")
    return out


def _step_end(ids: list[int], start: int, is_sep: list[bool]) -> int:
    """Index one past the first separator token at or after `start` (len(ids) when there is none)."""
    return next((i + 1 for i in range(start, len(ids)) if is_sep[i]), len(ids))


def first_divergent_step(pair: TokenizedPair, tokenizer, step_sep: str = "\n") -> TokenizedPair:
    """Step-DPO pair (Lai et al. 2024, "Step-DPO: Step-wise Preference Optimization for Long-chain
    Reasoning of LLMs"): the steps chosen and rejected share move into the prompt, and each side keeps
    only its first differing step.

    A step ends at a token whose text contains `step_sep`. Token ids are cut, never re-tokenized, so
    the new prompt + step is a prefix of the original prompt + response. Departure: the paper collects
    the chosen step by sampling continuations of the shared prefix; here it is the chosen response's
    own step at the same place (for task pairs, the reference solution's step).
    """
    c, r = pair.chosen_ids, pair.rejected_ids
    k = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
    sep_c = [step_sep in tokenizer.decode([t]) for t in c]
    sep_r = [step_sep in tokenizer.decode([t]) for t in r]
    start = max((i + 1 for i in range(k) if sep_c[i]), default=0)
    return TokenizedPair(pair.prompt_ids + c[:start], c[start:_step_end(c, k, sep_c)], r[start:_step_end(r, k, sep_r)],
                         pair.margin, pair.where)


def load_pairs(data_cfg, split: str, seed: int = 3, source=None) -> tuple[list[Example], object]:
    """Preference examples for 'train' or 'eval', and the task (None for files).

    `source`: rows from Python (a list of dicts or a `datasets.Dataset`, see
    `posttrain.trainers.common.bind_inputs`), read whole instead of the config's path; errors name
    them ``train_data[i]`` / ``eval_data[i]``. `task:NAME` generates pairs with the task's
    `preference_rows` (held-out problems for 'eval'). For files, 'eval' reads data.eval_path when set;
    otherwise the last data.eval_rows rows of data.path are held out (and left out of 'train').
    Rows from Python are never split: 'eval' is their `eval_data` (or data.eval_path), if any.
    """
    from posttrain.tasks import load_task_spec
    from posttrain.trainers.common import IN_MEMORY, _missing_rows

    kind = data_cfg.kind or None
    if source is not None:
        name = "eval_data" if split == "eval" else "train_data"
        limit = data_cfg.eval_rows if split == "eval" else data_cfg.train_rows
        examples, report = load_examples(source, kind=kind, columns=data_cfg.columns, on_error=data_cfg.on_error,
                                         limit=limit, name=name)
        _report(report)
        return examples, None
    if data_cfg.path.startswith("task:"):
        task = load_task_spec(data_cfg.path[len("task:"):])
        if not hasattr(task, "preference_rows"):
            raise ConfigError(f"task '{task.name}' cannot generate preference pairs (no preference_rows)")
        n = data_cfg.eval_rows if split == "eval" else data_cfg.train_rows
        if n == 0:
            return [], task
        rows = task.preference_rows(n, seed=seed + (split == "eval"), held_out=split == "eval")
        return load_examples(rows, kind="preference")[0], task
    if split == "eval" and not data_cfg.eval_path and data_cfg.path.startswith(IN_MEMORY):
        return [], None  # rows from Python are not split for a held-out set
    needed = data_cfg.eval_path if split == "eval" and data_cfg.eval_path else data_cfg.path
    if needed.startswith(IN_MEMORY):
        raise _missing_rows(needed)
    if data_cfg.eval_path or split == "train" and not data_cfg.eval_rows:
        path = data_cfg.eval_path if split == "eval" else data_cfg.path
        limit = data_cfg.eval_rows if split == "eval" else data_cfg.train_rows
        examples, report = load_examples(path, kind=kind, columns=data_cfg.columns, on_error=data_cfg.on_error, limit=limit)
        _report(report)
        return examples, None
    if split == "eval" and not data_cfg.eval_rows:
        return [], None
    limit = data_cfg.train_rows + data_cfg.eval_rows
    examples, report = load_examples(data_cfg.path, kind=kind, columns=data_cfg.columns, on_error=data_cfg.on_error, limit=limit)
    _report(report)
    if len(examples) <= data_cfg.eval_rows:
        raise DataError(f"{data_cfg.path}: {len(examples)} usable rows, not enough to hold out data.eval_rows={data_cfg.eval_rows}")
    cut = len(examples) - data_cfg.eval_rows
    return (examples[cut:] if split == "eval" else examples[:cut]), None


def _report(report) -> None:
    console.print(f"data: {report.summary()}")
    for msg in report.first_errors:
        console.print(f"  skipped: {msg}")


def pair_batch(pairs: list[TokenizedPair], pad_id: int) -> SequenceBatch:
    """2B rows: the B chosen sequences, then the B rejected ones."""
    prompts = [p.prompt_ids for p in pairs] * 2
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return sequence_batch(prompts, responses, pad_id)


def _lm_parts(model):
    """(decoder, lm_head) when the causal LM exposes them (HF models, PEFT-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, None


def sequence_logps(model, batch: SequenceBatch, rt=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed logps (R,), lengths (R,)) of the labelled tokens of each row.

    The LM head runs only at labelled positions (response tokens), so prompts and padding never
    produce vocabulary logits; falls back to full logits for models without a separate head, and
    for a wrapped or sharded model (`rt`, a `posttrain.runtime.Runtime`, with ``parallel`` ddp or
    fsdp2: the wrapper's own forward must run). `rt` also gives the device and the autocast; the
    logprobs are fp32.
    """
    if rt is not None and rt.device.type != "cpu":
        batch = SequenceBatch(*(t.to(rt.device) for t in (batch.input_ids, batch.attention_mask, batch.labels, batch.last_index)))
    mask = batch.labels != IGNORE
    lengths = mask.sum(-1)
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
    decoder, head = (None, None) if rt is not None and rt.parallel != "none" else _lm_parts(model)
    ctx = rt.autocast() if rt is not None else nullcontext()
    if decoder is None or head is None:
        with ctx:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids, use_cache=False).logits
        return masked_sum(token_logprobs(logits.float(), batch.labels), mask, dim=-1), lengths
    with ctx:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        picked = head(hidden[mask]).float()  # (N, V) for the N labelled tokens only
    tok = token_logprobs(picked, batch.labels[mask])
    row = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask]
    sums = torch.zeros(mask.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, row.to(tok.device), tok)
    return sums, lengths
