"""`ftlab plan` and the checks at the start of `ftlab run` and `ftlab train`: every input resolved, each run's steps,
tokens and memory predicted, the paper's presets fitting the GPUs they state, refusals before any training (exit 2
for inputs, 3 for a run that cannot fit), HF_HUB_OFFLINE honoured, and `ftlab run` exiting 1 when a run failed."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config
from ftlab.batches import make_plan
from ftlab.cli import main
from ftlab.errors import FtlabError
from ftlab.experiment.spec import load_experiment, plan_runs
from ftlab.experiment.study import run_experiment
from ftlab.plan.inputs import data_size, schedule_of, tokenizer_for
from ftlab.train import build_data, train
from tokenizer_zoo import build as build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "paper").glob("*.yaml"))


@pytest.fixture(scope="module")
def llama_7b(tmp_path_factory) -> Path:
    """A directory with Llama-2-7B's config.json and a Llama-2-family tokenizer: no weights."""
    directory = tmp_path_factory.mktemp("llama-2-7b")
    shutil.copy(ROOT / "tests" / "data" / "models" / "llama-2-7b" / "config.json", directory)
    build_tokenizer("llama2").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def preset_data(tmp_path_factory) -> dict[str, Path]:
    """Small local stand-ins for the presets' data: code files (content), text, Magicoder and MetaMathQA pairs."""
    directory = tmp_path_factory.mktemp("data")
    words = "def return self value for in range if else print the number of".split()
    rows = {
        "cpt-content": lambda i: {"content": " ".join(words[(i * 7 + j) % len(words)] for j in range(40 + i % 50))},
        "cpt-text": lambda i: {"text": " ".join(words[(i * 5 + j) % len(words)] for j in range(30 + i % 40))},
        "code-ift": lambda i: {"instruction": f"Write a function number {i}.", "response": "def f():\n    return 1"},
        "math-ift": lambda i: {"query": f"What is {i} + {i}?", "response": f"{i} + {i} = {2 * i}. The answer: {2 * i}"},
    }
    paths = {}
    for name, make in rows.items():
        paths[name] = directory / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(make(i)) + "\n" for i in range(300)))
    return paths


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory) -> Path:
    """eval.data_dir with the paper suite's files (empty: a plan checks that they are there, not what they hold)."""
    directory = tmp_path_factory.mktemp("benchmarks")
    for name in ("gsm8k/test.jsonl", "gsm8k/train.jsonl", "hellaswag/hellaswag_val.jsonl",
                 "ARC-Challenge/ARC-Challenge-Test.jsonl", "winogrande/dev.jsonl"):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text("")
    return directory


def preset_data_path(preset: Path, data: dict[str, Path]) -> Path:
    text = preset.read_text()
    if "regime: cpt" in text:
        return data["cpt-content" if "text_field: content" in text else "cpt-text"]
    return data["math-ift" if "MetaMathQA" in text else "code-ift"]


def plan_rows(out: str) -> list[list[str]]:
    """The table's rows: a run name, then steps, tokens, micro-batches and seven GiB figures."""
    return [line.split() for line in out.splitlines() if re.match(r"^\S+/\S+/\S+\s+~?[\d,]+\s", line)]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_paper_preset_plans_to_fit_the_gpus_it_states(preset, llama_7b, preset_data, benchmarks, capsys):
    """`ftlab plan configs/paper/<preset>.yaml model.name=<Llama-2-7B config + tokenizer> settings.0.data.path=...
    --gpu h100`: a row with memory in GiB for every run, every run fitting 8 x H100 (the presets' `gpus`)."""
    data = preset_data_path(preset, preset_data)
    code = main(["plan", str(preset), f"model.name={llama_7b}", f"settings.0.data.path={data}",
                 f"eval.data_dir={benchmarks}", "--gpu", "h100"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "on 8 x H100 (79.1 GiB each" in out
    expected = len(plan_runs(load_experiment(preset, [f"model.name={llama_7b}", f"settings.0.data.path={data}"]),
                             "x"))
    rows = plan_rows(out)
    assert len(rows) == expected, out
    for row in rows:
        gib = [float(x) for x in row[4:11]]  # peak, weights, grads, optim, act, bwd, eval
        assert 0 < gib[0] <= 0.9 * 79.1 and gib[1] > 0, row
    assert "DOES NOT FIT" not in out and "GPU-hours at MFU 35% assumed" in out


def test_a_run_that_cannot_fit_exits_3_naming_it(llama_7b, preset_data, tmp_path, capsys):
    """Llama-2-7B, full FT, one H100, micro-batch 64 x 4096 tokens, checkpointing off."""
    config = tmp_path / "big-full.yaml"
    config.write_text(f"""
model: {{name: {llama_7b}}}
data: {{regime: cpt, path: {preset_data['cpt-text']}, seq_len: 4096}}
method: {{name: full}}
train: {{micro_batch: 64, global_batch: 64, activation_checkpointing: false, epochs: null, tokens: 1.0e+9}}
""")
    assert main(["plan", str(config), "--gpu", "h100"]) == 3
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("does not fit:"))
    assert "run big-full: predicted peak memory" in line and "does not fit H100 (71.2 GiB usable of 79.1 GiB)" in line
    assert re.search(r"predicted peak memory \d+\.\d GiB", line)
    # the same run with checkpointing auto on 8 GPUs fits
    assert main(["plan", str(config), "--gpu", "h100", "--nproc", "8", "train.activation_checkpointing=auto"]) == 0


def test_plan_of_a_run_config_predicts_the_steps_training_takes(capsys):
    assert main(["plan", str(ROOT / "configs" / "examples" / "tiny-lora.yaml")]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("tiny-lora "))
    assert row[1] == "102"  # ftlab train's own count for this config: 540 examples, 3 epochs of 16
    assert "540 records" in out and "auto -> false (no memory limit checked on the CPU)" in out


@pytest.mark.parametrize("case", ["ift-packed", "ift", "cpt-tokens"])
def test_steps_are_the_ones_training_counts(case, pairs, text, tmp_path):
    settings = {"ift-packed": [f"data.path={pairs}", "data.packing=true", "data.seq_len=64"],
                "ift": [f"data.path={pairs}", "train.epochs=3"],
                "cpt-tokens": [f"data.path={text}", "data.regime=cpt", "train.epochs=null", "train.tokens=3000"]}
    cfg = tiny_config(pairs, tmp_path, *settings[case])
    tokenizer = tokenizer_for(cfg.model)
    planned = schedule_of(cfg, data_size(cfg, tokenizer))
    steps, _ = build_data(cfg, tokenizer)
    assert planned.steps == make_plan(cfg, steps).total_steps
    assert planned.exact


def test_cpt_epochs_are_estimated_within_10_percent(pairs, text, tmp_path):
    cfg = tiny_config(pairs, tmp_path, f"data.path={text}", "data.regime=cpt", "train.epochs=4")
    tokenizer = tokenizer_for(cfg.model)
    planned = schedule_of(cfg, data_size(cfg, tokenizer))
    actual = make_plan(cfg, build_data(cfg, tokenizer)[0]).total_steps
    assert not planned.exact and abs(planned.steps / actual - 1) <= 0.1


def test_a_big_data_set_is_estimated_from_a_sample(tmp_path, pairs, monkeypatch):
    import ftlab.plan.inputs as inputs

    big = tmp_path / "big.jsonl"
    big.write_text(pairs.read_text() * 10)  # 960 records
    cfg = tiny_config(big, tmp_path, "data.eval_fraction=0")
    exact = data_size(cfg, tokenizer_for(cfg.model))
    monkeypatch.setattr(inputs, "SAMPLE_RECORDS", 100)
    sampled = data_size(cfg, tokenizer_for(cfg.model))
    assert exact.exact and exact.records == 960 and not sampled.exact
    assert abs(sampled.records / 960 - 1) < 0.1 and abs(sampled.tokens / exact.tokens - 1) < 0.1


def test_train_prints_its_choices(pairs, tmp_path, capsys):
    train(tiny_config(pairs, tmp_path / "run", "train.epochs=0.5"))
    assert "ftlab: train.activation_checkpointing: auto -> false (no memory limit checked on the CPU)" in \
        capsys.readouterr().out


def offline_env(tmp_path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT / "src")}


def test_offline_a_preset_naming_hub_model_and_data_is_refused_at_once(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "ftlab", "run", str(ROOT / "configs/paper/math-ift.yaml"),
                           "--out", str(out)], capture_output=True, text=True, env=offline_env(tmp_path), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("ftlab: error:") == 1 and "Traceback" not in proc.stderr
    assert "meta-llama/Llama-2-7b-hf is a hub model, HF_HUB_OFFLINE is set" in proc.stderr
    assert "tasks hellaswag, arc_challenge, winogrande, gsm8k: no eval.data_dir" in proc.stderr
    assert not out.exists()


def test_offline_a_local_model_with_a_hub_dataset_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ftlab", "train", str(ROOT / "configs/examples/tiny-lora.yaml"),
                           "data.path=hub:ise-uiuc/Magicoder-Evol-Instruct-110K", "--out", str(out)],
                          capture_output=True, text=True, env=offline_env(tmp_path), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.path: hub:ise-uiuc/Magicoder-Evol-Instruct-110K is a hub dataset and HF_HUB_OFFLINE is set" in \
        proc.stderr
    assert not out.exists()


STUDY = """
name: small
model: {name: tiny, tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 64}}
defaults:
  train: {global_batch: 8, micro_batch: 8, warmup: 1, lr: 1.0e-3}
  data: {regime: ift, seq_len: 32}
settings:
  - {name: s, data: {path: pairs.jsonl}, durations: [1]}
methods: [{name: full}]
forgetting: [FORGETTING]
eval: {limit: 2, data_dir: benchmarks}
analyses: {spectrum: false, kl: false, diversity: []}
"""


def study(tmp_path, pairs_text: str, forgetting: str = "source_cloze", **lines) -> Path:
    (tmp_path / "pairs.jsonl").write_text(pairs_text)
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    text = STUDY.replace("FORGETTING", forgetting)
    for old, new in lines.items():
        text = text.replace(old, new)
    exp = tmp_path / "small.yaml"
    exp.write_text(text)
    return exp


def test_a_missing_benchmark_file_is_refused_before_any_training(pairs, tmp_path):
    exp = study(tmp_path, pairs.read_text(), forgetting="hellaswag")
    with pytest.raises(FtlabError, match=r"task hellaswag: .*benchmarks/hellaswag/hellaswag_val.jsonl not found"):
        run_experiment(exp, tmp_path / "out", report=False)
    assert not (tmp_path / "out").exists()


def test_data_without_a_training_example_is_refused_before_any_training(tmp_path):
    long = "".join(json.dumps({"prompt": "a very long preamble " * 4 + str(i), "completion": "hi"}) + "\n"
                   for i in range(12))
    with pytest.raises(FtlabError, match=r"pairs.jsonl: no training examples \(none of its 12 records"):
        run_experiment(study(tmp_path, long), tmp_path / "out", report=False)
    assert not (tmp_path / "out").exists()


def test_run_exits_1_naming_the_failed_runs_and_why(pairs, tmp_path, capsys):
    exp = study(tmp_path, pairs.read_text(), **{"lr: 1.0e-3": "lr: 1.0e+30"})  # diverges: a non-finite loss
    assert main(["run", str(exp), "--out", str(tmp_path / "out"), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "ftlab run: 1 run(s) failed:" in err and "s/full/epochs-1: TrainingError: non-finite loss" in err
