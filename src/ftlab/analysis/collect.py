"""Gather a study from its run directories: one row per (run, checkpoint).

    study = collect("studies/math-ift")     # every run directory below, found recursively
    study.rows[0].learning, study.rows[0].forgetting, study.missing

A run directory holds config.yaml (the resolved RunConfig) and final/ and/or checkpoints/<name>/. For each
checkpoint collect reads, when present (what is absent is listed in `study.missing`, never fatal):
  ftlab.json      step, tokens, epoch (written by training)
  eval.json       scores and the forgetting score (`ftlab eval`); the base model's in <run>/base_eval/eval.json
  spectrum.json   the ΔW spectrum (`ftlab spectrum`): in the checkpoint, or in the run directory for all of them
  diversity.json  unique outputs and pass@k of sampled generations (ftlab.analysis.diversity's schema)
  kl.json         KL(base || finetuned) on target prompts ({"kl": nats per token, ...})

How config.yaml maps into a row: method.name -> method; method.rank, alpha (None: 2·rank), targets and the
rsLoRA/DoRA/init/LoRA+ options -> rank, alpha, targets, variant (LoRA only); train.lr, weight_decay, optimizer
-> lr, weight_decay, optimizer; model.attention_dropout -> attention_dropout; data.regime -> regime; regime,
data.path and model.name -> setting (rows are compared only within one setting).
learning = the mean of the headline metrics of the learning tasks (ftlab.evaluate.tasks.REGISTRY role
"learning") present in eval.json; forgetting = eval.json's forgetting score (mean accuracy on the source tasks:
higher means LESS forgotten), drop = base - forgetting.
duration = the requested duration in the run's unit (epochs or tokens): from the checkpoint's name
("epochs-2"), the run's train.epochs/tokens for final/, else ftlab.json; the measured step and tokens are kept too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ftlab.analysis.results import BaseResult, Diversity, MatrixSpectrum, Row, Spectrum, Study, _diversity
from ftlab.builtin import BUILTIN_PREFIX
from ftlab.config import HUB_PREFIX, RunConfig, from_dict
from ftlab.errors import ConfigError, FtlabError
from ftlab.evaluate.tasks import REGISTRY
from ftlab.methods import lora_variant
from ftlab.rundir import checkpoint_duration, find_runs, run_checkpoints


def collect(root: str | Path) -> Study:
    """Gather every run below `root` into a Study; raises FtlabError if there is no run at all."""
    root = Path(root)
    if not root.is_dir():
        raise FtlabError(f"{root}: not a directory; pass a study directory holding run directories")
    runs = find_runs(root)
    if not runs:
        raise FtlabError(f"{root}: no run directories found (a run directory holds config.yaml and final/ or "
                         f"checkpoints/; make one with `ftlab train CONFIG --out {root}/NAME`)")
    study = Study(root=str(root))
    for run in runs:
        _collect_run(root, run, study)
    _note_absent_analyses(study)
    _note_mixed_learning_tasks(study)
    return study


def _read_json(path: Path, missing: list[str], label: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        missing.append(f"{label}: not valid JSON ({e}); ignored")
        return None
    if not isinstance(data, dict):
        missing.append(f"{label}: expected a JSON object; ignored")
        return None
    return data


def _setting(cfg: RunConfig) -> str:
    """ "ift: math-ift @ tiny": the regime, the data (built-in kind, hub id, or a file's last two path parts without
    suffix) and the base model's last path part."""
    data = cfg.data.path
    if data.startswith(BUILTIN_PREFIX):
        data = data.removeprefix(BUILTIN_PREFIX)
    elif data.startswith(HUB_PREFIX):
        data = data.removeprefix(HUB_PREFIX)
    else:
        data = "/".join(Path(data.rstrip("/")).with_suffix("").parts[-2:])
    model = cfg.model.name.removeprefix(BUILTIN_PREFIX).rstrip("/").split("/")[-1]
    return f"{cfg.data.regime}: {data} @ {model}"


def _collect_run(root: Path, run: Path, study: Study) -> None:
    name = run.relative_to(root).as_posix() if run != root else "."
    try:
        raw = yaml.safe_load((run / "config.yaml").read_text())
        cfg = from_dict(RunConfig, raw or {})
    except (ConfigError, yaml.YAMLError, OSError) as e:
        study.missing.append(f"{name}: config.yaml unreadable ({e}); run skipped")
        return
    setting = _setting(cfg)
    ckpts = run_checkpoints(run)
    if not ckpts:
        study.missing.append(f"{name}: no checkpoint yet")
        return

    base_eval = _read_json(run / "base_eval" / "eval.json", study.missing, f"{name}/base_eval/eval.json")
    base_div = _read_json(run / "base_eval" / "diversity.json", study.missing, f"{name}/base_eval/diversity.json")
    if base_eval is None:
        study.missing.append(f"{name}/base_eval: no eval.json (the base model's scores; `ftlab eval {run}`)")
    else:
        learning, tasks = _learning(base_eval)
        study.bases.append(BaseResult(name, setting, learning, tasks, (base_eval.get("forgetting") or {}).get("value"),
                                      _scores(base_eval), _pick_diversity(base_div)))
    run_spectrum = _read_json(run / "spectrum.json", study.missing, f"{name}/spectrum.json")

    rows = []
    for ckpt in ckpts:
        label = f"{name}/{ckpt.relative_to(run).as_posix()}"
        rows.append(_row(cfg, name, setting, ckpt, label, base_eval, run_spectrum, study.missing))
    rows.sort(key=lambda r: (r.step if r.step is not None else float("inf"), r.checkpoint == "final", r.checkpoint))
    _mark_duplicates(rows)
    study.rows.extend(rows)


def _row(cfg: RunConfig, run: str, setting: str, ckpt: Path, label: str, base_eval: dict | None,
         run_spectrum: dict | None, missing: list[str]) -> Row:
    m, t = cfg.method, cfg.train
    info = _read_json(ckpt / "ftlab.json", missing, f"{label}/ftlab.json")
    if info is None:
        missing.append(f"{label}: no ftlab.json (step and tokens unknown)")
        info = {}
    row = Row(run=run, checkpoint=ckpt.name, method=m.name, setting=setting, lr=t.lr, weight_decay=t.weight_decay,
              attention_dropout=cfg.model.attention_dropout, optimizer=t.optimizer, regime=cfg.data.regime,
              duration=checkpoint_duration(t, ckpt.name, info), duration_unit=t.unit,
              step=info.get("step"), tokens=info.get("tokens"))
    if m.name == "lora":
        row.rank, row.alpha = m.rank, cfg.lora_alpha()
        row.targets = m.targets if isinstance(m.targets, str) else ",".join(m.targets)
        row.variant = " ".join(lora_variant(m))

    ev = _read_json(ckpt / "eval.json", missing, f"{label}/eval.json")
    if ev is None:
        run_dir = ckpt.parent if ckpt.name == "final" else ckpt.parent.parent
        missing.append(f"{label}: no eval.json (`ftlab eval {run_dir}`)")
    else:
        row.scores = _scores(ev)
        row.learning, row.learning_tasks = _learning(ev)
        forgetting = ev.get("forgetting") or {}
        row.forgetting = forgetting.get("value")
        if row.learning is None:
            missing.append(f"{label}: eval.json has no learning task")
        if row.forgetting is None:
            missing.append(f"{label}: eval.json has no forgetting score (it needs every forgetting task)")
        if base_eval is not None:
            base_scores = _scores(base_eval)
            keys = [f"{task}/{REGISTRY[task].metric}" for task in row.learning_tasks]
            if keys and all(k in base_scores for k in keys):
                row.base_learning = sum(base_scores[k] for k in keys) / len(keys)
        row.base_forgetting = forgetting.get("base")
        if row.base_forgetting is None and base_eval is not None:
            row.base_forgetting = (base_eval.get("forgetting") or {}).get("value")
        row.forgetting_drop = forgetting.get("drop")
        if row.forgetting_drop is None and row.forgetting is not None and row.base_forgetting is not None:
            row.forgetting_drop = row.base_forgetting - row.forgetting

    row.spectrum = _spectrum(_spectrum_entry(ckpt, label, run_spectrum, missing))
    row.diversity = _pick_diversity(_read_json(ckpt / "diversity.json", missing, f"{label}/diversity.json"))
    kl = _read_json(ckpt / "kl.json", missing, f"{label}/kl.json")
    row.kl = float(kl["kl"]) if kl and isinstance(kl.get("kl"), (int, float)) else None
    return row


def _mark_duplicates(rows: list[Row]) -> None:
    """final/ saved at the same step as a listed checkpoint is one model twice: keep the evaluated one."""
    final = next((r for r in rows if r.checkpoint == "final"), None)
    twin = next((r for r in rows if r is not final and final is not None and r.step is not None
                 and r.step == final.step), None)
    if final is None or twin is None:
        return
    if final.scores and not twin.scores:
        twin.duplicate_of = "final"
    else:
        final.duplicate_of = twin.checkpoint


def _scores(ev: dict) -> dict[str, float]:
    return {f"{s['task']}/{s['metric']}": float(s["value"]) for s in ev.get("scores", [])
            if isinstance(s, dict) and isinstance(s.get("value"), (int, float)) and "task" in s and "metric" in s}


def _learning(ev: dict) -> tuple[float | None, list[str]]:
    values = {}
    for s in ev.get("scores", []):
        spec = REGISTRY.get(s.get("task", "")) if isinstance(s, dict) else None
        if spec is not None and spec.role == "learning" and s.get("metric") == spec.metric:
            values[spec.name] = float(s["value"])
    if not values:
        return None, []
    return sum(values.values()) / len(values), sorted(values)


def _spectrum_entry(ckpt: Path, label: str, run_spectrum: dict | None, missing: list[str]) -> dict | None:
    own = _read_json(ckpt / "spectrum.json", missing, f"{label}/spectrum.json")
    for doc in (own, run_spectrum):
        entries = [e for e in (doc or {}).get("checkpoints", []) if isinstance(e, dict)]
        for e in entries:
            if Path(str(e.get("name", ""))).name == ckpt.name or _same_path(e.get("path"), ckpt):
                return e
        if doc is own and len(entries) == 1:
            return entries[0]
    return None


def _same_path(path: Any, ckpt: Path) -> bool:
    try:
        return isinstance(path, str) and Path(path).resolve() == ckpt.resolve()
    except OSError:
        return False


def _spectrum(entry: dict | None) -> Spectrum | None:
    if entry is None:
        return None
    summary = entry.get("summary") or {}
    matrices = []
    for m in entry.get("matrices", []):
        delta = m.get("delta") or {}
        matrices.append(MatrixSpectrum(
            name=str(m.get("name", "")), layer=m.get("layer"), module=str(m.get("module", "")),
            shape=list(m.get("shape") or []), k90=delta.get("k90"), k90_frac=delta.get("k90_frac"),
            base_k90=(m.get("base") or {}).get("k90"), finetuned_k90=(m.get("finetuned") or {}).get("k90"),
            gaussian_k90=(m.get("gaussian") or {}).get("k90"), rel_change=m.get("rel_change"),
            intruders=m.get("intruders"), singular_values=m.get("singular_values")))
    return Spectrum(summary.get("k90_mean"), summary.get("k90_frac_mean"), summary.get("rel_change_mean"),
                    summary.get("intruders_total"), matrices)


def _pick_diversity(doc: dict | None) -> Diversity | None:
    """diversity.json holds one task's report, or {task: report}; a learning task's report is preferred."""
    if not doc:
        return None
    if "unique_mean" in doc:
        return _diversity(doc)
    reports = {k: v for k, v in sorted(doc.items()) if isinstance(v, dict) and "unique_mean" in v}
    learning = [k for k in reports if k in REGISTRY and REGISTRY[k].role == "learning"]
    key = (learning or list(reports) or [None])[0]
    return _diversity({"task": key, **reports[key]}) if key else None


def _note_absent_analyses(study: Study) -> None:
    """One line per analysis: absent everywhere, or the checkpoints of each run that lack it."""
    for attr, file, how in (("spectrum", "spectrum.json", "ftlab spectrum"), ("diversity", "diversity.json", ""),
                            ("kl", "kl.json", "")):
        points = study.points()
        if attr == "diversity":
            # Diversity is measured on final models (as the paper does), in the settings that sample: a setting
            # with no diversity at all, or a non-final checkpoint, is not missing anything.
            sampled = {r.setting for r in points if r.diversity is not None}
            points = [r for r in points if r.checkpoint == "final" and (r.setting in sampled or not sampled)]
        lacking = [r for r in points if getattr(r, attr) is None]
        if not points:
            continue
        if len(lacking) == len(points):
            study.missing.append(f"no checkpoint has {file}" + (f" (`{how} RUN`)" if how else ""))
            continue
        by_run: dict[str, list[str]] = {}
        for r in lacking:
            by_run.setdefault(r.run, []).append(r.checkpoint)
        study.missing.extend(f"{run}: no {file} for {', '.join(names)}" for run, names in by_run.items())


def _note_mixed_learning_tasks(study: Study) -> None:
    by_setting: dict[str, dict[tuple[str, ...], int]] = {}
    for r in study.points():
        if r.learning_tasks:
            sets = by_setting.setdefault(r.setting, {})
            sets[tuple(r.learning_tasks)] = sets.get(tuple(r.learning_tasks), 0) + 1
    for setting, sets in by_setting.items():
        if len(sets) > 1:
            parts = "; ".join(f"{', '.join(k)}: {n} checkpoints" for k, n in sorted(sets.items()))
            study.missing.append(f"{setting}: learning averages different tasks across checkpoints ({parts}); "
                                 "evaluate every checkpoint on the same tasks")
