"""ftlab merge-check (ftlab.analysis.merge): each LoRA checkpoint merged into its base, in fp32 and bf16, against the
adapter: the largest logit difference and each task's score change with its paired interval, flagged beyond
evaluation noise; written next to the checkpoint."""

import importlib.util
import json
import shutil

import pytest

from conftest import tiny_config, write_pairs
from ftlab.analysis.merge import _task, merge_check_target
from ftlab.rundir import CheckpointFiles
from ftlab.cli import main
from ftlab.evaluate.tasks import get_task
from ftlab.io import write_jsonl

TASKS = ["math_loss", "math", "source_cloze"]  # a token-weighted loss, greedy generation, multiple choice


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from ftlab.train import train

    root = tmp_path_factory.mktemp("merge")
    cfg = tiny_config(write_pairs(root / "pairs.jsonl"), root / "run", "method.name=lora", "method.rank=4",
                      "train.epochs=2", "train.lr=3e-2", "model.tiny.max_position=256")
    return train(cfg)


def test_merged_models_against_the_adapter(lora_run, capsys):
    from ftlab.evaluate.targets import evaluate_target

    final = lora_run / "final"
    evaluate_target(str(final), TASKS, limit=12)  # what `ftlab eval` measures of the adapter (fp32 on the CPU)
    [written] = merge_check_target(str(final), limit=12)  # the tasks its eval.json holds
    assert written == CheckpointFiles(final).merge_check
    doc = json.loads(written.read_text())
    assert doc["kind"] == "lora" and [c["precision"] for c in doc["comparisons"]] == ["fp32", "bf16"]
    fp32, bf16 = doc["comparisons"]
    assert fp32["max_logit_diff"] < 1e-4  # merging in fp32: the same function up to float rounding
    assert fp32["max_logit_diff"] < bf16["max_logit_diff"] < 0.5  # bf16 rounds W + ΔW
    assert [t["task"] for t in fp32["tasks"]] == TASKS and doc["flagged"] == []
    for t in fp32["tasks"]:
        assert t["merged"] == pytest.approx(t["adapter"], abs=1e-6) and t["low"] <= 0 <= t["high"]
    # the fp32 reference is the adapter `ftlab eval` measured: the same numbers
    measured = {(s["task"], s["metric"]): s["value"] for s in json.loads((final / "eval.json").read_text())["scores"]}
    models = CheckpointFiles(final).merge_models
    reference = json.loads(CheckpointFiles(models / "adapter-fp32").eval.read_text())["scores"]
    assert {(s["task"], s["metric"]): s["value"] for s in reference} == pytest.approx(measured, abs=1e-9)
    assert {p.name for p in models.iterdir()} == {"adapter-fp32", "merged-fp32", "adapter-bf16", "merged-bf16"}
    # a second check with the same tasks is not measured again
    before = written.stat().st_mtime_ns
    capsys.readouterr()
    merge_check_target(str(final), limit=12)
    assert written.stat().st_mtime_ns == before and "max |logit diff|" not in capsys.readouterr().out


def records(values, tokens=None):
    return [{"id": f"d{i}", "tokens": (tokens or [1] * len(values))[i], "metrics": {"loss": v, "acc": v}}
            for i, v in enumerate(values)]


def test_a_change_is_flagged_when_real_and_at_least_the_scores_own_noise(tmp_path):
    """The rule, on records written as the harness writes them: a tiny shift on every document is real (its paired
    interval excludes 0) but far below the score's standard error: not flagged; a shift of a few standard errors
    is; noise alone is neither."""
    import random

    rng = random.Random(0)
    base = [rng.uniform(4.0, 6.0) for _ in range(60)]
    tokens = [rng.randint(5, 40) for _ in range(60)]
    cases = {"hair": [v + 1e-4 for v in base], "shift": [v + 0.3 for v in base],
             "noise": [v + rng.gauss(0, 0.01) * (1 if i % 2 else -1) for i, v in enumerate(base)]}
    spec = get_task("math_loss")  # perplexity: loss, token-weighted
    for name, values in cases.items():
        for model, rows in (("adapter", base), (name, values)):
            directory = CheckpointFiles(CheckpointFiles(tmp_path).merge_models / model).samples_dir
            directory.mkdir(parents=True, exist_ok=True)
            write_jsonl(directory / "math_loss.jsonl", records(rows, tokens))
    found = {name: _task(tmp_path, spec, "adapter", name) for name in cases}
    assert found["hair"]["significant"] and not found["hair"]["flagged"]
    assert found["hair"]["difference"] == pytest.approx(1e-4)
    assert found["shift"]["significant"] and found["shift"]["flagged"]
    assert found["shift"]["merged"] - found["shift"]["adapter"] == pytest.approx(0.3)
    assert not found["noise"]["flagged"]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="bitsandbytes is not installed (pip install 'ftlab[qlora]')")
def test_a_qlora_adapter_is_checked_against_itself_on_its_4bit_base(tmp_path):
    """A QLoRA adapter trained on the NF4 rounding of its base; merged into the base itself (as one deploys it) its
    logits move far more than a LoRA merge's in fp32, and the loss changes on every document alike (a real change;
    on this tiny model below the score's own noise, so not flagged)."""
    from ftlab.train import train

    cfg = tiny_config(write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "run", "method.name=qlora", "method.rank=4",
                      "train.epochs=1", "train.lr=3e-2", "model.tiny.max_position=256",
                      "model.tiny.hidden_size=64")
    run = train(cfg)
    [written] = merge_check_target(str(run / "final"), ["math_loss"], limit=12)
    doc = json.loads(written.read_text())
    assert doc["kind"] == "qlora" and [c["adapter"] for c in doc["comparisons"]] == ["adapter-nf4"] * 2
    for c in doc["comparisons"]:
        assert c["max_logit_diff"] > 1e-3 and c["tasks"][0]["significant"]


def test_what_cannot_be_checked_is_refused(lora_run, tmp_path, capsys):
    from ftlab.train import train

    full = train(tiny_config(write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "full", "method.name=full",
                             "train.epochs=0.5"))
    assert main(["merge-check", str(full)]) == 2
    assert "no LoRA adapter to merge" in capsys.readouterr().err
    fresh = tmp_path / "fresh"  # an adapter never evaluated
    shutil.copytree(lora_run / "final", fresh, ignore=shutil.ignore_patterns("eval*", "merge*"))
    assert main(["merge-check", str(fresh), "--base", str(lora_run / "base")]) == 2
    assert "no evaluated task to check" in capsys.readouterr().err
    assert main(["merge-check", str(fresh), "--base", str(lora_run / "base"), "--tasks", "lm_eval:arc_easy"]) == 2
    assert "do not write" in capsys.readouterr().err
