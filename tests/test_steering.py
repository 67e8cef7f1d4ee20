"""Steering forgetting: the source loss measured as a run trains and the early stop at a forgetting budget."""

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from ftlab.errors import ConfigError
from ftlab.state import latest_state
from ftlab.train import train

SOURCE_WORDS = ["ZEBRA", "QUILT", "7", "9", "MOOSE", "{", "}"]  # tokens the training pairs never hold


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def source(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "source.txt"
    path.write_text("".join(" ".join(rng.choice(SOURCE_WORDS) for _ in range(20)) + "\n" for _ in range(30)))
    return path


def run_config(pairs, source, out, *overrides):
    return tiny_config(pairs, out, f"data.source_eval={source}", "train.eval_every=1", "method.name=full",
                       "train.lr=1e-2", *overrides)


def test_the_early_stop_fires_at_the_step_the_budget_is_crossed(pairs, source, tmp_path):
    free = metrics(train(run_config(pairs, source, tmp_path / "free")))
    base = free[0]["source_loss"]
    assert free[0]["step"] == 0 and free[0]["eval_loss"] is not None
    rise = {r["step"]: r["source_loss"] - base for r in free if r["step"] > 0}
    assert len(rise) == 12 and max(rise.values()) > 0.1, rise  # finetuning on other tokens raises the source loss
    # the budget halfway between the highest rise before step k and step k's: k is the first step past it
    k = next(s for s in sorted(rise) if s > 3 and rise[s] > max(rise[t] for t in rise if t < s) + 1e-3)
    budget = (max(rise[t] for t in rise if t < k) + rise[k]) / 2

    out = tmp_path / "stopped"
    stopped = metrics(train(run_config(pairs, source, out, f"train.stop_at_forgetting={budget}")))
    assert [r["step"] for r in stopped] == list(range(k + 1))
    assert "stopped" in stopped[-1] and all("stopped" not in r for r in stopped[:-1])
    assert [r["source_loss"] for r in stopped] == [r["source_loss"] for r in free[:k + 1]]
    assert json.loads((out / "final" / "ftlab.json").read_text())["step"] == k
    weights = load_file(out / "final" / "model.safetensors")

    train(run_config(pairs, source, out, f"train.stop_at_forgetting={budget}"))  # run again: nothing more trains
    assert len(metrics(out)) == k + 1

    # the state of the stop lost (a kill before it was written): the run resumes, stops at k again, same weights
    shutil.rmtree(latest_state(out / "state"))
    shutil.rmtree(out / "final")
    again = metrics(train(run_config(pairs, source, out, f"train.stop_at_forgetting={budget}")))
    assert [r["step"] for r in again] == list(range(k + 1)) and "stopped" in again[-1]
    resumed = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(weights[n], resumed[n]) for n in weights)


@pytest.mark.parametrize("overrides, key", [
    (["train.stop_at_forgetting=0.1", "train.eval_every=1"], "train.stop_at_forgetting: needs data.source_eval"),
    (["train.stop_at_forgetting=0.1", "data.source_eval=builtin:source-cpt"], "needs train.eval_every"),
    (["train.stop_at_forgetting=-1", "data.source_eval=builtin:source-cpt", "train.eval_every=1"],
     "train.stop_at_forgetting: must be > 0"),
    (["data.source_eval=builtin:math-ift"], "data.source_eval: unknown built-in text"),
    (["data.replay.fraction=1.5"], "data.replay.fraction: must be in"),
])
def test_bad_steering_keys_name_the_key(pairs, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        tiny_config(pairs, tmp_path / "run", *overrides)
