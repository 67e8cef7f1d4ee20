"""Fault injection: every kind of file ftlab writes is truncated, corrupted in the middle, or replaced with garbage,
and the command that reads it is run again. The outcome is always one of two: recovered (a damaged resumable state
falls back to the one before it and the run ends at the weights of an uninterrupted run, bit for bit; a damaged
copy of the saved config is read from its twin) or exit status 2 with a message naming the damaged file. Never a
traceback, never a silent nan.

    .venv/bin/python -m pytest tests/test_faults.py -q -s     # -s prints the table (file, damage, outcome)
"""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_overrides, write_pairs
from ftlab.analysis.kl import kl_for_checkpoint, target_prompts
from ftlab.cli import main
from ftlab.io import write_json

# ----------------------------------------------------------------------------- the damage


def truncate(path: Path) -> None:
    """The first half of the file: a copy or a write cut short."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt(path: Path) -> None:
    """Eight bytes in the middle of the file inverted: a bad sector, bits flipped on the way."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + 8, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage(path: Path) -> None:
    """As many random bytes as the file had (at least 64): another file written over it."""
    path.write_bytes(random.Random(path.name).randbytes(max(path.stat().st_size, 64)))


DAMAGE = {"truncated": truncate, "corrupted": corrupt, "garbage": garbage}

# ----------------------------------------------------------------------------- what ftlab wrote, made once

METHODS = {"full": ["method.name=full", "train.lr=1e-2"], "lora": ["method.name=lora", "method.rank=4",
                                                                   "train.lr=3e-2"]}
# 86 training examples in batches of 16: 6 steps; a state every 3 steps, so state/ ends holding step 3 and step 6
SETTINGS = ["train.epochs=1", "output.resume_every=3", "method.dropout=0.1"]
TASK = ["--tasks", "math_loss", "--limit", "2"]
STUDY = """
name: faults
model: {name: tiny, tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 320}}
defaults:
  train: {global_batch: 8, micro_batch: 8, warmup: 1}
  output: {resume_every: 2}
settings:
  - {name: math-ift, data: {regime: ift, path: "builtin:math-ift", seq_len: 320}, durations: [0.005],
     durations_as: checkpoints, learning: [math_loss], lr: {full: 1.0e-3}}
methods: [{name: full}]
forgetting: [source_cloze]
eval: {limit: 2}
analyses: {spectrum: false, kl: false, diversity: []}
"""
STUDY_RUN = "runs/math-ift/full/epochs-0.005"


@dataclass
class Made:
    root: Path
    config: Path  # the (empty) YAML every run is trained with, plus its overrides
    overrides: dict[str, list[str]]  # by method
    final: dict[str, dict[str, torch.Tensor]]  # the final weights of each run, as uninterrupted training left them
    study: Path


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Made:
    """A full-FT run and a LoRA run (trained, evaluated, their spectrum and KL measured) and a small study."""
    root = tmp_path_factory.mktemp("made")
    pairs = write_pairs(root / "pairs.jsonl")
    config = root / "run.yaml"
    config.write_text("{}\n")
    overrides, final = {}, {}
    for method, extra in METHODS.items():
        overrides[method] = tiny_overrides(pairs, *SETTINGS, *extra)
        run = root / "plain" / method
        assert main(["train", str(config), *overrides[method], "--out", str(run)]) == 0
        assert main(["eval", str(run), *TASK]) == 0
        assert main(["spectrum", str(run), "--out", str(root / f"spectrum-{method}.json")]) == 0
        final[method] = final_weights(run)
    lora_final = root / "plain" / "lora" / "final"
    kl = kl_for_checkpoint(None, lora_final, target_prompts("math", 2), device="cpu")
    write_json(lora_final / "kl.json", {k: kl[k] for k in ("kl", "tokens", "texts")})
    (root / "faults.yaml").write_text(STUDY)
    study = root / "study"
    assert main(["run", str(root / "faults.yaml"), "--out", str(study), "--no-report"]) == 0
    return Made(root, config, overrides, final, study)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, copied out of the file (load_file's may be a view of it, which damaging
    the file would change)."""
    return {name: t.clone() for name, t in load_file(path).items()}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    final = run / "final"
    return weights(final / ("adapter_model.safetensors" if (final / "adapter_model.safetensors").exists()
                            else "model.safetensors"))


# ----------------------------------------------------------------------------- the commands that read them


def cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `ftlab ARGS`, run through the CLI's entry point."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


def train_again(made: Made, run: Path, method: str, capsys) -> tuple[int, str]:
    return cli(["train", made.config, *made.overrides[method], "--out", run], capsys)


def interrupted(study: Path) -> None:
    """Record the study's run as being trained, as a runner killed while training it leaves the store: `ftlab
    status` then reads the run's plan.json and metrics.jsonl for its progress."""
    db = sqlite3.connect(study / "results.sqlite")
    with db:
        db.execute("UPDATE runs SET status='running' WHERE grp != 'base'")
    db.close()  # the write-ahead log folded into the file


def rows(store: Path) -> dict[str, list]:
    """Every row of every table of a results store."""
    db = sqlite3.connect(store)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        db.close()


@dataclass(frozen=True)
class Case:
    """One kind of file and the command that reads it: `where` is "lora" or "full" (a copy of that run), or "study"
    (a copy of the study); `file` is relative to it."""

    where: str
    file: str
    command: str  # train, eval, spectrum, report, status, run
    expect: str  # "recovered" or "exit 2"

    @property
    def id(self) -> str:
        return f"{self.file}[{self.where}]->{self.command}"


STATE = "state/step-00000006"
CASES = [
    # the resumable state: a rerun falls back to the state before (step 3) and ends at the same weights
    *[Case(m, f"{STATE}/{f}", "train", "recovered") for m in ("full", "lora")
      for f in ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "progress.json",
                "manifest.json")],
    Case("lora", "state/LATEST", "train", "recovered"),
    # weights: checksums in ftlab.json, safetensors headers
    Case("full", "final/model.safetensors", "eval", "exit 2"),
    Case("full", "final/model.safetensors", "spectrum", "exit 2"),
    Case("full", "final/config.json", "eval", "exit 2"),
    Case("lora", "final/adapter_model.safetensors", "eval", "exit 2"),
    Case("lora", "final/adapter_model.safetensors", "spectrum", "exit 2"),
    Case("lora", "final/adapter_config.json", "eval", "exit 2"),
    Case("lora", "final/tokenizer.json", "eval", "exit 2"),
    Case("lora", "final/ftlab.json", "eval", "exit 2"),
    Case("lora", "base/model.safetensors", "eval", "exit 2"),
    Case("lora", "base/model.safetensors", "train", "exit 2"),
    Case("lora", "base/model.safetensors", "spectrum", "exit 2"),
    # evaluation and analysis files, read by the index behind `ftlab report`
    Case("lora", "final/eval.json", "report", "exit 2"),
    Case("lora", "final/eval.json", "eval", "exit 2"),
    Case("lora", "final/eval_samples/math_loss.jsonl", "report", "exit 2"),
    Case("lora", "final/spectrum.json", "report", "exit 2"),
    Case("lora", "final/spectrum.json", "spectrum", "recovered"),
    Case("lora", "final/kl.json", "report", "exit 2"),
    Case("lora", "final/ftlab.json", "report", "exit 2"),
    Case("lora", "run.json", "report", "exit 2"),
    Case("lora", "run.json", "train", "exit 2"),
    Case("lora", "metrics.jsonl", "report", "exit 2"),
    Case("lora", "metrics.jsonl", "train", "exit 2"),
    Case("lora", "config.yaml", "report", "recovered"),
    Case("lora", "config.yaml", "train", "recovered"),
    Case("lora", "config.json", "train", "recovered"),
    # a study: its store, its saved experiment (read when the study resumes), and a run's plan and log as `ftlab
    # status` reads them mid-run
    Case("study", "results.sqlite", "status", "exit 2"),
    Case("study", "results.sqlite", "report", "exit 2"),
    Case("study", "experiment.yaml", "run", "exit 2"),
    Case("study", f"{STUDY_RUN}/plan.json", "status", "exit 2"),
    Case("study", f"{STUDY_RUN}/metrics.jsonl", "status", "exit 2"),
]
# A metrics log is appended to while a run trains, so a last line cut short is what a live log looks like: it is
# left out (read_metrics), and a log cut in half is read up to the cut. SQLite keeps no checksums: bytes changed in
# the middle of the store are found only where they break its structure; where they fall in unused space the
# store reads as before ("unaffected", checked row by row).
EXPECT = {("metrics.jsonl", "truncated"): "recovered",
          (f"{STUDY_RUN}/metrics.jsonl", "truncated"): "recovered",
          ("results.sqlite", "corrupted"): "exit 2 or unaffected"}
TABLE: list[tuple[str, str, str, str]] = []  # (file, command, damage, outcome), printed at the end


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    width = max((len(f) for f, *_ in TABLE), default=4)
    print("\n\n| file | command | damage | outcome |\n|---|---|---|---|")
    for file, command, damage, outcome in TABLE:
        print(f"| {file:<{width}} | {command} | {damage} | {outcome} |")


def run_case(case: Case, damage: str, made: Made, tmp_path: Path, capsys) -> tuple[int, str]:
    source = made.study if case.where == "study" else made.root / "plain" / case.where
    folder = tmp_path / "folder"  # what `ftlab report` indexes: a folder holding the one run
    target = tmp_path / "study" if case.where == "study" else folder / case.where
    shutil.copytree(source, target)
    if case.where == "study" and case.command == "status":
        interrupted(target)
    if case.file.endswith(".sqlite"):
        shutil.copy(target / case.file, tmp_path / "undamaged.sqlite")
    DAMAGE[damage](target / case.file)
    if case.command == "train":
        return train_again(made, target, case.where, capsys)
    # a run's checkpoints name the base they were tuned from (the original run's): its copy is passed as the base
    base = ["--base", target / "base"] if case.file.startswith("base/") else []
    if case.command == "eval":
        return cli(["eval", target, *TASK, *base], capsys)
    if case.command == "spectrum":
        return cli(["spectrum", *base[1:], target, "--out", tmp_path / "spectrum.json"], capsys)
    if case.command == "report":
        return cli(["report", target if case.where == "study" else folder], capsys)
    if case.command == "run":
        return cli(["run", made.root / "faults.yaml", "--out", target, "--no-report"], capsys)
    return cli(["status", target], capsys)


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_damaged_file_is_recovered_from_or_named(case, damage, made, tmp_path, capsys):
    status, err = run_case(case, damage, made, tmp_path, capsys)
    expect = EXPECT.get((case.file, damage), case.expect)
    first = next((line for line in err.splitlines() if line.startswith("ftlab")), "")
    outcome = "recovered" if status == 0 else f"exit {status}: {first.replace(str(tmp_path), '...')[:160]}"
    if status == 0 and expect == "exit 2 or unaffected":
        assert rows(tmp_path / "study" / case.file) == rows(tmp_path / "undamaged.sqlite")  # every row as it was
        outcome = "unaffected (the bytes changed were unused space; every row reads as before)"
    TABLE.append((f"{case.where}: {case.file}", case.command, damage, outcome))
    assert "Traceback" not in err, err
    if expect.startswith("exit 2"):
        assert status == 2 or expect == "exit 2 or unaffected" and outcome.startswith("unaffected"), err
        assert status == 0 or Path(case.file).name in err, err  # the message names the damaged file
        return
    assert status == 0, err
    if case.command == "train":  # it ends at the weights of the uninterrupted run, bit for bit
        folder = tmp_path / "folder" / case.where
        ends = final_weights(folder)
        assert ends.keys() == made.final[case.where].keys()
        for name, weight in made.final[case.where].items():
            assert torch.equal(ends[name], weight), name
    if case.file.startswith("state/") and case.file != "state/LATEST":
        assert f"the resumable state {tmp_path / 'folder' / case.where / STATE} is damaged" in err, err
        assert "resuming from" in err and "step-00000003" in err, err


# ----------------------------------------------------------------------------- what the messages tell you to do


def test_every_state_damaged_exits_2_saying_to_start_over(made, tmp_path, capsys):
    run = tmp_path / "full"
    shutil.copytree(made.root / "plain" / "full", run)
    for state in (run / "state").glob("step-*"):
        truncate(state / "trainable.safetensors")
    status, err = train_again(made, run, "full", capsys)
    assert status == 2 and "Traceback" not in err
    assert f"{run / 'state'}: no intact resumable state" in err and f"delete {run / 'state'}" in err


def test_a_deleted_final_checkpoint_is_written_again_from_the_last_state(made, tmp_path, capsys):
    """What the message about a damaged final/ says to do: delete it and train again; the weights are the same."""
    run = tmp_path / "full"
    shutil.copytree(made.root / "plain" / "full", run)
    corrupt(run / "final" / "model.safetensors")
    status, err = cli(["eval", run, *TASK], capsys)
    assert status == 2 and f"delete {run / 'final'} and run `ftlab train`" in err
    shutil.rmtree(run / "final")
    assert train_again(made, run, "full", capsys)[0] == 0
    assert all(torch.equal(final_weights(run)[k], w) for k, w in made.final["full"].items())
    assert cli(["eval", run, *TASK], capsys)[0] == 0


@pytest.mark.parametrize("method,file", [("full", "model.safetensors"), ("lora", "adapter_model.safetensors"),
                                         ("lora", "ftlab.json")])
def test_train_on_a_finished_run_with_a_damaged_final_writes_it_again(made, tmp_path, capsys, method, file):
    """`ftlab train` on a finished run checks final/ as a load does; a damaged one is said and written again from the
    last state, to the uninterrupted weights (before, it said "already complete" and left it for `ftlab eval`)."""
    run = tmp_path / method
    shutil.copytree(made.root / "plain" / method, run)
    corrupt(run / "final" / file)
    capsys.readouterr()
    assert main(["train", str(made.config), *made.overrides[method], "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and f"{run / 'final'} is damaged (" in out and "writing it again" in out
    assert all(torch.equal(final_weights(run)[k], w) for k, w in made.final[method].items())
    assert cli(["eval", run, *TASK], capsys)[0] == 0
    capsys.readouterr()
    assert main(["train", str(made.config), *made.overrides[method], "--out", str(run)]) == 0
    assert "is damaged" not in capsys.readouterr().out  # whole now: left as it is


def test_a_deleted_tiny_base_is_rebuilt_identically(made, tmp_path, capsys):
    run = tmp_path / "lora"
    shutil.copytree(made.root / "plain" / "lora", run)
    before = weights(run / "base" / "model.safetensors")
    garbage(run / "base" / "model.safetensors")
    status, err = train_again(made, run, "lora", capsys)
    assert status == 2 and f"delete {run / 'base'} and run `ftlab train`" in err
    shutil.rmtree(run / "base")
    assert train_again(made, run, "lora", capsys)[0] == 0
    after = weights(run / "base" / "model.safetensors")
    assert all(torch.equal(after[k], w) for k, w in before.items())


def test_non_finite_weights_are_refused_naming_the_file_and_tensor(made, tmp_path, capsys):
    """A model directory without recorded checksums (a downloaded base): a weight turned nan by flipped bits is
    found once loaded, and named with its file; so is one in an adapter."""
    model = tmp_path / "model"
    shutil.copytree(made.root / "plain" / "full" / "final", model)
    (model / "ftlab.json").unlink()  # no checksums: only the finite check stands between nan and an evaluation
    tensors = weights(model / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][3, 5] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    status, err = cli(["eval", model, *TASK], capsys)
    assert status == 2 and f"{model / 'model.safetensors'}: tensor {name} holds nan or inf values" in err, err

    adapter = tmp_path / "adapter"
    shutil.copytree(made.root / "plain" / "lora" / "final", adapter)
    (adapter / "ftlab.json").write_text(json.dumps({"base": str(made.root / "plain" / "lora" / "base")}))
    tensors = weights(adapter / "adapter_model.safetensors")
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key][0, 0] = float("inf")
    save_file(tensors, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    status, err = cli(["eval", adapter, *TASK], capsys)
    assert status == 2 and f"{adapter / 'adapter_model.safetensors'}: tensor {key} holds nan or inf" in err, err


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_a_damaged_shard_of_a_sharded_state_falls_back(tmp_path):
    """Two FSDP processes: each hashes its share of the state's files when it is saved and checks it when the run
    resumes, and all agree on the verdict; a shard corrupted in the latest state sends both back to the state
    before it, and the run ends at the weights of the uninterrupted one, bit for bit."""
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    args = tiny_overrides(pairs, *SETTINGS, "method.name=full", "train.lr=1e-2")

    def train_on_two(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ftlab", "train", str(config), *args, "--out", str(out),
                               "--nproc", "2"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    reference = tmp_path / "reference"
    assert train_on_two(reference).returncode == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    shards = sorted((damaged / STATE / "sharded").glob("*.safetensors"))
    assert len(shards) >= 2  # a file from each process
    for shard in shards[-2:]:  # one in each process's share of the check (the sorted files r, r+2, ...)
        corrupt(shard)
    resumed = train_on_two(damaged)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    for shard in shards[-2:]:
        assert f"{shard}: its bytes changed since it was written" in resumed.stderr, resumed.stderr[-3000:]
    assert f"resuming from {damaged / 'state' / 'step-00000003'}" in resumed.stderr
    ends, expected = final_weights(damaged), final_weights(reference)
    assert ends.keys() == expected.keys() and all(torch.equal(ends[k], w) for k, w in expected.items())
