"""OS-level isolation for generated code: the command lines that wrap the sandbox child, strongest first.

    Isolation("bwrap", "/usr/bin/bwrap", user=65534, setpriv="/usr/bin/setpriv").command(script, args, fd)

`sandbox.detect` tries each candidate here once per process and `sandbox.choose_isolation` picks one; this
module only says what each mode runs. What each guarantees (and does not) is in `sandbox.py`'s docstring.

- bwrap: bubblewrap (a maintained, setuid-free sandboxing tool, Debian's `bubblewrap`) in new PID, network,
  IPC, UTS and (where possible) cgroup namespaces, --die-with-parent, a new session; an empty root filesystem
  holding read-only binds of /usr, the /bin and /lib links, a few files of /etc and the interpreter's prefixes
  only; a fresh /proc, a minimal /dev, a private /tmp and a working directory that are size-bounded tmpfs
  mounts of the sandbox's own mount namespace, with the program copied in from a memfd; no capabilities, no
  new privileges, a clean environment. Run by root, bwrap keeps every capability unless told otherwise, so it
  drops them all but SETUID/SETGID/SETPCAP, which setpriv then uses to switch to uid/gid NOBODY and drop the
  rest. Run by anyone else it adds a user namespace (the program keeps that user's uid) and forbids nested ones.
- unshare: util-linux's unshare with --pid --fork --kill-child --mount-proc --net --ipc --uts (plus --user
  --map-root-user when not root); setpriv sets the parent-death signal on it and, inside, switches root to
  NOBODY, empties the capability sets and sets no_new_privs. The filesystem is the host's.
- python: the child alone, in its own session; only the Python-level guard and the rlimits.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Mode = Literal["bwrap", "unshare", "python"]
MODES: tuple[Mode, ...] = ("bwrap", "unshare", "python")  # strongest first
ACCEPTED: dict[str, tuple[Mode, ...]] = {"auto": MODES, "os": ("bwrap", "unshare"), "bwrap": ("bwrap",)}
INSTALL = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"

NOBODY = 65534  # the uid and gid a root evaluator's programs run as (the kernel's overflow id)
WORKDIR = "/sandbox"  # the working directory inside bubblewrap
CHILD = "/ftlab/sandbox_child.py"  # where bubblewrap shows the child script
WORKDIR_BYTES = 64 * 2**20  # size of the working directory's tmpfs under bubblewrap
TMP_BYTES = 16 * 2**20  # size of the private /tmp under bubblewrap
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # usually links into /usr
ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # plus HOME and TMPDIR = the working directory


@dataclass(frozen=True)
class Isolation:
    """One way to run the sandbox child: the mode, the tool that provides it, and the host uid it runs as."""

    mode: Mode
    tool: str | None = None  # absolute path of bwrap or unshare (None for python)
    user: int | None = None  # uid (and gid) the program is switched to; None: the evaluator's own
    setpriv: str | None = None  # absolute path of util-linux's setpriv, where the mode uses it

    @property
    def os_level(self) -> bool:
        return self.mode != "python"

    def describe(self) -> str:
        """One line: what runs the program and what it is shut off from."""
        who = f"uid {self.user}" if self.user is not None else f"uid {os.geteuid()}"
        if self.mode == "bwrap":
            return (f"bubblewrap ({self.tool}: new PID, network, IPC and UTS namespaces, read-only binds of "
                    f"/usr and the interpreter only, a private tmpfs working directory, no capabilities, {who})")
        if self.mode == "unshare":
            return (f"unshare ({self.tool}: new PID, network, IPC, UTS and mount namespaces, no capabilities, "
                    f"{who}; the filesystem is the host's, guarded only by the Python-level guard; {INSTALL} "
                    f"for a private one)")
        return f"the Python-level guard only (no OS-level isolation works here; {INSTALL})"

    def command(self, script: str, args: list[str], program_fd: int | None = None) -> list[str]:
        """argv that runs `python -I -B script *args` in this mode. bwrap copies the program from program_fd
        into its private working directory; the other modes run in a host directory the caller prepares."""
        child = [sys.executable, "-I", "-B", CHILD if self.mode == "bwrap" else script, *args]
        if self.mode == "bwrap":
            assert program_fd is not None, "bubblewrap takes the program from a file descriptor"
            return _bwrap(self, script, child, program_fd)
        if self.mode == "unshare":
            return _unshare(self, child)
        return child


def candidates() -> list[Isolation]:
    """Every variant this host might run, strongest first; `sandbox.detect` keeps those that work."""
    bwrap, unshare, setpriv = shutil.which("bwrap"), shutil.which("unshare"), shutil.which("setpriv")
    root = os.geteuid() == 0
    found: list[Isolation] = []
    if bwrap and root and setpriv:
        found.append(Isolation("bwrap", bwrap, NOBODY, setpriv))
    if bwrap:
        found.append(Isolation("bwrap", bwrap))  # root keeps uid 0, without capabilities
    if unshare and setpriv:
        found += [Isolation("unshare", unshare, NOBODY, setpriv)] if root else []
        found.append(Isolation("unshare", unshare, None, setpriv))
    return [*found, Isolation("python")]


def missing_tools() -> dict[Mode, str]:
    """Why a mode has no candidate at all here (its tool is not installed)."""
    why: dict[Mode, str] = {}
    if not shutil.which("bwrap"):
        why["bwrap"] = "bwrap is not installed"
    if not shutil.which("unshare") or not shutil.which("setpriv"):
        why["unshare"] = "unshare or setpriv (util-linux) is not installed"
    return why


def _switch_user(iso: Isolation) -> list[str]:
    """setpriv: to iso.user when set, without any capability or way to gain one."""
    assert iso.setpriv is not None
    user = [] if iso.user is None else ["--reuid", str(iso.user), "--regid", str(iso.user), "--clear-groups"]
    return [iso.setpriv, *user, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def _bwrap(iso: Isolation, script: str, child: list[str], program_fd: int) -> list[str]:
    assert iso.tool is not None
    argv = [iso.tool, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox", "--clearenv"]
    for name, value in {**ENV, "HOME": WORKDIR, "TMPDIR": WORKDIR}.items():
        argv += ["--setenv", name, value]
    if os.geteuid() == 0:  # privileged bwrap keeps every capability unless told; keep only what setpriv needs
        argv += ["--cap-drop", "ALL"]
        if iso.user is not None:
            argv += [a for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP") for a in ("--cap-add", cap)]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    argv += _filesystem(script, program_fd)
    switch = [*_switch_user(iso), "--"] if iso.user is not None else []
    return [*argv, "--chdir", WORKDIR, "--", *switch, *child]


def _filesystem(script: str, program_fd: int) -> list[str]:
    """An empty read-only root with /usr, the interpreter and a few /etc files bound read-only, fresh /proc
    and /dev, and size-bounded tmpfs mounts for /tmp and the working directory (program.py copied in)."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for top in TOP_LEVEL:
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for path in ETC:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    made: set[str] = {"/", "/tmp"}
    for prefix in interpreter_dirs():  # after /tmp's tmpfs: a virtual environment may live under /tmp
        argv += _parents(prefix, made) + ["--ro-bind", prefix, prefix]
    argv += ["--perms", "1777", "--size", str(WORKDIR_BYTES), "--tmpfs", WORKDIR,
             "--perms", "0444", "--file", str(program_fd), f"{WORKDIR}/program.py",
             *_parents(CHILD, made), "--ro-bind", script, CHILD,
             "--remount-ro", "/"]
    return argv


def _parents(path: str, made: set[str]) -> list[str]:
    """--dir for each missing parent of path, world-readable (bwrap would make them 0700)."""
    argv = []
    for parent in reversed(Path(path).parents):
        if str(parent) not in made:
            made.add(str(parent))
            argv += ["--perms", "0755", "--dir", str(parent)]
    return argv


def interpreter_dirs() -> list[str]:
    """The directories sys.executable needs (its prefixes, as given and resolved), outside /usr, outermost only."""
    paths = {p for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
             for p in (os.path.abspath(prefix), os.path.realpath(prefix))}
    paths |= {str(Path(os.path.realpath(sys.executable)).parent.parent)}
    outside = sorted(p for p in paths if p != "/" and not _under(p, "/usr"))
    return [p for p in outside if not any(q != p and _under(p, q) for q in outside)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _unshare(iso: Isolation, child: list[str]) -> list[str]:
    assert iso.tool is not None and iso.setpriv is not None
    user_ns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    # The outer setpriv kills unshare when the evaluator dies; --kill-child kills the namespace's pid 1 when
    # unshare dies; the inner setpriv sets the parent-death signal again, since changing uid clears it.
    return [iso.setpriv, "--pdeathsig", "KILL", "--", iso.tool, "--pid", "--fork", "--kill-child", "--mount-proc",
            "--net", "--ipc", "--uts", *user_ns, "--", *_switch_user(iso), "--pdeathsig", "KILL", "--", *child]
