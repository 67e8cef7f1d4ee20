"""Hostile programs against the OS-level sandbox: each gets past the Python-level guard (ctypes re-imported,
_io, introspection) and tries one way out; the OS layer must hold.

ATTACKS (tests/hostile_programs.py) is the table: a program, what it tries, the sign in its output that it ran
and was stopped, and (under the unshare fallback, whose filesystem is the host's) the documented holes. Every
program runs under each OS-level mode that works here (bwrap, unshare), a few at a time, from this test process
(or, for the environment attack, from a child evaluator holding a secret), and each is asserted contained:

- its status is not "passed" (every program ends by failing on purpose, so "passed" would mean the run was
  misreported) and its output shows the containment sign;
- this process, the child evaluator and a bystander process (same uid as the programs, with the secret in its
  environment) are alive afterwards;
- nothing outside the working directory changed: no file named after the program in /tmp, /var/tmp, /dev/shm,
  $HOME, the source tree or /usr; the canary files, sysctls and binaries it targets are byte- and
  mode-identical; the test's TCP, unix and abstract servers got no connection;
- no process outlives the run: after waiting past any delayed action, /proc holds no live process with the
  program's tag (its comm, inherited by forks) or its marker in the command line.

A further test kills an evaluating process with SIGKILL mid-run and checks that no sandboxed process and no
working directory is left (under unshare: none after the next run, which sweeps it).

    python -m pytest tests/test_sandbox_hostile.py -v           # the checks
    python tests/test_sandbox_hostile.py [bwrap|unshare]        # the table, as markdown
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

import pytest

from ftlab.evaluate import sandbox
from ftlab.evaluate.isolation import Isolation
from ftlab.evaluate.sandbox import ProgramResult, run_program

from hostile_programs import ATTACKS, EPILOGUE, PRELUDE, VICTIM_FILES, Attack

TOKEN = uuid.uuid4().hex[:12]  # in every file name, tag and marker a program of this session uses
REPO = Path(__file__).resolve().parents[1]
HOME = Path(os.path.expanduser("~"))
MAX_OUTPUT = 10_000


# ----------------------------------------------------------------------------- the host around the programs


@dataclass
class Host:
    """What the programs aim at: canaries, servers, a bystander process, a secret; and what they received."""

    victim: Path
    port: int
    unix: str
    abstract: str
    bystander: subprocess.Popen
    secret: str
    received: list  # (server, bytes) of every connection a server accepted


@contextmanager
def host_setup():
    """Canary file (in a 0700 directory), TCP/unix/abstract servers, and a bystander running as the programs'
    uid with the secret in its environment; all removed on exit."""
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"ftlab_hostile_{TOKEN}_")))
        victim = home / "canary.txt"
        victim.write_text("canary")
        received: list = []
        tcp = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        unix_path = f"/tmp/ftlab_hostile_{TOKEN}.sock"
        unix = stack.enter_context(socket.socket(socket.AF_UNIX))
        unix.bind(unix_path)
        stack.callback(os.unlink, unix_path)
        os.chmod(unix_path, 0o777)
        abstract = stack.enter_context(socket.socket(socket.AF_UNIX))
        abstract.bind(f"\0ftlab_hostile_{TOKEN}".encode())
        for name, server in (("tcp", tcp), ("unix", unix), ("abstract", abstract)):
            server.listen()
            threading.Thread(target=_accept, args=(name, server, received), daemon=True).start()
        secret = f"ftlab-secret-{uuid.uuid4().hex}"
        bystander = subprocess.Popen(["sleep", "600"], env={"FTLAB_HOSTILE_SECRET": secret},
                                     user=65534 if os.geteuid() == 0 else None, start_new_session=True)
        stack.callback(bystander.wait)
        stack.callback(bystander.kill)
        stack.callback(_remove_marked_files)
        yield Host(victim, tcp.getsockname()[1], unix_path, f"ftlab_hostile_{TOKEN}", bystander, secret, received)


def _accept(name: str, server: socket.socket, received: list) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return  # closed at the end
        with conn:
            conn.settimeout(1)
            try:
                received.append((name, conn.recv(100)))
            except OSError:
                received.append((name, b""))


def marked_files(needle: str) -> list[str]:
    """Files whose name holds needle, where programs aimed: temporary dirs, $HOME, the source tree, /usr."""
    places = ["/tmp", "/var/tmp", "/dev/shm", str(HOME), str(REPO), str(REPO / "src/ftlab/evaluate"), "/usr"]
    return sorted({str(p) for place in places if os.path.isdir(place) for p in Path(place).glob(f"*{needle}*")
                   if not p.name.endswith(".sock") and not p.is_dir()})


def _remove_marked_files() -> None:
    for path in marked_files(TOKEN):
        Path(path).unlink(missing_ok=True)


def live_processes(needle: str) -> list[str]:
    """Live (not zombie) processes with needle in their comm or command line, as 'pid comm cmdline'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            continue  # exited while we looked
        if state != "Z" and (needle in comm or needle in cmdline):
            found.append(f"{entry.name} {comm} {cmdline[:200]}")
    return found


def snapshot(host: Host) -> dict:
    """What the programs must not change: each target file's bytes and mode, and the host's python binary."""
    state = {}
    for path in [str(host.victim), os.path.realpath(sys.executable), *VICTIM_FILES]:
        try:
            st = os.stat(path)
            state[path] = (Path(path).read_bytes(), st.st_mode)
        except OSError as e:
            state[path] = type(e).__name__
    return state


# ----------------------------------------------------------------------------- running the table


def tag(index: int) -> str:
    return f"h{index:02d}{TOKEN}"  # 15 characters: what comm holds


def render(attack: Attack, index: int, host: Host, evaluator: str) -> str:
    values = {"tag": tag(index), "name": f"ftlab_hostile_{TOKEN}_{attack.id}", "home": str(HOME),
              "marker": f"/tmp/ftlab_hostile_{TOKEN}_{attack.id}", "victim": str(host.victim), "port": host.port,
              "unix": host.unix, "abstract": host.abstract, "bystander": host.bystander.pid, "secret": host.secret,
              "repo": str(REPO), "evaluator": evaluator}
    return Template(PRELUDE + attack.source + EPILOGUE).substitute(values)


CHILD_EVALUATOR = """
import json, os, sys
from dataclasses import asdict
from ftlab.evaluate.isolation import Isolation
from ftlab.evaluate.sandbox import run_program
job = json.loads(sys.stdin.read())
isolation = Isolation(**job["isolation"])
results = [run_program(s.replace("$evaluator", str(os.getpid())), timeout_s=t, isolation=isolation)
           for s, t in job["programs"]]
print(json.dumps([asdict(r) for r in results]))
"""


def run_in_child_evaluator(programs: list[tuple[str, float]], isolation: Isolation, secret: str) -> list:
    """Run programs from a separate evaluator process whose environment holds the secret."""
    job = json.dumps({"isolation": asdict(isolation), "programs": programs})
    env = {**os.environ, "FTLAB_HOSTILE_SECRET": secret}
    done = subprocess.run([sys.executable, "-c", CHILD_EVALUATOR], input=job, capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr  # the child evaluator itself survived its programs
    return [ProgramResult(**r) for r in json.loads(done.stdout)]


@dataclass
class Outcome:
    result: ProgramResult
    leftovers: list[str]  # processes alive after the run (and its delayed actions)
    files: list[str]  # files named after the program outside its working directory
    connections: list  # what the host's servers received from it


def run_table(isolation: Isolation, host: Host, attacks: list[Attack] = ATTACKS) -> tuple[dict, dict]:
    """Every attack under `isolation`: {id: Outcome}, and the host-wide checks {check: value}."""
    before = snapshot(host)
    indexed = list(enumerate(attacks))
    child = [(i, a) for i, a in indexed if a.child_evaluator]
    results: dict[int, ProgramResult] = {}
    ended: dict[int, float] = {}

    def one(item: tuple[int, Attack]) -> None:
        i, attack = item
        results[i] = run_program(render(attack, i, host, str(os.getpid())), timeout_s=attack.timeout_s,
                                 max_output=MAX_OUTPUT, isolation=isolation)
        ended[i] = time.monotonic()

    with ThreadPoolExecutor(max_workers=4) as pool:
        in_child = pool.submit(run_in_child_evaluator,
                               [(render(a, i, host, "$evaluator"), a.timeout_s) for i, a in child],
                               isolation, host.secret)
        list(pool.map(one, [(i, a) for i, a in indexed if not a.solo and not a.child_evaluator]))
        for i, result in zip([i for i, _ in child], in_child.result()):
            results[i], ended[i] = result, time.monotonic()
    for item in indexed:
        if item[1].solo:
            one(item)
    wait = max((ended[i] + a.delay_s for i, a in indexed), default=0) - time.monotonic()
    time.sleep(max(wait, 0) + 0.5)
    outcomes = {}
    for i, attack in indexed:
        needle = f"{TOKEN}_{attack.id}"
        outcomes[attack.id] = Outcome(results[i], live_processes(tag(i)) + live_processes(needle),
                                      marked_files(needle), [r for r in host.received if needle.encode() in r[1]])
    checks = {"unchanged": snapshot(host) == before, "bystander alive": host.bystander.poll() is None,
              "anonymous connections": [r for r in host.received if not r[1]]}
    return outcomes, checks


def expected_sign(attack: Attack) -> str:
    """attack.contained with this session's $HOME and file name filled in."""
    name = f"ftlab_hostile_{TOKEN}_{attack.id}"
    return attack.contained.replace("$home", re.escape(str(HOME))).replace("$name", name)


# ----------------------------------------------------------------------------- the tests


def isolation(mode: str) -> Isolation:
    found = sandbox.detect()
    if mode not in found.working:
        pytest.skip(f"{mode} does not work here ({found.missing.get(mode)}); the other OS-level mode is tested")
    return found.working[mode]


@pytest.fixture(scope="module")
def host():
    with host_setup() as h:
        yield h


@pytest.fixture(scope="module", params=["bwrap", "unshare"])
def table(request, host):
    iso = isolation(request.param)
    host.received.clear()
    outcomes, checks = run_table(iso, host)
    return request.param, outcomes, checks


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_hostile_program_is_contained(table, host, attack, request):
    mode, outcomes, checks = table
    if mode == "unshare" and attack.unshare_hole:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"documented unshare hole: {attack.unshare_hole}"))
    outcome = outcomes[attack.id]
    result = outcome.result
    assert result.status != "passed", result.output
    assert len(result.output.encode()) <= MAX_OUTPUT + 100
    assert host.secret not in result.output
    assert os.kill(os.getpid(), 0) is None and checks["bystander alive"]  # this evaluator and the bystander
    assert outcome.leftovers == [] and outcome.connections == [] and checks["anonymous connections"] == []
    assert checks["unchanged"], "a canary file, sysctl or binary changed"
    assert outcome.files == []
    assert re.search(expected_sign(attack), result.output), result.output[-2000:]


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_kill_minus_nine_of_the_evaluator_leaves_no_process_and_no_directory(mode, tmp_path):
    """A child evaluator runs a long program whose fork has left the session and will write a marker in 3 s;
    SIGKILL to the evaluator mid-run ends both, and its working directory goes (unshare: at the next run)."""
    iso = isolation(mode)
    k9_tag, marker = f"k9{TOKEN}", f"/tmp/ftlab_hostile_{TOKEN}_k9"
    program = Template(PRELUDE).substitute(tag=k9_tag) + (
        f"import _io\nif c(libc.fork()) == 0:\n    libc.setsid()\n    time.sleep(3)\n"
        f"    _io.open({marker!r}, 'w').write('escaped')\n    os._exit(0)\ntime.sleep(60)\n")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    script = ("import json, sys\nfrom ftlab.evaluate.isolation import Isolation\n"
              "from ftlab.evaluate.sandbox import run_program\n"
              "run_program(sys.stdin.read(), timeout_s=60, isolation=Isolation(**json.loads(sys.argv[1])))\n")
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    evaluator = subprocess.Popen([sys.executable, "-c", script, json.dumps(asdict(iso))], stdin=subprocess.PIPE,
                                 env=env, text=True)
    evaluator.stdin.write(program)
    evaluator.stdin.close()
    deadline = time.monotonic() + 20
    while len(live_processes(k9_tag)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(live_processes(k9_tag)) == 2, "the program and its escaped child never both ran"
    evaluator.kill()
    evaluator.wait()
    time.sleep(3.5)  # past the escaped child's write
    assert live_processes(k9_tag) == [] and not os.path.exists(marker)
    left = sorted(p.name for p in tmpdir.iterdir())
    if mode == "bwrap":
        assert left == []  # the working directory was a tmpfs of the sandbox's own mount namespace
        return
    assert len(left) == 1 and left[0].startswith(sandbox.WORKDIR_PREFIX)
    subprocess.run([sys.executable, "-c", script, json.dumps(asdict(iso))], input="pass", env=env, text=True,
                   check=True, timeout=60)  # the next run sweeps it
    assert list(tmpdir.iterdir()) == []


# ----------------------------------------------------------------------------- the table, for people


def markdown(modes: list[str]) -> str:
    found = sandbox.detect()
    runs = {}
    with host_setup() as h:
        for mode in modes:
            if mode in found.working:
                h.received.clear()
                runs[mode] = run_table(found.working[mode], h)
    lines = ["| program | what it tried | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for attack in ATTACKS:
        cells = []
        for mode, (outcomes, checks) in runs.items():
            o = outcomes[attack.id]
            held = (o.result.status != "passed" and not o.leftovers and not o.files and not o.connections
                    and checks["unchanged"] and checks["bystander alive"]
                    and re.search(expected_sign(attack), o.result.output) is not None)
            sign = re.sub(r"\s+", " ", o.result.output.strip().splitlines()[-2] if o.result.output.count("\n") > 1
                          else o.result.output.strip())[:90].replace("|", "/")
            cells.append(f"{'contained' if held else 'NOT contained'} ({o.result.status}; {sign})")
        lines.append(f"| `{attack.id}` | {attack.tried} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(sys.argv[1:] or ["bwrap", "unshare"]))
