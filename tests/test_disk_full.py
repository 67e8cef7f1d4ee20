"""A full disk: exit status 2 with one message naming what was being written, the space free there and about what
it needs; no temporary file or directory left behind; a study stops (the next run would fail the same way) rather
than record the run failed; the same command after space is freed goes on to the uninterrupted result.

The real case runs `ftlab` on a small tmpfs mounted in a user and mount namespace (`unshare -rm`); where the
kernel refuses those, it is skipped with the reason, and the in-process cases still cover every writer."""

import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from conftest import TINY_MODEL, write_pairs
from ftlab import io, state
from ftlab.cli import main
from ftlab.errors import DiskFull

ROOT = Path(__file__).resolve().parents[1]
RUN = [*TINY_MODEL, "data.seq_len=32", "train.global_batch=16", "train.micro_batch=8", "train.epochs=2",
       "train.lr=3e-3", "train.warmup=2", "output.resume_every=3", "data.eval_fraction=0.1"]


def namespaces_work() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -rm cannot mount a tmpfs here: {probe.stderr.strip()}"


def test_training_on_a_full_disk_exits_2_leaves_nothing_and_resumes_to_the_same_weights(tmp_path):
    why = namespaces_work()
    if why:
        pytest.skip(why)
    write_pairs(tmp_path / "pairs.jsonl")
    (tmp_path / "cfg.yaml").write_text(json.dumps({"data": {"path": str(tmp_path / "pairs.jsonl")}}))
    command = [sys.executable, "-m", "ftlab", "train", str(tmp_path / "cfg.yaml"), *RUN]
    assert subprocess.run([*command, "--out", str(tmp_path / "reference")], capture_output=True).returncode == 0
    mnt, kept = tmp_path / "mnt", tmp_path / "kept"
    mnt.mkdir()
    # 600k holds the tiny base, the config and one resumable state, not the second: the save at step 6 fails
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=600k tmpfs {mnt}
        {" ".join(command)} --out {mnt}/run > /dev/null 2> {tmp_path}/err.txt; echo "first $?"
        find {mnt} -name '*.tmp'
        mount -o remount,size=4m {mnt}
        {" ".join(command)} --out {mnt}/run > /dev/null 2>&1; echo "second $?"
        cp -r {mnt}/run/final {kept}
    """)
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True).stdout.split("\n")
    err = (tmp_path / "err.txt").read_text()
    assert out[0] == "first 2", err
    assert "no space left on the device writing " in err and f"{mnt}/run/state/" in err and "free there" in err
    assert "Traceback" not in err
    assert out[1] == "second 0", out  # nothing ending in .tmp was found between the two
    reference = load_file(tmp_path / "reference" / "final" / "adapter_model.safetensors")  # LoRA, the default
    resumed = load_file(kept / "adapter_model.safetensors")
    assert all(torch.equal(resumed[k], w) for k, w in reference.items())


def test_a_write_that_meets_a_full_disk_removes_its_temporary_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    target = tmp_path / "eval_samples" / "task.jsonl"
    target.parent.mkdir()
    with pytest.raises(DiskFull, match=r"writing .*task\.jsonl .*free there; it needs about"):
        io.write_jsonl(target, [{"id": 1, "metrics": {"acc": 1.0}}] * 100)
    assert list(target.parent.iterdir()) == []


FAILING_STUDY = """
name: full-disk
model: {name: tiny, tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 64}}
defaults:
  train: {global_batch: 8, micro_batch: 8, warmup: 1, lr: 1.0e-3}
  data: {regime: ift, seq_len: 32}
  output: {resume_every: 1}
settings:
  - {name: a, data: {path: pairs.jsonl}, durations: [1]}
methods: [{name: full}, {name: lora, ranks: [2]}]
forgetting: [source_cloze]
eval: {limit: 2}
analyses: {spectrum: false, kl: false, diversity: []}
"""


def test_a_study_stops_at_a_full_disk_instead_of_failing_run_after_run(tmp_path, monkeypatch, capsys):
    """The state save of the study's first run meets a full disk (safetensors' error): `ftlab run` exits 2 with the
    message, records no run as failed, leaves no temporary directory; run again with space, it finishes."""
    write_pairs(tmp_path / "pairs.jsonl", n=24)
    (tmp_path / "exp.yaml").write_text(FAILING_STUDY)
    real = state.save_file
    calls = []

    def save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 4:  # the second state: a first one was saved
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                  '"No space left on device" })')
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(state, "save_file", save_file)
    out = tmp_path / "study"
    assert main(["run", str(tmp_path / "exp.yaml"), "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device writing" in err and "/state/step-" in err
    assert not list(out.rglob("*.tmp"))
    from ftlab.experiment.status import study_status

    assert not [r for r in study_status(out) if r["status"] == "failed"]
    monkeypatch.setattr(state, "save_file", real)
    assert main(["run", str(tmp_path / "exp.yaml"), "--out", str(out), "--no-report"]) == 0
    assert {r["status"] for r in study_status(out) if not r["run"].startswith("(base)")} == {"done"}
