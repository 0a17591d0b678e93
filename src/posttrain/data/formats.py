"""Dataset formats (the ones TRL users already have), detection and row validation.

Kinds, each in a standard (text) or conversational (list of {role, content} messages) style
(messages may carry OpenAI-style ``tool_calls`` and ``tool`` results: agent transcripts, checked
and rendered by `posttrain.data.toolcalls`):

| kind                | fields                                   |
|---------------------|------------------------------------------|
| language_modeling   | text / messages                          |
| prompt_only         | prompt                                   |
| prompt_completion   | prompt, completion                       |
| preference          | [prompt], chosen, rejected (implicit prompt when absent) |
| unpaired_preference | prompt, completion, label (bool)         |
| stepwise            | prompt, completions (list), labels (list) |
| verifiable          | prompt, answer (reference answer)        |

`load_examples(source, kind=None, columns=..., on_error="raise"|"skip")` returns typed `Example`s
and a `LoadReport`. A bad row raises `DataError` naming the file, the row, the field and what was
expected; with ``on_error="skip"`` it is skipped and counted instead (a jsonl line that is not
UTF-8, not JSON or not an object included). `check_sft_examples` keeps the rows SFT can learn from.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from posttrain.data.sources import DataError, Row, read_rows
from posttrain.data.toolcalls import check_tool_messages, has_tool_messages

KINDS = (
    "language_modeling",
    "prompt_only",
    "prompt_completion",
    "preference",
    "unpaired_preference",
    "stepwise",
    "verifiable",
)
ROLES = {"system", "user", "assistant", "tool"}
ASSISTANT_MARKER = "\n\nAssistant:"  # HH-RLHF style implicit prompts

Text = str | list[dict]


@dataclass
class Example:
    kind: str
    conversational: bool
    prompt: Text | None = None  # None for language modeling
    completion: Text | None = None  # LM: the whole text / messages
    chosen: Text | None = None
    rejected: Text | None = None
    label: bool | None = None
    steps: list[str] | None = None
    step_labels: list[float] | None = None
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = ""


@dataclass
class LoadReport:
    source: str
    kind: str
    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.source}: {self.kept}/{self.rows} rows of kind {self.kind}"
        if self.skipped:
            s += f"; skipped {sum(self.skipped.values())} ({', '.join(f'{k}: {v}' for k, v in self.skipped.items())})"
        return s


KIND_COLUMNS = {
    "language_modeling": "text | messages",
    "prompt_only": "prompt",
    "prompt_completion": "prompt+completion",
    "preference": "[prompt+]chosen+rejected",
    "unpaired_preference": "prompt+completion+label",
    "stepwise": "prompt+completions+labels",
    "verifiable": "prompt+answer",
}


def detect_kind(keys: set[str], source: str | None = None) -> str:
    """The kind of a row from its columns; `source` (the file) is named when none fits."""
    if {"prompt", "completions", "labels"} <= keys:
        return "stepwise"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired_preference"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"prompt", "answer"} <= keys:
        return "verifiable"
    if "text" in keys or "messages" in keys:
        return "language_modeling"
    if "prompt" in keys:
        return "prompt_only"
    known = ", ".join(f"{k} ({cols})" for k, cols in KIND_COLUMNS.items())
    raise DataError(
        f"{source or 'data'}: cannot tell the dataset format from the columns {sorted(map(str, keys))}; "
        f"known kinds: {known} (rename columns with a column map, e.g. --data.columns question=prompt, "
        "or set --data.kind)"
    )


def _check_text(row: Row, name: str, allow_empty: bool = False) -> tuple[Text, bool]:
    """Validate a text-or-messages field; return (value, is_conversational)."""
    if name not in row.data or row.data[name] is None:
        raise DataError(f"{row.where(name)}: missing (expected a string or a list of messages)")
    v = row.data[name]
    if isinstance(v, str):
        if not allow_empty and not v.strip():
            raise DataError(f"{row.where(name)}: empty string (expected non-empty text)")
        return v, False
    if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
        for j, m in enumerate(v):
            if m.get("role") not in ROLES:
                raise DataError(f"{row.where(name)}: message {j}: role {m.get('role')!r} is not one of {sorted(ROLES)}")
            if not isinstance(m.get("content"), str) and not (m.get("content") is None and m.get("tool_calls")):
                raise DataError(f"{row.where(name)}: message {j}: 'content' must be a string")
        if not has_tool_messages(v):
            return [{"role": m["role"], "content": m["content"]} for m in v], True
        msgs, why = check_tool_messages(v)  # agent transcripts: tool_calls and tool results (posttrain.data.toolcalls)
        if why:
            raise DataError(f"{row.where(name)}: {why}")
        return msgs, True
    if isinstance(v, list) and not v:
        raise DataError(f"{row.where(name)}: empty list (expected a non-empty list of messages)")
    raise DataError(f"{row.where(name)}: expected a string or a list of {{role, content}} messages, got {type(v).__name__}")


def _split_implicit_prompt(row: Row, chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise DataError(f"{row.where('chosen')}: no shared prompt with 'rejected' (implicit-prompt row)")
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT_MARKER, 0, n)
    cut = cut + len(ASSISTANT_MARKER) if cut >= 0 else n
    if cut == 0:
        raise DataError(f"{row.where('chosen')}: no shared prompt with 'rejected' (implicit-prompt row)")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _parse(row: Row, kind: str) -> Example:
    d = row.data
    ex = Example(kind=kind, conversational=False, where=row.where())
    if kind == "language_modeling":
        name = "messages" if "messages" in d else "text"
        ex.completion, ex.conversational = _check_text(row, name)
    elif kind in ("prompt_only", "prompt_completion", "unpaired_preference", "verifiable", "stepwise"):
        ex.prompt, ex.conversational = _check_text(row, "prompt")
        if kind in ("prompt_completion", "unpaired_preference"):
            ex.completion, conv = _check_text(row, "completion")
            if conv != ex.conversational:
                raise DataError(f"{row.where('completion')}: mixes conversational and standard styles with 'prompt'")
        if kind == "unpaired_preference":
            if not isinstance(d.get("label"), bool):
                raise DataError(f"{row.where('label')}: expected a boolean (true = desirable), got {d.get('label')!r}")
            ex.label = d["label"]
        if kind == "verifiable":
            ans = d.get("answer")
            if ans is None or (isinstance(ans, str) and not ans.strip()) or isinstance(ans, (list, dict)):
                raise DataError(f"{row.where('answer')}: expected a non-empty reference answer, got {ans!r}")
            ex.answer = str(ans).strip()
        if kind == "stepwise":
            ex.steps, ex.step_labels = _check_steps(row)
    elif kind == "preference":
        chosen, conv = _check_text(row, "chosen")
        rejected, conv_r = _check_text(row, "rejected")
        if conv != conv_r:
            raise DataError(f"{row.where('rejected')}: mixes conversational and standard styles with 'chosen'")
        if chosen == rejected:
            raise DataError(f"{row.where('rejected')}: identical to 'chosen' (a pair must differ)")
        ex.conversational = conv
        if "prompt" in d and d["prompt"] is not None:
            ex.prompt, _ = _check_text(row, "prompt")
            ex.chosen, ex.rejected = chosen, rejected
        else:
            ex.prompt, ex.chosen, ex.rejected = _split_implicit_prompt(row, chosen, rejected)
            if ex.chosen == ex.rejected or not ex.chosen or not ex.rejected:
                raise DataError(f"{row.where('rejected')}: after removing the shared prompt, a response is empty")
    if ex.answer is None and d.get("answer") not in (None, ""):
        ex.answer = str(d["answer"]).strip()  # a reference answer beside any kind (for exact-match eval)
    known = {"text", "messages", "prompt", "completion", "chosen", "rejected", "label", "completions", "labels", "answer"}
    ex.extra = {k: v for k, v in d.items() if k not in known}
    return ex


def _check_steps(row: Row) -> tuple[list[str], list[float]]:
    steps, labels = row.data.get("completions"), row.data.get("labels")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise DataError(f"{row.where('completions')}: expected a non-empty list of step strings")
    if not isinstance(labels, list):
        raise DataError(f"{row.where('labels')}: expected a list of per-step labels")
    if len(labels) != len(steps):
        raise DataError(f"{row.where('labels')}: {len(labels)} labels for {len(steps)} steps (expected one label per step)")
    out = []
    for j, lab in enumerate(labels):
        if isinstance(lab, bool):
            out.append(float(lab))
        elif isinstance(lab, (int, float)) and 0.0 <= lab <= 1.0:
            out.append(float(lab))
        else:
            raise DataError(f"{row.where('labels')}: label {j} is {lab!r} (expected a boolean or a number in [0, 1])")
    return steps, out


def load_examples(
    source,
    kind: str | None = None,
    columns: Mapping[str, str] | None = None,
    on_error: str = "raise",
    limit: int | None = None,
    name: str | None = None,
) -> tuple[list[Example], LoadReport]:
    """Typed, validated examples of `source` (a path, a list of dicts or a `datasets.Dataset`) and a report.

    `kind`: one of `KINDS`, or None to detect it from the first readable row's columns. `columns`
    renames source columns; `limit` keeps the first rows; `name` is what errors call in-memory rows
    (``rows[3]: field 'prompt': ...`` by default). A bad row raises `DataError` naming the source, the
    row and the field, or with ``on_error="skip"`` is counted in the report.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows = read_rows(source, columns, on_error=on_error, name=name)
    if limit is not None:
        rows = rows[:limit]
    src = rows[0].source if rows else (str(source) if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else name or "rows")
    if kind is None:
        readable = next((r for r in rows if r.error is None), None)
        if readable is None:
            unread = f" that could be read ({len(rows)} skipped; first: {rows[0].error})" if rows else ""
            raise DataError(f"{src}: no rows{unread}")
        kind = detect_kind(set(readable.data), source=src)
    if kind not in KINDS:
        raise DataError(f"unknown dataset kind '{kind}' (known: {', '.join(KINDS)})")
    report = LoadReport(source=src, kind=kind, rows=len(rows))
    examples = []
    for row in rows:
        try:
            if row.error is not None:  # a line that could not be read (only kept with on_error="skip")
                raise DataError(row.error)
            examples.append(_parse(row, kind))
        except DataError as e:
            if on_error == "raise":
                raise
            msg, at = str(e), row.where() + ": "
            reason = (msg[len(at):] if msg.startswith(at) else msg.split(": ", 2)[-1]).split(" (")[0]
            report.skipped[reason[:60]] += 1
            if len(report.first_errors) < 5:
                report.first_errors.append(str(e))
    report.kept = len(examples)
    if not examples:
        raise DataError(f"{src}: no usable rows ({report.summary()})")
    return examples, report


SFT_HINTS = {
    "prompt_only": "add a 'completion' column, or use posttrain rl for prompt-only rows",
    "verifiable": "use posttrain rl or posttrain eval for prompt+answer rows",
    "preference": "use posttrain dpo or posttrain rm for chosen/rejected rows",
    "unpaired_preference": "use posttrain dpo with an unpaired loss (kto, bco) for prompt+completion+label rows",
    "stepwise": "use posttrain prm for stepwise rows",
}


def sft_problem(ex: Example) -> str | None:
    """Why SFT has nothing to learn from `ex` (a message naming the row and the field), or None.

    SFT trains on language-modeling rows (`text`, or `messages` with assistant turns) and on
    prompt-completion rows; any other kind, and an empty assistant turn, would train on the end
    token alone.
    """
    if ex.kind not in ("language_modeling", "prompt_completion"):
        hint = SFT_HINTS[ex.kind]
        return f"{ex.where}: field 'completion': missing: SFT needs a completion (this row is kind '{ex.kind}'; {hint})"
    if not ex.conversational:
        return None  # a text completion is non-empty (checked when the row was read)
    name = "messages" if ex.kind == "language_modeling" else "completion"
    turns = [j for j, m in enumerate(ex.completion) if m["role"] == "assistant"]
    if not turns:
        roles = [m["role"] for m in ex.completion]
        return f"{ex.where}: field '{name}': no assistant turn (SFT trains on assistant turns; roles here: {roles})"
    for j in turns:
        if not ex.completion[j]["content"].strip() and not ex.completion[j].get("tool_calls"):
            return f"{ex.where}: field '{name}': message {j}: empty assistant turn (SFT would train on the end token alone)"
    return None


def check_sft_examples(examples: list[Example], on_error: str = "raise") -> tuple[list[Example], int, list[str]]:
    """The examples SFT can learn from, how many were skipped, and the first (up to 5) reasons.

    A row with nothing to train on (see `sft_problem`) raises a `DataError` naming the file, the row
    and the field; with ``on_error="skip"`` it is counted instead. No row left raises either way.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    kept, errors, skipped = [], [], 0
    for ex in examples:
        problem = sft_problem(ex)
        if problem is None:
            kept.append(ex)
            continue
        if on_error == "raise":
            raise DataError(problem)
        skipped += 1
        if len(errors) < 5:
            errors.append(problem)
    if not kept:
        if not examples:
            raise DataError("no SFT training rows (give --data FILE or --data task:NAME)")
        raise DataError(f"no rows SFT can train on ({skipped} skipped); first: {errors[0]}")
    return kept, skipped, errors
