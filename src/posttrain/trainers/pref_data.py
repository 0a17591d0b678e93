"""Small helpers of the preference trainer: the loss spec, unpaired items (KTO/BCO) with their
mismatched KL completions, and the falling-logps monitor."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from posttrain.config import ConfigError
from posttrain.data import DataError, Example, encode_prompt
from posttrain.losses.preference import PREFERENCE_LOSSES, UNPAIRED_LOSSES
from posttrain.trainers.pairs import TokenizedPair, _truncate, tokenize_response


@dataclass
class UnpairedItem:
    """One (prompt, completion, desirable?) row; `kl_completion_ids` is another row's completion,
    scored after this prompt for KTO's KL reference point."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    kl_completion_ids: list[int]
    where: str = ""


def parse_loss_spec(spec: str) -> dict[str, float]:
    """'dpo' -> {'dpo': 1.0}; 'dpo:0.8,bco_pair:0.2,sft:1' -> weights. Unknown names raise."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        if name not in PREFERENCE_LOSSES and name not in UNPAIRED_LOSSES:
            PREFERENCE_LOSSES.get(name)  # raises with the known names and a suggestion
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"loss spec '{spec}': weight of '{name}' must be a number, got '{weight}'") from None
    if not out:
        raise ConfigError("loss spec is empty; give a loss name such as 'dpo'")
    unpaired = [n for n in out if n in UNPAIRED_LOSSES]
    if unpaired and len(out) > 1:
        raise ConfigError(f"loss spec '{spec}': the unpaired loss '{unpaired[0]}' cannot be mixed with other losses")
    return out


def unpair(tokenizer, rows, max_length: int, seed: int) -> list[UnpairedItem]:
    """Unpaired items from unpaired Examples, or from TokenizedPairs (chosen -> desirable, rejected -> not)."""
    items: list[UnpairedItem] = []
    for r in rows:
        if isinstance(r, TokenizedPair):
            items.append(UnpairedItem(r.prompt_ids, r.chosen_ids, True, [], r.where))
            items.append(UnpairedItem(r.prompt_ids, r.rejected_ids, False, [], r.where))
        elif isinstance(r, Example) and r.kind == "unpaired_preference":
            p, c, _ = _truncate(encode_prompt(tokenizer, r.prompt), tokenize_response(tokenizer, r.prompt, r.completion), max_length)
            items.append(UnpairedItem(p, c, bool(r.label), [], r.where))
        else:
            raise DataError(f"{getattr(r, 'where', '?')}: expected an unpaired (prompt, completion, label) row or a pair")
    if len(items) < 2:
        raise DataError(f"{items[0].where if items else 'data'}: an unpaired loss needs at least 2 rows (for the KL completions)")
    perm = list(range(len(items)))
    random.Random(seed).shuffle(perm)
    for a, b in zip(perm, perm[1:] + perm[:1]):  # item a borrows item b's completion
        budget = max(1, max_length - len(items[a].prompt_ids))
        items[a].kl_completion_ids = items[b].completion_ids[:budget]
    return items


class FallingLogpsMonitor:
    """Flags chosen AND rejected per-token logps both falling over a window of steps.

    Compares the mean of the window's second half with its first half; both must drop by more than
    `min_drop` nats per token. Fires at most once per window (the history restarts after a warning).
    """

    def __init__(self, window: int = 20, min_drop: float = 0.02):
        self.window, self.min_drop = window, min_drop
        self.history: list[tuple[float, float]] = []

    def update(self, chosen: float, rejected: float) -> str | None:
        if self.window <= 1:
            return None
        self.history = (self.history + [(chosen, rejected)])[-self.window:]
        if len(self.history) < self.window:
            return None
        half = self.window // 2
        first, second = self.history[:half], self.history[-half:]
        drops = [sum(h[k] for h in first) / half - sum(h[k] for h in second) / half for k in (0, 1)]
        if min(drops) <= self.min_drop:
            return None
        self.history = []
        return (f"chosen and rejected logps are both falling (per token: chosen -{drops[0]:.3f}, "
                f"rejected -{drops[1]:.3f} over the last {self.window} steps)")


def self_generated_rejections(model, tokenizer, task, examples: list[Example], samples: int, temperature: float,
                              max_new_tokens: int, seed: int) -> tuple[list[Example], dict]:
    """Task pairs whose rejected side is one of the model's OWN wrong solutions.

    For each problem, `samples` completions are drawn from `model`; the first one the task's verifier
    rejects replaces the synthetic rejection (chosen stays the reference solution). This is the pair
    construction of Pang et al. 2024 ("Iterative Reasoning Preference Optimization": correct vs
    incorrect self-generated solutions): the pushed-down sequences are errors the model actually
    makes, where synthetic slips are often ones it already assigns a tiny probability. Problems
    where every sample is right keep their synthetic rejection. Seeded, so a resumed run rebuilds
    the same pairs from the same starting model.
    """
    from posttrain.data import encode_prompt
    from posttrain.rollout.base import SamplingParams
    from posttrain.rollout.hf import HFEngine

    was_training = model.training
    model.eval()
    engine = HFEngine(model, tokenizer, sequences_per_batch=128)
    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in examples]
    outs = engine.generate(prompts, SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed))
    model.train(was_training)
    out, replaced, wrong = [], 0, 0
    for ex, comps in zip(examples, outs):
        bad = [c.text for c in comps if not task.verify(c.text, ex.answer)]
        wrong += len(bad)
        text = next((t for t in bad if t.strip() and t.strip() != _text(ex.chosen).strip()), None)
        if text is not None:
            rejected = [{"role": "assistant", "content": text}] if ex.conversational else text
            ex = dataclasses.replace(ex, rejected=rejected)
            replaced += 1
        out.append(ex)
    stats = {"problems": len(examples), "samples_wrong_fraction": wrong / max(1, samples * len(examples)),
             "self_generated_rejections": replaced}
    return out, stats


def _text(t) -> str:
    return t[-1]["content"] if isinstance(t, list) else str(t)
