"""Chat templates rendered in one place, with the mask of the tokens to train.

Conversations are rendered with the tokenizer's own chat template and cut into segments at message
boundaries; each segment is tokenized on its own (no special tokens added), so the prompt tokens are
the ones generation sees and the trained span is exact. Checks: the trained span is non-empty,
EOS lies inside it (unless truncated), and BOS is not doubled.

SFT of a conversation trains each assistant turn through its end token (EOS); what the template
writes after it (SmolLM2's newline after ``<|im_end|>``) is context, and context after the last
trained token is dropped (it trains nothing). That is how the multi-turn rollout
(`posttrain.rollout.multiturn`) lays out an episode, whose model stops at EOS: an agent transcript
(tool calls and results in `posttrain.data.toolcalls`'s text format) tokenizes to exactly the
episode's token ids, with the episode's mask. (One known gap: the rollout tokenizes an observation
with ``split_special_tokens``, so env text that spells a special token differs from its SFT tokens.)
"""
from __future__ import annotations

from dataclasses import dataclass

from posttrain.data.formats import Example
from posttrain.data.sources import DataError
from posttrain.data.toolcalls import render_ready


class PromptTooLong(DataError):
    """The prompt alone fills `max_length`: no completion token would be trained (skippable per row)."""


@dataclass
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The template's text of `messages`; tool calls and tool results in the rollout's text format
    when the template does not render them itself (`posttrain.data.toolcalls.render_ready`)."""
    if tokenizer.chat_template is None:
        raise DataError("the tokenizer has no chat template; use standard (text) rows or set a template")
    try:
        messages = render_ready(tokenizer, messages)
    except ValueError as e:
        raise DataError(f"messages: {e}") from None
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def conversation_segments(tokenizer, messages: list[dict], train_from: int = 0) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trained) segments: assistant turns at index >=
    `train_from` are trained, everything else is context."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or i < train_from:
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1])
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise DataError("the chat template is not prefix-consistent; cannot locate assistant turns")
        segments += [(prefix[len(done):], False), (full[len(prefix):], True)]
        done = full
    rest = render(tokenizer, messages)
    if not rest.startswith(done):
        raise DataError("the chat template is not prefix-consistent; cannot locate assistant turns")
    segments.append((rest[len(done):], False))
    return [(t, trained) for t, trained in segments if t]


def _through_eos(tokenizer, segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Each trained segment cut after its last EOS: what the template writes after the end token
    (SmolLM2's newline after ``<|im_end|>``) is context, as in a rollout, where the model stops at EOS."""
    eos = tokenizer.eos_token
    out = []
    for text, trained in segments:
        j = text.rfind(eos) + len(eos) if trained and eos and eos in text else len(text)
        out += [(t, tr) for t, tr in ((text[:j], trained), (text[j:], False)) if t]
    return out


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt ready for generation (generation prompt added for conversations)."""
    if isinstance(prompt, list):
        return _encode(tokenizer, render(tokenizer, prompt, add_generation_prompt=True))
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_response(tokenizer, prompt, response) -> list[int]:
    """Token ids of a response that follows `prompt` (EOS / end-of-turn included)."""
    if isinstance(prompt, list):
        msgs = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        segs = conversation_segments(tokenizer, prompt + msgs, train_from=len(prompt))
        return _trained_ids(tokenizer, segs)
    ids = _encode(tokenizer, response)
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids


def _trained_ids(tokenizer, segs) -> list[int]:
    return [t for text, trained in segs if trained for t in _encode(tokenizer, text)]


def tokenize_sft(tokenizer, ex: Example, max_length: int | None = None) -> TokenizedExample:
    """Token ids and the completion-only loss mask for one SFT example.

    Longer than `max_length`: truncated (the end of the completion is cut); a prompt that leaves no
    room for a completion token raises `PromptTooLong` naming the row.
    """
    ids: list[int] = []
    mask: list[int] = []
    if ex.conversational:
        msgs = (ex.prompt or []) + ex.completion if ex.prompt is not None else ex.completion
        train_from = len(ex.prompt) if ex.prompt is not None else 0
        for text, trained in _through_eos(tokenizer, conversation_segments(tokenizer, msgs, train_from)):
            part = _encode(tokenizer, text)
            ids += part
            mask += [int(trained)] * len(part)
        last = max((i for i, m in enumerate(mask) if m), default=len(mask) - 1)
        ids, mask = ids[: last + 1], mask[: last + 1]  # trailing context trains nothing (and the rollout has none)
    else:
        if ex.prompt is not None:
            ids = tokenizer(ex.prompt, add_special_tokens=True)["input_ids"]
            mask = [0] * len(ids)
            body = encode_response(tokenizer, ex.prompt, ex.completion)
        else:
            body = tokenizer(ex.completion, add_special_tokens=True)["input_ids"]
            if tokenizer.eos_token_id is not None:
                body.append(tokenizer.eos_token_id)
        ids += body
        mask += [1] * len(body)
    out = TokenizedExample(ids, mask)
    context = next((i for i, m in enumerate(mask) if m), len(mask))  # tokens before the first trained one
    if max_length is not None and context >= max_length and context > 0:
        than = "longer than" if context > max_length else "as long as"
        raise PromptTooLong(f"{ex.where}: prompt is {context} tokens, {than} data.max_length={max_length}; "
                            "raise data.max_length or drop the row")
    if max_length is not None and len(ids) > max_length:
        out = TokenizedExample(ids[:max_length], mask[:max_length], truncated=True)
    check_example(tokenizer, out, ex.where)
    return out


def tokenize_sft_examples(
    tokenizer, examples: list[Example], max_length: int | None = None, on_error: str = "raise"
) -> tuple[list[TokenizedExample], int, list[str]]:
    """`tokenize_sft` over `examples`: (tokenized, number skipped, first up to 5 reasons).

    With ``on_error="skip"`` a row whose prompt does not fit `max_length` (`PromptTooLong`) is
    skipped and counted; any other error, and no row left, raises.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out, errors, skipped = [], [], 0
    for ex in examples:
        try:
            out.append(tokenize_sft(tokenizer, ex, max_length))
        except PromptTooLong as e:
            if on_error == "raise":
                raise
            skipped += 1
            if len(errors) < 5:
                errors.append(str(e))
    if examples and not out:
        raise DataError(f"no row fits data.max_length={max_length} ({skipped} skipped); first: {errors[0]}")
    return out, skipped, errors


def check_example(tokenizer, tex: TokenizedExample, where: str) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and len(tex.input_ids) > 1 and tex.input_ids[0] == bos == tex.input_ids[1]:
        raise DataError(f"{where}: doubled BOS token at the start (template and tokenizer both add it)")
    if sum(tex.loss_mask[1:]) == 0:
        raise DataError(f"{where}: empty assistant/completion mask (nothing to train on)")
    eos = tokenizer.eos_token_id
    if eos is not None and not tex.truncated:
        trained = [t for t, m in zip(tex.input_ids, tex.loss_mask) if m]
        if eos not in trained:
            raise DataError(f"{where}: EOS token {tokenizer.eos_token!r} is not inside the trained span")
