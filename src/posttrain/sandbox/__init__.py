"""Run untrusted Python (model-written programs) in a sandbox: one fresh, isolated process per call.

API::

    run_python(code, stdin="", timeout_s=5.0, memory_mb=512, files=None, isolation="auto") -> RunResult
    LocalSandbox(isolation="auto").run(code, stdin="", timeout_s=5.0, memory_mb=512, files=None)
    SandboxPool(sandbox=None, max_workers=2).map([{"code": ..., "stdin": ...}, ...]) -> [RunResult] (in order)
    RemoteSandbox(url)       the same protocol against a SandboxFusion server (``POST /run_code``)

`RunResult.status` is "ok" | "error" | "timeout" | "memory" | "signal" | "output_limit".

How one run is isolated (``isolation="namespaces"``, what "auto" picks)
-------------------------------------------------------------------------
The caller starts a small trusted launcher (`_launcher.py`, the base interpreter with ``-I -S -B``,
stdlib only) in its own session and process group (``start_new_session``) and sends it the code on a
pipe. The launcher:

- **namespaces**: ``unshare(CLONE_NEWNS | NEWPID | NEWNET | NEWIPC | NEWUTS)`` through ctypes (no
  ``os.unshare`` before Python 3.12); without root it adds a user namespace mapping the caller's uid
  to 65534. Then it forks *init*, pid 1 of the new PID namespace, which forks the program.
- **no process outlives the call**: when the program exits, init exits, and the kernel SIGKILLs and
  reaps every process left in the namespace (double-forked, ``setsid``-ed daemons included: they
  cannot leave a PID namespace). Init is killed (through a pidfd, never a pid that could be
  recycled) at the wall-clock deadline, or when the caller asks because stdout/stderr passed
  64 KiB. Launcher and init carry PR_SET_PDEATHSIG, so the chain dies with the caller too. The caller
  reaps the launcher, the launcher init: no zombies. Past deadline + 10 s the caller kills the
  launcher's process group itself (a last resort that should never fire).
- **not root, not the caller's uid**: the program runs under a fresh uid per run, drawn from
  1.8e9..1.9e9 (as root: ``setresuid`` drops every capability), or 65534 inside its own user
  namespace (not root: capabilities are lost at ``execve`` because the uid is not 0 there). A per-run
  uid keeps RLIMIT_NPROC (counted per uid) from being shared by concurrent runs, so one run's fork
  bomb cannot make another fail. PR_SET_NO_NEW_PRIVS is set; init is non-dumpable (no ptrace, no
  ``/proc/1/mem``) and unreachable by signals from inside its namespace.
- **filesystem**: a mount namespace whose root is a new tmpfs (remounted read-only) holding only
  read-only binds of /usr (and the /bin, /lib... symlinks or dirs), the interpreter's prefix at its
  own path (here under /root/.pyenv: the rest of /root is not there), /etc/ld.so.cache, the device
  nodes null/zero/full/random/urandom, and ``/sandbox``: a private tmpfs (64 MiB) owned by the run's
  uid, mode 700, the cwd and HOME, holding main.py and `files`. ``pivot_root`` + detach removes the
  host tree from the namespace entirely: the project, /root, /home, /tmp, /etc, /proc, /sys,
  /dev/shm are not hidden but absent. Writes outside /sandbox fail (read-only or missing), and
  /sandbox vanishes with the namespace.
- **no network**: a new network namespace with only loopback (brought up, so a program may talk
  to itself); a listener the caller opened on 127.0.0.1 lives in another namespace: connection refused.
- **environment**: exactly PATH, LANG=C.UTF-8, HOME=/sandbox; the interpreter runs ``-I -S -B``
  (isolated mode: no PYTHON* variables, no user site, no site-packages, no .pyc writes): the stdlib only.
- **rlimits** (set in the program's process before exec): RLIMIT_CPU = ceil(timeout)+1 s (SIGXCPU,
  SIGKILL a second later), RLIMIT_AS = memory_mb, RLIMIT_NPROC = 32, RLIMIT_FSIZE = the tmpfs size,
  RLIMIT_NOFILE = 256, RLIMIT_CORE = 0. stdin is a private memfd.

How each outcome is told: exit 0 "ok"; other exit codes "error", or "memory" when the end of stderr
shows MemoryError (a heuristic: RLIMIT_AS makes Python raise it; a program printing that word only
mislabels its own failure); SIGXCPU or the deadline "timeout"; SIGXFSZ or output over 64 KiB
"output_limit"; any other signal "signal" (a segfault through ctypes is SIGSEGV).

``isolation="process"`` (explicit only, root only): a fresh session, the per-run uid, the rlimits, the
scrubbed environment and a fresh work folder under /tmp, and on exit every process of the run's uid
is SIGKILLed (``kill(-1)`` from a helper of that uid; init is a child subreaper and reaps what it
adopts). It has **no network or filesystem isolation** (world-readable files stay readable), so
"auto" never picks it: where namespaces are unavailable "auto" raises `SandboxUnavailable` naming
what is missing and the alternatives. No level falls back silently.

Departures from the peers
-------------------------
- verl's ``reliability_guard`` (from OpenAI's human-eval) disables ``os.kill``, ``shutil.rmtree``...
  inside the same interpreter; its own docstring says it is not a security sandbox. posttrain never
  runs the code in the caller's process, and relies on the kernel, not on monkeypatching.
- verl's SandboxFusion backend (and `RemoteSandbox` here) sends code to a server that isolates it in
  containers; posttrain's local sandbox needs no server, no Docker and no cgroup delegation, at the
  price of no cgroup memory/pids accounting (RLIMIT_AS / per-uid RLIMIT_NPROC instead). tmpfs pages
  written to /sandbox are not charged to RLIMIT_AS; the tmpfs size caps them.
- DeepCoder / rllm use firejail (``--net=none --private``, a seccomp filter, ``--rlimit-*``).
  posttrain does the same namespace work with ~300 lines of ctypes and no setuid binary, and has no
  seccomp filter: the kernel's attack surface reachable from the sandbox is that of an unprivileged
  process in its own namespaces. Where that matters, use a VM or gVisor-backed SandboxFusion.
- A run costs about two interpreter starts (launcher + program) and the namespace set-up: see
  ``benchmarks/sandbox_overhead.py`` for the ratio against a bare ``subprocess.run``.
"""
from posttrain.sandbox.base import (
    MAX_OUTPUT_BYTES, STATUSES, RunResult, Sandbox, SandboxError, SandboxPool, SandboxUnavailable,
)
from posttrain.sandbox.local import ISOLATION_LEVELS, LocalSandbox, isolation_available, run_python
from posttrain.sandbox.remote import RemoteSandbox

__all__ = [
    "RunResult", "Sandbox", "SandboxPool", "SandboxUnavailable", "SandboxError", "LocalSandbox", "RemoteSandbox",
    "run_python", "isolation_available", "ISOLATION_LEVELS", "MAX_OUTPUT_BYTES", "STATUSES",
]
