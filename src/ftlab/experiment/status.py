"""`ftlab status DIR`: what a study has done, is doing, has failed and has left, with the phase of each run and the
whole study's ETA; or, for one run directory (`ftlab train --out DIR`), that run's progress.

A study's runs, their status and the phase each is in come from its results store alone: the runner writes every
planned run there when the study starts, and each run's phase as it enters it (running: training, evaluating,
analysing). So status neither re-plans the study nor reads its experiment or its data (a study whose data is no
longer mounted is shown all the same), and it imports no torch. Beside the store it reads only the live progress of a
run in training: its plan.json and metrics.jsonl (step, tokens/s, ETA).
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.io import read_json
from ftlab.results.records import BASE, FINISHED, STARTED, RunRecord
from ftlab.results.store import Store
from ftlab.rundir import CheckpointFiles, RunLayout, StudyLayout, read_metrics, read_plan, run_checkpoints

PHASES = {"running": "training", "evaluating": "evaluating", "analysing": "analysing"}  # store status -> shown


def study_status(out: str | Path) -> list[dict]:
    """One row per run of the study (the base models last): run, status (left, waiting for the LR sweep, training,
    evaluating, analysing, interrupted, done, failed, base), phase (of a run the study works on, or was working on
    when it stopped), reason (of a failure), checkpoints (measured / planned), tokens_per_s; a run in training also
    step, eta and last_update_s."""
    study = _study(out)
    with Store(study.store) as store:
        runs, measured = store.runs(), store.checkpoint_counts()
    alive = _locked(study.lock)
    rows = []
    for name, r in runs.items():
        if name.startswith(BASE + "/"):
            continue
        status, phase = r.status, PHASES.get(r.status)
        if status == "waiting":
            status = "waiting for the LR sweep"
        elif phase is not None:
            status = phase if alive else "interrupted"
        row = {"run": name, "status": status, "phase": phase, "reason": r.reason,
               "checkpoints": f"{measured.get(name, 0)}/{_planned(r)}", "tokens_per_s": r.tokens_per_s}
        if r.status == "running":
            row.update(progress(study.run(name)))
        rows.append(row)
    rows += [{"run": name, "status": "base", "phase": None, "reason": None, "checkpoints": f"{measured.get(name, 0)}/1",
              "tokens_per_s": None} for name in runs if name.startswith(BASE + "/")]
    return rows


def study_eta(out: str | Path) -> str:
    """The whole study's ETA in words: the time per run finished since `ftlab run` last started on it, times the
    runs left, less what the run in hand has had; or why there is none."""
    study = _study(out)
    with Store(study.store) as store:
        runs = [r for name, r in store.runs().items() if not name.startswith(BASE + "/")]
        started = store.meta(STARTED)
    left = [r for r in runs if r.status not in FINISHED]
    if not left:
        return "finished"
    if not _locked(study.lock):
        return f"stopped: `ftlab run` with the study's experiment and --out {study.path} resumes it"
    since = float(started) if started is not None else float("inf")
    finished = sorted(r.updated for r in runs if r.status in FINISHED and r.updated is not None and r.updated >= since)
    if not finished:
        return "ETA when a run has finished (none has since the study started)"
    per_run = (finished[-1] - since) / len(finished)
    in_hand = time.time() - finished[-1]  # what the runs since the last finished one have had
    eta = per_run * (len(left) - 1) + max(per_run - in_hand, 0.0)
    return (f"ETA {_clock(eta)} ({len(left)} runs left; {len(finished)} finished since the study started, "
            f"{_clock(per_run)} each)")


def _study(out: str | Path) -> StudyLayout:
    study = StudyLayout(out)
    if not (study.store.exists() and study.experiment.exists()):
        raise FtlabError(f"{study.path}: not a study directory (no {study.store.name} and {study.experiment.name}) "
                         f"nor a run directory (no {RunLayout(out).config_yaml.name}); start a study with `ftlab run "
                         f"EXP.yaml --out {study.path}`")
    return study


def _planned(r: RunRecord) -> int:
    """The checkpoints a run of the study stands for: its train.checkpoints, then final/."""
    config = json.loads(r.config)
    return len(config.get("train", {}).get("checkpoints") or []) + 1


def _locked(lock: Path) -> bool:
    """Whether a process holds the lock (a study's runner, a run's training)."""
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _clock(seconds: float) -> str:
    """H:MM:SS (hours past 24 as they are)."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress(run_dir: Path) -> dict:
    """Step, tokens/s and ETA of a run in training, from its plan.json and metrics.jsonl (being written: a last line
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


# ----------------------------------------------------------------------------- one run


def run_status(run_dir: str | Path) -> dict:
    """One training run's state: status (training, interrupted, trained, not started), its progress in training
    (progress), its checkpoints in order with what evaluation and analysis wrote into each, what training cost."""
    run = RunLayout(run_dir)
    alive = _locked(run.lock)
    started = read_plan(run.path) is not None or run.metrics.exists()
    status = ("training" if alive else "trained" if run.final.is_dir() else "interrupted" if started
              else "not started")
    out = {"run": str(run.path), "status": status, "checkpoints": []}
    if status in ("training", "interrupted"):
        out.update(progress(run.path))
    for ckpt in run_checkpoints(run.path):
        files = CheckpointFiles(ckpt)
        done = [f.name for f in (files.eval, files.spectrum, files.kl, files.diversity) if f.exists()]
        out["checkpoints"].append({"name": ckpt.name, "artefacts": done})
    if run.cost.exists():
        out["wall_s"] = read_json(run.cost, "run cost").get("wall_s")
    return out


# ----------------------------------------------------------------------------- printing


def print_status(out: str | Path) -> int:
    if not StudyLayout(out).store.exists() and RunLayout(out).config_yaml.exists():
        return _print_run(out)
    rows = study_status(out)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"ftlab status: {Path(out)}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f" | {study_eta(out)}")
    width, status_width = max(len(r["run"]) for r in rows), max(len(r["status"]) for r in rows)
    for r in rows:
        extra = ""
        if r["status"] == "interrupted":
            extra = f" while {r['phase']}"
        if r.get("step"):
            extra += f" | step {r['step']}"
            if r.get("eta"):
                extra += f" | {r['tokens_per_s']:,.0f} tok/s | training ETA {r['eta']}"
        elif r.get("tokens_per_s"):
            extra += f" | {r['tokens_per_s']:,.0f} tok/s"
        reason = f" | {r['reason']}" if r.get("reason") else ""
        print(f"  {r['run']:<{width}}  {r['status']:<{status_width}}  checkpoints {r['checkpoints']}{extra}{reason}")
    return 0


def _print_run(out: str | Path) -> int:
    s = run_status(out)
    line = f"ftlab status: {Path(out)}: a training run, {s['status']}"
    if s.get("step"):
        line += f" | step {s['step']}"
        if s.get("eta"):
            line += (f" | {s['tokens_per_s']:,.0f} tok/s | ETA {s['eta']} | last update {s['last_update_s']} s "
                     "ago")
    if s.get("wall_s") is not None and s["status"] == "trained":
        line += f" | trained in {_clock(s['wall_s'])}"
    print(line)
    for c in s["checkpoints"]:
        print(f"  {c['name']:<20} " + (", ".join(c["artefacts"]) if c["artefacts"] else "not evaluated"))
    if not s["checkpoints"]:
        print("  no checkpoint yet")
    return 0
