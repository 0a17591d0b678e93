"""The sandbox's types: `RunResult`, the `Sandbox` protocol, its errors and `SandboxPool`."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from posttrain.errors import UserError

__all__ = ["RunResult", "Sandbox", "SandboxPool", "SandboxUnavailable", "SandboxError", "STATUSES",
           "MAX_OUTPUT_BYTES"]

MAX_OUTPUT_BYTES = 64 * 1024  # per stream; past it the run is stopped ("output_limit")
STATUSES = ("ok", "error", "timeout", "memory", "signal", "output_limit")


class SandboxUnavailable(UserError):
    """The isolation asked for cannot be had here (the message says what is missing and the options)."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): a setup step, the launcher, a remote backend's answer."""


@dataclass(frozen=True)
class RunResult:
    """How one sandboxed run ended.

    status: "ok" (exit 0) | "error" (non-zero exit) | "timeout" (wall clock or CPU limit) | "memory"
      (MemoryError under the address-space limit) | "signal" (killed by a signal, e.g. SIGSEGV) |
      "output_limit" (stdout or stderr passed MAX_OUTPUT_BYTES, or a file passed the size limit).
    exit_code: the exit status when the program exited, else None.
    stdout, stderr: decoded (UTF-8, invalid bytes replaced), each at most MAX_OUTPUT_BYTES bytes.
    wall_s: seconds from the call to its return, sandbox set-up included.
    timed_out: status == "timeout".
    reason: why it stopped, in words.
    truncated: stdout or stderr was cut at MAX_OUTPUT_BYTES.
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool
    reason: str
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@runtime_checkable
class Sandbox(Protocol):
    def run(self, code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
            files: dict[str, str] | None = None) -> RunResult: ...


class SandboxPool:
    """Runs jobs (keyword dicts for `Sandbox.run`) on up to `max_workers` threads; results in job order.

    Each job is its own sandboxed process; the threads only wait on them. `sandbox` defaults to
    `LocalSandbox()` (strongest isolation available, raising `SandboxUnavailable` if there is none)."""

    def __init__(self, sandbox: Sandbox | None = None, max_workers: int = 2):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if sandbox is None:
            from posttrain.sandbox.local import LocalSandbox

            sandbox = LocalSandbox()
        self.sandbox = sandbox
        self.max_workers = int(max_workers)

    def map(self, jobs: list[dict]) -> list[RunResult]:
        jobs = list(jobs)
        if len(jobs) <= 1 or self.max_workers == 1:
            return [self.sandbox.run(**job) for job in jobs]
        with ThreadPoolExecutor(min(self.max_workers, len(jobs)), thread_name_prefix="posttrain-sandbox") as ex:
            return list(ex.map(lambda job: self.sandbox.run(**job), jobs))
