"""`ftlab run --backend ray`: a study's runs train as tasks on a local 2-CPU Ray cluster and the store ends as the local
backend leaves it (a diverging long run and the branch that waits on it included); a worker SIGKILLed mid-run is
retried by Ray, resumes from the run's saved state and ends with the uninterrupted weights; without Ray,
`--backend ray` exits 2 with the install command, and nothing imports Ray unless asked.

Training and evaluation use one torch thread (Ray's workers get OMP_NUM_THREADS=1), so the Ray study and the local
reference reduce in the same order and their stores compare equal.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftlab.cli import main
from ftlab.experiment.ray_backend import RayOptions
from ftlab.results.store import Store
from ftlab.experiment.study import run_experiment

# One CPT setting x (full, LoRA r=2): each a long run of 10240 tokens (40 steps of 8 x 32 tokens) and a 1536-token
# branch that restarts from the long run's state at step 5. LoRA's LR makes its long run diverge at step 1, so
# that run fails and its branch is recorded failed without training.
GRID = """
name: ray-grid
model:
  name: tiny
  tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 320}
defaults:
  train: {optimizer: adamw, global_batch: 8, micro_batch: 8, seed: 0, warmup: 1}
  data: {eval_max_examples: 8}
  output: {resume_every: 2}
settings:
  - name: code-cpt
    data: {regime: cpt, path: "builtin:code-cpt", seq_len: 32}
    durations: [1536, 10240]
    learning: [code_loss]
    lr: {full: 1.0e-3, lora: 1.0e+30}
methods:
  - {name: full}
  - {name: lora, ranks: [2]}
forgetting: [source_cloze]
eval: {limit: 4}
analyses: {spectrum: true, kl: true, kl_prompts: 2, diversity: []}
"""
LONG, BRANCH = "code-cpt/full/tokens-10240", "code-cpt/full/tokens-1536"
LORA_LONG, LORA_BRANCH = "code-cpt/lora-r2/tokens-10240", "code-cpt/lora-r2/tokens-1536"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The grid's experiment file and its study by the local backend: (experiment, study dir)."""
    root = tmp_path_factory.mktemp("local")
    exp = root / "grid.yaml"
    exp.write_text(GRID)
    run_experiment(exp, root / "study", report=False)
    return exp, root / "study"


def dump(out: Path) -> dict:
    store = Store(out / "results.sqlite")
    try:
        return store.dump()
    finally:
        store.close()


def runs(out: Path) -> dict[str, dict]:
    store = Store(out / "results.sqlite")
    try:
        return store.runs()
    finally:
        store.close()


def test_the_grid_on_ray_records_what_the_local_backend_records(cluster, local, tmp_path, capsys):
    exp, reference = local
    out = tmp_path / "study"
    capsys.readouterr()
    assert main(["run", str(exp), "--out", str(out), "--backend", "ray", "--no-report"]) == 1  # LoRA's runs failed
    printed = capsys.readouterr().out

    statuses = {name: (r["status"], r["reason"]) for name, r in runs(out).items()}
    assert statuses[LONG] == statuses[BRANCH] == ("done", None)
    assert statuses[LORA_LONG][0] == "failed" and statuses[LORA_LONG][1].startswith("TrainingError: non-finite loss")
    assert statuses[LORA_BRANCH] == ("failed", f"the long run {LORA_LONG} it restarts from failed")
    assert not (out / "runs" / LORA_BRANCH).exists()  # never trained
    assert "TrainingError" in (out / "runs" / LORA_LONG / "failure.txt").read_text()
    assert dump(out) == dump(reference)  # runs, checkpoints, metrics, spectra, analyses

    # both long runs went to Ray together; the branch only after its long run came back
    order = [line.split("] ")[1].split(" ")[0] for line in printed.splitlines() if line.endswith("-> Ray (0 GPU)")]
    assert order == [LONG, LORA_LONG, BRANCH]


def lock_holder(lock: Path) -> int | None:
    """The pid holding an flock on `lock` (train holds <run>/.lock while it trains), from /proc/locks."""
    try:
        inode = lock.stat().st_ino
    except FileNotFoundError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146347 0 EOF"; "1: -> FLOCK ..." waits
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def last_step(run: Path) -> int:
    """The last training step in the run's metrics log (0 before the first); a line being written is left out."""
    steps = [0]
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            steps.append(record["step"])
    return max(steps)


def kill_mid_run(run: Path, at_step: int, total: int, killed: list, done: threading.Event) -> None:
    """SIGKILL the process training `run` once it has logged `at_step` (its state at an earlier step is saved).

    The trainer is stopped (SIGSTOP) while its progress is read, so it cannot finish between the look and the kill.
    """
    while not done.is_set():
        pid = lock_holder(run / ".lock")
        if pid is not None and pid != os.getpid():
            os.kill(pid, signal.SIGSTOP)
            step = last_step(run)
            if lock_holder(run / ".lock") == pid and at_step <= step < total:
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, step))
                return
            os.kill(pid, signal.SIGCONT)
            if step >= total:
                killed.append((None, step))  # too late: the test fails
                return
        time.sleep(0.002)


def study_with_a_kill(exp: Path, out: Path) -> int:
    """Run the study on Ray, SIGKILLing the worker that trains LONG (40 steps) at step 3 or later: that step."""
    killed, done = [], threading.Event()
    killer = threading.Thread(target=kill_mid_run, args=(out / "runs" / LONG, 3, 40, killed, done), daemon=True)
    killer.start()
    try:
        run_experiment(exp, out, report=False, ray=RayOptions())
    finally:
        done.set()
        killer.join()
    assert len(killed) == 1 and killed[0][0] is not None, f"no kill mid-run: {killed}"
    return killed[0][1]


needs_proc_locks = pytest.mark.skipif(not Path("/proc/locks").exists(),
                                      reason="finds the trainer's pid in /proc/locks (Linux)")


@needs_proc_locks
def test_a_killed_worker_is_retried_and_resumes_to_the_same_weights(cluster, local, tmp_path, capsys):
    exp, reference = local
    out = tmp_path / "study"
    step = study_with_a_kill(exp, out)
    assert 3 <= step < 40
    # the retry started from the last state saved before the kill (every 2 steps), not from scratch
    resumed = [line for line in capsys.readouterr().out.splitlines() if f"{LONG} resumed at step" in line]
    assert len(resumed) == 1 and 2 <= int(resumed[0].split("resumed at step ")[1].split()[0]) <= step

    for run in (LONG, BRANCH):
        a = load_file(out / "runs" / run / "final" / "model.safetensors")
        b = load_file(reference / "runs" / run / "final" / "model.safetensors")
        assert a.keys() == b.keys() and len(a) > 0
        for name in a:
            assert torch.equal(a[name], b[name]), (run, name)
    assert dump(out) == dump(reference)


@needs_proc_locks
def test_a_worker_that_dies_past_the_retries_fails_its_run_not_the_study(cluster, local, tmp_path, monkeypatch):
    import ftlab.experiment.ray_backend as ray_backend

    exp, _ = local
    out = tmp_path / "study"
    monkeypatch.setattr(ray_backend, "MAX_RETRIES", 0)
    study_with_a_kill(exp, out)
    status = {name: (r["status"], r["reason"]) for name, r in runs(out).items()}
    assert status[LONG][0] == "failed" and status[LONG][1].startswith("WorkerCrashedError: ")
    assert status[LONG][1].endswith("(retried 0 times)"), status[LONG]
    assert status[BRANCH] == ("failed", f"the long run {LONG} it restarts from failed")
    assert status[LORA_LONG][0] == "failed"  # the other runs went on
    assert "WorkerCrashedError" in (out / "runs" / LONG / "failure.txt").read_text()


def test_without_ray_the_backend_fails_with_the_install_command(tmp_path, capsys, monkeypatch):
    exp, out = tmp_path / "grid.yaml", tmp_path / "study"
    exp.write_text(GRID)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    assert main(["run", str(exp), "--out", str(out), "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--backend ray needs Ray" in err and "pip install 'ftlab[ray]'" in err
    assert not out.exists()  # it fails before the study directory is made

    assert main(["run", str(exp), "--out", str(out), "--ray-address", "auto"]) == 2
    assert "--ray-address and --gpus-per-run go with --backend ray" in capsys.readouterr().err
    assert main(["run", str(exp), "--out", str(out), "--backend", "ray", "--gpus-per-run", "2"]) == 2
    assert "--gpus-per-run: expected 0 to 1" in capsys.readouterr().err
    assert not out.exists()

    # the local backend and the CLI never import Ray
    code = ("import sys, ftlab.cli, ftlab.experiment.study, ftlab.experiment.ray_backend; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


PLACEMENT = """
import json, time
import ray
from ftlab.experiment.ray_backend import hold_gpu

ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)  # two GPUs as Ray sees them: a CPU machine pretends

@ray.remote(num_gpus=1)
def trains():
    time.sleep(0.2)
    return [str(g) for g in ray.get_gpu_ids()]

actor, evaluation = hold_gpu(ray)
runs = ray.get([trains.remote() for _ in range(4)])
print(json.dumps({"evaluation": evaluation, "runs": runs}))
ray.shutdown()
"""


def test_evaluation_holds_a_gpu_that_no_run_trains_on(tmp_path):
    """On one node with two GPUs (Ray's fake resources on a CPU machine), the driver holds one GPU through Ray for
    its evaluation and every training task gets the other: a local `ray.init()` gave each run any GPU, and the
    driver evaluated on cuda:0, beside whichever run trained there."""
    pytest.importorskip("ray")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", PLACEMENT], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    placed = json.loads(proc.stdout.strip().splitlines()[-1])
    other = str(1 - placed["evaluation"])
    assert placed["evaluation"] in (0, 1)
    assert placed["runs"] == [[other]] * 4
