"""Budget forcing: control how long a reasoning model thinks (s1, Muennighoff et al. 2025,
"s1: Simple test-time scaling", Sec. 3.1).

- Minimum budget: when the model emits the end-of-thinking delimiter before it has generated
  ``min_thinking_tokens`` thinking tokens, the delimiter is removed and ``wait`` ("Wait") is
  appended, so the model keeps reasoning (often re-checking its answer).
- Maximum budget: when thinking reaches ``max_thinking_tokens`` generated tokens, the end-of-thinking
  delimiter is forced (appended), optionally followed by ``answer_prefix`` (s1 uses "Final Answer:"),
  and the model then writes the answer with at most ``max_answer_tokens`` tokens.

Departures / choices:
- Thinking tokens are the tokens the engine generated before the delimiter (including delimiter
  tokens that were later removed); forced strings are not counted in the budgets or in
  ``tokens_spent``. ``max_waits`` optionally caps the number of "Wait"s (None: as many as the
  minimum budget needs; each round generates at least one token, so this terminates).
- Removing the delimiter keeps the longest prefix of the generated ids whose decoding ends before
  it, so ids still flow unchanged (a token that straddles the delimiter is dropped whole).
- If the model ends the whole response (EOS) while thinking, the response is returned as is.
- The answer is extracted from the text after the last delimiter. Sampling is greedy by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from posttrain.rollout.base import Completion, SamplingParams
from posttrain.search.base import SEARCH_METHODS, Candidate, Policy, Scorer, SearchResult, default_extract, derive_seed

__all__ = ["budget_forcing"]


def _strip_suffix(policy: Policy, ids: Sequence[int], stop: str) -> list[int]:
    """The longest prefix of `ids` whose decoding ends before the last occurrence of `stop`."""
    full = policy.tokenizer.decode(list(ids))
    keep = full.rfind(stop)
    if keep < 0:
        return list(ids)
    for j in range(len(ids), -1, -1):
        head = policy.tokenizer.decode(list(ids[:j]))
        if len(head) <= keep and full.startswith(head):
            return list(ids[:j])
    return []


def _ended_with(c: Completion, text: str, stop: str) -> bool:
    return c.finish_reason == "stop" and (c.stop_reason == stop or text.endswith(stop))


@dataclass
class _Trace:
    ids: list[int] = field(default_factory=list)  # generated + forced ids after the prompt
    text: str = ""
    thinking: int = 0  # generated thinking tokens
    waits: int = 0
    calls: int = 0
    finish: str = "stop"

    def add(self, ids: Sequence[int], text: str) -> None:
        self.ids += list(ids)
        self.text += text


def _think(policy: Policy, prompt_ids: list[int], tr: _Trace, min_tokens: int, max_tokens: int,
           max_waits: int | None, think_end: str, wait: str, params: SamplingParams) -> str:
    """Run the thinking phase into `tr`; returns how it ended: "end", "forced" or "eos"."""
    while tr.thinking < max_tokens:
        p = replace(params, max_new_tokens=max_tokens - tr.thinking, stop=(think_end,),
                    seed=derive_seed(params.seed, tr.calls))
        ((c,),) = policy.generate([prompt_ids + tr.ids], p)
        tr.calls += 1
        tr.thinking += len(c.token_ids)
        ctext = policy.text_of(c)
        hit_end = _ended_with(c, ctext, think_end)
        if hit_end and tr.thinking < min_tokens and (max_waits is None or tr.waits < max_waits):
            kept = _strip_suffix(policy, c.token_ids, think_end)
            tr.add(kept + policy.encode_forced(wait), policy.tokenizer.decode(kept) + wait)
            tr.waits += 1
            continue
        tr.add(c.token_ids, ctext)
        tr.finish = c.finish_reason
        if hit_end:
            return "end"
        if c.finish_reason != "length":
            return "eos"  # the model ended its whole response while thinking
    return "forced"


@SEARCH_METHODS.register("budget_forcing")
def budget_forcing(
    policy: Policy,
    prompt: str,
    scorer: Scorer | None = None,
    *,
    min_thinking_tokens: int = 0,
    max_thinking_tokens: int = 4096,
    max_waits: int | None = None,
    think_end: str = "</think>",
    wait: str = "Wait",
    answer_prefix: str = "",
    max_answer_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    extract: Callable[[str], str | None] = default_extract,
) -> SearchResult:
    """s1 budget forcing between `min_thinking_tokens` and `max_thinking_tokens`. Ignores `scorer`."""
    if not 0 <= min_thinking_tokens <= max_thinking_tokens:
        raise ValueError("need 0 <= min_thinking_tokens <= max_thinking_tokens")
    start = policy.tokens_spent
    prompt_ids = policy.encode_prompt(prompt)
    params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
    tr = _Trace()
    ended = _think(policy, prompt_ids, tr, min_thinking_tokens, max_thinking_tokens, max_waits,
                   think_end, wait, params)
    if ended == "eos":
        return _result(policy, start, tr, extract(tr.text), forced=False)
    if ended == "forced":
        tr.add(policy.encode_forced(think_end), think_end)
    if answer_prefix:
        tr.add(policy.encode_forced(answer_prefix), answer_prefix)
    p = replace(params, max_new_tokens=max_answer_tokens, seed=derive_seed(seed, tr.calls))
    ((c,),) = policy.generate([prompt_ids + tr.ids], p)
    tr.add(c.token_ids, policy.text_of(c))
    tr.finish = c.finish_reason
    answer = extract(tr.text[tr.text.rfind(think_end) + len(think_end):])
    return _result(policy, start, tr, answer, forced=ended == "forced")


def _result(policy: Policy, start: int, tr: _Trace, answer: str | None, forced: bool) -> SearchResult:
    return SearchResult(
        answer=answer,
        score=None,
        text=tr.text,
        tokens_spent=policy.tokens_spent - start,
        candidates=[Candidate(tr.text, tr.ids, answer, None, tr.finish)],
        method="budget_forcing",
        info={"thinking_tokens": float(tr.thinking), "waits": float(tr.waits), "forced_end": float(forced)},
    )
