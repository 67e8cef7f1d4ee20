"""Steering forgetting: the source loss measured as a run trains and the early stop at a forgetting budget."""

import json
import random
import shutil

import numpy as np
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


# ----------------------------------------------------------------------------- interpolation and intruder scaling


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A full-FT run and a LoRA run of the tiny model (a few seconds each): their final checkpoints and base."""
    from conftest import write_pairs

    root = tmp_path_factory.mktemp("steer")
    pairs = write_pairs(root / "pairs.jsonl")
    full = train(tiny_config(pairs, root / "full", "method.name=full", "train.lr=1e-2", "train.epochs=1"))
    lora = train(tiny_config(pairs, root / "lora", "method.name=lora", "method.rank=4", "train.lr=3e-2",
                             "train.epochs=1"))
    return {"full": full / "final", "lora": lora / "final", "base": full / "base", "pairs": pairs}


def logits(directory):
    from ftlab.model import load_trained

    model, _ = load_trained(directory)
    ids = torch.arange(3, 40).view(1, -1)  # (1, 37)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["full", "lora"])
def test_interpolation_at_0_is_the_base_and_at_1_the_finetuned_model(trained, tmp_path, method):
    from ftlab.analysis.steering import interpolate

    ckpt, base = trained[method], trained["base"]
    at0 = interpolate(base, ckpt, 0.0, tmp_path / "a0")
    at1 = interpolate(base, ckpt, 1.0, tmp_path / "a1")
    half = interpolate(base, ckpt, 0.5, tmp_path / "a05")
    base_logits, ft_logits = logits(base), logits(ckpt)
    assert not torch.equal(base_logits, ft_logits)
    assert torch.equal(logits(at0), base_logits)
    assert torch.equal(logits(at1), ft_logits)
    between = logits(half)
    assert not torch.equal(between, base_logits) and not torch.equal(between, ft_logits)
    info = json.loads((half / "ftlab.json").read_text())
    assert info["steer"] == {"kind": "interp", "factor": 0.5, "of": "final"}
    assert info["step"] == json.loads((ckpt / "ftlab.json").read_text())["step"]


def test_interpolated_lora_weights_are_a_times_delta_w(trained, tmp_path):
    from ftlab.analysis.spectrum_sources import open_checkpoint
    from ftlab.analysis.steering import interpolate

    ckpt, base = trained["lora"], trained["base"]
    source = open_checkpoint(base, ckpt)
    steered = open_checkpoint(base, interpolate(base, ckpt, 0.25, tmp_path / "a"))
    for name in source.names:
        _, _, delta = source.load(name)
        _, _, scaled = steered.load(name)
        assert torch.allclose(scaled, 0.25 * delta, rtol=1e-5, atol=1e-7), name


def test_intruder_scaling_by_1_is_the_identity_and_scales_only_intruders(trained, tmp_path):
    from safetensors.torch import load_file as load

    from ftlab.analysis.spectrum_sources import open_checkpoint
    from ftlab.analysis.steering import intruder_scaled, scale_intruders

    ckpt, base = trained["lora"], trained["base"]
    source = open_checkpoint(base, ckpt)
    merged = load(scale_intruders(base, ckpt, 1.0, tmp_path / "f1") / "model.safetensors")
    base_weights = load(base / "model.safetensors")
    assert merged.keys() == base_weights.keys()
    for name in merged:
        if name in source.lora:
            _, w_ft, _ = source.load(name)
            assert torch.equal(merged[name], w_ft), name  # W_base + ΔW, exactly
        else:
            assert torch.equal(merged[name], base_weights[name]), name
    # the merged model computes what the adapter does
    assert torch.allclose(logits(tmp_path / "f1"), logits(ckpt), atol=1e-4)

    # a planted intruder: W_base's weakest right singular vector v sent to a direction orthogonal to all of W_base's
    # left ones; its singular vector in W_ft is then v exactly, the rest stay W_base's (cos 1): f scales W_ft v vᵀ
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))  # (16, 16) orthonormal
    r, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))  # (12, 12) orthonormal
    w_base = q[:, :12] @ torch.diag(torch.linspace(10, 1, 12)) @ r.T  # (16, 12), left singular vectors q[:, :12]
    v = r[:, 11]  # (12,): σ = 1
    w_ft = w_base + 20.0 * torch.outer(q[:, 14], v)
    scaled, found = intruder_scaled(w_base, w_ft, 0.7)
    assert found == 1
    assert torch.allclose(scaled, w_ft - 0.3 * torch.outer(w_ft @ v, v), atol=1e-4)
    same, _ = intruder_scaled(w_base, w_ft, 1.0)
    assert torch.equal(same, w_ft)


# ----------------------------------------------------------------------------- forgetting at matched learning


def test_at_learning_reads_the_curve_linearly():
    from ftlab.analysis.steering import Point, at_learning

    curve = [Point(0.0, 0.0), Point(1.0, 2.0), Point(3.0, 3.0)]
    assert at_learning(curve, 0.5) == pytest.approx(1.0)
    assert at_learning(curve, 2.0) == pytest.approx(2.5)
    assert at_learning(curve, 3.0) == pytest.approx(3.0)
    assert at_learning(curve, 3.5) is None and at_learning(curve, -0.1) is None
    # a curve that turns back: the first segment that reaches the level
    assert at_learning([Point(0, 0), Point(2, 4), Point(1, 10)], 1.5) == pytest.approx(3.0)


def test_matched_learning_equals_the_analytic_value_on_synthetic_curves():
    from ftlab.analysis.steering import matched_learning

    rng = np.random.default_rng(0)

    def docs(levels, n):  # per-document values whose (weighted) means are exactly `levels`, one row per model
        noise = rng.normal(0, 0.3, size=n)
        noise -= noise.mean()
        return np.array([lv + noise for lv in levels])

    # reference: learning 2.0, forgetting 1.0; the curve (base, a = 0.5, a = 1): learning 0, 1, 3, forgetting 0, 2, 3
    learning = [(docs([2.0, 0.0, 1.0, 3.0], 60), None)]
    forgetting = [(docs([1.0, 0.0, 2.0, 3.0], 80), None)]
    got = matched_learning(learning, forgetting)
    assert got.estimate == pytest.approx(2.5 - 1.0)  # the curve at learning 2 is halfway from (1, 2) to (3, 3)
    assert got.low < 1.5 < got.high and got.n == 140

    # the same documents every model scores alike: no noise, the interval is the point
    flat = matched_learning([(np.array([[2.0] * 5, [0.0] * 5, [4.0] * 5]), None)],
                            [(np.array([[0.5] * 7, [0.0] * 7, [2.0] * 7]), np.arange(1.0, 8.0))])
    assert (flat.estimate, flat.low, flat.high) == pytest.approx((0.5, 0.5, 0.5))  # curve at 2: 1.0; minus 0.5
    # two tasks: levels are their mean
    two = matched_learning([(np.array([[2.0], [0.0], [4.0]]), None), (np.array([[2.0], [0.0], [4.0]]), None)],
                           [(np.array([[0.0], [0.0], [1.0]]), None)])
    assert two.estimate == pytest.approx(0.5)
    # a curve that never reaches the reference's learning
    assert matched_learning([(np.array([[5.0] * 3, [0.0] * 3, [1.0] * 3]), None)],
                            [(np.array([[0.0] * 3, [0.0] * 3, [1.0] * 3]), None)]) is None


# ----------------------------------------------------------------------------- in a study, end to end


STUDY = """
name: steer
model:
  name: tiny
  tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 320}
defaults:
  train: {optimizer: adamw, global_batch: 8, micro_batch: 8, seed: 0, warmup: 1, eval_every: 1}
  data: {eval_max_examples: 8, source_eval: "builtin:source-cpt"}
  output: {resume_every: 2}
settings:
  - name: math-ift
    data: {regime: ift, path: "builtin:math-ift", seq_len: 320}
    durations: [0.005, 0.01]      # epochs: 2 and 4 steps of 8 examples
    durations_as: checkpoints
    learning: [math_solution]
    lr: {full: 1.0e-3, lora: 1.0e-2}
methods:
  - {name: full}
  - {name: lora, ranks: [2]}
forgetting: [source_loss]
eval: {limit: 4}
analyses: {spectrum: false, kl: false, diversity: [], interpolation: [0.5], intruders: [0.7]}
"""


def test_a_study_steers_its_runs_and_reports_the_findings(tmp_path):
    from ftlab.experiment.study import run_experiment
    from ftlab.report.claims import check_claims
    from ftlab.results.store import Store
    from ftlab.results.study import load_study

    exp, out = tmp_path / "steer.yaml", tmp_path / "study"
    exp.write_text(STUDY)
    run_experiment(exp, out)
    with Store(out / "results.sqlite") as store:
        study = load_study(store)
    steered = {(r.run, r.checkpoint): r for r in study.steered}
    assert set(steered) == {("math-ift/full/epochs-0.01", "final+interp-0.5"),
                            ("math-ift/lora-r2/epochs-0.01", "final+interp-0.5"),
                            ("math-ift/lora-r2/epochs-0.01", "final+intruders-0.7")}
    assert all(r.learning is not None and r.source_loss is not None for r in steered.values())
    assert {r.steered_from for r in steered.values()} == {"final"}
    assert not any("+" in r.checkpoint for r in study.rows)  # steered rows stay out of every trained comparison
    full = next(r for r in study.rows if r.run == "math-ift/full/epochs-0.01" and r.checkpoint == "final")
    half = steered["math-ift/full/epochs-0.01", "final+interp-0.5"]
    assert half.source_loss != full.source_loss and half.duration == full.duration
    # the curves table holds the source loss at every step, the base's at step 0
    curve = study.curves["math-ift/full/epochs-0.01"]
    assert [p.step for p in curve] == list(range(5)) and all(p.source_loss is not None for p in curve)

    claims = {c.id: c for c in check_claims(study)}
    for name in ("forgets_less_matched_learning", "interpolation_front", "intruder_repair",
                 "early_stop_tracks_learning"):
        assert claims[name].comparisons, (name, claims[name].sentence)
    page = (out / "report.html").read_text()
    assert 'id="steering"' in page and 'id="fig-steering_plane"' in page and 'id="fig-forgetting_curves"' in page
    assert (out / "report" / "steering_plane.csv").read_text().count("final+interp-0.5") == 2

    run_experiment(exp, out, report=False)  # again: nothing is steered or measured twice
    with Store(out / "results.sqlite") as store:
        assert len(load_study(store).steered) == 3


def test_bad_steering_factors_name_the_key(tmp_path, capsys):
    import yaml

    from ftlab.cli import main

    data = yaml.safe_load(STUDY)
    data["analyses"]["interpolation"] = [0.5, -1]
    exp = tmp_path / "bad.yaml"
    exp.write_text(yaml.safe_dump(data))
    assert main(["run", str(exp), "--out", str(tmp_path / "study")]) == 2
    assert "analyses.interpolation[1]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- replay


def write_docs(path, words, n=60, seed=0):
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(12))}) + "\n"
                            for _ in range(n)))
    return path


def test_cpt_replay_draws_the_fraction_asked_and_resumes_exactly(tmp_path):
    from ftlab.batches import CPTSteps
    from ftlab.model import byte_tokenizer
    from ftlab.train import build_data

    main = write_docs(tmp_path / "main.jsonl", ["abc", "bca", "cab"])
    replay = write_docs(tmp_path / "replay.jsonl", ["XYZ", "ZYX"], n=5)  # shorter: read again from its start
    cfg = tiny_config(main, tmp_path / "run", "data.regime=cpt", "data.eval_fraction=0", "train.global_batch=8",
                      "train.micro_batch=8", "data.replay.fraction=0.3", f"data.replay.source={replay}")
    tok = byte_tokenizer()
    steps, _ = build_data(cfg, tok)
    assert isinstance(steps, CPTSteps)
    replay_ids = set(tok("XYZ", add_special_tokens=False)["input_ids"])  # letters the main text never holds
    seqs = [s for _ in range(100) for batch in steps.next_step() for s in batch["input_ids"].tolist()]
    replayed = sum(bool(set(s) & replay_ids) for s in seqs)
    n, p = len(seqs), 0.3
    assert n > 700 and abs(replayed - n * p) <= 4 * (n * p * (1 - p)) ** 0.5, replayed
    space = set(tok(" ", add_special_tokens=False)["input_ids"])
    assert all(not (set(s) & replay_ids) or set(s) <= replay_ids | space | {tok.eos_token_id, tok.pad_token_id}
               for s in seqs)  # a sequence is from one source

    saved = steps.state()
    after = [torch.cat([b["input_ids"] for b in steps.next_step()]) for _ in range(7)]
    resumed, _ = build_data(cfg, tok)
    resumed.load_state(json.loads(json.dumps(saved)))
    assert all(torch.equal(a, torch.cat([b["input_ids"] for b in resumed.next_step()])) for a in after)


def test_ift_replay_mixes_the_fraction_asked_with_loss_on_every_token(pairs, tmp_path):
    from ftlab.data import IGNORE
    from ftlab.model import byte_tokenizer
    from ftlab.train import build_data

    replay = write_docs(tmp_path / "replay.jsonl", ["XYZ", "ZYX"], n=200)
    cfg = tiny_config(pairs, tmp_path / "run", "data.replay.fraction=0.25", f"data.replay.source={replay}")
    steps, _ = build_data(cfg, byte_tokenizer())
    replayed = [e for e in steps.examples if e.labels[1:] == e.input_ids[1:]]
    assert len(steps.examples) == 86 + 29 and len(replayed) == 29  # round(0.25 / 0.75 * 86) of 115
    assert all(e.labels[0] == IGNORE for e in replayed)
    plain, _ = build_data(tiny_config(pairs, tmp_path / "plain"), byte_tokenizer())
    assert not any(e.labels[1:] == e.input_ids[1:] for e in plain.examples)


def test_a_run_with_builtin_replay_trains(pairs, tmp_path):
    run = train(tiny_config(pairs, tmp_path / "run", "data.replay.fraction=0.1", "train.epochs=0.5"))
    assert (run / "data" / "source-cpt-train.jsonl").exists() and (run / "final").exists()


# ----------------------------------------------------------------------------- the findings on synthetic studies


def synthetic():
    """Rows and a base whose per-document means are exactly the levels set (test_findings' helpers)."""
    from test_findings import TOKENS, base, docs, row

    b = base("s")
    b.learning, b.learning_tasks = 0.2, ["learn"]
    b.examples["learn/token_accuracy"] = docs(0.2, "base-learn")
    b.source_loss = 2.5
    return row, b, docs, TOKENS


def test_the_matched_learning_findings_read_the_analytic_values():
    from ftlab.report.claims.steering import forgets_less_matched_learning, interpolation_front
    from test_findings import study

    row, b, docs, tokens = synthetic()
    full1 = row(method="full", d=1, learn=0.6, loss=2.9)
    full2 = row(method="full", d=2, learn=0.9, loss=3.4)
    lora = row(method="lora", d=2, learn=0.75, loss=2.8)
    half = row(method="full", d=2, learn=0.6, loss=2.6, run=full2.run)
    half.checkpoint, half.steer, half.factor, half.steered_from = "final+interp-0.5", "interp", 0.5, "final"
    s = study([full1, full2, lora], [b])
    s.steered = [half]

    matched = forgets_less_matched_learning(s)
    # full FT's duration curve at LoRA's learning 0.75: halfway from (0.6, 2.9) to (0.9, 3.4): 3.15; minus LoRA's 2.8
    assert matched.headline.interval.estimate == pytest.approx(0.35)
    assert matched.status == "supported" and matched.headline.instrument == "source_loss at matched learning"
    front = interpolation_front(s)
    # the interpolation curve base (0.2, 2.5) -> a = 0.5 (0.6, 2.6) -> full (0.9, 3.4) at 0.75: 2.6 + 0.5 * 0.8 = 3.0
    assert front.headline.interval.estimate == pytest.approx(3.0 - 2.8)
    assert front.status == "contradicted"  # interpolated full FT forgot more than LoRA here

    half.examples["learn/token_accuracy"] = docs(0.8, half.run + "x")  # a = 0.5 learns more: read before it
    front = interpolation_front(s)  # base (0.2, 2.5) -> (0.8, 2.6) at 0.75: 2.5 + 0.1 * 0.55 / 0.6
    assert front.headline.interval.estimate == pytest.approx(2.5 + 0.1 * 0.55 / 0.6 - 2.8)
    assert front.status == "supported"


def test_the_replay_and_intruder_findings_compare_what_they_say():
    from ftlab.report.claims.steering import intruder_repair, replay_prevents_forgetting
    from test_findings import study

    row, b, _, _ = synthetic()
    plain = row(setting="s", method="full", learn=0.6, loss=3.0)
    replayed = row(setting="s-replay", method="full", learn=0.6, loss=2.7)
    plain.data = replayed.data = "builtin:math-ift"
    replayed.replay = 0.01
    b2 = synthetic()[1]
    b2.setting, b2.run = "s-replay", "(base)/s-replay"
    claim = replay_prevents_forgetting(study([plain, replayed], [b, b2]))
    assert claim.status == "supported" and claim.headline.interval.estimate == pytest.approx(-0.3)
    replayed.data = "elsewhere.jsonl"  # other data: nothing to compare
    assert replay_prevents_forgetting(study([plain, replayed], [b, b2])).status == "not enough data"

    lora = row(method="lora", learn=0.5, loss=2.9)
    scaled = row(method="lora", learn=0.49, loss=2.8, run=lora.run)
    scaled.checkpoint, scaled.steer, scaled.factor, scaled.steered_from = "final+intruders-0.7", "intruders", 0.7, "final"
    s = study([lora], [b])
    s.steered = [scaled]
    repair = intruder_repair(s)
    assert repair.status == "supported" and repair.headline.interval.estimate == pytest.approx(-0.1)
    assert any("learning -0.01" in n for n in repair.notes)
