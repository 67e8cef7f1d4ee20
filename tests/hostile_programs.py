"""The hostile programs of tests/test_sandbox_hostile.py, as one table: each program's source, what it tries, the
sign in its output that it ran and was stopped, and the documented holes of the unshare fallback.

Every program starts with PRELUDE (ctypes re-imported past the guard, a comm tag the test finds its processes by,
`attempt` printing each step's outcome) and ends with EPILOGUE (a deliberate failure, so a "passed" status would
mean a misreported run). `$name`-style fields are filled in by test_sandbox_hostile.render.
"""

from __future__ import annotations

from dataclasses import dataclass

ENDED = "hostile program ended"

PRELUDE = '''\
import sys
for _name in ("ctypes", "_ctypes"):
    sys.modules.pop(_name, None)  # undo the guard's import block
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, b"$tag", 0, 0, 0)  # PR_SET_NAME, inherited by forks: how the test finds this program's processes


def c(ret):
    """A libc call's result, or OSError(errno) when it failed."""
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def attempt(what, action):
    """One step of the attack; prints what happened (the test reads these lines)."""
    try:
        result = action()
    except BaseException as e:
        print(f"{what}: {type(e).__name__}: {e}", flush=True)
        return None
    print(f"{what}: ok {result!r}"[:300], flush=True)
    return result


'''
EPILOGUE = f"\nraise SystemExit({ENDED!r})\n"


@dataclass(frozen=True)
class Attack:
    """One hostile program: what it tries and how the sandbox must be seen to stop it."""

    id: str
    tried: str  # what the program attempts, in one line
    source: str  # after PRELUDE; $marker, $home, $victim, $port, ... are filled in by `render`
    contained: str  # regex its output must match: the sign that the attack ran and was stopped
    unshare_hole: str = ""  # non-empty: a documented escape under the unshare fallback (host filesystem)
    delay_s: float = 0.0  # an action the program leaves behind may land this long after the run ends
    timeout_s: float = 3.0
    solo: bool = False  # run alone: it spends the per-user process limit that concurrent programs share
    child_evaluator: bool = False  # run from a child evaluator whose environment holds the secret


TMP_HOLE = "writes as uid 65534 land in the host's world-writable /tmp"
ATTACKS = [
    Attack("ctypes_system", "re-import ctypes; libc system() runs a shell that writes the host's /tmp and $HOME",
           'attempt("system", lambda: libc.system(b"echo shell-ran; touch $marker.sys $home/$name.sys"))',
           r"shell-ran\n.*cannot touch '$home/$name\.sys': (Read-only file system|Permission denied|No such file)",
           unshare_hole=TMP_HOLE),
    Attack("kill_parent", "kill(getppid(), SIGKILL), then killpg of the parent's process group",
           'ppid = os.getppid()\nprint("ppid", ppid, flush=True)\n'
           'attempt("kill(getppid(), 9)", lambda: c(libc.kill(ppid, 9)))\n'
           'attempt("killpg(getpgid(ppid), 9)", lambda: c(libc.killpg(c(libc.getpgid(ppid)), 9)))',
           r"ppid [01]\nkill\(getppid\(\), 9\): (ok 0|\w+Error: \[Errno 1\] Operation not permitted)\n"),
    Attack("kill_everything", "kill(-1, SIGKILL): every process the program's uid may signal",
           'attempt("kill(-1, 9)", lambda: c(libc.kill(-1, 9)))\nprint("survived", flush=True)',
           r"kill\(-1, 9\): (ok 0|\w+Error: \[Errno 3\] No such process)\nsurvived"),
    Attack("kill_by_host_pid", "SIGKILL to the evaluator and to a bystander (same uid) by their host pids",
           'attempt("kill(evaluator)", lambda: c(libc.kill($evaluator, 9)))\n'
           'attempt("kill(bystander)", lambda: c(libc.kill($bystander, 9)))',
           r"kill\(evaluator\): \w+Error: \[Errno 3\] No such process\n"
           r"kill\(bystander\): \w+Error: \[Errno 3\] No such process"),
    Attack("signal_pid_1", "SIGKILL and SIGSTOP to pid 1",
           'attempt("kill(1, SIGSTOP)", lambda: c(libc.kill(1, 19)))\n'
           'attempt("kill(1, SIGKILL)", lambda: c(libc.kill(1, 9)))\nprint("survived", flush=True)',
           r"kill\(1, SIGKILL\): (ok 0|\w+Error: \[Errno 1\] Operation not permitted)\nsurvived"),
    Attack("fork_setsid_delayed_write", "fork(); the child setsid()s, sleeps 3 s, then writes a marker in the "
           "host's /tmp (the run has long been reported by then)",
           'import _io\nif c(libc.fork()) == 0:\n    libc.setsid()\n    time.sleep(3)\n'
           '    _io.open("$marker.late", "w").write("escaped")\n    os._exit(0)\nprint("forked child", flush=True)',
           r"forked child", delay_s=3.5),
    Attack("daemon_shell", "a double-forked, setsid shell (`setsid sh -c 'sleep 3; touch marker' &`) that "
           "outlives the run",
           'attempt("daemon", lambda: libc.system(b"(setsid sh -c \'sleep 3; touch $marker.daemon\' &); '
           'echo daemon-started"))',
           r"daemon-started\ndaemon: ok 0", delay_s=3.5),
    Attack("fork_bomb", "fork() in a loop for 1.5 s, every child forking too, then lingering",
           'start, deadline, first = os.getpid(), time.time() + 1.5, None\n'
           'while time.time() < deadline:\n    if libc.fork() == -1 and first is None:\n'
           '        first = os.strerror(ctypes.get_errno())\n'
           'if os.getpid() != start:\n    time.sleep(30)\nprint("fork refused:", first, flush=True)',
           r"fork refused: Resource temporarily unavailable", solo=True),
    Attack("threads", "8 threads (2 spinning) that keep the interpreter alive past the wall clock",
           'import threading\ndef spin():\n    while True:\n        pass\n'
           'for i in range(8):\n    threading.Thread(target=spin if i < 2 else lambda: time.sleep(60)).start()\n'
           'print("threads started:", threading.active_count() - 1, flush=True)',
           r"threads started: 8", timeout_s=3, solo=True),
    Attack("raise_rlimits", "setrlimit(AS, CPU, NPROC, FSIZE) back to infinity, then allocate 4 GiB",
           'import resource\ninf = resource.RLIM_INFINITY\n'
           'for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE"):\n'
           '    attempt(name, lambda: resource.setrlimit(getattr(resource, name), (inf, inf)))\n'
           'attempt("allocate 4 GiB", lambda: len(bytearray(4 * 2**30)))',
           r"RLIMIT_AS: ValueError: not allowed to raise maximum limit\n(.*not allowed to raise maximum limit\n){3}"
           r"allocate 4 GiB: MemoryError"),
    Attack("proc_sys_write", "write kernel settings: /proc/sys/kernel/printk_ratelimit_burst, "
           "/proc/sys/vm/drop_caches, /proc/sysrq-trigger",
           'import _io\nfor path in ("/proc/sys/kernel/printk_ratelimit_burst", "/proc/sys/vm/drop_caches", '
           '"/proc/sysrq-trigger"):\n    attempt(path, lambda: _io.FileIO(path, "w").write(b"1\\n"))',
           r"(.*: \w+Error: \[Errno (2|13|30)\].*\n){3}",
           ),
    Attack("proc_self_write", "/proc/self: oom_score_adj -1000 (never OOM-killed); a file outside through "
           "/proc/self/cwd/../../etc",
           'import _io\nattempt("oom_score_adj", lambda: _io.FileIO("/proc/self/oom_score_adj", "w").write(b"-1000"))\n'
           'attempt("cwd/../../etc", lambda: _io.FileIO("/proc/self/cwd/../../etc/$name", "w"))',
           r"oom_score_adj: \w+Error: \[Errno 13\].*\ncwd/\.\./\.\./etc: \w+Error: \[Errno (2|13|30)\]"),
    Attack("sys_write", "write /sys (transparent hugepages, the loopback's MTU)",
           'import _io\nfor path in ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys/class/net/lo/mtu"):\n'
           '    attempt(path, lambda: _io.FileIO(path, "w").write(b"never\\n"))',
           r"(.*: \w+Error: \[Errno (2|13|30)\].*\n){2}"),
    Attack("huge_output", "50 MB of output on stdout and stderr",
           'sys.stdout.write("x" * 25_000_000)\nsys.stderr.write("y" * 25_000_000)',
           r"\Ax{10000}\Z"),
    Attack("mmap_huge", "mmap 64 GiB of anonymous memory (MAP_NORESERVE through libc, and the mmap module)",
           'import mmap\nlibc.mmap.restype = ctypes.c_long  # MAP_FAILED is -1\n'
           'attempt("libc mmap", lambda: c(libc.mmap(None, ctypes.c_size_t(64 * 2**30), 3, 0x4022, -1, 0)))\n'
           'attempt("mmap module", lambda: mmap.mmap(-1, 64 * 2**30))',
           r"libc mmap: \w+Error: \[Errno 12\].*\nmmap module: \w+Error: \[Errno 12\]"),
    Attack("mmap_host_file", "open a host canary file read-write and change it through mmap",
           'import mmap, _io\n'
           'def poke():\n    f = _io.open("$victim", "r+b")\n    m = mmap.mmap(f.fileno(), 0)\n    m[:4] = b"PWND"\n'
           'attempt("mmap canary", poke)',
           r"mmap canary: \w+Error: \[Errno (2|13)\]"),
    Attack("evaluator_environ", "read the evaluator's environment (/proc/<evaluator>/environ) and every "
           "/proc/*/environ, looking for a secret the evaluator and a bystander hold",
           'import _io\nattempt("evaluator environ", lambda: _io.open("/proc/$evaluator/environ", "rb").read())\n'
           'found = []\nfor pid in filter(str.isdigit, os.listdir("/proc")):\n    try:\n'
           '        found += [pid] if b"$secret" in _io.open(f"/proc/{pid}/environ", "rb").read() else []\n'
           '    except OSError:\n        pass\nprint("secret found in", found, flush=True)',
           r"evaluator environ: FileNotFoundError: \[Errno 2\](.|\n)*secret found in \[\]", child_evaluator=True),
    Attack("socket_from_mro", "the real socket class, taken from the guard's class MRO, connects to a TCP "
           "server on the host's 127.0.0.1",
           'import socket\nreal = socket.socket.__mro__[2]\n'
           'def go():\n    s = real()\n    s.connect(("127.0.0.1", $port))\n    s.sendall(b"$name")\n'
           'attempt("connect", go)',
           r"connect: (ConnectionRefusedError: \[Errno 111\]|\w+Error: \[Errno 101\] Network is unreachable)"),
    Attack("socket_reimported", "del sys.modules['_socket'], re-import it (the original C module), connect to "
           "the host's TCP server",
           'sys.modules.pop("_socket")\nimport _socket\n'
           'def go():\n    s = _socket.socket()\n    s.connect(("127.0.0.1", $port))\n    s.send(b"$name")\n'
           'attempt("connect", go)',
           r"connect: (ConnectionRefusedError: \[Errno 111\]|\w+Error: \[Errno 101\] Network is unreachable)"),
    Attack("socket_libc", "libc socket() and connect() on a sockaddr_in built by hand, to the host's TCP server",
           'import struct\naddr = struct.pack("!HH4s8x", 2, $port, bytes([127, 0, 0, 1]))\n'
           'addr = struct.pack("=H", 2) + addr[2:]  # sa_family is host-endian\n'
           'def go():\n    fd = c(libc.socket(2, 1, 0))\n    c(libc.connect(fd, addr, len(addr)))\n'
           '    c(libc.write(fd, b"$name", len(b"$name")))\nattempt("connect", go)',
           r"connect: \w+Error: \[Errno (111|101)\]"),
    Attack("bash_dev_tcp", "bash's /dev/tcp through libc system(): a TCP connection to the host's server",
           'attempt("bash", lambda: libc.system(b"bash -c \'echo $name > /dev/tcp/127.0.0.1/$port\'"))',
           r"(Connection refused|Network is unreachable)(.|\n)*bash: ok 256"),
    Attack("internet", "UDP and TCP to 8.8.8.8:53, and a DNS lookup",
           'import _socket\nreal = __import__("socket").socket.__mro__[2]\n'
           'attempt("tcp", lambda: real().connect(("8.8.8.8", 53)))\n'
           'attempt("udp", lambda: real(2, 2).sendto(b"x", ("8.8.8.8", 53)))\n'
           'attempt("dns", lambda: _socket.getaddrinfo("example.com", 80))',
           r"tcp: \w+Error: \[Errno 101\] Network is unreachable\nudp: \w+Error: \[Errno 101\] Network is "
           r"unreachable\ndns: gaierror"),
    Attack("unix_socket_file", "connect to a unix socket file (mode 0777) the test listens on in the host's /tmp",
           'real = __import__("socket").socket.__mro__[2]\n'
           'def go():\n    s = real(1, 1)\n    s.connect("$unix")\n    s.sendall(b"$name")\nattempt("connect", go)',
           r"connect: FileNotFoundError: \[Errno 2\]",
           unshare_hole="host unix-socket files the uid may write are reachable: only bwrap hides them"),
    Attack("unix_socket_abstract", "connect to an abstract unix socket (\\0name) the test listens on",
           'real = __import__("socket").socket.__mro__[2]\n'
           'def go():\n    s = real(1, 1)\n    s.connect(b"\\0$abstract")\n    s.sendall(b"$name")\n'
           'attempt("connect", go)',
           r"connect: ConnectionRefusedError: \[Errno 111\]"),
    Attack("unix_socket_scan", "connect to every unix socket under /run, /var/run, /tmp, /dev/shm and /var/tmp",
           'import socket, stat\nreal = socket.socket.__mro__[2]\n'
           'paths = [os.path.join(root, f) for d in ("/run", "/var/run", "/tmp", "/dev/shm", "/var/tmp") '
           'for root, _, files in os.walk(d) for f in files\n'
           '         if stat.S_ISSOCK(os.lstat(os.path.join(root, f)).st_mode)]\n'
           'print("sockets found:", len(paths), flush=True)\n'
           'for p in paths:  # only to the ones of this test: no stray bytes to host daemons\n'
           '    def go():\n        s = real(1, 1)\n        s.connect(p)\n        s.sendall(b"$name")\n'
           '    if "ftlab_hostile" in p:\n        attempt(p, go)',
           r"sockets found: 0\n",
           unshare_hole="host unix-socket files the uid may write are reachable: only bwrap hides them"),
    Attack("write_home", "write a file into the evaluator's $HOME with _io.open",
           'import _io\nattempt("home", lambda: _io.open("$home/$name", "w").write("x"))',
           r"home: \w+Error: \[Errno (2|13|30)\]"),
    Attack("write_tmp", "write the host's /tmp with _io.FileIO (past the guard's open)",
           'import _io\nattempt("tmp", lambda: _io.FileIO("$marker.tmp", "w").write(b"x"))\n'
           'print("visible here:", os.path.exists("$marker.tmp"), flush=True)',
           r"tmp: ok 1\nvisible here: True", unshare_hole=TMP_HOLE),
    Attack("write_source_tree", "append to the sandbox's own child script and create a file in the ftlab "
           "source tree",
           'import _io\nattempt("child script", lambda: _io.open(sys.argv[0], "a").write("#"))\n'
           'attempt("source tree", lambda: _io.open("$repo/src/ftlab/evaluate/$name.py", "w").write("x"))',
           r"child script: \w+Error: \[Errno (13|30)\].*\n"
           r"source tree: \w+Error: \[Errno (2|13)\]"),
    Attack("open_from_closure", "the real open, recovered from the guard's closure, writes $HOME and the canary",
           'real_open = next(cell.cell_contents for cell in open.__closure__ '
           'if getattr(cell.cell_contents, "__name__", "") == "open")\n'
           'attempt("canary", lambda: real_open("$victim", "w").write("pwned"))\n'
           'attempt("home", lambda: real_open("$home/$name", "w").write("x"))',
           r"canary: \w+Error: \[Errno (2|13)\](.|\n)*"
           r"home: \w+Error: \[Errno (2|13|30)\]"),
    Attack("fileio_from_subclasses", "_io.FileIO found through object.__subclasses__() overwrites the canary",
           'def walk(cls):\n    for sub in type.__subclasses__(cls):\n        yield sub\n        yield from walk(sub)\n'
           'FileIO = next(k for k in walk(object) if k.__name__ == "FileIO")\n'
           'attempt("canary", lambda: FileIO("$victim", "w").write(b"pwned"))',
           r"canary: \w+Error: \[Errno (2|13)\]"),
    Attack("os_open_from_gc", "gc.get_objects() finds the guard's saved os.open; it creates a file in $HOME",
           'import gc\nreal = next(cell.cell_contents for f in gc.get_objects() '
           'if getattr(f, "__name__", "") == "guarded_os_open" for cell in f.__closure__ '
           'if getattr(cell.cell_contents, "__name__", "") == "open")\n'
           'attempt("home", lambda: real("$home/$name", os.O_WRONLY | os.O_CREAT))',
           r"home: \w+Error: \[Errno (2|13|30)\]"),
    Attack("setuid", "chmod u+s a copy of the shell and a host binary, then run a setuid-root binary (mount)",
           'import shutil\nshutil.copyfile("/bin/sh", "sh")\n'
           'attempt("setuid copy", lambda: c(libc.chmod(b"sh", 0o4755)))\n'
           'attempt("setuid host", lambda: c(libc.chmod(sys.executable.encode(), 0o4755)))\n'
           'attempt("mount", lambda: libc.system(b"mount -t tmpfs none /usr && echo MOUNTED"))',
           r"setuid host: \w+Error: \[Errno (1|13|30)\](.|\n)*mount: ok (8192|256|8192)"),
    Attack("ptrace", "ptrace(PTRACE_ATTACH) the evaluator by host pid and pid 1",
           'attempt("evaluator", lambda: c(libc.ptrace(16, $evaluator, 0, 0)))\n'
           'attempt("pid 1", lambda: c(libc.ptrace(16, 1, 0, 0)))',
           # a non-root evaluator's bwrap init has the program's uid: attaching stops it, inside the sandbox
           r"evaluator: \w+Error: \[Errno 3\] No such process\npid 1: (\w+Error: \[Errno 1\]|ok 0)"),
    Attack("chroot_escape", "the classic chroot escape: chroot into a subdirectory, chdir('..') 20 times, "
           "chroot('.')",
           'os.mkdir("jail")\nattempt("chroot", lambda: c(libc.chroot(b"jail")))\n'
           'for _ in range(20):\n    libc.chdir(b"..")\nattempt("chroot .", lambda: c(libc.chroot(b".")))',
           r"chroot: \w+Error: \[Errno 1\](.|\n)*chroot \.: \w+Error: \[Errno 1\]"),
    Attack("mount", "mount a tmpfs over /usr, remount / read-write, bind the evaluator's root",
           'attempt("tmpfs", lambda: c(libc.mount(b"none", b"/usr", b"tmpfs", 0, None)))\n'
           'attempt("remount", lambda: c(libc.mount(None, b"/", None, 32 | 4096, None)))\n'
           'attempt("bind", lambda: c(libc.mount(b"/proc/$evaluator/root", b".", None, 4096, None)))',
           r"tmpfs: \w+Error: \[Errno 1\].*\nremount: \w+Error: \[Errno 1\].*\nbind: \w+Error: \[Errno (1|2)\]"),
    Attack("userns_remount", "unshare(CLONE_NEWUSER + CLONE_NEWNS) for capabilities in a new user namespace, "
           "then remount /usr read-write and write into it",
           'import _io\nattempt("unshare", lambda: c(libc.unshare(0x10000000 | 0x00020000)))\n'
           'attempt("remount", lambda: c(libc.mount(None, b"/usr", None, 32 | 4096, None)))\n'
           'attempt("write", lambda: _io.open("/usr/$name", "w"))',
           r"remount: \w+Error: \[Errno (1|22)\].*\nwrite: \w+Error: \[Errno (13|30)\]"),
    Attack("raw_devices", "open disks, kernel memory and the log for writing (/dev/vda, /dev/sda, /dev/mem, "
           "/dev/kmsg, /dev/tty)",
           'import _io\nfor path in ("/dev/vda", "/dev/sda", "/dev/mem", "/dev/kmsg", "/dev/tty"):\n'
           '    attempt(path, lambda: _io.FileIO(path, "r+"))  # no O_CREAT: only what exists',
           r"(.*: \w+Error: \[Errno (2|6|13)\].*\n){5}"),
    Attack("proc_root", "reach the host's filesystem through /proc/1/root and /proc/<evaluator>/root",
           'import _io\nattempt("pid 1 root", lambda: _io.open("/proc/1/root$home/$name", "w"))\n'
           'attempt("evaluator root", lambda: _io.open("/proc/$evaluator/root$home/$name", "w"))',
           r"pid 1 root: \w+Error: \[Errno (2|13|30)\].*\n"
           r"evaluator root: FileNotFoundError: \[Errno 2\]"),
    Attack("kernel_and_clock", "sethostname, settimeofday (to now) and delete_module (kernel modules)",
           'attempt("sethostname", lambda: c(libc.sethostname(b"pwned", 5)))\n'
           'tv = (ctypes.c_long * 2)(int(time.time()), 0)\n'
           'attempt("settimeofday", lambda: c(libc.settimeofday(tv, None)))\n'
           'attempt("delete_module", lambda: c(libc.delete_module(b"ftlab_none", 0)))',
           r"sethostname: \w+Error: \[Errno 1\].*\nsettimeofday: \w+Error: \[Errno 1\].*\n"
           r"delete_module: \w+Error: \[Errno (1|38)\]"),  # 38: a kernel without modules
]
VICTIM_FILES = ["/proc/sys/kernel/printk_ratelimit_burst", "/proc/sys/kernel/hostname",
                "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/class/net/lo/mtu"]
