"""Run directories -> the results store: the one code path from artefacts to records.

    result = measure_checkpoint("runs/math-ift/full/epochs-1", ckpt_dir, duration=1.0)
    store.put_checkpoint(result)                 # what the study runner does after analysing a checkpoint
    index_folder("studies/plain")                # what `ftlab report` does on a folder of ftlab train/eval runs

A checkpoint's artefacts (ftlab.rundir.CheckpointFiles), all optional: its info (step, tokens), its evaluation
(each task's scores as `ftlab eval` wrote them, and per-example records: the examples table), its spectrum (ΔW per
matrix), its KL to the base and its diversity (written by the analyse stage). The store gets exactly what the files
hold, so what lands does not depend on the order things were done in, or on an interruption. Nothing is computed
here: every number comes from a file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ftlab.builtin import BUILTIN_PREFIX
from ftlab.config import HUB_PREFIX, RunConfig, lora_variant, method_label, to_dict
from ftlab.errors import ConfigError, FtlabError
from ftlab.evaluate.tasks import REGISTRY
from ftlab.io import damaged_files, read_json, read_jsonl
from ftlab.results.records import (AnalysisRecord, CheckpointRecord, CheckpointResult, CurvePoint, ExampleRecord,
                                   MetricRecord, RunRecord, SpectrumRecord, TaskRecord, base_run)
from ftlab.results.store import Store
from ftlab.results.study import Study, load_study
from ftlab.rundir import (CheckpointFiles, RunLayout, StudyLayout, checkpoint_duration, find_runs, read_info,
                          read_metrics, run_checkpoints, saved_config)

TOKEN_WEIGHTED = ("loss", "token_accuracy")  # perplexity tasks: per-document means weighted by tokens
DERIVED = ("perplexity",)  # exp(loss): not a mean of per-document values, so not stored per document


def measure_checkpoint(run: str, directory: Path, duration: float, name: str | None = None) -> CheckpointResult:
    """Everything the artefacts of one checkpoint (or a base model's evaluation directory) hold."""
    files = CheckpointFiles(directory)
    info = read_info(files.path)
    steer = info.get("steer") or {}
    result = CheckpointResult(CheckpointRecord(run, name or files.path.name, str(files.path), info.get("step"),
                                               info.get("tokens"), info.get("epoch"), duration, steer.get("kind"),
                                               steer.get("factor"), steer.get("of")))
    if files.eval.exists():
        _evaluation(result, files)
    if files.spectrum.exists():
        result.spectra = _spectrum(result.checkpoint, read_json(files.spectrum, "spectrum"), files)
    if files.kl.exists():
        _analysis(result, "kl", read_json(files.kl, "KL measurement"))
    if files.diversity.exists():
        for task, report in read_json(files.diversity, "diversity").items():
            _analysis(result, f"diversity:{task}", report)
    return result


def _analysis(result: CheckpointResult, kind: str, value: dict) -> None:
    c = result.checkpoint
    result.analyses.append(AnalysisRecord(c.run, c.name, kind, json.dumps(value, sort_keys=True)))


def _evaluation(result: CheckpointResult, files: CheckpointFiles) -> None:
    c = result.checkpoint
    doc = read_json(files.eval, "evaluation")
    versions = {}
    for s in doc.get("scores", []):
        result.metrics.append(MetricRecord(c.run, c.name, s["task"], s["version"], s["metric"], s["value"],
                                           s.get("n"), s.get("stderr")))
        versions[s["task"]] = s["version"]
    for task, version in sorted(versions.items()):
        spec = REGISTRY.get(task)
        if spec is None:  # lm_eval:<task>, or a task this ftlab no longer has: its numbers, no role
            first = next(m.metric for m in result.metrics if m.task == task)
            result.tasks.append(TaskRecord(task, version, "lm_eval" if ":" in task else "unknown", "other", first))
            continue
        result.tasks.append(TaskRecord(task, version, spec.kind, spec.role, spec.metric))
        samples = files.samples(task)
        if samples.exists():
            fix = f"delete {files.eval} and run `ftlab eval` on {files.path} again (it rewrites both)"
            recorded = doc.get("samples", {}).get(task)  # its size and sha256, written with it
            if recorded is None:
                raise FtlabError(f"{samples}: {files.eval.name} records no checksum of it; {fix}")
            damaged = damaged_files(files.path, {samples.relative_to(files.path).as_posix(): recorded})
            if damaged:
                raise FtlabError(f"{damaged[0]}: the file is damaged; {fix}")
            records = [r for _, r in read_jsonl(samples, fix=fix)]
            result.examples += _examples(c, task, spec.kind, records)


def _examples(c: CheckpointRecord, task: str, kind: str, records: list[dict]) -> list[ExampleRecord]:
    """One record per document and metric: a sampled task's records are per sample and carry their problem's
    pass@k, so the first record of each problem stands for it."""
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
            out.append(ExampleRecord(c.run, c.name, task, metric, doc, float(value), weight))
    return out


def _spectrum(c: CheckpointRecord, doc: dict, files: CheckpointFiles) -> list[SpectrumRecord]:
    entries = doc.get("checkpoints", [])
    if len(entries) != 1:
        raise FtlabError(f"{files.spectrum}: expected the spectrum of one checkpoint, found {len(entries)}; run "
                         "`ftlab spectrum` on the run again")
    out = []
    for m in entries[0]["matrices"]:
        d = m["delta"]
        out.append(SpectrumRecord(
            c.run, c.name, m["name"], layer=m.get("layer"), module=m.get("module"), rows=m["shape"][0],
            cols=m["shape"][1], k50=d.get("k50"), k90=d["k90"], k99=d.get("k99"), k90_frac=d["k90_frac"],
            rel_change=m.get("rel_change"), intruders=m.get("intruders"), stable_rank=d.get("stable_rank"),
            effective_rank=d.get("effective_rank"), fro=d.get("fro"), k90_base=(m.get("base") or {}).get("k90"),
            k90_finetuned=(m.get("finetuned") or {}).get("k90"), k90_gaussian=(m.get("gaussian") or {}).get("k90"),
            lora_rank=m.get("lora_rank"),
            singular_values=json.dumps(m["singular_values"]) if m.get("singular_values") else None))
    return out


def measure_base(setting: str, directory: Path) -> CheckpointResult:
    """A setting's base model, evaluated in `directory`: the store's "(base)/<setting>" run, checkpoint "base"."""
    return measure_checkpoint(base_run(setting), directory, 0.0, name="base")


# ----------------------------------------------------------------------------- runs


def run_record(name: str, setting: str, group: str, label: str, cfg: RunConfig, status: str,
               reason: str | None = None) -> RunRecord:
    """A run's row: its place in the study and its configuration (cfg: the resolved RunConfig)."""
    m, t = cfg.method, cfg.train
    lora = m.adapter  # LoRA or QLoRA
    return RunRecord(name, setting, group, label, m.name, cfg.data.regime, rank=m.rank if lora else None,
                     alpha=cfg.lora_alpha() if lora else None,
                     targets=(m.targets if isinstance(m.targets, str) else ",".join(m.targets)) if lora else "",
                     variant=" ".join(lora_variant(m)), lr=t.lr, weight_decay=t.weight_decay,
                     attention_dropout=cfg.model.attention_dropout, optimizer=t.optimizer, seed=t.seed,
                     duration_unit=t.unit, config=json.dumps(to_dict(cfg), sort_keys=True), status=status,
                     reason=reason)


def base_record(setting: str) -> RunRecord:
    """The pseudo-run holding a setting's base model."""
    return RunRecord(base_run(setting), setting, "base", "base", "base", "", config="{}", status="done")


def run_cost(run_dir: Path) -> dict:
    """What training the run cost: its cost file (written by training: wall time, peak memory, device,
    parameters) and the mean tokens/s of its logged steps."""
    layout = RunLayout(run_dir)
    cost = read_json(layout.cost, "run cost") if layout.cost.exists() else {}
    speeds = [r["tokens_per_s"] for r in read_metrics(run_dir) if r.get("tokens_per_s")]
    if speeds:
        cost["tokens_per_s"] = round(sum(speeds) / len(speeds), 1)
    return cost


def index_training(store: Store, run: str, run_dir: Path) -> None:
    """What training a run wrote beside its checkpoints: its cost and its curve (the metrics log)."""
    store.put_cost(run, run_cost(run_dir))
    store.put_curve(run, [CurvePoint(run, r["step"], r.get("tokens"), r.get("loss"), r.get("eval_loss"), r.get("lr"),
                                     r.get("source_loss")) for r in read_metrics(run_dir)])


def setting_of(cfg: RunConfig) -> str:
    """A plain run's setting: "ift: math-ift @ base-tiny": the regime, the data (built-in kind, hub id, or a file's
    last two path parts without suffix) and the base model's last path part. Runs compare within one setting."""
    data = cfg.data.path
    if data.startswith(BUILTIN_PREFIX):
        data = data.removeprefix(BUILTIN_PREFIX)
    elif data.startswith(HUB_PREFIX):
        data = data.removeprefix(HUB_PREFIX)
    else:
        data = "/".join(Path(data.rstrip("/")).with_suffix("").parts[-2:])
    model = cfg.model.name.removeprefix(BUILTIN_PREFIX).rstrip("/").split("/")[-1]
    return f"{cfg.data.regime}: {data} @ {model}"


def index_run(store: Store, root: Path, run_dir: Path) -> None:
    """A run directory made by `ftlab train` (and evaluated by `ftlab eval`) into the store: its row, each
    checkpoint's numbers, its base model's evaluation (beside the run) as the setting's base."""
    name = run_dir.relative_to(root).as_posix() if run_dir != root else "."
    layout = RunLayout(run_dir)
    try:
        cfg = saved_config(run_dir)
    except (ConfigError, OSError) as e:
        store.put_note(name, f"{layout.config_yaml.name} unreadable ({e}); run skipped")
        return
    setting = setting_of(cfg)
    store.put_run(run_record(name, setting, "run", method_label(cfg.method), cfg, "done"))
    index_training(store, name, run_dir)
    for ckpt in run_checkpoints(run_dir):
        duration = checkpoint_duration(cfg.train, ckpt.name, read_info(ckpt))
        if duration is None:
            store.put_note(f"{name}/{ckpt.name}", f"its duration is unknown (no {CheckpointFiles(ckpt).info.name}); "
                           "not indexed")
            continue
        store.put_checkpoint(measure_checkpoint(name, ckpt, duration))
    if CheckpointFiles(layout.base_eval).eval.exists() and not store.has_checkpoint(base_run(setting), "base"):
        store.put_run(base_record(setting))
        store.put_checkpoint(measure_base(setting, layout.base_eval))


def index_folder(root: str | Path) -> Path:
    """A store of every run below `root` (plain `ftlab train`/`ftlab eval` runs), written afresh into the folder;
    raises FtlabError when there is no run."""
    root = Path(root)
    if not root.is_dir():
        raise FtlabError(f"{root}: not a directory; pass a study directory or a folder of run directories")
    runs = find_runs(root)
    if not runs:
        layout = RunLayout(root / "NAME")
        raise FtlabError(f"{root}: no run directories found (a run directory holds {layout.config_yaml.name} and "
                         f"{layout.final.name}/ or {layout.checkpoints.name}/; make one with `ftlab train CONFIG "
                         f"--out {layout.path}`)")
    path = StudyLayout(root).store
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


def study_of(root: str | Path) -> Study:
    """The Study a folder holds: a study's own store (`ftlab run` wrote it), else a store indexed afresh from the
    plain runs below (index_folder)."""
    root = Path(root)
    study = StudyLayout(root)
    path = study.store if study.experiment.exists() and study.store.exists() else index_folder(root)
    with Store(path) as store:
        return load_study(store, root)
