"""`RemoteSandbox`: the `Sandbox` protocol over SandboxFusion's HTTP API (``POST /run_code``).

Request (SandboxFusion's ``RunCodeRequest``; the shape verl's ``sandbox_fusion/utils.py`` sends)::

    {"code": ..., "language": "python", "stdin": ..., "compile_timeout": s, "run_timeout": s,
     "memory_limit_MB": mb, "files": {path: base64}, "fetch_files": []}

Answer: ``{"status": "Success" | "Failed" | "SandboxError", "message": ..., "compile_result": ...,
"run_result": {"status": "Finished" | "TimeLimitExceeded" | "Error", "return_code": n,
"stdout": ..., "stderr": ..., "execution_time": s}}``.

The isolation is the server's (SandboxFusion runs each request in its own container / overlay);
this client only maps the answer to a `RunResult`. SandboxFusion reports no signal or memory
status: a killed program is "error" with its return code. A server that does not answer, answers
with an HTTP error or with something that is not SandboxFusion's JSON raises (`SandboxUnavailable`
when it cannot be reached, `SandboxError` otherwise): an unreachable sandbox must not read as
programs that fail.
"""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request

from posttrain.sandbox.base import MAX_OUTPUT_BYTES, RunResult, SandboxError, SandboxUnavailable

__all__ = ["RemoteSandbox"]


def _cut(text) -> tuple[str, bool]:
    raw = (text or "").encode("utf-8", "replace")
    return raw[:MAX_OUTPUT_BYTES].decode("utf-8", "replace"), len(raw) > MAX_OUTPUT_BYTES


class RemoteSandbox:
    """A SandboxFusion server: ``RemoteSandbox("http://host:8080")`` (``/run_code`` is appended when missing).

    request_slack_s: seconds allowed on top of the run's timeout for the HTTP round trip."""

    def __init__(self, url: str, request_slack_s: float = 10.0):
        url = url.rstrip("/")
        self.url = url if url.endswith("/run_code") else url + "/run_code"
        self.request_slack_s = float(request_slack_s)

    def __repr__(self) -> str:
        return f"RemoteSandbox({self.url!r})"

    def run(self, code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
            files: dict[str, str] | None = None) -> RunResult:
        payload = {
            "code": code, "language": "python", "stdin": stdin, "compile_timeout": timeout_s, "run_timeout": timeout_s,
            "memory_limit_MB": memory_mb, "fetch_files": [],
            "files": {k: base64.b64encode(v.encode()).decode() for k, v in (files or {}).items()},
        }
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout_s + self.request_slack_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            raise SandboxError(f"SandboxFusion at {self.url} answered HTTP {e.code}: {e.reason}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            why = getattr(e, "reason", e)
            raise SandboxUnavailable(f"SandboxFusion at {self.url} did not answer: {why}") from None
        try:
            answer = json.loads(body)
            run = answer.get("run_result") or {}
            top = answer["status"]
        except (ValueError, KeyError, AttributeError, TypeError):
            raise SandboxError(f"SandboxFusion at {self.url} answered something that is not its JSON: {body[:200]!r}") from None
        return self._result(top, answer, run, time.monotonic() - t0)

    @staticmethod
    def _result(top: str, answer: dict, run: dict, wall_s: float) -> RunResult:
        if top == "SandboxError":
            raise SandboxError(f"SandboxFusion could not run the code: {answer.get('message')}")
        out, cut_out = _cut(run.get("stdout"))
        err, cut_err = _cut(run.get("stderr"))
        rstatus, code = run.get("status"), run.get("return_code")
        if rstatus == "TimeLimitExceeded":
            status, reason, code = "timeout", "run_timeout reached (SandboxFusion)", None
        elif rstatus == "Finished" and code == 0:
            status, reason = "ok", "exited with status 0"
        elif "MemoryError" in (err or "")[-2000:]:
            status, reason = "memory", "MemoryError (SandboxFusion)"
        else:
            status = "error"
            reason = f"exited with status {code}" if code is not None else f"SandboxFusion: {rstatus or answer.get('message')}"
        return RunResult(status=status, exit_code=code, stdout=out, stderr=err, wall_s=wall_s,
                         timed_out=status == "timeout", reason=reason, truncated=cut_out or cut_err)
