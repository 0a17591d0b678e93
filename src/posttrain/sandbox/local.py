"""`run_python` and `LocalSandbox`: the caller's side of a sandboxed run (the launcher is `_launcher.py`)."""
from __future__ import annotations

import ast
import marshal
import math
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

from posttrain.sandbox.base import MAX_OUTPUT_BYTES, RunResult, SandboxError, SandboxUnavailable

__all__ = ["run_python", "LocalSandbox", "isolation_available", "ISOLATION_LEVELS"]

ISOLATION_LEVELS = ("namespaces", "process")  # strongest first; "auto" means the first available
LAUNCHER = str(Path(__file__).with_name("_launcher.py"))
PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)  # not the venv's
RUN_UID_BASE, RUN_UID_SPAN = 1_800_000_000, 100_000_000  # root: a fresh uid per run from this range
NOBODY = 65534  # without root: the uid the caller's uid is mapped to inside its user namespace
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # + HOME=<work dir>; nothing else
LAUNCHER_GRACE_S = 10.0  # past timeout_s + this, the caller kills the launcher itself (a last resort)
NPROC, NOFILE, WORK_MIB = 32, 256, 64
_SIGNAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")}


def _check_args(code, stdin, timeout_s, memory_mb, files) -> dict[str, str]:
    if not isinstance(code, str) or not isinstance(stdin, str):
        raise TypeError("code and stdin must be str")
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= 3600):
        raise ValueError(f"timeout_s must be in (0, 3600], got {timeout_s!r}")
    if not (isinstance(memory_mb, int) and 32 <= memory_mb <= 1 << 20):
        raise ValueError(f"memory_mb must be an int >= 32, got {memory_mb!r}")
    files = dict(files or {})
    for name, text in files.items():
        p = PurePosixPath(name)
        if not name or p.is_absolute() or ".." in p.parts or str(p) == "main.py" or not isinstance(text, str):
            raise ValueError(f"files: {name!r} must be a relative path inside the work folder (not main.py) "
                             "with str contents")
    return files


def _config(isolation, code, stdin, timeout_s, memory_mb, files, status_fd) -> dict:
    root = os.geteuid() == 0
    uid = RUN_UID_BASE + secrets.randbelow(RUN_UID_SPAN) if root else NOBODY
    size = sum(len(t.encode()) for t in files.values()) + len(code.encode())
    work_kib = max(WORK_MIB * 1024, 2 * size // 1024 + 1024)
    return {
        "isolation": isolation, "code": code, "stdin": stdin, "files": files, "timeout_s": float(timeout_s),
        "uid": uid, "gid": uid, "python": PYTHON, "env": ENV, "status_fd": status_fd, "parent_pid": os.getpid(),
        "mount_dir": tempfile.gettempdir(), "work_kib": work_kib,
        "ro_paths": sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                            os.path.dirname(PYTHON)}),
        "limits": {"cpu_s": int(math.ceil(timeout_s)) + 1, "as_bytes": memory_mb << 20, "nproc": NPROC,
                   "fsize_bytes": work_kib << 10, "nofile": NOFILE},
    }


def _launch(cfg: dict, status_w: int) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-I", "-S", "-B", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(status_w,), start_new_session=True, env=ENV, cwd="/")
    os.close(status_w)
    try:
        proc.stdin.write(marshal.dumps(cfg))
        proc.stdin.close()
    except BrokenPipeError:  # the launcher died before reading: its status / exit code says why
        pass
    return proc


def _collect(proc: subprocess.Popen, status_r: int, deadline: float):
    """Read stdout, stderr and the status pipe until all close; stop the run when output passes the
    limit; kill the launcher's process group past `deadline`. -> (out, err, status, over, hard_killed)."""
    sel = selectors.DefaultSelector()
    out, err, status = bytearray(), bytearray(), bytearray()
    bufs = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    over, hard_killed = None, False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if hard_killed:
                    break  # something still holds a pipe open; give up on it
                hard_killed = True
                os.killpg(proc.pid, signal.SIGKILL)  # launcher + init; init's death kills the namespace
                deadline = time.monotonic() + 2.0
                continue
            for key, _ in sel.select(min(left, 1.0)):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                if key.fd != status_r and len(buf) > MAX_OUTPUT_BYTES:
                    continue  # already over: drain and drop
                buf += data
                if key.fd != status_r and len(buf) > MAX_OUTPUT_BYTES and over is None:
                    over = "stdout" if key.fd == proc.stdout.fileno() else "stderr"
                    if proc.poll() is None:  # not reaped: the pid is still the launcher's
                        proc.send_signal(signal.SIGTERM)  # the launcher kills init
    finally:
        sel.close()
    return bytes(out), bytes(err), bytes(status), over, hard_killed


def _parse_status(raw: bytes) -> dict:
    merged = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            merged.update(ast.literal_eval(line))  # repr() of a small dict, written by the launcher only
        except (ValueError, SyntaxError, TypeError):
            continue
    return merged


def _classify(st: dict, over, hard_killed, err_text: str, timeout_s: float, memory_mb: int):
    """-> (status, exit_code, reason)."""
    if over:
        return "output_limit", None, f"{over} passed the {MAX_OUTPUT_BYTES}-byte limit; the run was stopped"
    if hard_killed:
        return "timeout", None, f"the launcher did not finish {LAUNCHER_GRACE_S:g} s after the {timeout_s:g} s limit; killed"
    if st.get("stopped") == "timeout":
        return "timeout", None, f"killed after the {timeout_s:g} s wall-clock limit"
    if st.get("stopped") == "killed":
        return "signal", None, "stopped by the caller"
    wait = st.get("program")
    if wait is None:
        raise SandboxError(f"sandbox launcher gave no status (status record {st!r}); stderr: {err_text[-500:]!r}")
    if os.WIFSIGNALED(wait):
        sig = os.WTERMSIG(wait)
        name = _SIGNAMES.get(sig, f"signal {sig}")
        if sig == signal.SIGXCPU:
            return "timeout", None, "killed by SIGXCPU: CPU-time limit"
        if sig == signal.SIGXFSZ:
            return "output_limit", None, "killed by SIGXFSZ: wrote a file past the size limit"
        return "signal", None, f"killed by {name}"
    code = os.WEXITSTATUS(wait)
    if code == 0:
        return "ok", 0, "exited with status 0"
    tail = err_text.strip().splitlines()[-1][:300] if err_text.strip() else ""
    if "MemoryError" in err_text[-2000:] or "Cannot allocate memory" in err_text[-2000:]:
        return "memory", code, f"ran out of memory under the {memory_mb} MiB address-space limit ({tail})"
    return "error", code, f"exited with status {code}" + (f" ({tail})" if tail else "")


def _run(isolation: str, code: str, stdin: str, timeout_s: float, memory_mb: int, files: dict) -> RunResult:
    t0 = time.monotonic()
    status_r, status_w = os.pipe()
    try:
        proc = _launch(_config(isolation, code, stdin, timeout_s, memory_mb, files, status_w), status_w)
        try:
            out, err, raw, over, hard = _collect(proc, status_r, t0 + timeout_s + LAUNCHER_GRACE_S)
        finally:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for f in (proc.stdout, proc.stderr):
                f.close()
    finally:
        os.close(status_r)
    st = _parse_status(raw)
    err_text = err.decode("utf-8", "replace")
    if "setup_error" in st:
        raise SandboxError(f"sandbox set-up failed ({isolation}): {st['setup_error']}")
    status, exit_code, reason = _classify(st, over, hard, err_text, timeout_s, memory_mb)
    return RunResult(status=status, exit_code=exit_code,
                     stdout=out[:MAX_OUTPUT_BYTES].decode("utf-8", "replace"),
                     stderr=err[:MAX_OUTPUT_BYTES].decode("utf-8", "replace"),
                     wall_s=time.monotonic() - t0, timed_out=status == "timeout", reason=reason,
                     truncated=len(out) > MAX_OUTPUT_BYTES or len(err) > MAX_OUTPUT_BYTES)


# ---------------------------------------------------------------- which isolation is available
_AVAILABLE: dict[str, str | None] = {}  # level -> None (available) or why not; probed once per process
_PROBE_LOCK = threading.Lock()


def isolation_available(level: str) -> str | None:
    """None when `level` works here, else what is missing (probed once per process by a real run)."""
    if level not in ISOLATION_LEVELS:
        raise ValueError(f"unknown isolation {level!r}; known: auto, {', '.join(ISOLATION_LEVELS)}")
    with _PROBE_LOCK:
        if level not in _AVAILABLE:
            _AVAILABLE[level] = _probe(level)
        return _AVAILABLE[level]


def _probe(level: str) -> str | None:
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (this is {sys.platform})"
    if level == "process" and os.geteuid() != 0:
        return "'process' isolation needs root, to run the program under an unprivileged uid"
    try:
        res = _run(level, "print('ok')", "", 10.0, 256, {})
    except (SandboxError, OSError) as e:
        return str(e)
    if res.status != "ok" or res.stdout.strip() != "ok":
        return f"a trial run did not succeed: {res.reason}; stderr: {res.stderr[-300:]!r}"
    return None


def _resolve(isolation: str) -> str:
    if isolation == "auto":
        why = isolation_available("namespaces")
        if why is None:
            return "namespaces"
        raise SandboxUnavailable(
            f"no sandbox for untrusted code is available here: namespace isolation failed ({why}). It needs root "
            "or unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also "
            "kernel.apparmor_restrict_unprivileged_userns=0). Alternatives: RemoteSandbox(url) (SandboxFusion), "
            "or isolation='process' explicitly (root only; no network or filesystem isolation)")
    why = isolation_available(isolation)
    if why is not None:
        raise SandboxUnavailable(f"sandbox isolation {isolation!r} is not available here: {why}")
    return isolation


def run_python(code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
               files: dict[str, str] | None = None, isolation: str = "auto") -> RunResult:
    """Run `code` as ``python -I -S -B main.py`` in a fresh sandbox (see `posttrain.sandbox`).

    `files` (relative path -> text) are written beside main.py in the work folder. Raises
    `SandboxUnavailable` when the isolation asked for cannot be had (never a silent fallback) and
    `SandboxError` when the sandbox itself fails; everything the program does is in the `RunResult`."""
    files = _check_args(code, stdin, timeout_s, memory_mb, files)
    return _run(_resolve(isolation), code, stdin, timeout_s, memory_mb, files)


class LocalSandbox:
    """`Sandbox` on this machine; the isolation is resolved (and probed) at construction."""

    def __init__(self, isolation: str = "auto"):
        self.isolation = _resolve(isolation)

    def run(self, code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
            files: dict[str, str] | None = None) -> RunResult:
        return run_python(code, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb, files=files,
                          isolation=self.isolation)

    def __repr__(self) -> str:
        return f"LocalSandbox(isolation={self.isolation!r})"
