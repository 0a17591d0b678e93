"""The trusted launcher of one sandbox run (see `posttrain.sandbox` for the design).

Run by `posttrain.sandbox.local` as ``python -I -S -B _launcher.py`` (the base interpreter, stdlib
only, no posttrain import), it reads one JSON config from stdin and:

1. arms PR_SET_PDEATHSIG so it dies with its caller;
2. ("namespaces") unshares mount, PID, network, IPC and UTS namespaces (plus a user namespace when
   not root, mapping the caller's uid to 65534);
3. forks **init**: pid 1 of the new PID namespace. Init builds the read-only minimal root (a tmpfs
   with read-only binds of /usr, the interpreter, five device nodes and a private tmpfs at /sandbox),
   pivots into it, brings loopback up, writes the files, then forks the **program**, which drops to
   the run's uid, sets PR_SET_NO_NEW_PRIVS and the rlimits and execs ``python -I -S -B main.py``.
   When the program exits, init reports its wait status and exits; the kernel then kills and reaps
   every other process of the namespace (double-forked daemons included);
4. enforces the wall clock: SIGALRM (the deadline) or SIGTERM (the caller asking, e.g. output over
   its limit) kill init through a pidfd, so no recycled pid can ever be hit.

Status records (``repr`` of small dicts) go to the status pipe whose fd is in the config, never to
stdout/stderr, which belong to the program. The config arrives ``marshal``-ed (the caller runs the
same interpreter version). Only cheap modules are imported: this start-up is paid by every run.
"""
import _signal as signal  # the C module: `signal` would import enum, a few ms of every run
import ctypes
import fcntl
import marshal
import os
import struct
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 38, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
# statvfs flag -> mount flag: flags a user namespace may not clear on a bind remount ("locked" flags)
_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
           (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
DEVICES = ("null", "zero", "full", "random", "urandom")
WORK = "/sandbox"  # the work folder inside the sandbox (HOME and cwd)
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr")

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(src, dst, fstype, flags, data=None) -> None:
    _check(libc.mount(_b(src), _b(dst), _b(fstype), flags, _b(data)), f"mount {src or fstype} on {dst}")


def prctl(option: int, arg: int = 0) -> None:
    _check(libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


class Status:
    def __init__(self, fd: int):
        self.fd = fd

    def send(self, **rec) -> None:
        try:
            os.write(self.fd, (repr(rec) + "\n").encode())
        except OSError:
            pass


# ---------------------------------------------------------------- namespaces and the root view
def enter_namespaces(cfg) -> None:
    """unshare; without root, a user namespace mapping our uid/gid to 65534 (caps kept until exec)."""
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    _check(libc.unshare(flags), "unshare(mount, pid, net, ipc, uts" + (", user)" if flags & CLONE_NEWUSER else ")"))
    if flags & CLONE_NEWUSER:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{cfg['uid']} {uid} 1"), ("gid_map", f"{cfg['gid']} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def bind(src: str, dst: str, readonly: bool) -> None:
    mount(src, dst, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (MS_RDONLY if readonly else 0)
    st = os.statvfs(src).f_flag
    flags |= sum(ms for st_flag, ms in _LOCKED if st & st_flag)
    if os.path.isdir(src):
        flags |= MS_NODEV  # device nodes only through the file binds below
    mount(None, dst, None, flags)


def _covered(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def build_root(cfg) -> None:
    """A read-only tmpfs root: system dirs, the interpreter prefix, ld.so.cache, devices, /sandbox."""
    new = cfg["mount_dir"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    bound = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), new + d)
        elif os.path.isdir(d):
            os.makedirs(new + d)
            bind(d, new + d, readonly=True)
            bound.append(os.path.realpath(d))
    for p in cfg["ro_paths"]:  # the interpreter's prefix when it is not under /usr (pyenv, conda, uv)
        real = os.path.realpath(p)
        if not _covered(real, bound) and os.path.isdir(real):
            os.makedirs(new + real, exist_ok=True)
            bind(real, new + real, readonly=True)
            bound.append(real)
    os.makedirs(new + "/etc")
    if os.path.isfile("/etc/ld.so.cache"):
        open(new + "/etc/ld.so.cache", "w").close()
        bind("/etc/ld.so.cache", new + "/etc/ld.so.cache", readonly=True)
    os.makedirs(new + "/dev")
    for d in DEVICES:
        open(new + "/dev/" + d, "w").close()
        mount("/dev/" + d, new + "/dev/" + d, None, MS_BIND)
    os.symlink("/proc/self/fd", new + "/dev/fd")
    os.makedirs(new + WORK)
    mount("tmpfs", new + WORK, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={cfg['work_kib']}k,nr_inodes=4096,mode=700,uid={cfg['uid']},gid={cfg['gid']}")
    write_files(new + WORK, cfg)
    os.chdir(new)
    arch = os.uname().machine
    if arch in SYS_PIVOT_ROOT:
        _check(libc.syscall(SYS_PIVOT_ROOT[arch], b".", b"."), "pivot_root")
        _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    else:  # switch_root's way: move the new root over / and chroot into it
        mount(".", "/", None, 1 << 13)  # MS_MOVE
        os.chroot(".")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def loopback_up() -> None:
    """Bring lo up in the new network namespace (nothing else exists there)."""
    s = libc.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM (ctypes: the socket module costs ms to import)
    if s < 0:
        _check(s, "socket")
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh14x", b"lo", flags | 0x1))  # SIOCSIFFLAGS |= IFF_UP
    finally:
        os.close(s)


def write_files(work: str, cfg) -> None:
    for name, text in [("main.py", cfg["code"])] + sorted(cfg["files"].items()):
        path = os.path.join(work, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    for dirpath, dirnames, filenames in os.walk(work):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), cfg["uid"], cfg["gid"])
    os.chown(work, cfg["uid"], cfg["gid"])


# ---------------------------------------------------------------- the program
def exec_program(cfg, stdin_fd: int, work: str) -> None:
    """In the forked program process: stdin, uid, no_new_privs, rlimits, exec. Never returns."""
    import resource

    try:
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)
        uid, gid = cfg["uid"], cfg["gid"]
        if os.getuid() == 0:  # real root: drop to the run's uid (clears every capability)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        lim = cfg["limits"]
        for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["as_bytes"]),
                            ("RLIMIT_NPROC", lim["nproc"]), ("RLIMIT_FSIZE", lim["fsize_bytes"]),
                            ("RLIMIT_NOFILE", lim["nofile"])):
            hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU at the soft limit, SIGKILL 1 s later
            resource.setrlimit(getattr(resource, name), (value, hard))
        os.chdir(work)
        os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-B", "main.py"], dict(cfg["env"], HOME=work))
    except BaseException as e:  # noqa: BLE001  (a failed exec must not run launcher code as the program)
        os.write(2, f"posttrain sandbox: could not start the program: {e}\n".encode())
    os._exit(127)


def init_main(cfg, status: Status, stdin_fd: int) -> None:
    """pid 1 of the sandbox ("namespaces") or the reaper of the run ("process"). Never returns."""
    try:
        for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/1/mem, even for a process of the same uid
        if cfg["isolation"] == "namespaces":
            build_root(cfg)
            loopback_up()
            _check(libc.sethostname(b"sandbox", 7), "sethostname")
            work = WORK
        else:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
            work = cfg["work_dir"]
        child = os.fork()
    except BaseException as e:  # noqa: BLE001
        status.send(setup_error=f"{type(e).__name__}: {e}")
        os._exit(0)
    if child == 0:
        exec_program(cfg, stdin_fd, work)
    os.close(stdin_fd)
    while True:  # reap every orphan reparented to us; stop when the program itself exits
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            status.send(program=st)
            break
    if cfg["isolation"] == "process":  # no PID namespace: kill the run's uid, then reap what we adopted
        kill_uid(cfg["uid"], cfg["gid"])
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    os._exit(0)  # "namespaces": pid 1 exits, the kernel SIGKILLs and reaps the rest of the namespace


def kill_uid(uid: int, gid: int) -> None:
    """"process" isolation: SIGKILL every process of the run's (unique) uid, from a helper of that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            for _ in range(100):
                os.kill(-1, signal.SIGKILL)  # every process this uid may signal, except ourselves
        except (ProcessLookupError, PermissionError):
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def main() -> None:
    cfg = marshal.loads(sys.stdin.buffer.read())
    status = Status(cfg["status_fd"])
    os.set_inheritable(status.fd, False)  # init keeps it across fork; the program loses it at exec
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["parent_pid"]:  # the caller died before the death signal was armed
        os._exit(1)
    stdin_fd = os.memfd_create("stdin")  # the program's stdin: a private in-memory file
    os.write(stdin_fd, cfg["stdin"].encode("utf-8"))
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    try:
        if cfg["isolation"] == "namespaces":
            enter_namespaces(cfg)
        else:
            import tempfile

            cfg["work_dir"] = tempfile.mkdtemp(prefix="posttrain-sandbox-")
            write_files(cfg["work_dir"], cfg)
    except BaseException as e:  # noqa: BLE001
        status.send(setup_error=f"{type(e).__name__}: {e}")
        return
    why, pidfd = [], []

    def stop(reason):
        def handler(signum, frame):
            if not why:
                why.append(reason)
                if cfg["isolation"] == "process":
                    kill_uid(cfg["uid"], cfg["gid"])
                else:
                    try:
                        if pidfd:
                            signal.pidfd_send_signal(pidfd[0], signal.SIGKILL)
                        else:
                            os.kill(child[0], signal.SIGKILL)  # not reaped yet: the pid is still ours
                    except (ProcessLookupError, IndexError):
                        pass
        return handler

    signal.signal(signal.SIGALRM, stop("timeout"))
    signal.signal(signal.SIGTERM, stop("killed"))
    child = []
    pid = os.fork()
    if pid == 0:
        init_main(cfg, status, stdin_fd)
    child.append(pid)
    os.close(stdin_fd)
    pidfd.append(os.pidfd_open(pid))
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cfg["isolation"] == "process":
        import shutil

        kill_uid(cfg["uid"], cfg["gid"])
        shutil.rmtree(cfg["work_dir"], ignore_errors=True)
    status.send(stopped=why[0] if why else None)


if __name__ == "__main__":
    main()
