"""Tools of a tool-style environment: schema text from signatures, call parsing, execution.

The call format, the one the model is told about in the system prompt (Hermes / Qwen style)::

    <tool_call>{"name": "calculator", "arguments": {"expression": "3 * 7"}}</tool_call>

Several calls in one turn run in order; each result comes back as
``<tool_response>{"name": ..., "content": ...}</tool_response>`` in one env turn. What goes wrong is
said to the model and counted, never raised: text that opens ``<tool_call>`` but is not one JSON
object with a string ``name`` and an object ``arguments`` (``malformed_calls``), an unknown tool or
wrong arguments (``tool_errors``), a tool that raises (``tool_errors``). A tool's result is cut at
the session's ``max_output_chars`` here (and at ``max_tool_output_tokens`` by the rollout), counted
as ``truncated_outputs``. A tool that runs past the timeout fails the episode (`EnvFailure`): its
environment's state can no longer be trusted.

The schema of a tool is its public method's name, its docstring's first paragraph and its
parameters with their annotations (str, int, float, bool; unannotated: any), in the JSON shape of
OpenAI / Hugging Face ``tools`` (``{"type": "function", "function": {...}}``), one per line.
"""
from __future__ import annotations

import inspect
import json
import re
from typing import Any

from posttrain.envs.base import RESERVED, EnvFailure, call_with_timeout

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


def collect_tools(env) -> dict[str, Any]:
    """name -> bound method for every public method of `env` except the reserved ones (reset, step,
    reward, close, rows, system_prompt, demonstrate)."""
    out = {}
    for name in dir(type(env)):
        if name.startswith("_") or name in RESERVED:
            continue
        fn = getattr(env, name, None)
        if inspect.ismethod(fn):
            out[name] = fn
    return out


def _annotation(p: inspect.Parameter, hints: dict):
    ann = hints.get(p.name, p.annotation)
    return None if ann is inspect.Parameter.empty else ann


def tool_schema(name: str, fn) -> dict:
    """The OpenAI-style function schema of one tool."""
    import typing

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = _annotation(p, hints)
        prop: dict = {"type": _JSON_TYPES[ann]} if ann in _JSON_TYPES else {}
        props[p.name] = prop
        if p.default is p.empty:
            required.append(p.name)
    doc = inspect.getdoc(fn) or ""
    return {"type": "function", "function": {"name": name, "description": doc.split("\n\n")[0].replace("\n", " "),
                                             "parameters": {"type": "object", "properties": props, "required": required}}}


def tool_prompt(tools: dict[str, Any]) -> str | None:
    """The system text that lists the tools and the call format (None when there are no tools)."""
    if not tools:
        return None
    lines = [json.dumps(tool_schema(n, fn)) for n, fn in sorted(tools.items())]
    return ("You can call tools. To call one, write exactly\n"
            '<tool_call>{"name": NAME, "arguments": {ARGUMENTS}}</tool_call>\n'
            "and wait for its result. When you know the answer, reply without a tool call.\nTools:\n" + "\n".join(lines))


def parse_tool_calls(text: str) -> list[dict | str]:
    """The tool calls in a model turn, in order: a dict ``{"name", "arguments"}`` for a well-formed
    one, an error message (str) for a malformed one. No ``<tool_call>`` in `text`: []."""
    out: list[dict | str] = []
    for m in _CALL.finditer(text):
        body, closed = m.group(1).strip(), bool(m.group(2))
        if not closed:
            out.append("malformed tool call: missing </tool_call>")
            continue
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            out.append(f"malformed tool call: not JSON ({e.msg} at character {e.pos})")
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            out.append('malformed tool call: expected {"name": "...", "arguments": {...}}')
            continue
        args = call.get("arguments", {})
        if not isinstance(args, dict):
            out.append("malformed tool call: 'arguments' must be a JSON object")
            continue
        out.append({"name": call["name"], "arguments": args})
    return out


def _check_arguments(fn, args: dict) -> str | None:
    """None when `args` bind to `fn` with the annotated types, else what is wrong."""
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(**args)
    except TypeError as e:
        return f"bad arguments: {e}"
    for name, value in bound.arguments.items():
        ann = sig.parameters[name].annotation
        if ann is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if ann in _JSON_TYPES and not (isinstance(value, ann) and not (ann is not bool and isinstance(value, bool))):
            return f"argument '{name}' must be {_JSON_TYPES[ann]}, got {json.dumps(value)}"
    return None


def _run_one(session, call: dict | str) -> str:
    c = session.counts
    if isinstance(call, str):
        c["malformed_calls"] += 1
        return json.dumps({"error": call})
    name = call["name"]
    fn = session.tools.get(name)
    if fn is None:
        c["tool_errors"] += 1
        return json.dumps({"name": name, "error": f"unknown tool '{name}' (tools: {', '.join(sorted(session.tools))})"})
    problem = _check_arguments(fn, call["arguments"])
    if problem is not None:
        c["tool_errors"] += 1
        return json.dumps({"name": name, "error": problem})
    try:
        result = call_with_timeout(fn, timeout_s=session.timeout_s, what=f"tool {name}", **call["arguments"])
    except EnvFailure as e:
        if e.kind == "env_timeout":
            raise
        c["tool_errors"] += 1
        return json.dumps({"name": name, "error": str(e).split(" raised ", 1)[-1]})
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    if len(text) > session.max_output_chars:
        c["truncated_outputs"] += 1
        text = text[: session.max_output_chars]
    return json.dumps({"name": name, "content": text})


def run_tool_calls(session, calls: list[dict | str]) -> str:
    """Run the calls of one turn; their results (or errors) as the env turn's text."""
    return "\n".join(f"<tool_response>{_run_one(session, call)}</tool_response>" for call in calls)
