"""The command's habits: where output may go (checked before anything is written), --version, a closed pipe,
SIGTERM as Ctrl-C, the closing line of a run, an lm-eval task offline, a wrong type's message, an adapter given as
model.name, and a sequence longer than the model's positions."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_MODEL, write_pairs
from ftlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUN = [*TINY_MODEL, "data.seq_len=32", "train.global_batch=16", "train.micro_batch=8", "train.epochs=1",
       "train.lr=3e-3", "train.warmup=2", "data.eval_fraction=0.1"]


def ftlab(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftlab", *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.fixture
def cfg(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl")
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({"data": {"path": str(tmp_path / "pairs.jsonl")}}))
    return path


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_out_that_cannot_be_a_directory_is_refused_naming_it(tmp_path, cfg, capsys, where):
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "run"
    assert main(["train", str(cfg), *RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and ("a file is there" if where == "a file" else "is a file, so nothing") in err
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "taken" / "r.html")]) == 2
    assert (tmp_path / "taken").read_text() == "x"


def test_an_out_on_a_read_only_filesystem_is_refused(tmp_path, cfg):
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -rm cannot mount a read-only tmpfs here")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {mnt} && {sys.executable} -m ftlab train {cfg} {' '.join(RUN)} "
              f"--out {mnt}/run")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"--out {mnt}/run: {mnt} cannot be written (a read-only filesystem)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version():
    proc = ftlab("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("ftlab ")


def test_a_closed_pipe_ends_the_command_quietly(tmp_path, cfg):
    """The reader of stdout went away (`ftlab ... | head`): exit like a Unix tool, no traceback."""
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-m", "ftlab", "train", str(cfg), *RUN, "--out", str(tmp_path / "r")],
                          stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr


def test_sigterm_stops_a_run_as_ctrl_c_does_and_it_resumes(tmp_path, cfg):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ftlab", "train", str(cfg), *RUN, "train.epochs=40", "output.resume_every=5",
               "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "state" / "LATEST").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; run the same command again to resume" in err and "Traceback" not in err
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0 and "resuming" in done.stdout


def test_a_run_ends_with_its_losses(tmp_path, cfg, capsys):
    assert main(["train", str(cfg), *RUN, "--out", str(tmp_path / "r")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ftlab: done; 6 steps, ") and "training loss " in last and "held-out loss " in last
    assert "(base " in last and last.endswith(f"run directory {tmp_path / 'r'}")


def test_an_lm_eval_task_offline_is_one_message_before_any_model_loads(tmp_path):
    """No network (HF_HUB_OFFLINE here, as in CI): one message naming the task and what to do, exit 2, without
    datasets' retry loop (about 40 s) and before the model is loaded (the model named does not even exist)."""
    proc = ftlab("eval", tmp_path / "no-model", "--tasks", "lm_eval:arc_easy",
                 env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "task lm_eval:arc_easy: lm-eval needs its dataset from the Hugging Face hub" in proc.stderr
    assert "HF_HUB_OFFLINE is set" in proc.stderr and "Traceback" not in proc.stderr


def test_the_hub_check_is_quick_and_says_why(monkeypatch):
    from ftlab.hub import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert "127.0.0.1:9 is not reachable" in hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline() == "HF_HUB_OFFLINE is set"


# ------------------------------------------------------------------ smaller habits: one "got", an adapter, positions


def test_a_wrong_type_says_what_it_got_once(tmp_path, cfg, capsys):
    assert main(["train", str(cfg), *RUN, "train.epochs=[1,2]", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and err.count("got [1, 2]") == 1, err
    assert not (tmp_path / "run").exists()


def test_an_adapter_as_model_name_names_itself_and_its_base(tmp_path, cfg, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/llama-base",
                                                             "peft_type": "LORA"}))
    assert main(["train", str(cfg), *RUN, f"model.name={adapter}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{adapter} is a PEFT adapter" in err and "/models/llama-base" in err and "model_type" not in err, err


def test_a_seq_len_past_the_models_positions_is_refused(tmp_path, cfg, capsys):
    assert main(["train", str(cfg), *RUN, "data.seq_len=100000", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data.seq_len: 100000 tokens, but this model has" in err and "positions" in err, err
    assert not (tmp_path / "run").exists()
