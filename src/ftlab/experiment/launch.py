"""Training one run of a study: where it starts (a CPT branch takes its long run's kept state), on how many
processes, and which errors fail that run alone (recorded with a reason while the others go on).

The local runner (study.py) calls `train_plan` for each run in turn; the Ray backend (ray_backend.py) calls it in a
worker. Neither imports the other.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ftlab import train as training
from ftlab.config import dump_yaml
from ftlab.distributed import check_supported, launch_command
from ftlab.errors import FtlabError, TrainingError
from ftlab.experiment.spec import RunPlan, run_path
from ftlab.io import write_text
from ftlab.rundir import RunLayout
from ftlab.state import branch_state

# What training raises for a run that failed on its own (recorded with its reason; the other runs go on).
# RuntimeError: CUDA out of memory and the like.
RUN_ERRORS = (TrainingError, FtlabError, RuntimeError)


def failure_reason(e: BaseException) -> str:
    """The one line the store keeps for a failed run."""
    return f"{type(e).__name__}: {e}".splitlines()[0][:500]


def train_plan(plan: RunPlan, root: Path, nproc: int = 1) -> None:
    """Train one run of the study in `root` (a CPT branch first takes its long run's kept state); resumes a killed
    run. nproc > 1: the run trains sharded over that many processes (FSDP under torchrun), in child processes."""
    if plan.branch_of is not None:
        kept = RunLayout(run_path(root, plan.branch_of)).kept_state(plan.branch_step)
        if not kept.exists():
            raise FtlabError(f"{kept}: the state {plan.name} restarts from is missing")
        branch_state(kept, RunLayout(plan.cfg.output.dir).state)
    if nproc > 1:
        train_processes(plan, nproc)
    else:
        training.train(plan.cfg)


def train_processes(plan: RunPlan, nproc: int) -> None:
    """`ftlab train <run>/launch.yaml --out <run>` under torchrun with nproc processes on this machine."""
    check_supported(plan.cfg)
    run = RunLayout(plan.cfg.output.dir)
    run.path.mkdir(parents=True, exist_ok=True)
    write_text(run.launch, dump_yaml(plan.cfg))
    code = subprocess.call(launch_command(nproc, str(run.launch), [], str(run.path)))
    if code != 0:
        raise TrainingError(f"training on {nproc} processes exited with status {code} (its messages are above)")
