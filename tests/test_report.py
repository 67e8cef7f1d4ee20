"""`ftlab report` on a hand-written study directory: no training, only the files runs and evaluations write.

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

from ftlab.analysis.claims import CHECKS  # noqa: E402
from ftlab.analysis.plots import FIGURES  # noqa: E402
from ftlab.analysis.collect import collect  # noqa: E402
from ftlab.analysis.results import Study  # noqa: E402
from ftlab.cli import main  # noqa: E402
from ftlab.errors import FtlabError  # noqa: E402
from ftlab.report import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_report.py"
FORGETTING = [("source_continuation", "acc_norm"), ("source_question", "acc_norm"), ("source_cloze", "acc")]
BASE_LEARNING, BASE_FORGETTING = 0.05, 0.60
DURATIONS = {"epochs-1": 1.0, "epochs-2": 2.0, "final": 4.0}
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _eval(learning: float, forgetting: float) -> dict:
    scores = [{"task": "math", "version": "1", "metric": "exact_match_strict", "value": learning, "n": 100,
               "stderr": 0.01, "extra": {}}]
    scores += [{"task": t, "version": "1", "metric": m, "value": forgetting, "n": 100, "stderr": 0.01, "extra": {}}
               for t, m in FORGETTING]
    return {"scores": scores, "forgetting": {"tasks": sorted(t for t, _ in FORGETTING), "value": forgetting,
                                             "base": BASE_FORGETTING, "drop": BASE_FORGETTING - forgetting}}


def _diversity(unique: float, p1: float) -> dict:
    return {"task": "math", "n": 10, "problems": 20, "unique_mean": unique, "unique_pass_mean": unique * 0.4,
            "unique_fail_mean": unique * 0.6,
            "pass_at_k": {str(k): 1 - (1 - p1) ** k for k in range(1, 11)}, "per_problem": []}


def _spectrum(names: list[str], k90: float, with_values: bool) -> dict:
    entries = []
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
        entries.append({"path": f"x/{name}", "name": name, "step": 1, "tokens": 1, "matrices": matrices,
                        "summary": {"k90_mean": k90, "k90_frac_mean": k90 / 64, "rel_change_mean": 0.1,
                                    "intruders_total": 0}})
        k90 *= 1.2  # grows with training
    return {"version": 1, "base": "base", "settings": {}, "checkpoints": entries}


def make_run(root: Path, name: str, method: str, lr: float, rank: int = 16, wd: float = 0.0, drop: float = 0.0,
             skill: float = 1.0, gentleness: float = 0.0, extras: bool = False) -> Path:
    """A finished, evaluated run: learning = 0.3·skill·(1 + log2 d)/3 ..., forgetting falls with duration,
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
    (run / "base_eval" / "eval.json").write_text(json.dumps(_eval(BASE_LEARNING, BASE_FORGETTING)))
    (run / "base_eval" / "diversity.json").write_text(json.dumps(_diversity(8.0, 0.05)))
    for ckpt, d in DURATIONS.items():
        path = run / ("checkpoints/" + ckpt if ckpt != "final" else "final")
        path.mkdir(parents=True)
        learning = 0.2 * skill * (1 + math.log2(d))
        forgetting = BASE_FORGETTING - 0.04 * (1 - gentleness) * (1 + math.log2(d))
        (path / "ftlab.json").write_text(json.dumps({"step": int(10 * d), "tokens": int(1000 * d), "epoch": d,
                                                     "method": method, "base": "base"}))
        (path / "eval.json").write_text(json.dumps(_eval(learning, forgetting)))
        if extras:
            (path / "kl.json").write_text(json.dumps({"kl": 0.5 * (BASE_FORGETTING - forgetting) + 0.01 * d,
                                                      "tokens": 500}))
            unique = 3.0 if method == "full" else 3.0 + 4.0 * gentleness
            (path / "diversity.json").write_text(json.dumps(_diversity(unique, min(learning, 0.9))))
    if method == "full":
        (run / "spectrum.json").write_text(json.dumps(_spectrum(list(DURATIONS), 40.0, with_values=True)))
    else:
        (run / "final" / "spectrum.json").write_text(json.dumps(_spectrum(["final"], rank * 0.8, False)))
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


def test_collect_finds_every_run_and_maps_the_config(study_dir):
    study = collect(study_dir)
    assert len({r.run for r in study.rows}) == 10 and len(study.rows) == 30
    assert len(study.bases) == 10 and study.bases[0].learning == pytest.approx(BASE_LEARNING)
    r4 = next(r for r in study.rows if r.run == "lora/r4-lr1e-2" and r.checkpoint == "epochs-2")
    assert (r4.method, r4.rank, r4.alpha, r4.targets, r4.lr, r4.regime) == ("lora", 4, 8.0, "all", 1e-2, "ift")
    assert (r4.duration, r4.duration_unit, r4.step, r4.tokens) == (2.0, "epochs", 20, 2000)
    assert r4.learning == pytest.approx(0.2 * 0.75 * 2) and r4.learning_tasks == ["math"]
    assert r4.forgetting_drop == pytest.approx(BASE_FORGETTING - r4.forgetting)
    assert r4.base_learning == pytest.approx(BASE_LEARNING) and r4.base_forgetting == BASE_FORGETTING
    assert r4.diversity is not None and r4.diversity.pass_at_k[10] > r4.diversity.pass_at_k[1]
    assert r4.spectrum is None and r4.kl is not None  # LoRA spectra only in final/
    wd = next(r for r in study.rows if r.run == "full-wd/lr1e-3")
    drop = next(r for r in study.rows if r.run == "full-drop/lr1e-3")
    assert (wd.weight_decay, wd.group, drop.attention_dropout, drop.group) == (
        1e-4, "full FT wd=0.0001", 0.1, "full FT attn-drop=0.1")
    full_final = next(r for r in study.rows if r.run == "full/lr1e-3" and r.checkpoint == "final")
    assert full_final.spectrum.k90_mean == pytest.approx(40 * 1.2 ** 2)  # matched by name in <run>/spectrum.json
    assert len(full_final.spectrum.matrices) == 21 and full_final.spectrum.matrices[0].singular_values
    assert not any("no eval.json" in m for m in study.missing)
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study  # a store can rebuild it


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
    study = collect(partial)
    assert f"lora/r4-lr1e-2/checkpoints/epochs-2: no eval.json (`ftlab eval {partial}/lora/r4-lr1e-2`)" in study.missing
    assert "no checkpoint has kl.json" in study.missing
    page = write_report(partial).read_text()
    assert page.count("<img ") == len(FIGURES) - 1
    assert '<li id="skipped-kl_forgetting">' in page and "not enough data" in page
    assert "r4-lr1e-2/checkpoints/epochs-2: no eval.json" in page
    assert not (partial / "report" / "kl_forgetting.csv").exists()


def test_duplicate_final_and_unreadable_config(tmp_path):
    run = make_run(tmp_path, "full", "full", 1e-3)
    shutil.copytree(run / "final", run / "checkpoints" / "epochs-4")  # checkpoints: [1, 2, 4] also saves epochs-4
    (run / "checkpoints" / "epochs-4" / "eval.json").unlink()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("method: {name: lora, rnak: 4}\n")
    (tmp_path / "broken" / "final").mkdir()
    study = collect(tmp_path)
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
        collect(tmp_path / "empty")
    with pytest.raises(FtlabError, match="not a directory"):
        collect(tmp_path / "nope")
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
