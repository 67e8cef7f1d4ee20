"""`ftlab demo` (what `make demo` runs): the whole study on the embedded default, on a CPU with no network.

The shipped 2.2M-parameter base (builtin:base-tiny) is finetuned by full FT and LoRA r=1/4/16 in math IFT and
code CPT (`--full` adds code IFT and math CPT), at three durations each, plus full FT with weight decay and
with attention dropout; every checkpoint is evaluated on the learning and forgetting tasks, its ΔW spectrum and
KL(base || finetuned) measured, the math runs' sampled answers counted for diversity; the paper's claims are
checked and everything lands in <out>/report.html; it ends by printing the report's answer (report/summary.txt: what
to train within each forgetting budget, LoRA against full FT, cost, caveats). The experiment files are
src/ftlab/assets/demo.yaml and demo-full.yaml (also at configs/demo.yaml); `ftlab run` runs them the same way, and
both resume after a kill.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from ftlab.experiment.study import run_experiment
from ftlab.report.claims import check_claims
from ftlab.report.page import print_answer
from ftlab.report.select import lr_sweeps
from ftlab.results.index import study_of
from ftlab.results.study import Study
from ftlab.rundir import StudyLayout


def experiment_file(full: bool) -> Path:
    return Path(str(resources.files("ftlab") / "assets" / ("demo-full.yaml" if full else "demo.yaml")))


def run_demo(out: str, full: bool = False) -> Path:
    start = time.perf_counter()
    root = run_experiment(experiment_file(full), out)
    print_summary(root)
    print_answer(root)
    print(f"\nftlab demo: finished in {time.perf_counter() - start:,.0f} s; report: {StudyLayout(root).report.resolve()}")
    return root


def print_summary(root: Path) -> None:
    """Learning and forgetting per setting, method and duration (from the study's store), then the claims check."""
    study = study_of(root)
    rows = [r for r in study.points() if (r.learning is not None or r.source is not None) and r.grp != "lr-sweep"]
    rows.sort(key=lambda r: (r.setting, r.method != "full", r.rank or 0, r.weight_decay, r.attention_dropout,
                             r.duration or 0))
    print(f"\n{'setting':<28} {'method':<22} {'duration':>9} {'learning':>9} {'source':>7} {'forgetting':>10} "
          f"{'src loss':>8} {'k90':>6}")
    last = None
    for r in rows:
        if r.setting != last:
            base = study.base_of(r.setting)
            if base is not None:
                print(f"{r.setting:<28} {'base':<22} {'':>9} {_f(base.learning):>9} {_f(base.source):>7} {'':>10} "
                      f"{_f(base.source_loss):>8}")
            last = r.setting
        k90 = r.spectrum.k90_mean if r.spectrum is not None and r.spectrum.k90_mean is not None else None
        print(f"{r.setting:<28} {r.group:<22} {r.duration or 0:>9g} {_f(r.learning):>9} {_f(r.source):>7} "
              f"{_f(r.forgetting):>10} {_f(r.source_loss):>8} {_f(k90, 1):>6}")
    print_sweep(study)
    print("\nThe paper's findings on this run:")
    for claim in check_claims(study):
        print(f"  [{claim.status}] {claim.finding}\n      {claim.sentence}")


def print_sweep(study: Study) -> None:
    """Each LR sweep's learning per LR at the sweep's duration (report.select.lr_sweeps), its best LR marked: for the
    study's own lr_sweep, the LR the grid trains at."""
    sweeps = sorted(lr_sweeps(study.points()).values(),
                    key=lambda s: (s.setting, s.duration, s.first.method != "full", s.first.rank or 0))
    if sweeps:
        print("\nLR sweeps (learning at the sweep's duration; * the best: the LR the grid trains at):")
    for sweep in sweeps:
        mean = [sum(r.learning for r in rows) / len(rows) for rows in sweep.rows]
        cells = "  ".join(f"{lr:g} {m:.3f}{'*' if lr == sweep.best else ' '}" for lr, m in zip(sweep.lrs, mean))
        print(f"  {sweep.setting:<10} {sweep.duration:g} {sweep.group:<12} {cells}")


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
