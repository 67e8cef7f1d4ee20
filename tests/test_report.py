"""`ftlab report` on a hand-written folder of runs: no training, only the files runs and evaluations write, indexed
into a results store (ftlab.results.index) that the report reads.

The fake study follows the paper's shape: full FT at two learning rates, full FT with weight decay and with
attention dropout, LoRA r=1/4/16 at two learning rates each; checkpoints at 1 and 2 epochs plus final/ (4 epochs).
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("matplotlib")

from ftlab.report.claims import CHECKS  # noqa: E402
from ftlab.report.plots import FIGURES  # noqa: E402
from ftlab.results.index import index_folder, study_of  # noqa: E402
from ftlab.cli import main  # noqa: E402
from ftlab.errors import FtlabError  # noqa: E402
from ftlab.report import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_report.py"
FORGETTING = [("source_continuation", "acc_norm"), ("source_question", "acc_norm"), ("source_cloze", "acc")]
BASE_LEARNING, BASE_SOURCE = 0.05, 0.60
DURATIONS = {"epochs-1": 1.0, "epochs-2": 2.0, "final": 4.0}
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _eval(learning: float, source: float) -> dict:
    scores = [{"task": "math", "version": "1", "metric": "exact_match_strict", "value": learning, "n": 100,
               "stderr": 0.01, "extra": {}}]
    scores += [{"task": t, "version": "1", "metric": m, "value": source, "n": 100, "stderr": 0.01, "extra": {}}
               for t, m in FORGETTING]
    return {"scores": scores}


def _samples(path: Path, unique: int, passing: int) -> None:
    """math_sampled's records in `path`: 20 problems x 8 samples, `unique` distinct completions per problem, the
    first `passing` samples of each passing; its pass@1 added to eval.json."""
    from ftlab.evaluate.code import pass_at_k

    n, records = 8, []
    for problem in range(20):
        metrics = {f"pass@{k}": pass_at_k(n, passing, k) for k in (1, 4, 8)}
        records += [{"id": f"p{problem}", "sample": i, "completion": f"answer {i % unique}", "passed": i < passing,
                     "metrics": metrics} for i in range(n)]
    (path / "eval_samples").mkdir(exist_ok=True)
    (path / "eval_samples" / "math_sampled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = json.loads((path / "eval.json").read_text())
    results["scores"].append({"task": "math_sampled", "version": "1", "metric": "pass@1",
                              "value": pass_at_k(n, passing, 1), "n": 20, "stderr": 0.0, "extra": {}})
    (path / "eval.json").write_text(json.dumps(results))


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
    """A finished, evaluated run: learning = 0.2·skill·(1 + log2 d), the source score falls with duration,
    less so the larger `gentleness` (0 = full FT, 1 = no forgetting)."""
    run = root / name
    config = {"model": {"name": "tiny", "attention_dropout": drop},
              "data": {"regime": "ift", "path": "builtin:math-ift"},
              "method": {"name": method, "rank": rank},
              "train": {"lr": lr, "weight_decay": wd, "epochs": 4, "checkpoints": [1, 2]},
              "output": {"dir": str(run)}}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "base_eval").mkdir()
    (run / "base_eval" / "eval.json").write_text(json.dumps(_eval(BASE_LEARNING, BASE_SOURCE)))
    _samples(run / "base_eval", unique=8, passing=0)
    for ckpt, d in DURATIONS.items():
        path = run / ("checkpoints/" + ckpt if ckpt != "final" else "final")
        path.mkdir(parents=True)
        learning = 0.2 * skill * (1 + math.log2(d))
        source = BASE_SOURCE - 0.04 * (1 - gentleness) * (1 + math.log2(d))
        (path / "ftlab.json").write_text(json.dumps({"step": int(10 * d), "tokens": int(1000 * d), "epoch": d,
                                                     "method": method, "base": "base"}))
        (path / "eval.json").write_text(json.dumps(_eval(learning, source)))
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


def make_study(root: Path) -> Path:
    """Ten runs shaped like the paper's findings (LoRA learns less and forgets less; LoRA's best LR 10x full's)."""
    make_run(root, "full/lr1e-3", "full", 1e-3, skill=1.0, extras=True)
    make_run(root, "full/lr1e-4", "full", 1e-4, skill=0.7)
    make_run(root, "full-wd/lr1e-3", "full", 1e-3, wd=1e-4, skill=0.98, gentleness=0.02)
    make_run(root, "full-drop/lr1e-3", "full", 1e-3, drop=0.1, skill=0.97, gentleness=0.03)
    for rank, skill, gentle in ((1, 0.6, 0.8), (4, 0.75, 0.6), (16, 0.9, 0.4)):
        make_run(root, f"lora/r{rank}-lr1e-2", "lora", 1e-2, rank=rank, skill=skill, gentleness=gentle, extras=True)
        make_run(root, f"lora/r{rank}-lr1e-3", "lora", 1e-3, rank=rank, skill=skill * 0.6, gentleness=gentle)
    return root


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def report(study_dir: Path) -> Path:
    return write_report(study_dir)


def test_the_index_finds_every_run_and_maps_the_config(study_dir):
    study = study_of(study_dir)
    assert len({r.run for r in study.rows}) == 10 and len(study.rows) == 30
    assert len(study.bases) == 1 and study.bases[0].learning == pytest.approx(BASE_LEARNING)  # one setting
    r4 = next(r for r in study.rows if r.run == "lora/r4-lr1e-2" and r.checkpoint == "epochs-2")
    assert (r4.method, r4.rank, r4.alpha, r4.targets, r4.lr, r4.regime) == ("lora", 4, 8.0, "all", 1e-2, "ift")
    assert (r4.duration, r4.duration_unit, r4.step, r4.tokens) == (2.0, "epochs", 20, 2000)
    assert r4.learning == pytest.approx(0.2 * 0.75 * 2) and r4.learning_tasks == ["math"]
    assert r4.forgetting == pytest.approx(BASE_SOURCE - r4.source) and r4.forgetting > 0
    assert r4.base_learning == pytest.approx(BASE_LEARNING) and r4.base_source == pytest.approx(BASE_SOURCE)
    assert r4.diversity is not None and r4.diversity.pass_at_k[8] > r4.diversity.pass_at_k[1]
    assert r4.diversity.unique_mean == 3 + round(4 * 0.6) and len(r4.diversity.per_problem) == 20
    assert set(r4.examples) == {"math_sampled/pass@1", "math_sampled/pass@4", "math_sampled/pass@8"}
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


def test_report_has_every_figure_claim_and_table(report, study_dir):
    page = report.read_text()
    assert report == study_dir / "report.html"
    assert page.count("<img ") == len(FIGURES) and 'id="skipped"' not in page
    for draw in FIGURES:
        fig_id = draw.__name__
        assert f'id="fig-{fig_id}"' in page
        assert (study_dir / "report" / f"{fig_id}.csv").read_text().count("\n") > 1
    assert page.count('<tr id="claim-') == len(CHECKS)
    for section in ("summary", "claims", "figures", "runs", "missing"):
        assert f'<section id="{section}"' in page or f'<header id="{section}"' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline, no JS
    data = json.loads((study_dir / "report" / "results.json").read_text())
    assert len(data["study"]["rows"]) == 30 and len(data["claims"]) == len(CHECKS)
    statuses = {c["id"]: c["status"] for c in data["claims"]}
    assert statuses["learns_less"] == statuses["forgets_less"] == statuses["best_lr"] == "supported"
    assert statuses["delta_rank"] == "mixed"  # k90 ~40-58 is >= 10x r=1 and r=4 but not r=16
    rows_csv = (study_dir / "report" / "rows.csv").read_text().splitlines()
    assert len(rows_csv) == 31 and rows_csv[0].startswith("run,checkpoint,group,lr")


def test_report_is_deterministic(report):
    before = {p: p.read_bytes() for p in [report, *sorted((report.parent / "report").iterdir())]}
    assert write_report(report.parent) == report
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
    assert page.count("<img ") == len(FIGURES) - 1
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
    assert "epochs-4 (= final)" in write_report(tmp_path).read_text()


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


def test_cli_report(study_dir, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(study_dir), "--out", str(out)]) == 0
    assert out.exists() and (tmp_path / "cli" / "results.json").exists()
    assert "ftlab report:" in capsys.readouterr().out


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
    assert f"{len(FIGURES)} images" in done.stdout
    # the check can fail: a broken image, a missing section and a page wider than the screen
    broken = report.with_name("broken.html")
    broken.write_text('<html><body><header id="summary"></header><section id="claims"></section>'
                      '<figure id="fig-x"><img src="data:image/png;base64,AAAA"></figure>'
                      '<div style="width:3000px">wide</div></body></html>')
    done = subprocess.run([sys.executable, str(CHECK), str(broken)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    for fault in ("fig-x: the image did not decode", "section #runs is missing", "horizontal scrolling"):
        assert fault in done.stdout
