"""The sandbox: each hostile program fails only its own sample, the host is untouched, and the batch ends promptly;
which isolation runs, and the refusal when the one required is missing. (tests/test_sandbox_hostile.py: programs
that get past the Python guard, against the OS-level modes.)"""

import fcntl
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ftlab.cli import main
from ftlab.errors import FtlabError
from ftlab.evaluate import sandbox
from ftlab.evaluate.code import load_humaneval, score_completions
from ftlab.documents import CodeDoc
from ftlab.evaluate.isolation import Isolation
from ftlab.evaluate.sandbox import Detected, choose_isolation, run_many, run_program

GOOD = "assert sum(range(10)) == 45\nprint('ok')"
ESCAPE = f"/tmp/ftlab_sandbox_escape_{uuid.uuid4().hex}"  # must never be created
BYPASS = "import sys\ndel sys.modules['ctypes'], sys.modules['_ctypes']\nimport ctypes, os, time\n"  # past the guard


def hostile_programs(victim: Path) -> dict[str, str]:
    return {
        "endless_loop": "while True: pass",
        "fork_bomb": "import os\nwhile True: os.fork()",
        "memory_10gb": "x = bytearray(10 * 2**30)",
        "write_outside": f"open({ESCAPE!r}, 'w').write('x')",
        "write_outside_relative": f"open('../{Path(ESCAPE).name}', 'a').write('x')",
        "write_outside_pathlib": f"import pathlib\npathlib.Path({ESCAPE!r}).write_text('x')",
        "write_outside_os_open": f"import os\nos.write(os.open({ESCAPE!r}, os.O_WRONLY | os.O_CREAT), b'x')",
        "write_through_symlink": f"import os\nos.symlink('/tmp', 'out')\nopen('out/{Path(ESCAPE).name}', 'w')",
        "remove_outside": f"import os\nos.remove({str(victim)!r})",
        "rename_outside": f"import os\nos.rename({str(victim)!r}, 'stolen')",
        "subprocess": f"import subprocess\nsubprocess.run(['touch', {ESCAPE!r}])",
        "os_system": f"import os\nos.system('touch {ESCAPE}')",
        "exec_shell": f"import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {ESCAPE}'])",
        "socket_connect": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
        "socket_raw": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "killpg_parent": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "import_ctypes": "import ctypes",
        "failing_assert": "assert 1 + 1 == 3",
    }


def sandboxed_processes() -> list[int]:
    """Pids of live (not zombie) processes running the sandbox child (forks inherit its command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and b"sandbox_child.py" in (entry / "cmdline").read_bytes()
                    and "\nState:\tZ" not in (entry / "status").read_text()):
                pids.append(int(entry.name))
        except OSError:
            continue  # exited while we looked
    return pids


def isolation(mode: str) -> Isolation:
    """The working isolation of `mode` on this host, or skip saying why there is none."""
    found = sandbox.detect()
    if mode not in found.working:
        pytest.skip(f"{mode} does not work here ({found.missing.get(mode)}); the other modes are tested")
    return found.working[mode]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Every hostile program, each followed by a good one, in one run_many batch; and the host before/after."""
    victim = tmp_path_factory.mktemp("host") / "victim.txt"
    victim.write_text("keep me")
    programs = hostile_programs(victim)
    sources = [p for hostile in programs.values() for p in (hostile, GOOD)]
    rss_before, start = rss_bytes(), time.perf_counter()
    results = run_many(sources, workers=2, timeout_s=2)
    seconds, rss_after = time.perf_counter() - start, rss_bytes()
    by_name = {name: (results[2 * i], results[2 * i + 1]) for i, name in enumerate(programs)}
    return {"results": by_name, "seconds": seconds, "rss_growth": rss_after - rss_before, "victim": victim,
            "stray": sandboxed_processes()}


def test_batch_is_prompt_and_every_good_neighbour_passes(batch):
    assert batch["seconds"] < 30
    for name, (_, good) in batch["results"].items():
        assert good.status == "passed" and good.output == "ok\n", name


def test_good_program_passes_and_failing_assert_fails():
    assert run_program(GOOD) == sandbox.ProgramResult("passed", 0, "ok\n")
    failed = run_program("assert 1 + 1 == 3")
    assert failed.status == "failed" and failed.returncode == 1 and "AssertionError" in failed.output


@pytest.mark.parametrize("name", list(hostile_programs(Path("/x"))))
def test_hostile_program_fails(batch, name):
    hostile, _ = batch["results"][name]
    assert hostile.status == ("timeout" if name == "endless_loop" else "failed"), hostile.output


def test_endless_loop_times_out_on_the_wall_clock():
    start = time.perf_counter()
    result = run_program("while True: pass", timeout_s=2)
    assert result.status == "timeout" and result.returncode is None
    assert 2 <= time.perf_counter() - start < 4


def test_fork_bomb_leaves_no_process_behind(batch):
    assert "os.fork is disabled" in batch["results"]["fork_bomb"][0].output
    assert batch["stray"] == []


def test_huge_allocation_fails_without_moving_host_memory(batch):
    assert "MemoryError" in batch["results"]["memory_10gb"][0].output
    assert batch["rss_growth"] < 100 * 2**20


def test_nothing_outside_the_working_directory_changed(batch):
    assert not Path(ESCAPE).exists()
    assert batch["victim"].read_text() == "keep me"
    for name in ("write_outside", "write_outside_relative", "write_through_symlink", "remove_outside"):
        assert "outside the working directory" in batch["results"][name][0].output, name


def test_network_is_refused(batch):
    for name in ("socket_connect", "socket_raw"):
        assert "network access is disabled" in batch["results"][name][0].output


def test_killing_the_parent_leaves_the_evaluator_alive(batch):
    assert "os.kill is disabled" in batch["results"]["kill_parent"][0].output
    assert "os.killpg is disabled" in batch["results"]["killpg_parent"][0].output
    os.kill(os.getpid(), 0)  # this process (the parent) is still here


def test_writing_inside_the_working_directory_works():
    program = ("import os\nos.mkdir('d')\nopen('d/f.txt', 'w').write('hi')\nos.rename('d/f.txt', 'g.txt')\n"
               "os.remove('g.txt')\nprint(sorted(os.listdir('.')))")
    result = run_program(program)
    assert result.status == "passed", result.output
    assert result.output == "['d', 'program.py']\n"


def test_chatty_program_output_is_truncated():
    start = time.perf_counter()
    result = run_program("print('x' * 10_000_000)\nprint('done')", max_output=1000)
    assert result.status == "passed" and result.output == "x" * 1000
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("mode", ["bwrap", "unshare", "python"])
def test_process_group_is_killed_even_when_the_guard_is_bypassed(mode):
    """A program that gets past the Python guard (via ctypes) and leaves a sleeping child behind: the end of the
    run still ends that child, in every mode (the group kill; under bwrap and unshare, the PID namespace)."""
    program = BYPASS + "if ctypes.CDLL(None).fork() == 0:\n    time.sleep(60)\nprint('forked')"
    start = time.perf_counter()
    result = run_program(program, timeout_s=5, isolation=isolation(mode))
    assert result.status == "passed" and result.output == "forked\n"
    assert time.perf_counter() - start < 5
    assert sandboxed_processes() == []


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_network_namespace_stops_a_program_past_the_socket_guard(mode):
    """The real socket class is still reachable past the guard; only the network namespace stops it then."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = (f"import socket\nreal = socket.socket.__mro__[2]  # _socket.socket, the C type\n"
                   f"real().connect(('127.0.0.1', {port}))\nprint('connected')")
        result = run_program(program, isolation=isolation(mode))
    assert result.status == "failed" and "connected" not in result.output
    # bwrap brings up the namespace's own loopback (nothing listens there); unshare leaves it down
    assert "ConnectionRefusedError" in result.output or "Network is unreachable" in result.output


@pytest.mark.parametrize("mode", ["bwrap", "unshare", "python"])
def test_crash_is_an_error(mode):
    result = run_program(BYPASS + "ctypes.string_at(0)", isolation=isolation(mode))
    assert result.status == "error" and result.returncode == -11


def test_process_that_leaves_the_group_is_reported():
    """The hole of the Python-only mode: past the guard, setsid() escapes the group kill; the run says so
    instead of hanging."""
    program = BYPASS + ("pid = ctypes.CDLL(None).fork()\nif pid == 0:\n    ctypes.CDLL(None).setsid()\n"
                        "    time.sleep(30)\nprint(pid, flush=True)")
    start = time.perf_counter()
    result = run_program(program, isolation=isolation("python"))
    escaped = int(result.output.split()[0])
    os.kill(escaped, signal.SIGKILL)
    assert result.status == "error" and "still holds the output pipe" in result.output
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_process_that_leaves_the_session_dies_with_the_namespace(mode):
    """The same program under bwrap or unshare: the escaped child dies with the PID namespace, the run ends
    normally and promptly."""
    program = BYPASS + ("pid = ctypes.CDLL(None).fork()\nif pid == 0:\n    ctypes.CDLL(None).setsid()\n"
                        "    time.sleep(30)\nprint('forked', flush=True)")
    start = time.perf_counter()
    result = run_program(program, isolation=isolation(mode))
    assert result == sandbox.ProgramResult("passed", 0, "forked\n")
    assert time.perf_counter() - start < 5
    assert sandboxed_processes() == []


# ----------------------------------------------------------------------------- which isolation runs


def test_bubblewrap_runs_where_it_is_installed():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap); the unshare path is tested instead")
    found = sandbox.detect()
    assert "bwrap" in found.working, found.missing.get("bwrap")
    assert choose_isolation("auto").mode == choose_isolation("os").mode == choose_isolation("bwrap").mode == "bwrap"
    assert choose_isolation().describe().startswith("bubblewrap (")


@pytest.mark.parametrize("mode", ["bwrap", "unshare", "python"])
def test_each_mode_shows_what_it_promises(mode):
    """What the program sees: pid namespace, own loopback only, no capabilities, uid 65534 for a root
    evaluator, and (bwrap only) a working directory that exists nowhere on the host."""
    iso = isolation(mode)
    program = ("import os, socket\nst = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
               "print(os.getpid(), os.getuid(), int(st['CapEff'], 16), [n for _, n in socket.if_nameindex()],"
               " os.getcwd(), sorted(os.listdir('/')), sep='|')")
    result = run_program(program, isolation=iso)
    assert result.status == "passed", result.output
    pid, uid, caps, links, cwd, root = result.output.strip().split("|")
    if mode == "python":
        assert int(pid) > 2 and cwd.startswith(tempfile.gettempdir())
        return
    assert int(pid) <= 2 and int(caps) == 0 and links == "['lo']"
    assert int(uid) == (65534 if os.geteuid() == 0 else int(uid))
    if mode == "bwrap":
        assert cwd == "/sandbox" and not Path("/sandbox").exists()
        assert "'home'" not in root and "'run'" not in root and "'sys'" not in root and "'var'" not in root


def test_choice_prefers_bwrap_then_unshare_and_refuses_what_is_missing(monkeypatch):
    unshare, python = Isolation("unshare", "/usr/bin/unshare", None, "/usr/bin/setpriv"), Isolation("python")
    monkeypatch.setattr(sandbox, "detect", lambda: Detected({"unshare": unshare, "python": python},
                                                            {"bwrap": "bwrap is not installed"}))
    assert choose_isolation("auto") == choose_isolation("os") == unshare
    with pytest.raises(FtlabError, match=r"--isolation bwrap: refusing .* without bubblewrap \(bwrap: bwrap is "
                                         r"not installed\).*apt-get install bubblewrap"):
        choose_isolation("bwrap")
    monkeypatch.setattr(sandbox, "detect", lambda: Detected({"python": python}, {"bwrap": "no", "unshare": "no"}))
    assert choose_isolation("auto") == python
    with pytest.raises(FtlabError, match="without OS-level isolation .bwrap: no; unshare: no"):
        choose_isolation("os")
    with pytest.raises(FtlabError, match="expected one of auto, os, bwrap"):
        choose_isolation("docker")


def test_cli_refuses_before_anything_is_loaded(monkeypatch, tmp_path, capsys):
    """--isolation os without OS-level isolation: exit 2 naming what is missing and how to install it, before the
    target is even looked at (it does not exist here, and that is not what the error says)."""
    monkeypatch.setattr(sandbox, "detect", lambda: Detected({"python": Isolation("python")},
                                                            {"bwrap": "bwrap is not installed", "unshare": "no"}))
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "humaneval", "--isolation", "os"]) == 2
    err = capsys.readouterr().err
    assert "refusing to run generated code without OS-level isolation" in err and "apt-get install bubblewrap" in err
    assert "not a run directory" not in err
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "hellaswag", "--isolation", "os"]) == 2
    assert "not a run directory" in capsys.readouterr().err  # no generated code to run: nothing to refuse


def test_cli_says_which_isolation_runs(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "humaneval"]) == 2  # stops at the missing target
    line = f"ftlab eval: generated code runs under {choose_isolation().describe()}\n"
    assert capsys.readouterr().out == line


@pytest.mark.parametrize("mode", ["os", "python"])
def test_the_choice_reaches_the_programs_through_score_completions_and_evaluate_into(tmp_path, mode):
    """A completion that passes only inside a PID namespace: its score follows the isolation passed in."""
    from ftlab.evaluate.harness import evaluate_into
    from ftlab.evaluate.tasks import get_task

    iso = choose_isolation("os") if mode == "os" else isolation(mode)  # bwrap, else unshare
    inside = "\n    assert __import__('os').getpid() <= 2\n"  # the newline: after a stripped or a whole prompt
    doc = CodeDoc(task_id="t/0", prompt="def f():\n", test="def check(f):\n    assert f() == 1\n", entry_point="f",
                  canonical_solution="    return 1\n")
    scores, records = score_completions([doc], [[inside + "    return 1\n"]], ks=(1,), isolation=iso)
    assert records[0]["passed"] is (mode == "os") and scores[0].value == (1.0 if mode == "os" else 0.0)

    class Canonical:  # generates each HumanEval problem's canonical solution (in order) behind the same check
        def generate(self, prompts, **kwargs):
            return [[inside + d.canonical_solution] for d in load_humaneval()[:len(prompts)]]

    spec = replace(get_task("humaneval"), limit=2, samples=1, ks=(1,))
    results = evaluate_into(tmp_path, Canonical(), None, None, [spec], None, isolation=iso)
    assert [s["value"] for s in results["scores"] if s["metric"] == "pass@1"] == [1.0 if mode == "os" else 0.0]


def test_stale_host_workdirs_are_swept_and_busy_ones_kept(monkeypatch, tmp_path):
    """unshare and python modes work in host directories; one left by a killed evaluator (its lock free) goes
    at the next run, one in use (locked) stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale, busy, other = (tmp_path / f"{sandbox.WORKDIR_PREFIX}{name}" for name in ("stale", "busy", "x"))
    for d in (stale, busy):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "program.py").write_text("pass")
    other.write_text("a file, not a directory")
    lock = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert sandbox.sweep_stale_workdirs() == [str(stale)]
    finally:
        os.close(lock)
    assert not stale.exists() and busy.exists() and other.exists()
    result = run_program("import os\nprint(os.getcwd())", isolation=isolation("python"))
    assert result.status == "passed" and Path(result.output.strip()).parent == tmp_path
    assert not Path(result.output.strip()).exists()  # its own directory is gone after the run
