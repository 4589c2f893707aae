"""Confine the processes that run a learner's code (the notebook's kernel, the sandbox), and end them all.

The grader starts each such process through this file, run as a launcher::

    python -I -c <this file's source> '<config JSON>' -- <command...>

which, before it ``exec``s the command (so every later process inherits it all):

- starts a new session, and sets resource limits: address space (``RLIMIT_AS``), file size, no core
  dumps, and the number of processes;
- when the grader runs as root, switches to an otherwise unused user id (every process of that id can be
  found and killed) where Python can run as another user; else it stays root without any capability and
  may start threads but no processes (a seccomp filter: RLIMIT_NPROC never holds root);
- where Linux Landlock is available (kernel 5.13+, any user), forbids writing anywhere but the scratch
  folder (and ``/dev``), optionally forbids reading some folders (the sandbox cannot read tinyllm's
  sources), and forbids signalling processes outside (the grader).

Every process carries ``MARKER`` in its environment. :func:`sweep` finds what is left after a run by that
marker, by the user id, by session, and by parent (the grader is a child subreaper while it grades, so an
orphan that left its session and cleared its environment becomes the grader's child) and kills it.

Only the standard library: the launcher runs before anything of the learner's, with ``python -I``.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

MARKER = "TINYLLM_GRADE_JAIL"
NPROC = 256                     # processes a graded run may have at once (fork bombs stop here)
FSIZE = 16 * 2**20              # no file written over 16 MB

# Landlock (linux/landlock.h)
_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446
_FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 1, 1 << 2, 1 << 3
_FS_WRITE_ANY = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))   # write, remove, make *
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER, _PR_CAPBSET_DROP = 38, 36, 37, 24


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel, or 0 where there is none (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        r = _libc().syscall(_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(int(r), 0)


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _readable_around(hidden: list[str]) -> list[str]:
    """Folders whose union is everything except ``hidden`` (and the paths to them): the siblings along
    each path from ``/`` down to a hidden folder."""
    hidden = [os.path.realpath(h) for h in hidden]
    out, todo, seen = [], ["/"], set()
    while todo:
        p = todo.pop()
        if p in hidden or p in seen:
            continue
        seen.add(p)
        if not any(h.startswith(p.rstrip("/") + "/") for h in hidden):
            out.append(p)
            continue
        try:
            children = [os.path.realpath(e.path) for e in os.scandir(p)]
        except OSError:
            continue
        todo += children
    return out


def landlock(writable: list[str], devices: str = "/dev", hidden: list[str] | None = None) -> int:
    """Restrict this process (and its future children): write only beneath ``writable`` (and to files
    beneath ``devices``), read nothing beneath ``hidden``, signal no process outside. Returns the ABI
    used (0: not available, nothing done)."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    libc = _libc()
    write = _FS_WRITE_ANY | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    read = _FS_READ_FILE | _FS_READ_DIR if hidden else 0
    scoped = (_SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX) if abi >= 6 else 0
    attr = (ctypes.c_uint64 * 3)(write | read, 0, scoped)
    size = 24 if abi >= 6 else 8
    ruleset = libc.syscall(_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")

    def allow(path, access):
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(path):
                access &= _FS_WRITE_FILE | _FS_READ_FILE | (_FS_TRUNCATE if abi >= 3 else 0)
            rule = _PathBeneath(access, fd)
            if libc.syscall(_SYS_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) < 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
        finally:
            os.close(fd)

    for path in writable:
        allow(path, write | read)
    allow(devices, _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0))
    for path in _readable_around(hidden or []) if hidden else []:
        allow(path, read)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(_SYS_RESTRICT, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)
    return abi


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


# (audit arch, clone, clone3, fork, vfork) per machine; fork and vfork do not exist on aarch64
_SYSCALLS = {"x86_64": (0xC000003E, 56, 435, 57, 58), "aarch64": (0xC00000B7, 220, 435, None, None)}


def forbid_new_processes() -> bool:
    """A seccomp filter: from now on this process and its threads may start threads but not processes
    (fork, vfork and clone without CLONE_THREAD fail with EAGAIN; clone3 says ENOSYS, so the C library falls
    back to clone). For root, whom RLIMIT_NPROC never holds. Returns False where not supported."""
    import platform

    machine = platform.machine()
    if not sys.platform.startswith("linux") or machine not in _SYSCALLS:
        return False
    arch, clone, clone3, fork, vfork = _SYSCALLS[machine]
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, eagain, enosys = 0x7FFF0000, 0x00050000 | 11, 0x00050000 | 38
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, allow),          # another ABI: allow
            (ld, 0, 0, 0),                                                   # the system call's number
            (jeq, 0, 1, clone3), (ret, 0, 0, enosys)]
    for nr in (fork, vfork):
        if nr is not None:
            prog += [(jeq, 0, 1, nr), (ret, 0, 0, eagain)]
    prog += [(jeq, 1, 0, clone), (ret, 0, 0, allow),
             (ld, 0, 0, 16), (jset, 1, 0, 0x00010000), (ret, 0, 0, eagain),  # clone's flags: CLONE_THREAD?
             (ret, 0, 0, allow)]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*f) for f in prog])
    fprog = _SockFprog(len(prog), filters)
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0          # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _user_process_count(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def launch(config: dict, cmd: list[str]) -> None:  # pragma: no cover - runs in the launched child
    """Confine this process as ``config`` says, then become ``cmd``."""
    import resource

    try:
        os.setsid()
    except OSError:
        pass                                   # already a session leader (the kernel launcher made one)
    mem = int(config.get("memory") or 0)
    if mem > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    uid = config.get("uid")
    if uid is not None:
        for path in config.get("chown", []):
            os.chown(path, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if sys.platform.startswith("linux"):
        if os.getuid() == 0:                  # root, still: the command gets no capabilities (so file
            libc = _libc()                    # permissions hold it), and may start no process (see below)
            for cap in range(64):
                libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        limit = NPROC if uid is not None else NPROC + _user_process_count(os.getuid())
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    if config.get("landlock"):
        landlock([config["scratch"]], hidden=config.get("hidden"))
    if os.getuid() == 0:                       # RLIMIT_NPROC never holds root: no new processes at all
        forbid_new_processes()
    os.execve(cmd[0], cmd, dict(os.environ))


# ---------------------------------------------------------------------------------------------
# the grader's side
# ---------------------------------------------------------------------------------------------

def _world_reachable(path: str) -> bool:
    """Whether another user can reach ``path`` (execute bit for others on every folder above it)."""
    path = os.path.realpath(path)
    while True:
        parent = os.path.dirname(path)
        try:
            if not os.stat(parent).st_mode & 0o001:
                return False
        except OSError:
            return False
        if parent == path:
            return True
        path = parent


def unused_uid() -> int | None:
    """As root: a user id that no account and no running process has, if Python can run as it."""
    if not hasattr(os, "getuid") or os.getuid() != 0 or not sys.platform.startswith("linux"):
        return None
    import numpy                                # the children need Python and NumPy

    if not all(_world_reachable(p) for p in (sys.executable, os.path.dirname(numpy.__file__))):
        return None
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            taken = {int(line.split(":")[2]) for line in f if line.count(":") >= 3 and line.split(":")[2].isdigit()}
    except OSError:
        taken = set()
    for uid in range(61000 + os.getpid() % 3000, 65000):
        if uid not in taken and _user_process_count(uid) == 0:
            return uid
    return None


def set_subreaper(on: bool) -> bool:
    """Make this process adopt its orphaned descendants (Linux); return the previous setting."""
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    prev = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(prev), 0, 0, 0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
    return bool(prev.value)


def _proc(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session, start time) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def _has_marker(pid: int, token: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return token in f.read()
    except OSError:
        return False


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/PID/stat's start time uses."""
    with open("/proc/uptime", encoding="ascii") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def sweep(marker: str, *, uid: int | None = None, sessions: tuple[int, ...] = (),
          children_since: int | None = None) -> int:
    """Stop and kill every process of a graded run; return how many were killed.

    A process belongs to the run when its environment holds ``MARKER=marker``, or it runs as ``uid``, or
    it is in one of ``sessions``, or it is a child of this process started at ``children_since`` (clock
    ticks since boot) or later (an orphan adopted by the subreaper), or it descends from any of those.
    """
    if not os.path.isdir("/proc"):
        for sid in sessions:
            try:
                os.killpg(sid, signal.SIGKILL)
            except OSError:
                pass
        return 0
    token = f"{MARKER}={marker}\0".encode()
    me, killed = os.getpid(), set()
    for _ in range(100):
        info = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != me:
                p = _proc(int(entry.name))
                if p is not None and p[0] not in "ZX":
                    info[int(entry.name)] = p
        targets = set()
        for pid, (state, ppid, sid, start) in info.items():
            try:
                owner = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            if (sid in sessions or (uid is not None and owner == uid)
                    or (children_since is not None and ppid == me and start >= children_since)
                    or _has_marker(pid, token)):
                targets.add(pid)
        grown = True
        while grown:
            more = {pid for pid, p in info.items() if p[1] in targets} - targets
            targets |= more
            grown = bool(more)
        if not targets:
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in targets:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        killed |= targets
        time.sleep(0.02)
        for pid in targets:
            try:
                os.waitpid(pid, os.WNOHANG)
            except OSError:
                pass
    for pid in list(killed):                   # reap what became our children
        try:
            os.waitpid(pid, os.WNOHANG)
        except OSError:
            pass
    return len(killed)


if __name__ == "__main__":
    _cut = sys.argv.index("--")
    launch(json.loads(sys.argv[1]), sys.argv[_cut + 1:])
