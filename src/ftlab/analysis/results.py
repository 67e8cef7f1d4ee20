"""A study's numbers: one row per (run, checkpoint), and how rows are grouped and compared.

    study = collect("studies/math-ift")     # ftlab.analysis.collect: every run directory below
    study.rows[0].learning, study.rows[0].forgetting, study.missing

Study and its parts are plain dataclasses, and `Study.from_dict(study.to_dict())` rebuilds one, so a results
store can produce the same Study from its own tables. How a run directory maps into rows is described in
ftlab.analysis.collect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class MatrixSpectrum:
    """The spectrum of one weight matrix's change ΔW (and of W_base, W_ft and a Gaussian, for reference)."""

    name: str  # parameter name
    layer: int | None = None  # block index
    module: str = ""  # q_proj, ..., down_proj
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


@dataclass
class Row:
    """One checkpoint of one run: its configuration and every number measured on it."""

    run: str  # run directory relative to the study directory
    checkpoint: str  # "final" or the name under checkpoints/ ("epochs-2")
    method: str  # "full" or "lora"
    setting: str = ""  # "ift: math-ift @ tiny" (regime: data @ base model); rows compare within one setting
    rank: int | None = None  # LoRA rank (None for full FT)
    alpha: float | None = None  # LoRA alpha
    targets: str = ""  # LoRA targets: all, attn, mlp or comma-joined module names
    variant: str = ""  # other LoRA options ("rsLoRA", "DoRA", "init=pissa", "LoRA+ x16")
    lr: float | None = None
    weight_decay: float = 0.0
    attention_dropout: float = 0.0
    optimizer: str = ""
    regime: str = ""  # ift or cpt
    duration: float | None = None  # requested duration at this checkpoint, in duration_unit
    duration_unit: str = "epochs"  # epochs or tokens
    step: int | None = None  # measured, from ftlab.json
    tokens: int | None = None  # measured, from ftlab.json
    learning: float | None = None  # mean headline metric of the learning tasks
    learning_tasks: list[str] = field(default_factory=list)
    forgetting: float | None = None  # forgetting score: mean accuracy on source tasks (higher = less forgotten)
    forgetting_drop: float | None = None  # base forgetting score - this one
    base_learning: float | None = None  # the base model on the same learning tasks
    base_forgetting: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # "task/metric" -> value, all of eval.json
    spectrum: Spectrum | None = None
    diversity: Diversity | None = None
    kl: float | None = None  # KL(base || finetuned), nats per token
    duplicate_of: str | None = None  # the checkpoint with the same step (final = last checkpoint); analyses skip it

    @property
    def group(self) -> str:
        """What a learning-rate sweep varies over: everything but lr ("LoRA r=16", "full FT wd=0.0001")."""
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

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        kw = _known(cls, d)
        if kw.get("spectrum") is not None:
            s = kw["spectrum"]
            kw["spectrum"] = Spectrum(**{**_known(Spectrum, s),
                                         "matrices": [MatrixSpectrum(**_known(MatrixSpectrum, m))
                                                      for m in s.get("matrices", [])]})
        if kw.get("diversity") is not None:
            kw["diversity"] = _diversity(kw["diversity"])
        return cls(**kw)


@dataclass
class BaseResult:
    """The base model's evaluation, as one run recorded it in <run>/base_eval/."""

    run: str
    setting: str = ""
    learning: float | None = None
    learning_tasks: list[str] = field(default_factory=list)
    forgetting: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    diversity: Diversity | None = None

    @classmethod
    def from_dict(cls, d: dict) -> BaseResult:
        kw = _known(cls, d)
        if kw.get("diversity") is not None:
            kw["diversity"] = _diversity(kw["diversity"])
        return cls(**kw)


@dataclass
class Study:
    """Every row of a study directory, the base models' results, and what is missing."""

    root: str
    rows: list[Row] = field(default_factory=list)
    bases: list[BaseResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "runs/x/checkpoints/epochs-2: no eval.json", ...

    def points(self) -> list[Row]:
        """The rows analyses use: all but duplicates (final/ saved at the same step as a listed checkpoint)."""
        return [r for r in self.rows if r.duplicate_of is None]

    def base_of(self, setting: str) -> BaseResult | None:
        """The first base result of a setting that has scores."""
        return next((b for b in self.bases if b.setting == setting and b.scores), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Study:
        return cls(root=d["root"], rows=[Row.from_dict(r) for r in d.get("rows", [])],
                   bases=[BaseResult.from_dict(b) for b in d.get("bases", [])], missing=list(d.get("missing", [])))


def _known(cls: type, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _diversity(d: dict) -> Diversity:
    return Diversity(**{**_known(Diversity, d), "pass_at_k": {int(k): float(v) for k, v in
                                                              (d.get("pass_at_k") or {}).items()}})


# ----------------------------------------------------------------------------- grouping and selection


def plain_full(rows: list[Row]) -> list[Row]:
    """Unregularized full FT: no attention dropout and the smallest weight decay used by full FT in its setting."""
    smallest: dict[str, float] = {}
    for r in rows:
        if r.method == "full" and not r.attention_dropout:
            smallest[r.setting] = min(smallest.get(r.setting, r.weight_decay), r.weight_decay)
    return [r for r in rows if r.method == "full" and not r.attention_dropout
            and r.weight_decay == smallest.get(r.setting)]


def best_lrs(rows: list[Row]) -> dict[tuple[str, str], float | None]:
    """(setting, group) -> its best learning rate: the highest learning at the longest duration that every LR of
    the group reached (as an LR sweep would pick). Durations may be checkpoints of one run or separate runs (CPT
    budgets, IFT epochs run one by one): the rows of one LR are taken together. Ties go to the smaller LR."""
    by_lr: dict[tuple[str, str], dict[float | None, dict[float, float | None]]] = {}
    for r in rows:
        by_lr.setdefault((r.setting, r.group), {}).setdefault(r.lr, {})[r.duration] = r.learning
    best = {}
    for key, lrs in by_lr.items():
        at = sweep_duration(lrs)

        def score(lr: float | None) -> float:
            values = [v for d, v in lrs[lr].items() if v is not None and (at is None or d == at)]
            return max(values) if values else float("-inf")

        best[key] = max(sorted(lrs, key=lambda x: (x is None, x or 0.0)), key=score)
    return best


def best_runs(rows: list[Row]) -> dict[tuple[str, str], str]:
    """(setting, group) -> a run of the best learning rate (best_lrs): its longest, then first by name."""
    lrs = best_lrs(rows)
    out: dict[tuple[str, str], str] = {}
    for r in sorted(rows, key=lambda r: (-(r.duration or 0), r.run)):
        key = (r.setting, r.group)
        if key not in out and r.lr == lrs.get(key):
            out[key] = r.run
    return out


def sweep_duration(by_run: dict) -> float | None:
    """The longest duration at which every run or LR (-> {duration: learning}) has a learning score; None if none."""
    scored = [{d for d, v in durations.items() if v is not None and d is not None} for durations in by_run.values()]
    return max(set.intersection(*scored), default=None) if scored else None


def best_lr_rows(rows: list[Row]) -> list[Row]:
    """The rows of each group's best learning rate (see best_lrs), every duration."""
    lrs = best_lrs(rows)
    return [r for r in rows if r.lr == lrs.get((r.setting, r.group))]



