"""`ftlab report` on a hand-written folder of runs: no training, only the files runs and evaluations write, indexed
into a results store (ftlab.results.index) that the report reads.

The fake study follows the paper's shape: full FT at two learning rates, full FT with weight decay and with
attention dropout, LoRA r=1/4/16 at two learning rates each; checkpoints at 1 and 2 epochs plus final/ (4 epochs).
Every checkpoint has per-example records, made so that the answers are known: learning is exact match on 400
problems, solved in a fixed order of difficulty (a checkpoint solving k solves the k easiest: paired differences are
tight); the source score is three 200-question benchmarks, answered the same way; the held-out source loss is 100
documents whose losses rise by a known amount over the base's, plus noise of +-SIGMA that sums to zero per checkpoint
(so each mean is exact) but falls on different documents for each (so paired differences have a known spread).
"""

import json
import math
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("matplotlib")

from ftlab.analysis.diversity import diversity_into  # noqa: E402
from ftlab.io import file_digest  # noqa: E402
from ftlab.report.claims import CHECKS  # noqa: E402
from ftlab.report.page import SECTIONS  # noqa: E402
from ftlab.report.select import duration_text  # noqa: E402
from ftlab.report.figures import FIGURES  # noqa: E402
from ftlab.results.index import index_folder, study_of  # noqa: E402
from ftlab.cli import main  # noqa: E402
from ftlab.errors import FtlabError  # noqa: E402
from ftlab.report import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_report.py"
FORGETTING = [("source_continuation", "acc_norm"), ("source_question", "acc_norm"), ("source_cloze", "acc")]
BASE_LEARNING, BASE_SOURCE, BASE_LOSS = 0.05, 0.60, 2.0
N_LEARN, N_SOURCE, N_LOSS, TOKENS, SIGMA = 400, 200, 100, 50, 0.05
DURATIONS = {"epochs-1": 1.0, "epochs-2": 2.0, "final": 4.0}
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _records(path: Path, task: str, rows: list[dict]) -> None:
    (path / "eval_samples").mkdir(exist_ok=True)
    (path / "eval_samples" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_eval(path: Path, scores: list[dict]) -> None:
    """eval.json as `ftlab eval` writes it: the scores, and the size and sha256 of each samples file."""
    samples = {f.stem: file_digest(f) for f in sorted((path / "eval_samples").glob("*.jsonl"))}
    (path / "eval.json").write_text(json.dumps({"scores": scores, "samples": samples}))


def _solved(path: Path, task: str, metric: str, n: int, share: float) -> dict:
    """Records of a task whose first round(n * share) documents are right; its eval.json score."""
    k = round(n * share)
    _records(path, task, [{"id": f"{task}-{j}", "metrics": {metric: float(j < k)}} for j in range(n)])
    return {"task": task, "version": "1", "metric": metric, "value": k / n, "n": n, "stderr": 0.01, "extra": {}}


def _losses(path: Path, rise: float, noise: str) -> dict:
    """source_loss records: document j's loss = its base loss + rise + SIGMA x (+1 or -1), the signs a zero-sum
    pattern placed by `noise` (a checkpoint's own seed); its eval.json score (the token-weighted mean)."""
    signs = np.random.default_rng(zlib.crc32(noise.encode())).permutation(np.repeat([1.0, -1.0], N_LOSS // 2))
    losses = [BASE_LOSS - 0.2 + 0.1 * (j % 5) + rise + SIGMA * signs[j] for j in range(N_LOSS)]
    _records(path, "source_loss", [{"id": f"doc-{j}", "tokens": TOKENS, "metrics": {"loss": v}}
                                   for j, v in enumerate(losses)])
    return {"task": "source_loss", "version": "1", "metric": "loss", "value": sum(losses) / N_LOSS, "n": N_LOSS,
            "stderr": 0.01, "extra": {}}


def _evaluate(path: Path, learning: float, source: float, rise: float, noise: str) -> None:
    """eval.json and per-example records of one checkpoint (or a base model) in `path`."""
    scores = [_solved(path, "math", "exact_match_strict", N_LEARN, learning)]
    scores += [_solved(path, t, m, N_SOURCE, source) for t, m in FORGETTING]
    scores.append(_losses(path, rise, noise))
    _write_eval(path, scores)


def _samples(path: Path, unique: int, passing: int) -> None:
    """math_sampled's records in `path`: 20 problems x 8 samples, `unique` distinct completions per problem, the
    first `passing` samples of each passing; its pass@1 added to eval.json, its diversity written as `ftlab eval`
    does."""
    from ftlab.evaluate.code import pass_at_k

    n, records = 8, []
    for problem in range(20):
        metrics = {f"pass@{k}": pass_at_k(n, passing, k) for k in (1, 4, 8)}
        records += [{"id": f"p{problem}", "sample": i, "completion": f"answer {i % unique}", "passed": i < passing,
                     "metrics": metrics} for i in range(n)]
    (path / "eval_samples").mkdir(exist_ok=True)
    (path / "eval_samples" / "math_sampled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    scores = json.loads((path / "eval.json").read_text())["scores"]
    _write_eval(path, scores + [{"task": "math_sampled", "version": "1", "metric": "pass@1",
                                 "value": pass_at_k(n, passing, 1), "n": 20, "stderr": 0.0, "extra": {}}])
    diversity_into(path)


def _spectrum(names: list[str], k90: float, with_values: bool) -> dict[str, dict]:
    """Each checkpoint's spectrum.json (a document of one checkpoint, as `ftlab spectrum` writes one per checkpoint)."""
    entries = {}
    for name in names:
        matrices = []
        for layer in range(3):
            for module in MODULES:
                d = 64 if module in ("q_proj", "k_proj", "v_proj", "o_proj") else 176
                k = k90 * (1.3 if d == 176 else 1.0) * (0.8 if layer in (0, 2) else 1.0)
                m = {"name": f"model.layers.{layer}.{module}.weight", "layer": layer, "module": module,
                     "shape": [d, 64], "delta": {"k90": k, "k90_frac": k / 64}, "base": {"k90": 40},
                     "finetuned": {"k90": 40}, "gaussian": {"k90": 33 if d == 64 else 45}, "rel_change": 0.1,
                     "intruders": 0}
                if with_values and name == "final":
                    sv = [math.exp(-i / 8) for i in range(64)]
                    m["singular_values"] = {"delta": sv, "base": [2 * math.exp(-i / 30) for i in range(64)],
                                            "finetuned": [2 * math.exp(-i / 29) for i in range(64)]}
                matrices.append(m)
        entry = {"path": f"x/{name}", "name": name, "step": 1, "tokens": 1, "matrices": matrices,
                 "summary": {"k90_mean": k90, "k90_frac_mean": k90 / 64, "rel_change_mean": 0.1, "intruders_total": 0}}
        entries[name] = {"version": 1, "base": "base", "settings": {}, "checkpoints": [entry]}
        k90 *= 1.2  # grows with training
    return entries


def make_run(root: Path, name: str, method: str, lr: float, rank: int = 16, wd: float = 0.0, drop: float = 0.0,
             skill: float = 1.0, gentleness: float = 0.0, extras: bool = False) -> Path:
    """A finished, evaluated run: learning = 0.2·skill·(1 + log2 d); the source score falls by 0.04 and the source
    loss rises by 0.1 nats per (1 + log2 d), times (1 - gentleness) (0 = full FT, 1 = no forgetting). Its cost
    (run.json, tokens/s in metrics.jsonl): full FT 1 hour, 8 GB; LoRA r 1800 + 60 r seconds, 3 + 0.1 r GB."""
    run = root / name
    config = {"model": {"name": "tiny", "attention_dropout": drop},
              "data": {"regime": "ift", "path": "builtin:math-ift"},
              "method": {"name": method, "rank": rank},
              "train": {"lr": lr, "weight_decay": wd, "epochs": 4, "checkpoints": [1, 2]},
              "output": {"dir": str(run)}}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    full = method == "full"
    (run / "run.json").write_text(json.dumps({
        "wall_s": 3600.0 if full else 1800.0 + 60 * rank, "peak_memory_gb": 8.0 if full else 3.0 + 0.1 * rank,
        "device": "cpu", "trainable_params": 2_200_000 if full else 4096 * rank,
        "total_params": 2_200_000 + (0 if full else 4096 * rank)}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "tokens": 100 * s, "loss": 2.0 - 0.01 * s,
                                                           "lr": lr, "tokens_per_s": 1000.0 if full else 1400.0})
                                               + "\n" for s in (1, 2)))
    (run / "base_eval").mkdir()
    _evaluate(run / "base_eval", BASE_LEARNING, BASE_SOURCE, 0.0, "base")
    _samples(run / "base_eval", unique=8, passing=0)
    for ckpt, d in DURATIONS.items():
        path = run / ("checkpoints/" + ckpt if ckpt != "final" else "final")
        path.mkdir(parents=True)
        learning = 0.2 * skill * (1 + math.log2(d))
        source = BASE_SOURCE - 0.04 * (1 - gentleness) * (1 + math.log2(d))
        (path / "ftlab.json").write_text(json.dumps({"step": int(10 * d), "tokens": int(1000 * d), "epoch": d,
                                                     "method": method, "base": "base"}))
        _evaluate(path, learning, source, 0.1 * (1 - gentleness) * (1 + math.log2(d)), f"{name}/{ckpt}")
        if extras:
            (path / "kl.json").write_text(json.dumps({"kl": 0.5 * (BASE_SOURCE - source) + 0.01 * d, "tokens": 500}))
            unique = 3 if method == "full" else 3 + round(4 * gentleness)
            _samples(path, unique=unique, passing=min(7, round(8 * learning)))
    spectra = (_spectrum(list(DURATIONS), 40.0, with_values=True) if method == "full"
               else _spectrum(["final"], rank * 0.8, False))
    for ckpt, doc in spectra.items():
        ckpt_dir = run / ("checkpoints/" + ckpt if ckpt != "final" else "final")
        (ckpt_dir / "spectrum.json").write_text(json.dumps(doc))
    return run


GROUPS = {  # run folder -> (method, lr, rank, wd, attention dropout, skill, gentleness)
    "full/lr1e-3": ("full", 1e-3, 16, 0.0, 0.0, 1.0, 0.0),
    "full/lr1e-4": ("full", 1e-4, 16, 0.0, 0.0, 0.7, 0.0),
    "full-wd/lr1e-3": ("full", 1e-3, 16, 1e-4, 0.0, 0.995, 0.02),
    "full-drop/lr1e-3": ("full", 1e-3, 16, 0.0, 0.1, 0.97, 0.1),
    **{f"lora/r{r}-lr1e-2": ("lora", 1e-2, r, 0.0, 0.0, skill, gentle)
       for r, skill, gentle in ((1, 0.6, 0.82), (4, 0.75, 0.6), (16, 0.9, 0.35))},
    **{f"lora/r{r}-lr1e-3": ("lora", 1e-3, r, 0.0, 0.0, 0.6 * skill, gentle)
       for r, skill, gentle in ((1, 0.6, 0.82), (4, 0.75, 0.6), (16, 0.9, 0.35))},
}


def make_study(root: Path) -> Path:
    """Ten runs shaped like the paper's findings (LoRA learns less and forgets less; LoRA's best LR 10x full's)."""
    for name, (method, lr, rank, wd, drop, skill, gentle) in GROUPS.items():
        make_run(root, name, method, lr, rank=rank, wd=wd, drop=drop, skill=skill, gentleness=gentle,
                 extras=name in ("full/lr1e-3", "lora/r1-lr1e-2", "lora/r4-lr1e-2", "lora/r16-lr1e-2"))
    return root


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("study"))


BUDGET = 0.35  # --forgetting-budget of the module's report: admits everything (full FT's rise is 0.3)


@pytest.fixture(scope="module")
def report(study_dir: Path) -> Path:
    """The report as `ftlab report DIR --forgetting-budget 0.35` writes it."""
    assert main(["report", str(study_dir), "--forgetting-budget", str(BUDGET)]) == 0
    return study_dir / "report.html"


def test_the_index_finds_every_run_and_maps_the_config(study_dir):
    study = study_of(study_dir)
    assert len({r.run for r in study.rows}) == 10 and len(study.rows) == 30
    assert len(study.bases) == 1 and study.bases[0].learning == pytest.approx(BASE_LEARNING)  # one setting
    r4 = next(r for r in study.rows if r.run == "lora/r4-lr1e-2" and r.checkpoint == "epochs-2")
    assert (r4.method, r4.rank, r4.alpha, r4.targets, r4.lr, r4.regime) == ("lora", 4, 8.0, "all", 1e-2, "ift")
    assert (r4.duration, r4.duration_unit, r4.step, r4.tokens) == (2.0, "epochs", 20, 2000)
    assert r4.learning == pytest.approx(0.2 * 0.75 * 2) and r4.learning_tasks == ["math"]
    assert r4.forgetting == pytest.approx(BASE_SOURCE - r4.source) and r4.forgetting > 0
    assert r4.source_loss - r4.base_source_loss == pytest.approx(0.1 * 0.4 * 2)
    assert r4.base_learning == pytest.approx(BASE_LEARNING) and r4.base_source == pytest.approx(BASE_SOURCE)
    assert r4.diversity is not None and r4.diversity.pass_at_k[8] > r4.diversity.pass_at_k[1]
    assert r4.diversity.unique_mean == 3 + round(4 * 0.6) and len(r4.diversity.per_problem) == 20
    assert set(r4.examples) == {"math_sampled/pass@1", "math_sampled/pass@4", "math_sampled/pass@8",
                                "math/exact_match_strict", "source_loss/loss",
                                *(f"{t}/{m}" for t, m in FORGETTING)}
    assert len(r4.values("math/exact_match_strict")) == N_LEARN and len(r4.values("source_loss/loss")) == N_LOSS
    assert (r4.cost.wall_s, r4.cost.peak_memory_gb, r4.cost.trainable_params, r4.cost.tokens_per_s) == (
        2040.0, pytest.approx(3.4), 16384, 1400.0)
    assert r4.spectrum is None and r4.kl is not None  # LoRA spectra only in final/
    wd = next(r for r in study.rows if r.run == "full-wd/lr1e-3")
    drop = next(r for r in study.rows if r.run == "full-drop/lr1e-3")
    assert (wd.weight_decay, wd.group, drop.attention_dropout, drop.group) == (
        1e-4, "full FT wd=0.0001", 0.1, "full FT attn-drop=0.1")
    full_final = next(r for r in study.rows if r.run == "full/lr1e-3" and r.checkpoint == "final")
    assert full_final.spectrum.k90_mean == pytest.approx(sum(m.k90 for m in full_final.spectrum.matrices) / 21)
    assert len(full_final.spectrum.matrices) == 21 and full_final.spectrum.matrices[0].singular_values
    assert not any("measured" in m for m in study.missing)
    assert study_of(study_dir) == study  # indexed afresh: the same store, the same study


def _csv_rows(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(path.open()))


def test_report_has_every_figure_claim_and_table(report, study_dir):
    page = report.read_text()
    assert report == study_dir / "report.html"
    assert page.count("<img ") == len(FIGURES) + 1 and 'id="skipped"' not in page  # + the cost figure
    for fig_id in [draw.__name__ for draw in FIGURES] + ["cost"]:
        assert f'id="fig-{fig_id}"' in page
        assert (study_dir / "report" / f"{fig_id}.csv").read_text().count("\n") > 1
    assert page.count('<tr id="claim-') == len(CHECKS)
    for section in SECTIONS:
        assert f'<section id="{section}"' in page or f'<header id="{section}"' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline, no JS
    data = json.loads((study_dir / "report" / "results.json").read_text())
    assert len(data["study"]["rows"]) == 30 and len(data["claims"]) == len(CHECKS)
    statuses = {c["id"]: c["status"] for c in data["claims"]}
    assert statuses["learns_less"] == statuses["forgets_less"] == statuses["forgets_less_loss"] == "supported"
    rows_csv = _csv_rows(study_dir / "report" / "rows.csv")
    assert len(rows_csv) == 30 and list(rows_csv[0])[:4] == ["run", "checkpoint", "group", "lr"]
    full = next(r for r in rows_csv if r["run"] == "full/lr1e-3" and r["checkpoint"] == "final")
    assert (full["wall_s"], full["device_hours"], full["peak_memory_gb"], full["tokens_per_s"], full["device"],
            full["trainable_params"], full["total_params"]) == ("3600.0", "1.0", "8.0", "1000.0", "cpu", "2200000",
                                                                "2200000")


def test_the_claims_table_shows_counts_interval_and_mde(report, study_dir):
    """Each finding's row carries its counts, its headline difference with the 95% interval and its detectable
    effect, as results.json (Claim.as_dict) and claims.csv have them."""
    from ftlab.report.page import esc, num

    page = report.read_text()
    data = json.loads((study_dir / "report" / "results.json").read_text())
    by_id = {c["id"]: c for c in _csv_rows(study_dir / "report" / "claims.csv")}
    assert set(by_id) == {c["id"] for c in data["claims"]}
    headlined = [c for c in data["claims"] if c["headline"]]
    assert {"learns_less", "forgets_less_loss"} <= {c["id"] for c in headlined}
    for c in data["claims"]:
        row = page[page.index(f'<tr id="claim-{c["id"]}"'):]
        row = row[:row.index("</tr>")]
        n = c["counts"]
        assert f'{n["agree"]} / {n["disagree"]} / {n["inconclusive"]}' in row
        assert f'class="status {c["status"].replace(" ", "-")}"' in row and esc(c["source"]) in row
        assert esc(num(c["mde"])) in row
        line = by_id[c["id"]]
        assert (int(line["agree"]), int(line["disagree"]), int(line["inconclusive"])) == (
            n["agree"], n["disagree"], n["inconclusive"])
        h = c["headline"]
        if h:
            i = (h["estimate"], h["low"], h["high"])
            assert esc(f'{h["what"]}: {h["instrument"]} {i[0]:+.3g} [{i[1]:+.3g}, {i[2]:+.3g}]') in row
            assert [line[k] for k in ("estimate", "low", "high")] == [str(x) for x in i] and i[1] <= i[0] <= i[2]
        assert line["mde"] == ("" if c["mde"] is None else str(c["mde"]))
    learns = next(c for c in data["claims"] if c["id"] == "learns_less")
    # the headline is fixed in advance, not the largest gap: the highest rank, LoRA r=16, against full FT at 4 epochs
    assert learns["headline"]["what"] == "LoRA r=16 vs full FT at 4 epochs", learns["headline"]


def test_every_status_has_its_colour():
    from ftlab.analysis.statistics import Interval
    from ftlab.report.page import CSS, claims_html
    from ftlab.report.verdicts import Claim, fixed

    def claim(verdicts: list[str]) -> Claim:
        comparisons = [fixed(f"b{i} vs a", "learning", +1, e, e - 0.01, e + 0.01, 100, v)
                       for i, (v, e) in enumerate(zip(verdicts, (0.1, -0.1, 0.0)))]
        return Claim(f"c{len(verdicts)}{''.join(v[0] for v in verdicts)}", "a finding", "someone", "a rule").decide(
            comparisons, "not enough data: nothing")

    claims = [claim(["agree"]), claim(["disagree"]), claim(["agree", "disagree"]), claim(["inconclusive"]), claim([])]
    assert [c.status for c in claims] == ["supported", "contradicted", "mixed", "inconclusive", "not enough data"]
    page = claims_html(claims)
    for c in claims:
        css_class = c.status.replace(" ", "-")
        assert f'class="status {css_class}"' in page and f".{css_class}{{" in CSS  # each status styled
    assert "b0 vs a: learning +0.1 [+0.09, +0.11]" in page and "not enough data: nothing" in page
    assert Interval(0.1, 0.09, 0.11, 0.005, 100).mde == pytest.approx(0.014, abs=1e-4)


def test_error_bars_are_the_arms_intervals(report, study_dir):
    """The figures' CSVs carry each point's 95% interval: the level interval of an arm's score (paired bootstrap
    over its documents), the paired interval of its source-loss rise over the base."""
    from ftlab.report.verdicts import Arm, compare, level

    study = study_of(study_dir)
    final = next(r for r in study.rows if r.run == "lora/r16-lr1e-2" and r.checkpoint == "final")
    learning, source = level(study, Arm.of([final]), "learning"), level(study, Arm.of([final]), "source")
    rise = compare(study, Arm.of([study.bases[0]]), Arm.of([final]), "source_loss", +1).interval
    # 216 of 400 problems solved: the bootstrap interval is about +-1.96 sqrt(p(1-p)/n) = +-0.049
    assert learning.estimate == pytest.approx(0.54) and learning.high - learning.low == pytest.approx(0.098, abs=0.01)
    assert rise.estimate == pytest.approx(0.195) and 0.02 < rise.high - rise.low < 0.035  # noise of +-SIGMA per doc
    tradeoff = next(r for r in _csv_rows(study_dir / "report" / "tradeoff.csv")
                    if r["group"] == "LoRA r=16" and r["lr"] == "0.01" and r["duration"] == "4.0")
    assert [float(tradeoff[k]) for k in ("learning", "learning_low", "learning_high", "source", "source_low",
                                         "source_high")] == pytest.approx(
        [learning.estimate, learning.low, learning.high, source.estimate, source.low, source.high])
    loss = next(r for r in _csv_rows(study_dir / "report" / "tradeoff_loss.csv")
                if r["group"] == "LoRA r=16" and r["lr"] == "0.01" and r["duration"] == "4.0")
    assert [float(loss[k]) for k in ("source_loss_rise", "source_loss_rise_low", "source_loss_rise_high")] == (
        pytest.approx([rise.estimate, rise.low, rise.high]))
    for figure, columns in (("duration", ("learning", "source", "source_loss_rise")),
                            ("regularization", ("learning", "source", "source_loss_rise"))):
        rows = _csv_rows(study_dir / "report" / f"{figure}.csv")
        assert rows and all(float(r[f"{c}_low"]) < float(r[c]) < float(r[f"{c}_high"]) for r in rows for c in columns)
    assert {r["group"] for r in _csv_rows(study_dir / "report" / "duration.csv")} == {
        "full FT", "LoRA r=1", "LoRA r=4", "LoRA r=16"}  # plain full FT and LoRA, best LR each
    assert "full FT wd=0.0001" in {r["group"] for r in _csv_rows(study_dir / "report" / "regularization.csv")}


def test_cost_view_puts_each_configuration_beside_its_cost(report, study_dir):
    """One point per group at its best LR and longest duration, with its training's device-hours, peak memory and
    size (run.json), and what it learned and forgot."""
    rows = {r["group"]: r for r in _csv_rows(study_dir / "report" / "cost.csv")}
    assert set(rows) == {"full FT", "full FT wd=0.0001", "full FT attn-drop=0.1", "LoRA r=1", "LoRA r=4",
                         "LoRA r=16"}
    for group, r in rows.items():
        lora = group.startswith("LoRA")
        rank = int(group.split("=")[1]) if lora else 0
        assert (float(r["lr"]), float(r["duration"])) == (1e-2 if lora else 1e-3, 4.0)
        assert float(r["device_hours"]) == pytest.approx((1800 + 60 * rank) / 3600 if lora else 1.0)
        assert float(r["peak_memory_gb"]) == pytest.approx(3 + 0.1 * rank if lora else 8.0)
        assert int(r["trainable_params"]) == (4096 * rank if lora else 2_200_000)
        assert r["forgetting_measure"] == "source_loss"
        assert float(r["forgetting_low"]) < float(r["forgetting"]) < float(r["forgetting_high"])
    assert float(rows["LoRA r=16"]["learning"]) == pytest.approx(0.54)
    assert float(rows["LoRA r=16"]["forgetting"]) == pytest.approx(0.195)
    page = report.read_text()
    cost = page[page.index('<section id="cost"'):page.index('<section id="figures"')]
    assert 'id="fig-cost"' in cost and "LoRA r=16, lr 0.01, 4 epochs" in cost and "65,536" in cost


FRONT = ["LoRA r=1, lr 0.01, 1 epoch", "LoRA r=1, lr 0.01, 2 epochs", "LoRA r=1, lr 0.01, 4 epochs",
         "LoRA r=4, lr 0.01, 4 epochs", "LoRA r=16, lr 0.01, 4 epochs", "full FT attn-drop=0.1, lr 0.001, 4 epochs",
         "full FT wd=0.0001, lr 0.001, 4 epochs", "full FT, lr 0.001, 4 epochs"]


def test_the_recommendation_lists_the_front_and_answers_each_budget(report, study_dir):
    """The fixture's forgetting (source-loss rise: 0.1 (1 - gentleness)(1 + log2 d)) and learning make the front and
    the budgets' answers known; weight decay's and full FT's 4-epoch points differ by one problem and 0.006 nats,
    within the noise: not distinguishable."""
    front = _csv_rows(study_dir / "report" / "pareto_front.csv")
    names = [f"{r['group']}, lr {float(r['lr']):g}, {duration_text(float(r['duration']), 'epochs')}" for r in front]
    assert names == FRONT
    assert [r["distinct_from_previous"] for r in front] == ["", *["True"] * 6, "False"]
    assert all(r["forgetting_measure"] == "source_loss" for r in front)
    budgets = {r["budget_is"]: r for r in _csv_rows(study_dir / "report" / "budgets.csv")}
    full_rise = 0.3  # plain full FT at 4 epochs
    expected = {"25% of full FT's": FRONT[2], "50% of full FT's": FRONT[3], "75% of full FT's": FRONT[4],
                "100% of full FT's": FRONT[5]}
    for what, best in expected.items():
        b = budgets[what]
        assert float(b["budget"]) == pytest.approx(full_rise * int(what.split("%")[0]) / 100)
        assert b["best"] == best and b["ties"] == "" and float(b["forgetting_high"]) <= float(b["budget"])
    page = report.read_text()
    section = page[page.index('<section id="recommendation"'):page.index('<section id="cost"')]
    assert all(name in section for name in FRONT) and section.count("not distinguishable at 95%") == 1


def test_a_forgetting_budget_from_the_command_line(report, study_dir, capsys):
    """--forgetting-budget 0.35 (nats of source-loss rise) admits everything: plain full FT learns most, and weight
    decay's run is one problem behind it, a tie; a negative budget is refused."""
    mine = next(r for r in _csv_rows(study_dir / "report" / "budgets.csv") if r["budget_is"] == "--forgetting-budget")
    assert (float(mine["budget"]), mine["best"], mine["ties"], mine["within"]) == (BUDGET, FRONT[7], FRONT[6], "18")
    assert f"--forgetting-budget {BUDGET:g} is read on the source-loss rise over the base (nats/token)" in (
        report.read_text())
    results = json.loads((study_dir / "report" / "results.json").read_text())
    assert results["recommendation"]["forgetting_budget"] == BUDGET
    assert main(["report", str(study_dir), "--forgetting-budget", "-1"]) == 2
    assert "expected a forgetting of at least 0" in capsys.readouterr().err


def test_without_source_loss_the_budget_is_on_the_source_score(tmp_path):
    """No per-document source loss: forgetting and budgets fall back on the source score's drop."""
    from ftlab.report.advice import advise
    from ftlab.report.measures import Measures

    for name in ("full/lr1e-3", "lora/r4-lr1e-2"):
        method, lr, rank, wd, drop, skill, gentle = GROUPS[name]
        run = make_run(tmp_path, name, method, lr, rank=rank, skill=skill, gentleness=gentle)
        for ev in run.rglob("eval.json"):
            doc = json.loads(ev.read_text())
            (ev.parent / "eval_samples" / "source_loss.jsonl").unlink()
            _write_eval(ev.parent, [s for s in doc["scores"] if s["task"] != "source_loss"])
    measures = Measures(study_of(tmp_path))
    advice = advise(measures, budget=0.07)
    answers = {a.what: a for a in advice.answers}
    assert {a.instrument for a in advice.answers} == {"source"}
    # full FT's source score falls 0.04 (1 + log2 d): 0.12 at 4 epochs; LoRA r=4's 0.4 of that: 0.016 (1 + log2 d)
    assert answers["100% of full FT's"].budget == pytest.approx(0.12)
    assert answers["--forgetting-budget"].best.name == "LoRA r=4, lr 0.01, 4 epochs"  # drop 0.048, within 0.07
    assert answers["25% of full FT's"].best.name == "LoRA r=4, lr 0.01, 1 epoch"  # 0.015 [0.007, 0.025] <= 0.03
    assert [s.point.name for s in advice.front["ift: math-ift @ tiny"]] == [
        "LoRA r=4, lr 0.01, 1 epoch", "LoRA r=4, lr 0.01, 2 epochs", "LoRA r=4, lr 0.01, 4 epochs",
        "full FT, lr 0.001, 4 epochs"]  # full FT at 1 and 2 epochs learn less than LoRA forgetting less
    tight = advise(measures, budget=0.01).answers[0]
    assert tight.best is None and tight.below == 0  # nothing forgot as little as 0.01
    calm = tmp_path / "calm"  # full FT that forgets nothing: no share of it to budget
    make_run(calm, "full", "full", 1e-3, gentleness=1.0)
    make_run(calm, "lora", "lora", 1e-2, rank=4, skill=0.75, gentleness=1.0)
    advice = advise(Measures(study_of(calm)))
    assert advice.reference["ift: math-ift @ tiny"].forgetting.estimate == 0 and advice.answers == []


def test_report_is_deterministic(report):
    before = {p: p.read_bytes() for p in [report, *sorted((report.parent / "report").iterdir())]}
    assert write_report(report.parent, forgetting_budget=BUDGET) == report
    assert {p: p.read_bytes() for p in before} == before


def test_missing_evaluations_are_listed_and_the_report_still_renders(study_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(study_dir, partial, ignore=shutil.ignore_patterns("report*"))
    (partial / "lora/r4-lr1e-2/checkpoints/epochs-2/eval.json").unlink()
    for kl in partial.rglob("kl.json"):
        kl.unlink()
    study = study_of(partial)
    assert "lora/r4-lr1e-2/epochs-2: no learning task measured" in study.missing
    assert "no checkpoint has KL to the base" in study.missing
    page = write_report(partial).read_text()
    assert page.count("<img ") == len(FIGURES)  # with the cost figure, without kl_forgetting
    assert "--forgetting-budget" not in page and "25% of full FT" in page  # the user's budget only when given
    assert '<li id="skipped-kl_forgetting">' in page and "not enough data" in page
    assert "lora/r4-lr1e-2/epochs-2: no learning task measured" in page
    assert not (partial / "report" / "kl_forgetting.csv").exists()


def test_duplicate_final_and_unreadable_config(tmp_path):
    run = make_run(tmp_path, "full", "full", 1e-3)
    shutil.copytree(run / "final", run / "checkpoints" / "epochs-4")  # checkpoints: [1, 2, 4] also saves epochs-4
    (run / "checkpoints" / "epochs-4" / "eval.json").unlink()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("method: {name: lora, rnak: 4}\n")
    (tmp_path / "broken" / "final").mkdir()
    study = study_of(tmp_path)
    twin = next(r for r in study.rows if r.checkpoint == "epochs-4")
    assert twin.duplicate_of == "final" and len(study.points()) == 3 and len(study.rows) == 4
    assert any(m.startswith("broken: config.yaml unreadable") and "method.rnak" in m for m in study.missing)
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 0
    assert "epochs-4 (= final)" in out.read_text() and (tmp_path / "elsewhere" / "r" / "results.json").exists()


def test_a_single_run_reports_what_it_has(tmp_path):
    make_run(tmp_path, "only", "full", 1e-3)
    page = write_report(tmp_path).read_text()
    assert page.count("<img ") >= 1 and page.count("not enough data") >= 4
    assert page.count('<tr id="claim-') == len(CHECKS)


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FtlabError, match="no run directories found"):
        index_folder(tmp_path / "empty")
    with pytest.raises(FtlabError, match="not a directory"):
        study_of(tmp_path / "nope")
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_the_browser_check_knows_every_section():
    sys.path.insert(0, str(CHECK.parent))
    try:
        import check_report
    finally:
        sys.path.remove(str(CHECK.parent))
    assert check_report.SECTIONS == SECTIONS


def test_report_opens_in_headless_chromium(report):
    sys.path.insert(0, str(CHECK.parent))
    try:
        import check_report
    finally:
        sys.path.remove(str(CHECK.parent))
    if check_report.find_chromium(None) is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium); the browser check is skipped")
    done = subprocess.run([sys.executable, str(CHECK), str(report)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(FIGURES) + 1} images" in done.stdout  # + the cost figure
    # the check can fail: a broken image, a missing section and a page wider than the screen
    broken = report.with_name("broken.html")
    broken.write_text('<html><body><header id="summary"></header><section id="claims"></section>'
                      '<figure id="fig-x"><img src="data:image/png;base64,AAAA"></figure>'
                      '<div style="width:3000px">wide</div></body></html>')
    done = subprocess.run([sys.executable, str(CHECK), str(broken)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    for fault in ("fig-x: the image did not decode", "section #runs is missing", "horizontal scrolling"):
        assert fault in done.stdout


def test_an_instrument_with_no_spread_does_not_resolve_a_zero_effect():
    """Every model gives every sample a distinct answer (unique at its ceiling): effect 0, SE 0: not estimable; an
    effect resolves only when its interval, not its point estimate, clears the MDE."""
    from ftlab.analysis.statistics import Interval
    from ftlab.report.measures import Power
    from ftlab.report.verdicts import Comparison

    def power(estimate, se):
        interval = Interval(estimate, estimate - 1.96 * se, estimate + 1.96 * se, se, 32)
        return Power("unique", 9, 2.8 * se, "math-ift", Comparison("full FT vs base", "unique", -1, interval, "x"))

    assert power(0.0, 0.0).resolved is None and power(0.0, 0.0).resolution == "no spread: not estimable"
    assert power(-0.5, 0.1).resolved is True and power(-0.1, 0.1).resolved is False
    assert power(-0.35, 0.1).resolved is False  # |effect| 0.35 >= MDE 0.28, but its interval reaches 0.154
