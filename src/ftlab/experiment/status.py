"""`ftlab status DIR`: what a study has done, is doing, has failed and has left, with speed and ETA."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

from ftlab.config import parse_mapping
from ftlab.errors import FtlabError
from ftlab.experiment.spec import parse_experiment, plan_runs
from ftlab.experiment.study import EXPERIMENT, LOCK, RESULTS, saved_experiment, sweep_picks
from ftlab.results.records import BASE
from ftlab.results.store import Store
from ftlab.rundir import RunLayout, read_metrics, read_plan


def study_status(out: str | Path) -> list[dict]:
    root = Path(out)
    saved = root / EXPERIMENT
    if not (root / RESULTS).exists() or not saved.exists():
        raise FtlabError(f"{root}: not a study directory (no {RESULTS} / {EXPERIMENT}); start one with "
                         f"`ftlab run EXP.yaml --out {root}`")
    record = saved_experiment(root)
    source = Path(record["source"])  # relative data paths resolve beside the file that was run
    exp = parse_experiment(parse_mapping(record["text"], source), record.get("overrides", []), source.parent, source)
    with Store(root / RESULTS) as store:
        plans = plan_runs(exp, root)
        if any(p.waits_for_sweep for p in plans):  # the runs at the LR sweep's pick, where it is known
            plans = plan_runs(exp, root, sweep_picks(store, plans))
        runs, evaluated = store.runs(), store.checkpoint_counts()
    alive = _runner_alive(root)
    rows = []
    for plan in plans:
        r = runs.get(plan.name, {})
        status = r.get("status", "waiting for the LR sweep" if plan.waits_for_sweep else "left")
        if status == "running" and not alive:
            status = "interrupted"
        row = {"run": plan.name, "status": status, "reason": r.get("reason"), "checkpoints":
               f"{evaluated.get(plan.name, 0)}/{len(plan.durations)}", "tokens_per_s": r.get("tokens_per_s")}
        if status in ("running", "interrupted"):
            row.update(_progress(Path(plan.cfg.output.dir)))
        rows.append(row)
    rows += [{"run": name, "status": "base", "reason": None, "checkpoints": f"{evaluated.get(name, 0)}/1",
              "tokens_per_s": None} for name in runs if name.startswith(BASE)]
    return rows


def _runner_alive(root: Path) -> bool:
    with open(root / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _progress(run_dir: Path) -> dict:
    """Step, tokens/s and ETA of a run in progress, from its plan.json and metrics.jsonl (being written: a last line
    cut short is read as not there yet)."""
    plan, metrics = read_plan(run_dir), RunLayout(run_dir).metrics
    if plan is None or not metrics.exists():
        return {"step": "starting"}
    total = plan["total_steps"]
    last = next((x for x in reversed(read_metrics(run_dir)) if "tokens_per_s" in x), None)
    if last is None:
        return {"step": f"0/{total}"}
    eta = (total - last["step"]) * plan["tokens_per_step"] / max(last["tokens_per_s"], 1e-9)
    age = time.time() - metrics.stat().st_mtime
    return {"step": f"{last['step']}/{total}", "tokens_per_s": last["tokens_per_s"],
            "eta": time.strftime("%H:%M:%S", time.gmtime(eta)), "last_update_s": round(age)}


def print_status(out: str | Path) -> int:
    rows = study_status(out)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"ftlab status: {Path(out)}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    width = max(len(r["run"]) for r in rows)
    for r in rows:
        extra = ""
        if r.get("step"):
            extra = f" step {r['step']}"
            if r.get("eta"):
                extra += f" | {r['tokens_per_s']:,.0f} tok/s | ETA {r['eta']}"
        elif r.get("tokens_per_s"):
            extra = f" | {r['tokens_per_s']:,.0f} tok/s"
        reason = f" | {r['reason']}" if r.get("reason") else ""
        print(f"  {r['run']:<{width}}  {r['status']:<11} checkpoints {r['checkpoints']}{extra}{reason}")
    return 0
