"""A study's numbers as rows: one per (run, checkpoint), loaded from the results store; the one way the report, the
claims and the demo's summary get their numbers.

    study = load_study(Store("studies/x/results.sqlite"))
    row = study.rows[0]
    row.learning, row.source, row.forgetting, row.values("source_loss/loss")

Words used the same way in code, store, report and README:
- learning: the mean headline metric of the learning (target-domain) tasks; higher = learned more.
- source score: the mean headline metric of the source-domain benchmark tasks (the paper's "forgetting metric",
  HellaSwag/ARC-Challenge/WinoGrande accuracy); higher = more of the source skill kept.
- forgetting: the base model's source score minus the checkpoint's; higher = more forgotten (0: none).
- source loss: held-out source-domain loss (nats per token); its rise over the base is a second measure of
  forgetting, per document, with far less noise than benchmark accuracy.
Rows compare only within a setting (regime, data and base model). Each row keeps its per-example values
(`examples`), so two checkpoints evaluated on the same documents get paired intervals (ftlab.analysis.statistics).
Derived numbers (learning, the source score, forgetting, the source loss, which checkpoints are duplicates) are
computed here, when the store's records are loaded, and nowhere else.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.results.records import (BASE, AnalysisRecord, CheckpointRecord, CurvePoint, ExampleRecord, MetricRecord,
                                   Note, RunRecord, SpectrumRecord, TaskRecord)
from ftlab.results.store import Store


@dataclass
class MatrixSpectrum:
    """The spectrum of one weight matrix's change ΔW (and of W_base, W_ft and a Gaussian, for reference)."""

    name: str  # parameter name
    layer: int | None = None  # block index
    module: str = ""  # q_proj, ..., down_proj (GPT-2: attn.c_proj, mlp.c_proj)
    shape: list[int] = field(default_factory=list)  # (out, in)
    k90: float | None = None  # rank explaining 90% of ΔW's squared singular values
    k90_frac: float | None = None  # k90 / min(m, n)
    base_k90: float | None = None
    finetuned_k90: float | None = None
    gaussian_k90: float | None = None  # a Gaussian matrix of the same shape
    rel_change: float | None = None  # ||ΔW||_F / ||W_base||_F
    intruders: int | None = None  # intruder dimensions among W_ft's top singular vectors
    singular_values: dict[str, list[float]] | None = None  # "delta", "base", "finetuned" -> descending σ


@dataclass
class Spectrum:
    """A checkpoint's ΔW spectrum: means over matrices and the per-matrix values."""

    k90_mean: float | None = None
    k90_frac_mean: float | None = None
    rel_change_mean: float | None = None
    intruders_total: int | None = None
    matrices: list[MatrixSpectrum] = field(default_factory=list)

    @property
    def width(self) -> int | None:
        """The smallest min(m, n) over the matrices: the largest k90 any of them can have."""
        sides = [min(m.shape) for m in self.matrices if len(m.shape) == 2]
        return min(sides) if sides else None


@dataclass
class Diversity:
    """Unique outputs among each problem's n samples (means over problems) and the pass@k curve."""

    task: str = ""
    n: int = 0  # samples per problem
    problems: int = 0
    unique_mean: float | None = None
    unique_pass_mean: float | None = None
    unique_fail_mean: float | None = None
    pass_at_k: dict[int, float] = field(default_factory=dict)
    per_problem: dict[str, float] = field(default_factory=dict)  # problem -> its unique outputs (for intervals)


@dataclass
class Cost:
    """What a run cost: time, speed, memory and size (from the run directory's run.json and metrics log)."""

    wall_s: float | None = None  # training wall time, summed over resumes
    tokens_per_s: float | None = None
    peak_memory_gb: float | None = None  # the training device's peak (CUDA: max allocated; CPU: max RSS)
    device: str = ""
    trainable_params: int | None = None
    total_params: int | None = None

    @property
    def device_hours(self) -> float | None:
        return None if self.wall_s is None else self.wall_s / 3600


Examples = dict[str, tuple[float, float]]  # document id -> (value, weight)


@dataclass
class Row:
    """One checkpoint of one run: its configuration and every number measured on it."""

    run: str  # the run's name (a study's runs/<setting>/<method>/..., or a folder relative to the report root)
    checkpoint: str  # "final" or the name under checkpoints/ ("epochs-2")
    method: str  # "full", "lora" or "qlora"
    setting: str = ""  # rows compare within one setting
    label: str = ""  # the study's method label: full, lora-r16, full-wd0.1, lora-r16-attn ...
    grp: str = ""  # what the run is in its study: grid, regularization, lr-sweep (run: a plain ftlab train run)
    rank: int | None = None  # LoRA rank (None for full FT)
    alpha: float | None = None  # LoRA alpha
    targets: str = ""  # LoRA targets: all, attn, mlp or comma-joined module names
    variant: str = ""  # other LoRA options ("rsLoRA", "DoRA", "init=pissa", "LoRA+ x16")
    lr: float | None = None
    weight_decay: float = 0.0
    attention_dropout: float = 0.0
    optimizer: str = ""
    seed: int = 0
    regime: str = ""  # ift or cpt
    duration: float | None = None  # requested duration at this checkpoint, in duration_unit
    duration_unit: str = "epochs"  # epochs or tokens
    step: int | None = None
    tokens: int | None = None
    learning: float | None = None  # mean headline metric of the learning tasks
    learning_tasks: list[str] = field(default_factory=list)
    source: float | None = None  # source score: mean headline metric of the source benchmark tasks
    source_tasks: list[str] = field(default_factory=list)
    forgetting: float | None = None  # base source score - source score (higher = more forgotten)
    source_loss: float | None = None  # held-out source-domain loss, nats per token
    base_learning: float | None = None  # the base model on the same learning tasks
    base_source: float | None = None
    base_source_loss: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # "task/metric" -> value
    stderr: dict[str, float] = field(default_factory=dict)  # "task/metric" -> its standard error, where given
    examples: dict[str, Examples] = field(default_factory=dict)  # "task/metric" -> per-document values
    spectrum: Spectrum | None = None
    diversity: Diversity | None = None
    kl: float | None = None  # KL(base || finetuned) on target prompts, nats per token
    cost: Cost = field(default_factory=Cost)
    duplicate_of: str | None = None  # the checkpoint with the same step (final = last checkpoint); analyses skip it
    data: str = ""  # its training data (data.path as the run's config names it)
    replay: float = 0.0  # the share of replayed source text in its training (data.replay.fraction)
    steer: str = ""  # a steered row (Study.steered): interp or intruders (ftlab.analysis.steering)
    factor: float | None = None  # its interpolation weight a or intruder factor
    steered_from: str = ""  # the checkpoint it steers ("final")

    @property
    def group(self) -> str:
        """What a learning-rate sweep varies over: everything but lr and seed ("LoRA r=16", "full FT wd=0.0001")."""
        if self.method in ("lora", "qlora"):
            label = f"{'QLoRA' if self.method == 'qlora' else 'LoRA'} r={self.rank}"
            if self.alpha is not None and self.rank is not None and self.alpha != 2 * self.rank:
                label += f" α={self.alpha:g}"
            if self.targets and self.targets != "all":
                label += f" {self.targets}"
            if self.variant:
                label += f" {self.variant}"
        else:
            label = "full FT"
        if self.weight_decay:
            label += f" wd={self.weight_decay:g}"
        if self.attention_dropout:
            label += f" attn-drop={self.attention_dropout:g}"
        if self.optimizer and self.optimizer != "adamw":
            label += f" {self.optimizer}"
        return label

    def values(self, key: str) -> Examples:
        """Per-document (value, weight) of one "task/metric" ({} if not measured)."""
        return self.examples.get(key, {})


@dataclass
class BaseResult:
    """The base model of a setting, evaluated on the setting's tasks."""

    run: str
    setting: str = ""
    learning: float | None = None
    learning_tasks: list[str] = field(default_factory=list)
    source: float | None = None
    source_tasks: list[str] = field(default_factory=list)
    source_loss: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    examples: dict[str, Examples] = field(default_factory=dict)
    diversity: Diversity | None = None

    def values(self, key: str) -> Examples:
        return self.examples.get(key, {})


@dataclass
class TaskInfo:
    """What the store knows of a task: its kind, role and headline metric."""

    name: str
    version: str
    kind: str  # choice, gsm8k, code, perplexity, lm_eval
    role: str  # learning, forgetting, source_loss, other
    metric: str  # headline metric


@dataclass
class Study:
    """Every row of a study, the base models' results, what is missing, and the tasks behind the numbers."""

    root: str
    rows: list[Row] = field(default_factory=list)
    bases: list[BaseResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "runs/x/checkpoints/epochs-2: not evaluated", ...
    tasks: dict[str, TaskInfo] = field(default_factory=dict)
    curves: dict[str, list[CurvePoint]] = field(default_factory=dict)  # run -> its logged steps, in order
    # checkpoints changed without training (interpolated toward the base, intruders scaled): rows of their own, in
    # no finding, figure or advice that reads `rows` (ftlab.report.claims.steering reads them)
    steered: list[Row] = field(default_factory=list)

    def points(self) -> list[Row]:
        """The rows analyses use: all but duplicates (final/ saved at the same step as a listed checkpoint)."""
        return [r for r in self.rows if r.duplicate_of is None]

    def base_of(self, setting: str) -> BaseResult | None:
        """The base result of a setting, if it has scores."""
        return next((b for b in self.bases if b.setting == setting and b.scores), None)


# ----------------------------------------------------------------------------- the store's records -> a Study

Key = tuple[str, str]  # (run, checkpoint)


def load_study(store: Store, root: str | Path = "") -> Study:
    """The Study in a store (root: the folder it describes, by default the store's own)."""
    tasks = {t.task: TaskInfo(t.task, t.version, t.kind, t.role, t.metric)  # the latest version's role wins
             for t in store.records(TaskRecord, order="task, version")}
    runs = store.runs()
    scores, stderr = _metrics(store.records(MetricRecord, order="run, checkpoint, task, metric"))
    examples = _examples(store.records(ExampleRecord))
    spectra = _spectra(store.records(SpectrumRecord, order="run, checkpoint, rowid"))
    analyses: dict[Key, dict[str, dict]] = defaultdict(dict)
    for a in store.records(AnalysisRecord):
        analyses[a.run, a.checkpoint][a.kind] = json.loads(a.value)
    study = Study(root=str(root or store.path.parent), tasks=tasks)
    rows: dict[str, list[Row]] = defaultdict(list)
    for c in store.records(CheckpointRecord, order="run, step, name"):
        key = (c.run, c.name)
        if c.run.startswith(BASE + "/"):
            study.bases.append(_base(c.run, runs[c.run].setting, scores.get(key, {}), stderr.get(key, {}),
                                     examples.get(key, {}), analyses.get(key, {}), tasks))
            continue
        row = _row(runs[c.run], c, scores.get(key, {}), stderr.get(key, {}), examples.get(key, {}),
                   spectra.get(key))
        _measures(row, row.scores, tasks)
        extra = analyses.get(key, {})
        row.kl = extra.get("kl", {}).get("kl")
        row.diversity = _pick_diversity(extra, tasks)
        if c.steer:
            row.steer, row.factor, row.steered_from = c.steer, c.factor, c.steered_from or ""
            study.steered.append(row)
        else:
            rows[c.run].append(row)
    for run_rows in rows.values():
        _mark_duplicates(run_rows)
        study.rows.extend(run_rows)
    for row in study.rows + study.steered:
        base = study.base_of(row.setting)
        if base is not None:
            row.base_learning = _mean_of(base.scores, row.learning_tasks, tasks)
            row.base_source = _mean_of(base.scores, row.source_tasks, tasks)
            row.base_source_loss = base.source_loss
            if row.source is not None and row.base_source is not None:
                row.forgetting = row.base_source - row.source
    for point in store.records(CurvePoint, order="run, step"):
        study.curves.setdefault(point.run, []).append(point)
    study.missing = _missing(store.records(Note, order="source, text"), study, runs)
    return study


def _row(run: RunRecord, c: CheckpointRecord, scores, stderr, examples, spectrum) -> Row:
    """A checkpoint's row: its run's configuration and its own numbers."""
    data = json.loads(run.config or "{}").get("data", {})
    return Row(run=c.run, checkpoint=c.name, method=run.method, setting=run.setting, label=run.label, grp=run.grp,
               data=data.get("path", ""), replay=(data.get("replay") or {}).get("fraction", 0.0), rank=run.rank, alpha=run.alpha, targets=run.targets or "", variant=run.variant or "", lr=run.lr,
               weight_decay=run.weight_decay or 0.0, attention_dropout=run.attention_dropout or 0.0,
               optimizer=run.optimizer or "", seed=run.seed or 0, regime=run.regime, duration=c.duration,
               duration_unit=run.duration_unit or "epochs", step=c.step, tokens=c.tokens, scores=scores,
               stderr=stderr, examples=examples, spectrum=spectrum,
               cost=Cost(run.wall_s, run.tokens_per_s, run.peak_memory_gb, run.device or "", run.trainable_params,
                         run.total_params))


def _metrics(metrics: list[MetricRecord]) -> tuple[dict[Key, dict[str, float]], dict[Key, dict[str, float]]]:
    scores: dict[Key, dict[str, float]] = {}
    stderr: dict[Key, dict[str, float]] = {}
    for m in metrics:
        if m.value is not None:
            scores.setdefault((m.run, m.checkpoint), {})[f"{m.task}/{m.metric}"] = m.value
        if m.stderr is not None:
            stderr.setdefault((m.run, m.checkpoint), {})[f"{m.task}/{m.metric}"] = m.stderr
    return scores, stderr


def _examples(examples: list[ExampleRecord]) -> dict[Key, dict[str, dict[str, tuple[float, float]]]]:
    out: dict[Key, dict[str, dict[str, tuple[float, float]]]] = {}
    for e in examples:
        out.setdefault((e.run, e.checkpoint), {}).setdefault(f"{e.task}/{e.metric}", {})[e.doc] = (e.value, e.weight)
    return out


def _spectra(spectra: list[SpectrumRecord]) -> dict[Key, Spectrum]:
    matrices: dict[Key, list[MatrixSpectrum]] = defaultdict(list)
    for s in spectra:
        matrices[s.run, s.checkpoint].append(MatrixSpectrum(
            s.matrix, s.layer, s.module or "", [s.rows, s.cols], s.k90, s.k90_frac, s.k90_base, s.k90_finetuned,
            s.k90_gaussian, s.rel_change, s.intruders, json.loads(s.singular_values) if s.singular_values else None))
    out = {}
    for key, ms in matrices.items():
        rel = [m.rel_change for m in ms if m.rel_change is not None]
        intruders = [m.intruders for m in ms]
        out[key] = Spectrum(sum(m.k90 for m in ms) / len(ms), sum(m.k90_frac for m in ms) / len(ms),
                            sum(rel) / len(rel) if rel else None,
                            None if any(i is None for i in intruders) else sum(intruders), ms)
    return out


def _mean_of(scores: dict[str, float], names: list[str], tasks: dict[str, TaskInfo]) -> float | None:
    keys = [f"{t}/{tasks[t].metric}" for t in names if t in tasks]
    values = [scores[k] for k in keys if k in scores]
    return sum(values) / len(values) if keys and len(values) == len(keys) else None


def _measures(row, scores: dict[str, float], tasks: dict[str, TaskInfo]) -> None:
    """learning, source score and source loss of a row (or a base) from its scores and the tasks' roles."""
    present = sorted({key.split("/", 1)[0] for key in scores})
    row.learning_tasks = [t for t in present if t in tasks and tasks[t].role == "learning"
                          and f"{t}/{tasks[t].metric}" in scores]
    row.source_tasks = [t for t in present if t in tasks and tasks[t].role == "forgetting"
                        and f"{t}/{tasks[t].metric}" in scores]
    row.learning = _mean_of(scores, row.learning_tasks, tasks) if row.learning_tasks else None
    row.source = _mean_of(scores, row.source_tasks, tasks) if row.source_tasks else None
    losses = [scores[f"{t}/loss"] for t in present if t in tasks and tasks[t].role == "source_loss"
              and f"{t}/loss" in scores]
    row.source_loss = sum(losses) / len(losses) if losses else None


def _base(run: str, setting: str, scores, stderr, examples, analyses, tasks) -> BaseResult:
    base = BaseResult(run=run, setting=setting, scores=scores, stderr=stderr, examples=examples)
    _measures(base, scores, tasks)
    base.diversity = _pick_diversity(analyses, tasks)
    return base


def _pick_diversity(analyses: dict[str, dict], tasks: dict[str, TaskInfo]) -> Diversity | None:
    """The diversity of a learning task where there is one (HumanEval), else the first measured."""
    reports = {k.removeprefix("diversity:"): v for k, v in sorted(analyses.items()) if k.startswith("diversity:")}
    if not reports:
        return None
    learning = [t for t in reports if t in tasks and tasks[t].role == "learning"]
    task = (learning or list(reports))[0]
    d = reports[task]
    return Diversity(task=task, n=d["n"], problems=d["problems"], unique_mean=d["unique_mean"],
                     unique_pass_mean=d["unique_pass_mean"], unique_fail_mean=d["unique_fail_mean"],
                     pass_at_k={int(k): float(v) for k, v in d["pass_at_k"].items()},
                     per_problem={p["problem"]: float(p["unique"]) for p in d.get("per_problem", [])})


def _mark_duplicates(rows: list[Row]) -> None:
    """final/ saved at the same step as a listed checkpoint is one model twice: keep the measured one (the listed one
    when both or neither are)."""
    final = next((r for r in rows if r.checkpoint == "final"), None)
    twin = next((r for r in rows if final is not None and r is not final and r.step is not None
                 and r.step == final.step), None)
    if twin is None:
        return
    if final.scores and not twin.scores:
        twin.duplicate_of = "final"
    else:
        final.duplicate_of = twin.checkpoint


def _missing(notes: list[Note], study: Study, runs: dict[str, RunRecord]) -> list[str]:
    """What the report should say is absent, in a stable order."""
    out = [f"{n.source}: {n.text}" for n in notes]
    indexed = {r.run for r in study.rows}
    for name, rec in sorted(runs.items()):
        if name.startswith(BASE + "/"):
            continue
        if rec.status == "failed":
            out.append(f"{name}: failed ({rec.reason})")
        elif name not in indexed:
            out.append(f"{name}: {rec.status}, no checkpoint measured yet")
    for r in study.points():
        where = f"{r.run}/{r.checkpoint}"
        if r.learning is None:
            out.append(f"{where}: no learning task measured")
        if r.source is None:
            out.append(f"{where}: no source benchmark measured (forgetting needs every one of them)")
    for setting in sorted({r.setting for r in study.rows}):
        if study.base_of(setting) is None:
            out.append(f"{setting}: the base model is not measured, so forgetting (its drop) is unknown")
    by_setting: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for r in study.points():
        if r.learning_tasks:
            by_setting[r.setting].add(tuple(r.learning_tasks))
    out += [f"{s}: learning averages different tasks across checkpoints ({'; '.join(map(', '.join, sorted(v)))}); "
            "evaluate every checkpoint on the same tasks" for s, v in sorted(by_setting.items()) if len(v) > 1]
    for attr, what in (("spectrum", "a ΔW spectrum"), ("kl", "KL to the base")):
        points = study.points()
        lacking = [r for r in points if getattr(r, attr) is None]
        if points and len(lacking) == len(points):
            out.append(f"no checkpoint has {what}")
        elif lacking:
            out.append(f"{len(lacking)} of {len(points)} checkpoints lack {what}: "
                       + ", ".join(f"{r.run}/{r.checkpoint}" for r in lacking[:5]) + (" ..." if len(lacking) > 5 else ""))
    return out
