"""`ftlab status`: a study's runs, phases and ETA from its results store alone (no torch, no re-planning, no data),
and one training run's progress; the records behind the store's tables; every artefact named once.

No training here: the studies and runs are the files and store rows a runner and a training process write."""

import ast
import fcntl
import json
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from ftlab.cli import main
from ftlab.experiment.status import run_status, study_eta, study_status
from ftlab.results.records import STARTED, TABLES, CheckpointRecord, CheckpointResult, RunRecord, columns
from ftlab.results.store import Store
from ftlab.rundir import RunLayout, StudyLayout

SRC = Path(__file__).resolve().parents[1] / "src" / "ftlab"


def planned(name: str, status: str = "left", checkpoints: list[float] = (), **kw) -> RunRecord:
    config = {"data": {"path": "/data/not-mounted/math.jsonl"}, "train": {"checkpoints": list(checkpoints)},
              "output": {"dir": f"/elsewhere/runs/{name}"}}
    return RunRecord(name, "math", "grid", name.split("/")[1], "full", "ift", lr=1e-3, duration_unit="epochs",
                     config=json.dumps(config), status=status, **kw)


def make_study(root: Path, runs: list[RunRecord], measured: dict[str, int] = (), started: float | None = None) -> Path:
    """A study folder as a runner leaves it: the saved experiment (naming data that is not there), the store."""
    layout = StudyLayout(root)
    root.mkdir(parents=True)
    layout.experiment.write_text(yaml.safe_dump({"source": "/gone/exp.yaml", "overrides": [],
                                                 "text": "settings: [{data: {path: /data/not-mounted}}]\n"}))
    layout.lock.touch()
    with Store(layout.store) as store:
        store.put_planned(runs)
        for r in runs:
            if r.status not in ("left", "waiting"):
                store.put_run(r)
        for name, n in dict(measured).items():
            for i in range(n):
                store.put_checkpoint(CheckpointResult(CheckpointRecord(name, f"epochs-{i + 1}", duration=i + 1.0)))
        if started is not None:
            store.put_meta(STARTED, repr(started))
    return root


@pytest.fixture
def held(tmp_path):
    """Hold a lock as the process that owns it does (a study's runner, a run's training)."""
    files = []

    def hold(lock: Path):
        f = open(lock, "a")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        files.append(f)

    yield hold
    for f in files:
        f.close()


# ----------------------------------------------------------------------------- a study, from its store alone


def test_a_study_is_shown_from_its_store_alone_with_each_runs_phase(tmp_path, held, capsys):
    runs = [planned("math/full/epochs-2", "done", [1]), planned("math/lora-r4/epochs-2", "evaluating", [1]),
            planned("math/lora-r16/epochs-2", "left", [1]), planned("math/lora-r64/epochs-2", "waiting", [1])]
    study = make_study(tmp_path / "study", runs, {"math/full/epochs-2": 2, "math/lora-r4/epochs-2": 1},
                       started=time.time() - 100)
    held(StudyLayout(study).lock)
    rows = {r["run"]: r for r in study_status(study)}  # the experiment's data path is not mounted: no matter
    assert {n: (r["status"], r["checkpoints"]) for n, r in rows.items()} == {
        "math/full/epochs-2": ("done", "2/2"), "math/lora-r4/epochs-2": ("evaluating", "1/2"),
        "math/lora-r16/epochs-2": ("left", "0/2"), "math/lora-r64/epochs-2": ("waiting for the LR sweep", "0/2")}
    assert main(["status", str(study)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "lora-r4" in x)
    assert "evaluating" in line and "step" not in line and "ETA" not in line  # not "step 18/18 ... ETA 00:00:00"
    assert "ETA" in out.splitlines()[0] and "3 runs left" in out.splitlines()[0]


def test_the_study_eta_is_the_time_per_finished_run_times_the_runs_left(tmp_path, held):
    now = time.time()
    runs = [planned("math/a/x", "done", updated=None), planned("math/b/x", "done"), planned("math/c/x", "running"),
            planned("math/d/x"), planned("math/e/x")]
    study = make_study(tmp_path / "study", runs, started=now - 1000)
    with Store(StudyLayout(study).store) as store:  # two runs finished at 400 s and 800 s: 400 s each
        store.db.execute("UPDATE runs SET updated=? WHERE name='math/a/x'", (now - 600,))
        store.db.execute("UPDATE runs SET updated=? WHERE name='math/b/x'", (now - 200,))
    assert study_eta(study).startswith("stopped")  # no runner holds the study
    held(StudyLayout(study).lock)
    eta = study_eta(study)  # 3 runs left at 400 s each, less the 200 s the running one has had: 1000 s
    seconds = sum(int(x) * 60 ** i for i, x in enumerate(reversed(re.search(r"ETA (\d+:\d\d:\d\d)", eta)[1].split(":"))))
    assert abs(seconds - 1000) <= 2 and "3 runs left" in eta and "2 finished" in eta
    rows = {r["run"]: r for r in study_status(study)}
    assert rows["math/c/x"]["status"] == "training" and rows["math/c/x"]["step"] == "starting"


def test_a_stopped_study_shows_where_each_run_was(tmp_path):
    study = make_study(tmp_path / "study", [planned("math/a/x", "analysing"), planned("math/b/x")])
    rows = {r["run"]: r for r in study_status(study)}  # no runner holds the lock
    assert (rows["math/a/x"]["status"], rows["math/a/x"]["phase"]) == ("interrupted", "analysing")
    assert study_eta(study).startswith("stopped")


def test_status_imports_no_torch_and_answers_quickly(tmp_path):
    study = make_study(tmp_path / "study", [planned("math/a/x", "done"), planned("math/b/x")])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftlab", "status", str(study)],
                          capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "ftlab.results.store" in imported and not {"torch", "transformers", "numpy"} & imported
    assert seconds < 10  # well under a second on an idle machine; the bound only catches a heavy import


def test_the_planner_imports_no_torch():
    code = ("import sys, ftlab.experiment.spec, ftlab.experiment.status, ftlab.results.index; "
            "print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_a_folder_that_is_neither_a_study_nor_a_run(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "not a study directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one training run


def make_run(root: Path, steps: int = 0, total: int = 8) -> RunLayout:
    run = RunLayout(root)
    run.path.mkdir(parents=True)
    run.config_yaml.write_text("train: {epochs: 1}\n")
    if total:
        run.plan.write_text(json.dumps({"total_steps": total, "tokens_per_step": 100.0}))
    if steps:
        run.metrics.write_text("".join(json.dumps({"step": s, "loss": 2.0, "tokens_per_s": 50.0}) + "\n"
                                       for s in range(1, steps + 1)))
    return run


def test_status_of_one_run_shows_its_progress(tmp_path, held, capsys):
    run = make_run(tmp_path / "run", steps=3)
    held(run.lock)  # its training holds the run's lock
    s = run_status(run.path)
    assert (s["status"], s["step"], s["eta"]) == ("training", "3/8", "00:00:10")  # 5 steps x 100 tokens at 50/s
    assert main(["status", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "a training run, training" in out and "step 3/8" in out and "no checkpoint yet" in out


def test_status_of_a_stopped_and_of_a_finished_run(tmp_path, capsys):
    run = make_run(tmp_path / "stopped", steps=2)
    assert run_status(run.path)["status"] == "interrupted"
    done = make_run(tmp_path / "done", steps=8)
    for ckpt in (done.checkpoint("epochs", 0.5), done.final):
        ckpt.mkdir(parents=True)
    (done.final / "eval.json").write_text('{"scores": []}')
    done.cost.write_text(json.dumps({"wall_s": 3725.0}))
    s = run_status(done.path)
    assert s["status"] == "trained" and [c["name"] for c in s["checkpoints"]] == ["epochs-0.5", "final"]
    assert s["checkpoints"][1]["artefacts"] == ["eval.json"]
    assert main(["status", str(done.path)]) == 0
    out = capsys.readouterr().out
    assert "trained in 1:02:05" in out and "not evaluated" in out
    assert run_status(make_run(tmp_path / "new", total=0).path)["status"] == "not started"


# ----------------------------------------------------------------------------- the store's records and names


def test_each_table_has_its_records_columns_in_order(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        for record in TABLES:
            table = [c[1] for c in store.db.execute(f"PRAGMA table_info({record.TABLE})")]
            assert table == list(columns(record)), record.TABLE
            keys = [c[1] for c in sorted(store.db.execute(f"PRAGMA table_info({record.TABLE})"), key=lambda c: c[5])
                    if c[5]]
            assert keys == list(record.KEY) and set(keys) <= {f.name for f in fields(record)}


ARTEFACTS = ["results.sqlite", "experiment.yaml", ".ftlab-run.lock", "eval.json", "eval_samples", "kl.json",
             "diversity.json", "config.yaml", "metrics.jsonl", "plan.json", "run.json", "failure.txt", "launch.yaml",
             "base_eval"]


def test_every_artefact_is_named_once_in_the_code():
    """A string literal naming an artefact appears once in src/ftlab (rundir.py), docstrings aside."""
    found = {name: [] for name in ARTEFACTS}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for name in ARTEFACTS:
                    if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", node.value):
                        found[name].append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert {n: places for n, places in found.items() if len(places) != 1} == {}
