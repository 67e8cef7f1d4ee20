"""The results store's tables: one dataclass per table, whose fields are the table's columns in order. The SQL is
generated from them (`create_sql`): a field's type is its column's (str TEXT, int INTEGER, float REAL; `| None`
nullable, anything else NOT NULL), the class's KEY its primary key. ftlab.results.index fills the records from the
artefacts, ftlab.results.store writes and reads them, ftlab.results.study turns them into a Study. Adding a measured
field is a field here (and SCHEMA_VERSION up by one), the line of index.py that fills it and the line of study.py
that reads it.

A field marked volatile differs from one run of the same study to the next (times, speeds, paths): Store.dump
leaves it out when comparing two studies.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields

SCHEMA_VERSION = "3"  # meta "schema": a store of another version is refused with what to do
STARTED = "started"  # meta: when `ftlab run` last started on the study (time.time()): `ftlab status` times from it
BASE = "(base)"  # runs.name of a setting's base model: "(base)/<setting>", its one checkpoint "base"


def base_run(setting: str) -> str:
    return f"{BASE}/{setting}"


def volatile(default=None):
    """A field whose value differs between two runs of the same study (left out of Store.dump)."""
    return field(default=default, metadata={"volatile": True})


@dataclass(slots=True)
class Meta:
    """What the store says about itself: its schema version, when the study last started."""

    TABLE = "meta"
    KEY = ("key",)
    key: str
    value: str


@dataclass(slots=True)
class RunRecord:
    """A run of the study: its place in it, its configuration, its status and what training cost."""

    TABLE = "runs"
    KEY = ("name",)
    name: str  # a study's <setting>/<label>/<duration>; "(base)/<setting>" for the base; a folder's relative path
    setting: str
    grp: str  # grid | regularization | lr-sweep | base | run (a plain `ftlab train` run)
    label: str  # the study's method label: full, lora-r16, full-wd0.1, ...
    method: str  # full | lora | base
    regime: str
    rank: int | None = None
    alpha: float | None = None
    targets: str | None = None
    variant: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    attention_dropout: float | None = None
    optimizer: str | None = None
    seed: int | None = None
    duration_unit: str | None = None
    config: str = "{}"  # the resolved run config, JSON
    status: str = "left"  # left, waiting, running, evaluating, analysing, done, failed (below)
    reason: str | None = None  # why it failed
    wall_s: float | None = volatile()  # training wall time, summed over resumes
    tokens_per_s: float | None = volatile()
    peak_memory_gb: float | None = volatile()
    device: str | None = volatile()
    trainable_params: int | None = None
    total_params: int | None = None
    updated: float | None = volatile()  # when the row was last written (time.time())


RUN_COST = ("wall_s", "tokens_per_s", "peak_memory_gb", "device", "trainable_params", "total_params")  # training's
# A run's status: PLANNED before it starts (written when the study starts; waiting: for the LR sweep's pick), then
# running (training), evaluating, analysing while the study works on it, then FINISHED.
PLANNED = ("left", "waiting")
FINISHED = ("done", "failed")


@dataclass(slots=True)
class CheckpointRecord:
    """A checkpoint measured: its row is written last, so its presence means everything of it is in the store."""

    TABLE = "checkpoints"
    KEY = ("run", "name")
    run: str
    name: str  # final, or its folder under checkpoints/ (epochs-2); "base" for a base model
    path: str = volatile("")
    step: int | None = None
    tokens: int | None = None
    epoch: float | None = None
    duration: float = 0.0  # the duration it stands for, in the run's unit (epochs or tokens)
    # a checkpoint changed without training (ftlab.analysis.steering): interp (a of the way from the base) or
    # intruders (intruder dimensions scaled), by `factor`, of the checkpoint `steered_from`; null for a trained one
    steer: str | None = None
    factor: float | None = None
    steered_from: str | None = None


@dataclass(slots=True)
class TaskRecord:
    """A task version as evaluated: its kind, role and headline metric."""

    TABLE = "tasks"
    KEY = ("task", "version")
    task: str
    version: str
    kind: str  # choice, gsm8k, code, perplexity, lm_eval, unknown
    role: str  # learning | forgetting | source_loss | other
    metric: str  # the headline metric


@dataclass(slots=True)
class MetricRecord:
    """One metric of one task on one checkpoint, as its eval.json has it."""

    TABLE = "metrics"
    KEY = ("run", "checkpoint", "task", "metric")
    run: str
    checkpoint: str
    task: str
    version: str
    metric: str
    value: float | None = None
    n: int | None = None
    stderr: float | None = None


@dataclass(slots=True)
class ExampleRecord:
    """One document's value of one metric on one checkpoint (what paired intervals resample)."""

    TABLE = "examples"
    KEY = ("run", "checkpoint", "task", "metric", "doc")
    run: str
    checkpoint: str
    task: str
    metric: str
    doc: str  # document (problem) id
    value: float  # its value of the metric (pass@k: the problem's estimate)
    weight: float = 1.0  # 1, or its tokens for a token-weighted metric (loss, token_accuracy)


@dataclass(slots=True)
class SpectrumRecord:
    """The spectrum of one weight matrix's change ΔW on one checkpoint (and of W_base, W_ft, a Gaussian)."""

    TABLE = "spectra"
    KEY = ("run", "checkpoint", "matrix")
    run: str
    checkpoint: str
    matrix: str  # parameter name
    layer: int | None = None
    module: str | None = None
    rows: int | None = None
    cols: int | None = None
    k50: int | None = None
    k90: int | None = None  # rank explaining 90% of ΔW's squared singular values
    k99: int | None = None
    k90_frac: float | None = None  # k90 / min(rows, cols)
    rel_change: float | None = None  # ||ΔW||_F / ||W_base||_F
    intruders: int | None = None
    stable_rank: float | None = None
    effective_rank: float | None = None
    fro: float | None = None
    k90_base: int | None = None
    k90_finetuned: int | None = None
    k90_gaussian: int | None = None
    lora_rank: int | None = None
    singular_values: str | None = None  # JSON {delta, base, finetuned} for the matrices kept whole, else NULL


@dataclass(slots=True)
class AnalysisRecord:
    """An analysis of one checkpoint stored whole: KL to the base, the diversity of a sampled task."""

    TABLE = "analyses"
    KEY = ("run", "checkpoint", "kind")
    run: str
    checkpoint: str
    kind: str  # kl | diversity:<task>
    value: str  # JSON


@dataclass(slots=True)
class CurvePoint:
    """One logged training step of a run."""

    TABLE = "curves"
    KEY = ("run", "step")
    run: str
    step: int
    tokens: int | None = None
    loss: float | None = None  # training loss of the step (mean per target token)
    eval_loss: float | None = None  # held-out loss, at the steps it was measured
    lr: float | None = None
    source_loss: float | None = None  # held-out source-text loss (data.source_eval: forgetting), where measured


@dataclass(slots=True)
class Note:
    """Something the report should say is missing (a run skipped while indexing, and why)."""

    TABLE = "notes"
    KEY = ("source", "text")
    source: str
    text: str


@dataclass
class CheckpointResult:
    """Everything measured on one checkpoint, written to the store in one transaction (Store.put_checkpoint)."""

    checkpoint: CheckpointRecord
    tasks: list[TaskRecord] = field(default_factory=list)
    metrics: list[MetricRecord] = field(default_factory=list)
    examples: list[ExampleRecord] = field(default_factory=list)
    spectra: list[SpectrumRecord] = field(default_factory=list)
    analyses: list[AnalysisRecord] = field(default_factory=list)


TABLES = (RunRecord, CheckpointRecord, TaskRecord, MetricRecord, ExampleRecord, SpectrumRecord, AnalysisRecord,
          CurvePoint, Note)  # the study's tables (meta aside), in the README's order
PER_CHECKPOINT = (MetricRecord, ExampleRecord, SpectrumRecord, AnalysisRecord)  # rows keyed by (run, checkpoint)


def columns(record: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(record))


def row(record) -> tuple:
    """A record's values in column order."""
    return tuple(getattr(record, name) for name in columns(type(record)))


def volatile_columns(record: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(record) if f.metadata.get("volatile"))


SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL"}


def create_sql(record: type) -> str:
    """CREATE TABLE IF NOT EXISTS for a record: its fields as columns, its KEY the primary key."""
    hints = typing.get_type_hints(record)
    cols = []
    for name in columns(record):
        kinds = typing.get_args(hints[name]) or (hints[name],)
        sql = SQL_TYPES[next(k for k in kinds if k is not type(None))]
        cols.append(f"{name} {sql}" + ("" if type(None) in kinds else " NOT NULL"))
    return f"CREATE TABLE IF NOT EXISTS {record.TABLE} ({', '.join(cols)}, PRIMARY KEY ({', '.join(record.KEY)}))"


SCHEMA = ";\n".join(create_sql(r) for r in (Meta, *TABLES)) + ";\n"
