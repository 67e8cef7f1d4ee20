"""The demo's experiment files: they plan, their learning rates come from a sweep the demo runs or from the paper's
practice (never a number tuned to make a finding come out), and configs/ links to the packaged files."""

from pathlib import Path

import pytest

from ftlab.demo import experiment_file
from ftlab.experiment.spec import load_experiment, plan_runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("full", [False, True])
def test_the_demo_plans_and_its_ift_lrs_come_from_its_own_sweep(full, tmp_path):
    exp = load_experiment(experiment_file(full))
    plans = plan_runs(exp, tmp_path)
    swept = {p.setting for p in plans if p.group == "lr-sweep"}
    assert "math-ift" in swept
    for p in plans:
        if p.group != "lr-sweep" and p.setting in swept:
            assert p.waits_for_sweep, f"{p.name}: trains at a fixed LR though its setting sweeps"
    sweep_lrs = {(p.method, p.cfg.train.lr) for p in plans if p.group == "lr-sweep"}
    assert {lr for m, lr in sweep_lrs if m == "full"} == set(exp.lr_sweep.full)
    assert {lr for m, lr in sweep_lrs if m != "full"} == set(exp.lr_sweep.lora)
    if not full:  # code CPT by the paper's practice: one LR for full FT and LoRA
        cpt = {p.cfg.train.lr for p in plans if p.setting == "code-cpt"}
        assert len(cpt) == 1


@pytest.mark.parametrize("name", ["demo.yaml", "demo-full.yaml"])
def test_configs_holds_links_to_the_packaged_demo_files(name):
    link = ROOT / "configs" / name
    assert link.is_symlink() and link.resolve() == (ROOT / "src" / "ftlab" / "assets" / name).resolve()
