"""Tool calls in conversations: OpenAI-style ``tool_calls`` / ``tool`` messages, checked and rendered.

A conversation row may carry an agent transcript in the OpenAI / Hugging Face shape::

    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "id": "c1",
        "function": {"name": "calculator", "arguments": {"expression": "6*7"}}}]}
    {"role": "tool", "tool_call_id": "c1", "content": "42"}

(``arguments`` an object or a JSON string of one; ``content`` may be null beside tool calls).
`check_tool_messages` says what is wrong with such a list (message index and field); `plain_messages`
turns it into plain {role, content} messages in the text format the multi-turn rollout speaks
(`posttrain.envs.tools`), for a chat template that does not render tool calls itself (the project's
tiny-model template, SmolLM2's): an assistant turn becomes its content, a newline, then one
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` per call (newline-separated); a run of
tool messages becomes one message in the env role (``rl.env_role``, "user" by default) holding one
``<tool_response>{"name": ..., "content": ...}</tool_response>`` per result, newline-separated, as
`posttrain.envs.tools.run_tool_calls` writes it. A template that renders tool calls itself
(`renders_tool_calls`) gets the messages unchanged.
"""
from __future__ import annotations

import json

_PROBE = "posttrain_probe_tool"
_NATIVE: dict[str, bool] = {}  # chat template text -> whether it renders tool calls


def _parse_arguments(args) -> tuple[dict | None, str]:
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            return None, f"is a string but not JSON ({e.msg} at character {e.pos})"
    if not isinstance(args, dict):
        return None, f"must be a JSON object, got {type(args).__name__}"
    return args, ""


def _check_calls(calls, j: int) -> tuple[list[dict], str]:
    """The calls of message `j` in OpenAI shape, arguments parsed to a dict, or what is wrong with them."""
    if not isinstance(calls, list) or not calls:
        return [], f"message {j}: 'tool_calls' must be a non-empty list of calls"
    out = []
    for k, c in enumerate(calls):
        at = f"message {j}: 'tool_calls' {k}"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict):
            return [], f"{at}: expected {{\"type\": \"function\", \"function\": {{\"name\": ..., \"arguments\": {{...}}}}}}"
        if c.get("type", "function") != "function":
            return [], f"{at}: type {c.get('type')!r} is not 'function'"
        if not isinstance(fn.get("name"), str) or not fn["name"].strip():
            return [], f"{at}: 'function.name' must be a non-empty string"
        args, why = _parse_arguments(fn.get("arguments", {}))
        if args is None:
            return [], f"{at}: 'function.arguments' {why}"
        call = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        out.append({**call, "id": c["id"]} if c.get("id") is not None else call)
    return out, ""


def check_tool_messages(messages: list[dict]) -> tuple[list[dict], str]:
    """(the messages with their tool calls normalized, '') or ([], what is wrong: message index and
    field). Checks: ``tool_calls`` only on assistant messages and well formed; every ``tool`` message
    answers a call of the assistant turn before its run of tool messages (at most one per call; a
    ``tool_call_id`` must name one of them); content a string (null allowed beside tool calls)."""
    out, pending, answered = [], [], 0
    for j, m in enumerate(messages):
        role, msg = m.get("role"), {"role": m.get("role"), "content": m.get("content")}
        if "tool_calls" in m and m["tool_calls"] is not None:
            if role != "assistant":
                return [], f"message {j}: 'tool_calls' on a '{role}' message (only assistant messages make calls)"
            calls, why = _check_calls(m["tool_calls"], j)
            if why:
                return [], why
            msg["tool_calls"], pending, answered = calls, calls, 0
            msg["content"] = "" if msg["content"] is None else msg["content"]
        elif role == "tool":
            if answered >= len(pending):
                return [], (f"message {j}: 'role' is 'tool' but no assistant tool call precedes it"
                            if not pending else f"message {j}: more tool results than the {len(pending)} call(s) before them")
            cid = m.get("tool_call_id")
            ids = [c["id"] for c in pending if c.get("id") is not None]
            if cid is not None and ids and cid not in ids:
                return [], f"message {j}: 'tool_call_id' {cid!r} names none of the calls before it ({ids})"
            call = next((c for c in pending if c.get("id") == cid), None) if cid is not None else None
            msg["name"] = m.get("name") if isinstance(m.get("name"), str) else (call or pending[answered])["function"]["name"]
            answered += 1
        else:
            pending, answered = [], 0
        if not isinstance(msg["content"], str):
            return [], f"message {j}: 'content' must be a string"
        out.append(msg)
    return out, ""


def has_tool_messages(messages: list[dict]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def call_text(name: str, arguments: dict) -> str:
    """One call in the rollout's text format (the exact shape `posttrain.envs.tools.tool_prompt` asks for)."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def result_text(name: str, content: str) -> str:
    """One tool result as `posttrain.envs.tools.run_tool_calls` writes it."""
    return f"<tool_response>{json.dumps({'name': name, 'content': content})}</tool_response>"


def plain_messages(messages: list[dict], env_role: str = "user") -> list[dict]:
    """Checked messages (`check_tool_messages`) as plain {role, content} messages in the rollout's
    text format (module docstring). Raises ValueError on a malformed list."""
    msgs, why = check_tool_messages(messages)
    if why:
        raise ValueError(why)
    out: list[dict] = []
    for m in msgs:
        if m.get("tool_calls"):
            calls = "\n".join(call_text(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + calls})
        elif m["role"] == "tool":
            text = result_text(m["name"], m["content"])
            if out and out[-1].get("_tool_run"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": env_role, "content": text, "_tool_run": True})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def renders_tool_calls(tokenizer) -> bool:
    """Whether the tokenizer's chat template writes an assistant message's ``tool_calls`` (cached per template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    if template not in _NATIVE:
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "id": "c0", "function": {"name": _PROBE, "arguments": {"x": 1}}}]}]
        try:
            _NATIVE[template] = _PROBE in tokenizer.apply_chat_template(msgs, tokenize=False)
        except Exception:  # a template that refuses the shape does not render it
            _NATIVE[template] = False
    return _NATIVE[template]


def render_ready(tokenizer, messages: list[dict], env_role: str = "user") -> list[dict]:
    """`messages` as the tokenizer's template should get them: unchanged without tool messages or
    when the template renders tool calls itself, else `plain_messages`."""
    if not has_tool_messages(messages) or renders_tool_calls(tokenizer):
        return messages
    return plain_messages(messages, env_role)
