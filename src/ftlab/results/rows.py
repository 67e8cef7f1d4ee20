"""A study's numbers as rows: one per (run, checkpoint), built from the results store (`Store.study()`).

    study = Store("studies/x/results.sqlite").study()
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
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    method: str  # "full" or "lora"
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

    @property
    def group(self) -> str:
        """What a learning-rate sweep varies over: everything but lr and seed ("LoRA r=16", "full FT wd=0.0001")."""
        if self.method == "lora":
            label = f"LoRA r={self.rank}"
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
    curves: dict[str, list[dict]] = field(default_factory=dict)  # run -> its logged steps {step, tokens, loss, ...}

    def points(self) -> list[Row]:
        """The rows analyses use: all but duplicates (final/ saved at the same step as a listed checkpoint)."""
        return [r for r in self.rows if r.duplicate_of is None]

    def base_of(self, setting: str) -> BaseResult | None:
        """The base result of a setting, if it has scores."""
        return next((b for b in self.bases if b.setting == setting and b.scores), None)


# ----------------------------------------------------------------------------- grouping and selection


def plain_full(rows: list[Row]) -> list[Row]:
    """Unregularized full FT: no attention dropout and the smallest weight decay used by full FT in its setting
    (and optimizer)."""
    smallest: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.method == "full" and not r.attention_dropout:
            key = (r.setting, r.optimizer)
            smallest[key] = min(smallest.get(key, r.weight_decay), r.weight_decay)
    return [r for r in rows if r.method == "full" and not r.attention_dropout
            and r.weight_decay == smallest.get((r.setting, r.optimizer))]


def best_lrs(rows: list[Row]) -> dict[tuple[str, str], float | None]:
    """(setting, group) -> its best learning rate: the highest mean learning over seeds at the longest duration
    that every LR of the group reached (as an LR sweep would pick). Durations may be checkpoints of one run or
    separate runs (CPT budgets, IFT epochs run one by one): the rows of one LR are taken together. Ties go to the
    smaller LR."""
    by_lr: dict[tuple[str, str], dict[float | None, dict[float, list[float]]]] = {}
    for r in rows:
        if r.learning is not None:
            by_lr.setdefault((r.setting, r.group), {}).setdefault(r.lr, {}).setdefault(r.duration, []).append(
                r.learning)
        else:
            by_lr.setdefault((r.setting, r.group), {}).setdefault(r.lr, {})
    best = {}
    for key, lrs in by_lr.items():
        at = sweep_duration({lr: {d: v for d, v in ds.items() if v} for lr, ds in lrs.items()})

        def score(lr: float | None) -> float:
            values = [sum(v) / len(v) for d, v in lrs[lr].items() if v and (at is None or d == at)]
            return max(values) if values else float("-inf")

        best[key] = max(sorted(lrs, key=lambda x: (x is None, x or 0.0)), key=score)
    return best


def sweep_duration(by_run: dict) -> float | None:
    """The longest duration at which every run or LR (-> {duration: learning}) has a learning score; None if none."""
    scored = [{d for d, v in durations.items() if v is not None and d is not None} for durations in by_run.values()]
    return max(set.intersection(*scored), default=None) if scored else None


def best_lr_rows(rows: list[Row]) -> list[Row]:
    """The rows of each group's best learning rate (see best_lrs), every duration and seed."""
    lrs = best_lrs(rows)
    return [r for r in rows if r.lr == lrs.get((r.setting, r.group))]
