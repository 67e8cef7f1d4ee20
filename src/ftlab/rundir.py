"""The run directory: what one training run writes, and the one place that knows where each part of it is.

    runs/x/
      config.yaml, config.json        the resolved config (YAML to read, JSON for programs)
      .lock                           held by the process that trains the run
      metrics.jsonl                   one line per logged step (appended while training)
      plan.json                       {total_steps, tokens_per_step}, once the run knows them
      run.json                        what training cost: wall_s (summed over resumes), peak_memory_gb, device, params
      base/                           the base model of model.name=tiny, built once
      data/<kind>-<split>.jsonl       data.path=builtin:<kind>, materialised
      pissa-init/                     PiSSA's starting adapter (method.init=pissa)
      checkpoints/epochs-2/, checkpoints/tokens-250000/    the train.checkpoints, named <unit>-<value>
      final/                          the final model (full FT) or adapter (LoRA)
      state/, kept/                   the resumable state (ftlab.state); kept/: states other runs restart from
      base_eval/                      the base model's evaluation beside the run (ftlab run)
      failure.txt, launch.yaml        why training failed; the config a torchrun launch reads (ftlab run)

A checkpoint (final/ or one under checkpoints/) is a Hugging Face model directory or a PEFT adapter directory, plus
ftlab.json {step, tokens, epoch, method, base}. A folder is a run when it holds config.yaml and final/ or
checkpoints/. Everything that reads or writes a run asks here: training (RunDir: the lock, the config check, the
metrics log), evaluation and analysis (the ordered checkpoints, the base of a checkpoint), the study and its status.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import yaml

from ftlab.config import RunConfig, TrainConfig, dump_yaml, from_dict, to_dict
from ftlab.errors import ConfigError, FtlabError
from ftlab.io import TMP_SUFFIX, read_json, write_json, write_text

INFO = "ftlab.json"  # in every checkpoint: where in the run it was saved, and its base
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: a checkpoint holding it is an adapter


class RunLayout:
    """Where each part of the run at `path` lives (paths only: nothing is read or written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_yaml = self.path / "config.yaml"
        self.config_json = self.path / "config.json"
        self.lock = self.path / ".lock"
        self.metrics = self.path / "metrics.jsonl"
        self.plan = self.path / "plan.json"
        self.cost = self.path / "run.json"
        self.base = self.path / "base"
        self.data = self.path / "data"
        self.pissa_init = self.path / "pissa-init"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"
        self.state = self.path / "state"
        self.kept = self.path / "kept"
        self.base_eval = self.path / "base_eval"
        self.failure = self.path / "failure.txt"
        self.launch = self.path / "launch.yaml"

    def checkpoint(self, unit: str, value: float) -> Path:
        """checkpoints/<unit>-<value>: the checkpoint saved when the run reached `value` (epochs or tokens)."""
        return self.checkpoints / duration_name(unit, value)

    def builtin_data(self, kind: str, split: str) -> Path:
        return self.data / f"{kind}-{split}.jsonl"

    def kept_state(self, step: int) -> Path:
        """The state kept after optimizer step `step` (train.keep_states), which another run restarts from."""
        return self.kept / state_name(step)


STATE_PREFIX = "step-"


def state_name(step: int) -> str:
    """The folder of the resumable state saved after optimizer step `step` (under state/ and kept/)."""
    return f"{STATE_PREFIX}{step:08d}"


# ----------------------------------------------------------------------------- checkpoints


def duration_name(unit: str, value: float) -> str:
    """epochs-2, tokens-250000: a duration as a folder name (a checkpoint's under checkpoints/; in a study, the run
    that trains for it)."""
    return f"{unit}-{value:g}"


def checkpoint_duration(train: TrainConfig, name: str, info: dict) -> float | None:
    """The duration, in train.unit, that a checkpoint of a run trained with `train` stands for: from its name
    (epochs-2), the run's own duration for final/, else what its ftlab.json `info` measured (epoch or tokens)."""
    prefix = f"{train.unit}-"
    if name.startswith(prefix):
        try:
            return float(name.removeprefix(prefix))
        except ValueError:
            pass
    if name == "final":
        return float(train.duration)
    value = info.get("epoch" if train.unit == "epochs" else "tokens")
    return float(value) if isinstance(value, (int, float)) else None


def is_run(path: str | Path) -> bool:
    """A run directory: config.yaml, and final/ or checkpoints/."""
    run = RunLayout(path)
    return run.config_yaml.is_file() and (run.final.is_dir() or run.checkpoints.is_dir())


def find_runs(root: str | Path) -> list[Path]:
    """Run directories below root, sorted (a run's own subfolders are not searched, nor hidden or temporary ones)."""
    found = []
    for here, dirs, _ in os.walk(root):
        if is_run(here):
            found.append(Path(here))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(TMP_SUFFIX))
    return sorted(found)


def run_checkpoints(path: str | Path) -> list[Path]:
    """A run's finished checkpoints in training order: those under checkpoints/ by step (their ftlab.json), then
    final/. A checkpoint being written (its temporary name) is not one yet."""
    run = RunLayout(path)
    named = [c for c in run.checkpoints.glob("*") if c.is_dir() and not c.name.endswith(TMP_SUFFIX)]
    named.sort(key=lambda c: (_step(c), c.name))
    return named + ([run.final] if run.final.is_dir() else [])


def _step(checkpoint: Path) -> float:
    """A checkpoint's step, for ordering; without a readable ftlab.json it sorts last (whoever reads the file for
    its numbers reports the damage: read_info)."""
    try:
        return read_info(checkpoint).get("step", float("inf"))
    except FtlabError:
        return float("inf")


def is_adapter(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / ADAPTER_CONFIG).exists()


def read_info(checkpoint: str | Path) -> dict:
    """A checkpoint's ftlab.json ({} when it has none: a model or adapter that ftlab did not train)."""
    path = Path(checkpoint) / INFO
    return read_json(path, "checkpoint info") if path.exists() else {}


def base_of(checkpoint: str | Path) -> str | None:
    """The base model a checkpoint was tuned from: its adapter_config.json's base_model_name_or_path (an adapter),
    else its ftlab.json's "base" (any checkpoint of an ftlab run); None when neither names one."""
    if is_adapter(checkpoint):
        base = read_json(Path(checkpoint) / ADAPTER_CONFIG, "adapter config").get("base_model_name_or_path")
        if base:
            return base
    return read_info(checkpoint).get("base")


# ----------------------------------------------------------------------------- metrics and plan


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order ([] before it exists). The log is appended to while the run
    trains, so a last line cut short (by a kill, or read mid-write) is left out; a damaged line before it is an
    FtlabError naming FILE:LINE."""
    metrics = RunLayout(path).metrics
    if not metrics.exists():
        return []
    lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):
                break
            raise FtlabError(f"{metrics}:{i}: a damaged metrics line ({e.msg} at column {e.colno})") from None
    return records


def read_plan(path: str | Path) -> dict | None:
    """The run's plan.json ({total_steps, tokens_per_step}), or None before training has planned the run."""
    plan = RunLayout(path).plan
    return read_json(plan, "run plan") if plan.exists() else None


class RunDir(RunLayout):
    """The run directory as its training process holds it: locked, its config checked and written, its metrics log.

    Only the main process (rank 0) locks and writes it; the others read it and log nothing."""

    def __init__(self, cfg: RunConfig, main: bool = True):
        super().__init__(cfg.output.dir)
        self.main = main
        self._lock = None
        if not main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.lock, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FtlabError(f"{self.path} is in use by another ftlab process; wait for it or choose another "
                             "--out") from None
        try:
            self._check_config(cfg)
        except BaseException:
            self._lock.close()
            raise

    def _check_config(self, cfg: RunConfig) -> None:
        if self.config_yaml.exists():
            old = to_dict(from_dict(RunConfig, yaml.safe_load(self.config_yaml.read_text())))
            new = to_dict(cfg)
            old["output"]["dir"] = new["output"]["dir"]  # the same run may be reached by another path
            if old != new:
                key = _first_difference(old, new)
                raise ConfigError(f"{self.path} holds a run with a different config ({key}: "
                                  f"{_lookup(old, key)!r} there, {_lookup(new, key)!r} now); use another --out")
        write_json(self.config_json, to_dict(cfg))  # machine-readable twin
        write_text(self.config_yaml, dump_yaml(cfg))

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock

    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log records after `step` (written before a kill, redone after the resume)."""
        if not self.main or not self.metrics.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", step + 1) <= step]
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def write_plan(self, total_steps: int, tokens_per_step: float) -> None:
        if self.main:
            write_json(self.plan, {"total_steps": total_steps, "tokens_per_step": tokens_per_step})


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if va != vb:
            if isinstance(va, dict) and isinstance(vb, dict):
                return _first_difference(va, vb, f"{prefix}{key}.")
            return f"{prefix}{key}"
    return prefix.rstrip(".")


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
