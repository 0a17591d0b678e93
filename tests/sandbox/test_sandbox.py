"""The sandbox against a hostile set: every case scored right, the call returns, nothing escapes.

Runs as root here and in CI (so the real uid switch is exercised); elsewhere the namespace level needs
unprivileged user namespaces, and the module is skipped with the reason when neither is available."""
import os
import secrets
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from posttrain.errors import UserError
from posttrain.sandbox import (
    MAX_OUTPUT_BYTES, LocalSandbox, RemoteSandbox, RunResult, Sandbox, SandboxPool, SandboxUnavailable,
    isolation_available, run_python,
)
from posttrain.sandbox import local as sandbox_local

PROJECT = Path(__file__).resolve().parents[2]
WHY = isolation_available("namespaces")
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"namespace sandbox unavailable: {WHY}")


def procs_with(marker: str) -> list[int]:
    """Pids whose command line holds `marker` (scanning the host's /proc)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    found.append(int(d))
            except OSError:
                continue
    return found


def my_zombies() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == os.getpid():
                out.append(int(d))
    return out


def test_a_plain_run_its_stdin_files_and_exit_codes():
    r = run_python("import sys\nprint(open('data/x.txt').read(), sys.stdin.read().upper())", stdin="abc",
                   files={"data/x.txt": "hello"})
    assert isinstance(r, RunResult) and r.status == "ok" and r.exit_code == 0 and not r.timed_out
    assert r.stdout == "hello ABC\n" and r.stderr == "" and r.wall_s > 0
    r = run_python("import sys\nprint('bad', file=sys.stderr)\nsys.exit(3)")
    assert (r.status, r.exit_code, r.stderr) == ("error", 3, "bad\n") and "status 3" in r.reason
    r = run_python("raise ValueError('nope')")
    assert r.status == "error" and r.exit_code == 1 and "ValueError: nope" in r.reason


def test_it_runs_unprivileged_isolated_in_a_fresh_work_folder():
    r = run_python("import os, sys\nopen('w', 'w').write('1')\n"
                   "print(os.getuid(), os.geteuid(), os.getgid(), os.getcwd(), os.environ['HOME'], "
                   "os.stat('w').st_uid == os.getuid(), sorted(os.listdir('.')), sys.flags.isolated, "
                   "sys.flags.no_site, sys.flags.dont_write_bytecode)")
    uid, euid, gid, cwd, home, owns, rest = r.stdout.split(" ", 6)
    assert r.status == "ok" and int(uid) != 0 and int(euid) != 0 and int(gid) != 0 and int(uid) != os.getuid()
    assert cwd == home == "/sandbox" and owns == "True"
    assert rest.endswith("['main.py', 'w'] 1 1 1\n")
    uids = {run_python("import os; print(os.getuid())").stdout for _ in range(2)}
    assert len(uids) == 2 or os.geteuid() != 0  # a fresh uid per run (as root)


def test_infinite_loop_is_a_timeout_and_returns_on_time():
    r = run_python("while True:\n    pass", timeout_s=1.0)
    assert r.status == "timeout" and r.timed_out and r.exit_code is None and "1 s" in r.reason
    assert r.wall_s < 4.0


def test_memory_bomb_is_memory():
    r = run_python("x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))", memory_mb=256, timeout_s=5.0)
    assert r.status == "memory" and "256 MiB" in r.reason
    assert run_python("b = bytearray(10**10)").status == "memory"


def test_output_flood_is_stopped_and_truncated():
    t0 = time.monotonic()
    r = run_python("while True:\n    print('x' * 1000)", timeout_s=20.0)
    assert r.status == "output_limit" and r.truncated and len(r.stdout.encode()) <= MAX_OUTPUT_BYTES
    assert time.monotonic() - t0 < 5.0  # stopped at the limit, not at the timeout
    r = run_python("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)", timeout_s=20.0)
    assert r.status == "output_limit" and len(r.stderr.encode()) <= MAX_OUTPUT_BYTES


def test_segfault_through_ctypes_is_a_signal():
    r = run_python("import ctypes\nctypes.string_at(0)")
    assert r.status == "signal" and "SIGSEGV" in r.reason and r.exit_code is None


def test_fork_bomb_is_contained_and_leaves_nothing():
    marker = f"posttrain-bomb-{secrets.token_hex(6)}"
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    code = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {bomb!r}, {marker!r}])"
    r = run_python(code, timeout_s=1.5)
    assert r.status == "timeout" and r.wall_s < 6.0
    assert procs_with(marker) == [] and my_zombies() == []


def test_a_fork_bomb_does_not_starve_a_concurrent_run():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    bombed, fine = SandboxPool(max_workers=2).map([{"code": bomb, "timeout_s": 1.5},
                                                   {"code": "import time; time.sleep(0.3); print('fine')"}])
    assert bombed.status == "timeout" and (fine.status, fine.stdout) == ("ok", "fine\n")


def test_background_process_does_not_outlive_the_call():
    marker = f"posttrain-daemon-{secrets.token_hex(6)}"
    code = ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    pid = os.fork()\n"
            f"    if pid == 0:\n        os.execv('/bin/sleep', [{marker!r}, '30'])\n"
            "    os.write(w, str(pid).encode())\n    os._exit(0)\nos.close(w)\npid = int(os.read(r, 32))\n"
            "time.sleep(0.2)\nos.kill(pid, 0)\nprint('left it running')")  # kill(pid, 0): it is alive
    r = run_python(code, timeout_s=5.0)
    assert r.status == "ok" and r.stdout == "left it running\n" and r.wall_s < 4.0
    assert procs_with(marker) == [] and my_zombies() == []


def test_killing_its_parent_does_not_reach_the_caller():
    code = (f"import os\nfor pid in (os.getppid(), {os.getpid()}, {os.getppid()}):\n    try:\n"
            "        os.kill(pid, 9)\n        print(pid, 'sent')\n    except OSError as e:\n"
            "        print(pid, type(e).__name__)\nprint('done')")
    r = run_python(code)
    assert r.status == "ok" and r.stdout.endswith("done\n")
    first = r.stdout.splitlines()[0].split()
    assert first[0] == "1" and first[1] == "PermissionError"  # its parent is the sandbox's init
    assert "sent" not in r.stdout  # the caller's pids are not even visible


def test_writes_outside_its_folder_fail(tmp_path):
    tag = secrets.token_hex(6)
    targets = [f"/tmp/escape-{tag}", str(PROJECT / f"escape-{tag}"), f"/root/escape-{tag}", str(tmp_path / "escape"),
               f"/usr/escape-{tag}", f"/escape-{tag}", f"/dev/escape-{tag}"]
    code = ("import sys\nfor p in sys.argv[1:] or %r:\n    try:\n        open(p, 'w').write('x')\n"
            "        print(p, 'WROTE')\n    except OSError as e:\n        print(p, type(e).__name__)\n"
            "open('inside.txt', 'w').write('ok')\nprint('inside ok')") % (targets,)
    r = run_python(code)
    assert r.status == "ok" and "WROTE" not in r.stdout and "inside ok" in r.stdout
    for p in targets:
        assert not os.path.exists(p), p


def test_reads_outside_its_folder_and_secrets_fail(tmp_path, monkeypatch):
    token = secrets.token_hex(8)
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", token)
    private = tmp_path / "secret.txt"
    private.write_text(token)
    private.chmod(stat.S_IRUSR | stat.S_IWUSR)  # root only
    public = Path(f"/tmp/posttrain-public-{secrets.token_hex(4)}")
    public.write_text(token)  # world-readable: absent from the view, not merely unreadable
    try:
        root_files = [str(p) for p in Path("/root").iterdir() if p.is_file()][:3]
        paths = [str(private), str(public), str(PROJECT / "README.md"), str(PROJECT / "pyproject.toml"), *root_files]
        code = ("import os\nprint(sorted(os.environ))\nprint(repr(os.environ.get('POSTTRAIN_TEST_SECRET')))\n"
                f"for p in {paths!r}:\n    try:\n        print(p, 'GOT', open(p).read()[:20])\n"
                "    except OSError as e:\n        print(p, type(e).__name__)\n"
                "for d in ('/root', '/home', '/tmp', '/proc', '/etc', str(%r)):\n    try:\n"
                "        print(d, sorted(os.listdir(d))[:5])\n    except OSError as e:\n        print(d, type(e).__name__)"
                ) % str(PROJECT)
        r = run_python(code)
    finally:
        public.unlink()
    assert r.status == "ok", r
    lines = r.stdout.splitlines()
    assert lines[0] == "['HOME', 'LANG', 'PATH']" and lines[1] == "None"
    assert token not in r.stdout and " GOT " not in r.stdout
    listed = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in lines[2 + len(paths):]}
    for d in ("/home", "/tmp", "/proc", str(PROJECT)):
        assert listed[d] == "FileNotFoundError", (d, listed[d])
    assert listed["/etc"] == "['ld.so.cache']"
    assert set(eval(listed["/root"])) <= {".pyenv", ".local"}  # at most the interpreter's own prefix


def test_no_network_to_a_listener_on_the_callers_loopback():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(0.2)
        port = srv.getsockname()[1]
        code = ("import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n"
                f"    s.connect(('127.0.0.1', {port}))\n    print('CONNECTED')\nexcept OSError as e:\n"
                "    print(type(e).__name__)\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
                "    print('OUT')\nexcept OSError as e:\n    print(type(e).__name__)")
        r = run_python(code)
        with pytest.raises(socket.timeout):
            srv.accept()
    assert r.status == "ok" and "CONNECTED" not in r.stdout and "OUT" not in r.stdout
    assert r.stdout.splitlines()[0] == "ConnectionRefusedError"


def test_it_cannot_undo_its_mounts_or_gain_privileges():
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.umount2(b'/usr', 2), libc.mount(b'none', b'/sandbox', b'tmpfs', 0, None), "
            "libc.unshare(0x00020000), libc.setuid(0))\n"
            "print(open('/proc/self/status').read() if os.path.exists('/proc/self/status') else 'no proc')")
    r = run_python(code)
    assert r.status == "ok" and r.stdout.splitlines() == ["-1 -1 -1 -1", "no proc"]


def test_pool_keeps_order_with_concurrency_two():
    jobs = [{"code": f"import time; time.sleep({d}); print({i})"} for i, d in enumerate([0.6, 0.1, 0.4, 0.1])]
    pool = SandboxPool(max_workers=2)
    t0 = time.monotonic()
    out = pool.map(jobs)
    wall = time.monotonic() - t0
    assert [r.stdout for r in out] == ["0\n", "1\n", "2\n", "3\n"]
    assert wall < 1.2 + 0.5  # sequential would be 1.2 s of sleeping alone, plus start-up
    assert pool.map([]) == []
    with pytest.raises(ValueError):
        SandboxPool(max_workers=0)


def test_local_sandbox_is_a_sandbox_and_unavailable_isolation_raises(monkeypatch):
    sb = LocalSandbox()
    assert isinstance(sb, Sandbox) and sb.isolation == "namespaces"
    assert sb.run("print(2 + 2)").stdout == "4\n"
    with pytest.raises(ValueError, match="unknown isolation"):
        run_python("pass", isolation="docker")
    monkeypatch.setitem(sandbox_local._AVAILABLE, "namespaces", "unshare: Operation not permitted (simulated)")
    for level in ("namespaces", "auto"):
        with pytest.raises(SandboxUnavailable, match="Operation not permitted") as e:
            run_python("pass", isolation=level)
        assert isinstance(e.value, UserError)
    with pytest.raises(SandboxUnavailable):
        LocalSandbox()


def test_bad_arguments_are_refused():
    for kw in ({"files": {"../x": ""}}, {"files": {"/etc/x": ""}}, {"files": {"main.py": ""}},
               {"timeout_s": 0}, {"memory_mb": 1}):
        with pytest.raises(ValueError):
            run_python("pass", **kw)


@pytest.mark.skipif(os.geteuid() != 0, reason="'process' isolation needs root")
def test_process_isolation_runs_unprivileged_and_cleans_up(monkeypatch):
    # The program's uid must be able to execute the interpreter: one under /root (0700, like pyenv's
    # here) is not, and then 'process' is honestly unavailable; use the system Python where there is one.
    if sandbox_local.PYTHON.startswith("/root/") and os.path.exists("/usr/bin/python3"):
        monkeypatch.setattr(sandbox_local, "PYTHON", os.path.realpath("/usr/bin/python3"))
    saved = sandbox_local._AVAILABLE.pop("process", None)
    try:
        why = isolation_available("process")
        if why is not None:
            pytest.skip(f"'process' isolation unavailable: {why}")
        marker = f"posttrain-proc-{secrets.token_hex(6)}"
        code = ("import os, time\nprint(os.getuid())\npid = os.fork()\nif pid == 0:\n    os.setsid()\n"
                f"    os.execv('/bin/sleep', [{marker!r}, '30'])\ntime.sleep(0.2)\nos.kill(pid, 0)\n")
        r = run_python(code, isolation="process")
        assert r.status == "ok" and int(r.stdout) >= sandbox_local.RUN_UID_BASE
        assert procs_with(marker) == [] and my_zombies() == []
        assert run_python("while True: pass", timeout_s=0.5, isolation="process").status == "timeout"
    finally:
        sandbox_local._AVAILABLE.pop("process", None)
        if saved is not None:
            sandbox_local._AVAILABLE["process"] = saved


def test_remote_sandbox_fails_fast_when_nothing_answers():
    with socket.socket() as s:  # a port with nobody listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SandboxUnavailable, match="did not answer"):
        RemoteSandbox(f"http://127.0.0.1:{port}").run("print(1)")
    with socket.socket() as srv:  # a listener that never answers: the request times out
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        sb = RemoteSandbox(f"http://127.0.0.1:{srv.getsockname()[1]}/", request_slack_s=0.5)
        assert sb.url.endswith("/run_code") and isinstance(sb, Sandbox)
        with pytest.raises(SandboxUnavailable, match="did not answer"):
            sb.run("print(1)", timeout_s=0.5)
    assert time.monotonic() - t0 < 5.0


def test_remote_answers_map_to_run_results():
    ok = RemoteSandbox._result("Success", {}, {"status": "Finished", "return_code": 0, "stdout": "1\n", "stderr": ""}, 0.1)
    assert (ok.status, ok.exit_code, ok.stdout) == ("ok", 0, "1\n")
    tle = RemoteSandbox._result("Failed", {}, {"status": "TimeLimitExceeded", "return_code": None}, 1.0)
    assert tle.status == "timeout" and tle.timed_out
    err = RemoteSandbox._result("Failed", {}, {"status": "Finished", "return_code": 1, "stderr": "x" * 100_000}, 0.1)
    assert err.status == "error" and err.exit_code == 1 and err.truncated and len(err.stderr) == MAX_OUTPUT_BYTES
    from posttrain.sandbox import SandboxError

    with pytest.raises(SandboxError):
        RemoteSandbox._result("SandboxError", {"message": "boom"}, {}, 0.1)


def test_the_launcher_uses_the_base_interpreter_not_the_venv():
    assert os.path.realpath(sandbox_local.PYTHON) == sandbox_local.PYTHON
    assert not sandbox_local.PYTHON.startswith(str(PROJECT)) and Path(sandbox_local.PYTHON).exists()
    assert sys.flags is not None  # the caller's own interpreter is untouched


def test_a_killed_caller_takes_its_sandbox_with_it():
    import subprocess

    tag = secrets.token_hex(6)
    marker = f"posttrain-orphan-{tag}"  # spelt in two halves below, so only the sandboxed sleep's argv holds it
    code = f"import os\nos.execv('/bin/sleep', ['posttrain-orphan-' + {tag!r}, '30'])"
    caller = subprocess.Popen([sys.executable, "-c", f"from posttrain.sandbox import run_python\nrun_python({code!r}, timeout_s=30)"])
    try:
        deadline = time.monotonic() + 20
        while not procs_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procs_with(marker), "the sandboxed program never started"
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 5
    while procs_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_with(marker) == []  # launcher and init die with the caller (PR_SET_PDEATHSIG), then the namespace
