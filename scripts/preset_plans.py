"""The paper's presets planned at the paper's data sizes: the README's table of runs, tokens, GPU-hours and the
largest peak memory per GPU, on the GPUs each preset states.

    python scripts/preset_plans.py

ftlab.plan as `ftlab plan` runs it (the model: Llama-2-7B's config.json from tests/data/models), except that the
data sets are not read (tens of GB): their sizes are the paper's (/PAPER.md, DATA below); packed IFT sequences
are taken to be 95% full. Runs the study copies rather than trains (an LR sweep's run at the grid's LR) cost
nothing; a CPT budget's branch trains its cooldown only.
"""

from __future__ import annotations

from pathlib import Path

from ftlab.architectures import structure
from ftlab.experiment.spec import load_experiment
from ftlab.plan.inputs import DataSize
from ftlab.plan.memory import GIB
from ftlab.plan.study import plan_row, study_runs, target_for

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "data" / "models" / "llama-2-7b"
DATA = {  # hub id -> (examples, tokens per epoch), from the paper; CPT durations are token budgets
    "ise-uiuc/Magicoder-Evol-Instruct-110K": (110_000, 72.97e6),
    "meta-math/MetaMathQA": (395_000, 103e6),
    "bigcode/starcoderdata": (None, None),
    "open-web-math/open-web-math": (None, None),
}
FILL = 0.95  # packed IFT sequences: the share of seq_len filled


def size_of(cfg) -> DataSize:
    examples, tokens = DATA[cfg.data.path.removeprefix("hub:")]
    if examples is None:
        return DataSize(0, 0, False, known=False)  # CPT: the budget is in tokens; the data's size is not needed
    per_sequence = FILL * cfg.data.seq_len / (tokens / examples) if cfg.data.packing else 1.0
    return DataSize(examples - cfg.data.eval_max_examples, tokens, False, per_sequence, how="the paper's size")


def main() -> None:
    print("| preset | runs | tokens trained | GPU-hours (H100, MFU 35% assumed) | largest peak per GPU |")
    print("|---|---|---|---|---|")
    for preset in sorted((ROOT / "configs" / "paper").glob("*.yaml")):
        exp = load_experiment(preset, [f"model.name={MODEL}"])
        target = target_for(exp, None, None)  # the GPUs the preset states
        runs = study_runs(exp, "x")
        model = structure(runs[0].cfg.model)
        rows = [plan_row(run, model, size_of(run.cfg), target) for run in runs]
        assert all(r.fit.fits for r in rows), preset
        tokens = sum(r.trained_tokens for r in rows)
        hours = sum(r.hours for r in rows)
        peak = max(r.fit.memory.peak for r in rows) / GIB
        print(f"| {preset.stem} | {len(rows)} | {tokens / 1e9:.1f}B | {hours:,.0f} | {peak:.1f} GiB on "
              f"{target.processes} x {target.gpu.name} |")


if __name__ == "__main__":
    main()
