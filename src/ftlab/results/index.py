"""Run directories -> the results store: the one code path from artefacts to numbers.

    result = measure_checkpoint("runs/math-ift/full/epochs-1", ckpt_dir, duration=1.0)
    store.put_checkpoint(result)                 # what the study runner does after evaluating a checkpoint
    index_folder("studies/plain")                # what `ftlab report` does on a folder of ftlab train/eval runs

A checkpoint's artefacts, all optional: ftlab.json (step, tokens), eval.json (each task's scores, as `ftlab eval`
wrote them), eval_samples/<task>.jsonl (per-example records: the examples table, and the diversity of sampled
tasks), spectrum.json (ΔW per matrix), kl.json (KL to the base). The store gets exactly what the files hold, so
what lands does not depend on the order things were done in, or on an interruption.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.io import damaged_files, read_json, read_jsonl
from ftlab.results.records import EXPERIMENT, STORE, base_run

TOKEN_WEIGHTED = ("loss", "token_accuracy")  # perplexity tasks: per-document means weighted by tokens
DERIVED = ("perplexity",)  # exp(loss): not a mean of per-document values, so not stored per document


@dataclass
class CheckpointResult:
    """Every number measured on one checkpoint, ready for Store.put_checkpoint."""

    run: str
    name: str
    path: str
    duration: float
    step: int | None = None
    tokens: int | None = None
    epoch: float | None = None
    tasks: list[tuple] = field(default_factory=list)  # (task, version, kind, role, metric)
    metrics: list[tuple] = field(default_factory=list)  # (task, version, metric, value, n, stderr)
    examples: list[tuple] = field(default_factory=list)  # (task, metric, doc, value, weight)
    spectra: list[tuple] = field(default_factory=list)  # schema.SPECTRUM_COLUMNS after (run, checkpoint)
    analyses: dict[str, dict] = field(default_factory=dict)  # kind -> value


def measure_checkpoint(run: str, directory: Path, duration: float, name: str | None = None) -> CheckpointResult:
    """Everything the artefacts of one checkpoint (or a base model's evaluation directory) hold."""
    directory = Path(directory)
    info = read_json(directory / "ftlab.json", "checkpoint info") if (directory / "ftlab.json").exists() else {}
    result = CheckpointResult(run, name or directory.name, str(directory), duration, info.get("step"),
                              info.get("tokens"), info.get("epoch"))
    if (directory / "eval.json").exists():
        _evaluation(result, directory)
    if (directory / "spectrum.json").exists():
        _spectrum(result, read_json(directory / "spectrum.json", "spectrum"), directory)
    if (directory / "kl.json").exists():
        result.analyses["kl"] = read_json(directory / "kl.json", "KL measurement")
    return result


def _evaluation(result: CheckpointResult, directory: Path) -> None:
    from ftlab.evaluate.tasks import REGISTRY

    doc = read_json(directory / "eval.json", "evaluation")
    versions = {}
    for s in doc.get("scores", []):
        result.metrics.append((s["task"], s["version"], s["metric"], s["value"], s.get("n"), s.get("stderr")))
        versions[s["task"]] = s["version"]
    for task, version in sorted(versions.items()):
        spec = REGISTRY.get(task)
        if spec is None:  # lm_eval:<task>, or a task this ftlab no longer has: its numbers, no role
            first = next(m for t, _, m, *_ in result.metrics if t == task)
            result.tasks.append((task, version, "lm_eval" if ":" in task else "unknown", "other", first))
            continue
        result.tasks.append((task, version, spec.kind, spec.role, spec.metric))
        samples = directory / "eval_samples" / f"{task}.jsonl"
        if samples.exists():
            fix = f"delete {directory / 'eval.json'} and run `ftlab eval` on {directory} again (it rewrites both)"
            recorded = doc.get("samples", {}).get(task)  # its size and sha256 (none in an older eval.json)
            damaged = damaged_files(directory, {f"eval_samples/{task}.jsonl": recorded}) if recorded else []
            if damaged:
                raise FtlabError(f"{damaged[0]}: the file is damaged; {fix}")
            records = [r for _, r in read_jsonl(samples, fix=fix)]
            result.examples += _examples(task, spec.kind, records)
            if spec.samples > 1:
                from ftlab.analysis.diversity import diversity

                result.analyses[f"diversity:{task}"] = diversity(records, task, [f"{samples}:{i + 1}" for i in
                                                                                 range(len(records))])


def _examples(task: str, kind: str, records: list[dict]) -> list[tuple]:
    """(task, metric, doc, value, weight) per document: a sampled task's records are per sample and carry their
    problem's pass@k, so the first record of each problem stands for it."""
    out, seen = [], set()
    for r in records:
        doc = str(r["id"])
        if doc in seen:
            continue
        seen.add(doc)
        for metric, value in r["metrics"].items():
            if metric in DERIVED and kind == "perplexity":
                continue
            weight = float(r["tokens"]) if kind == "perplexity" and metric in TOKEN_WEIGHTED else 1.0
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            out.append((task, metric, doc, float(value), weight))
    return out


def _spectrum(result: CheckpointResult, doc: dict, directory: Path) -> None:
    entries = doc.get("checkpoints", [])
    if len(entries) != 1:
        raise FtlabError(f"{directory / 'spectrum.json'}: expected the spectrum of one checkpoint, found "
                         f"{len(entries)}; run `ftlab spectrum` on the run again")
    for m in entries[0]["matrices"]:
        d = m["delta"]
        result.spectra.append((m["name"], m.get("layer"), m.get("module"), m["shape"][0], m["shape"][1], d.get("k50"),
                               d["k90"], d.get("k99"), d["k90_frac"], m.get("rel_change"), m.get("intruders"),
                               d.get("stable_rank"), d.get("effective_rank"), d.get("fro"),
                               (m.get("base") or {}).get("k90"), (m.get("finetuned") or {}).get("k90"),
                               (m.get("gaussian") or {}).get("k90"), m.get("lora_rank"),
                               json.dumps(m["singular_values"]) if m.get("singular_values") else None))


def measure_base(setting: str, directory: Path) -> CheckpointResult:
    """A setting's base model, evaluated in `directory`: the store's "(base)/<setting>" run, checkpoint "base"."""
    return measure_checkpoint(base_run(setting), directory, 0.0, name="base")


# ----------------------------------------------------------------------------- runs


def run_record(name: str, setting: str, group: str, label: str, cfg, status: str, reason: str | None = None) -> dict:
    """A run's row for Store.put_run: its place in the study and its configuration (cfg: the resolved RunConfig)."""
    from ftlab.config import to_dict
    from ftlab.methods import lora_variant

    m, t = cfg.method, cfg.train
    lora = m.name == "lora"
    return {"name": name, "setting": setting, "grp": group, "label": label, "method": m.name,
            "regime": cfg.data.regime, "rank": m.rank if lora else None, "alpha": cfg.lora_alpha() if lora else None,
            "targets": (m.targets if isinstance(m.targets, str) else ",".join(m.targets)) if lora else "",
            "variant": " ".join(lora_variant(m)), "lr": t.lr, "weight_decay": t.weight_decay,
            "attention_dropout": cfg.model.attention_dropout, "optimizer": t.optimizer, "seed": t.seed,
            "duration_unit": t.unit, "config": json.dumps(to_dict(cfg), sort_keys=True), "status": status,
            "reason": reason}


def base_record(setting: str) -> dict:
    """The pseudo-run holding a setting's base model."""
    return {"name": base_run(setting), "setting": setting, "grp": "base", "label": "base", "method": "base",
            "regime": "", "config": "{}", "status": "done"}


def run_cost(run_dir: Path) -> dict:
    """What training the run cost: run.json (written by training: wall time, peak memory, device, parameters) and
    the mean tokens/s of its logged steps."""
    from ftlab.rundir import RunLayout, read_metrics

    layout = RunLayout(run_dir)
    cost = read_json(layout.cost, "run cost") if layout.cost.exists() else {}
    speeds = [r["tokens_per_s"] for r in read_metrics(run_dir) if r.get("tokens_per_s")]
    if speeds:
        cost["tokens_per_s"] = round(sum(speeds) / len(speeds), 1)
    return cost


def index_training(store, run: str, run_dir: Path) -> None:
    """What training a run wrote beside its checkpoints: its cost (run.json, tokens/s) and its curve (metrics log)."""
    from ftlab.rundir import read_metrics

    store.put_cost(run, run_cost(run_dir))
    store.put_curve(run, read_metrics(run_dir))


def setting_of(cfg) -> str:
    """A plain run's setting: "ift: math-ift @ base-tiny": the regime, the data (built-in kind, hub id, or a file's
    last two path parts without suffix) and the base model's last path part. Runs compare within one setting."""
    from ftlab.builtin import BUILTIN_PREFIX
    from ftlab.config import HUB_PREFIX

    data = cfg.data.path
    if data.startswith(BUILTIN_PREFIX):
        data = data.removeprefix(BUILTIN_PREFIX)
    elif data.startswith(HUB_PREFIX):
        data = data.removeprefix(HUB_PREFIX)
    else:
        data = "/".join(Path(data.rstrip("/")).with_suffix("").parts[-2:])
    model = cfg.model.name.removeprefix(BUILTIN_PREFIX).rstrip("/").split("/")[-1]
    return f"{cfg.data.regime}: {data} @ {model}"


def index_run(store, root: Path, run_dir: Path) -> None:
    """A run directory made by `ftlab train` (and evaluated by `ftlab eval`) into the store: its row, each
    checkpoint's numbers, its base model's (<run>/base_eval) as the setting's base."""
    from ftlab.errors import ConfigError
    from ftlab.methods import method_label
    from ftlab.rundir import RunLayout, checkpoint_duration, read_info, run_checkpoints, saved_config

    name = run_dir.relative_to(root).as_posix() if run_dir != root else "."
    layout = RunLayout(run_dir)
    try:
        cfg = saved_config(run_dir)  # config.yaml, or its twin config.json when it is damaged
    except (ConfigError, OSError) as e:
        store.put_note(name, f"config.yaml unreadable ({e}); run skipped")
        return
    setting = setting_of(cfg)
    store.put_run(run_record(name, setting, "run", method_label(cfg.method), cfg, "done"))
    index_training(store, name, run_dir)
    for ckpt in run_checkpoints(run_dir):
        duration = checkpoint_duration(cfg.train, ckpt.name, read_info(ckpt))
        if duration is None:
            store.put_note(f"{name}/{ckpt.name}", "its duration is unknown (no ftlab.json); not indexed")
            continue
        store.put_checkpoint(measure_checkpoint(name, ckpt, duration))
    if (layout.base_eval / "eval.json").exists() and not store.has_checkpoint(base_run(setting), "base"):
        store.put_run(base_record(setting))
        store.put_checkpoint(measure_base(setting, layout.base_eval))


def index_folder(root: str | Path) -> Path:
    """A store of every run below `root` (plain `ftlab train`/`ftlab eval` runs), written afresh to
    root/results.sqlite; raises FtlabError when there is no run."""
    from ftlab.results.store import Store
    from ftlab.rundir import find_runs

    root = Path(root)
    if not root.is_dir():
        raise FtlabError(f"{root}: not a directory; pass a study directory or a folder of run directories")
    runs = find_runs(root)
    if not runs:
        raise FtlabError(f"{root}: no run directories found (a run directory holds config.yaml and final/ or "
                         f"checkpoints/; make one with `ftlab train CONFIG --out {root}/NAME`)")
    path = root / STORE
    tmp = path.with_name(path.name + ".tmp")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    with Store(tmp) as store:
        for run in runs:
            index_run(store, root, run)
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)
    tmp.replace(path)
    return path


def study_of(root: str | Path):
    """The Study a folder holds: a study's own store (`ftlab run` wrote it), else a store indexed afresh from the
    plain runs below (index_folder)."""
    from ftlab.results.store import Store

    root = Path(root)
    path = root / STORE if (root / EXPERIMENT).exists() and (root / STORE).exists() else index_folder(root)
    with Store(path) as store:
        return store.study(root)
