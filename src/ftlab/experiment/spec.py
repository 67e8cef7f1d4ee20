"""Experiment files: one YAML describes a whole LoRA-versus-full-finetuning study; `plan_runs` makes its runs.

    exp = load_experiment("configs/demo.yaml", ["settings.0.durations=[1,2]"])
    for run in plan_runs(exp, "out/"): ...   # RunPlan: a name, a validated RunConfig, how its durations work

The grid is settings (a target domain in a regime) x methods (full FT; LoRA ranks, targets, alpha) x learning
rates, plus two side studies: the regularization comparison (full FT with weight decay or attention dropout) and
the LR sweep. Durations follow the paper:
- IFT: each number of epochs is a separate run with its own schedule (`durations_as: runs`), or, to save time,
  checkpoints of the longest run (`durations_as: checkpoints`, a stated deviation from the paper).
- CPT: one long warmup-stable-cooldown run; each token budget T gets its own cooldown, restarted from the long
  run's state at the start of T's cooldown (0.8 T with cooldown 0.2). The largest budget is the long run itself.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ftlab.builtin import PROMPT_DOMAINS, data_domain
from ftlab.config import (MethodConfig, RunConfig, apply_overrides, budget_steps, cooldown_steps, from_dict,
                          method_label, read_mapping, resolve_path, resolve_paths, to_dict, validate, warmup_steps)
from ftlab.errors import ConfigError
from ftlab.evaluate.heldout import DEFAULT_LEARNING
from ftlab.rundir import StudyLayout, duration_name


@dataclass
class Setting:
    """A target domain in one regime: its data, durations and learning tasks."""

    name: str  # e.g. math-ift; names the runs' folders
    data: dict = field(default_factory=dict)  # data.* keys of a run config (regime, path, seq_len, ...)
    train: dict = field(default_factory=dict)  # train.* keys for this setting (batch sizes, schedule, ...)
    durations: list[float] = field(default_factory=list)  # IFT: epochs; CPT: training tokens
    durations_as: Literal["runs", "checkpoints"] = "runs"  # IFT only: separate runs (paper) or checkpoints of one
    # learning tasks (ftlab eval names); left out: the held-out part of the setting's own data (heldout_accuracy,
    # heldout_loss), so every setting measures learning; an empty list is refused
    learning: list[str] | None = None
    # method label, rank key or name -> LR for this setting (e.g. {lora-r256: 1e-4}); "sweep": the best of the
    # lr_sweep's LRs for that method in this setting (its runs train first; the grid then trains at the winner)
    lr: dict = field(default_factory=dict)
    diversity: list[str] | None = None  # sampled tasks for the diversity analysis (None: analyses.diversity)
    kl_domain: str | None = None  # whose held-out prompts KL is measured on: math or code (None: the built-in
    # data's own domain when it is one of those; the user's own data without it: KL is skipped, and the study says so)


@dataclass
class MethodEntry:
    """One line of the methods grid; a list of ranks or alphas expands into one method per value."""

    name: Literal["full", "lora", "qlora"] = "lora"  # qlora: LoRA on the base in 4-bit NF4 (method.name qlora)
    ranks: list[int] = field(default_factory=list)  # LoRA ranks (empty for full FT)
    alphas: list[float] = field(default_factory=list)  # empty: alpha = 2r (the paper); else one method per alpha
    targets: str | list[str] = "all"  # all | attn | mlp | module names
    lr: float | None = None  # this method's LR unless the setting names one
    label: str | None = None  # suffix to tell entries apart (default: from targets, alpha and options: method_label)
    options: dict = field(default_factory=dict)  # other method.* keys: dropout, rslora, dora, init, ...


@dataclass
class Regularization:
    """Full FT with weight decay or attention dropout, at every duration of one setting (the paper's Fig 3)."""

    setting: str | None = None  # default: the first setting
    weight_decay: list[float] = field(default_factory=list)
    attention_dropout: list[float] = field(default_factory=list)


@dataclass
class LRSweep:
    """Every method of the grid at each LR, at one duration of a setting (of each setting that asks for "sweep")."""

    setting: str | None = None  # default: every setting whose lr asks for "sweep", else the first setting
    duration: float | None = None  # default: the setting's shortest duration (with several settings: each its own)
    full: list[float] = field(default_factory=list)
    lora: list[float] = field(default_factory=list)


@dataclass
class EvalOptions:
    data_dir: str | None = None  # the paper suite's local files and source/heldout.jsonl (see README); relative: from
    # the working directory, else beside the experiment file
    limit: int | None = None  # first N documents of each task (a quick look)
    batch_size: int = 32
    device: str = "auto"
    engine: Literal["hf", "vllm"] = "hf"  # what samples the generation tasks (ftlab eval --engine)
    vllm_memory: float = 0.5  # engine vllm on a GPU: the share of its memory the engine takes


@dataclass
class Analyses:
    spectrum: bool = True  # k90 and friends of every checkpoint's ΔW
    singular_values: list[str] = field(default_factory=list)  # matrices whose full spectrum is kept (Fig S7)
    diversity: list[str] = field(default_factory=list)  # sampled tasks to measure diversity on (e.g. math_sampled)
    kl: bool = True  # KL(base || finetuned) on target prompts
    kl_prompts: int = 64
    merge: bool = False  # each LoRA checkpoint merged (fp32, bf16) against its adapter (ftlab merge-check)
    # steering without training (ftlab.analysis.steering), on the grid's runs: each checkpoint moved a of the way
    # from the base (full FT W_base + a·ΔW, LoRA the adapter scaled by a), e.g. [0.25, 0.5, 0.75]; LoRA checkpoints
    # with their intruder dimensions scaled by each factor, e.g. [0.7]; on the runs' final checkpoints or all
    interpolation: list[float] = field(default_factory=list)
    intruders: list[float] = field(default_factory=list)
    steer: Literal["final", "all"] = "final"


@dataclass
class Tracking:
    backend: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    project: str = "ftlab"


@dataclass
class GPUs:
    """The GPUs a study assumes: what `ftlab plan` checks each run against unless --gpu and --nproc say otherwise."""

    kind: str = "h100"  # h100, h200, a100, l40s, or a memory size in GiB
    per_run: int = 1  # processes (GPUs) each run trains on: ftlab run --nproc


@dataclass
class ExperimentConfig:
    name: str = "study"
    model: dict = field(default_factory=dict)  # model.* keys (name, dtype, ...)
    defaults: dict = field(default_factory=dict)  # run-config keys for every run (train.*, method.*, data.*)
    settings: list[Setting] = field(default_factory=list)
    methods: list[MethodEntry] = field(default_factory=list)
    forgetting: list[str] = field(default_factory=list)  # forgetting tasks or suites, for every checkpoint
    eval: EvalOptions = field(default_factory=EvalOptions)
    regularization: Regularization | None = None
    lr_sweep: LRSweep | None = None
    analyses: Analyses = field(default_factory=Analyses)
    tracking: Tracking = field(default_factory=Tracking)
    gpus: GPUs | None = None  # the GPUs the study assumes (ftlab plan's default --gpu and --nproc)
    seeds: list[int] = field(default_factory=list)  # train every run once per seed (intervals then include the
    # variation between training runs); empty: once, with defaults.train.seed
    # where relative paths in the file resolve (its folder): set by parse_experiment, never read from the YAML
    base_dir: Path = field(default=Path("."), metadata={"internal": True})


@dataclass
class RunPlan:
    """One training run of the study and what to do with it."""

    name: str  # unique; the run's folder under <exp>/runs/
    setting: str
    group: Literal["grid", "regularization", "lr-sweep"]
    method: str  # label: full, lora-r16, lora-r16-attn, full-wd0.0001, ...
    lr: float
    cfg: RunConfig
    durations: list[float]  # the durations this run stands for (its checkpoints or its final)
    branch_of: str | None = None  # CPT: the long run whose state this run restarts from
    branch_step: int | None = None  # ... at this optimizer step (the start of this run's cooldown)
    learning: list[str] = field(default_factory=list)
    diversity: list[str] = field(default_factory=list)
    kl_domain: str | None = None  # whose held-out prompts KL is measured on; None: KL is skipped for this run
    waits_for_sweep: bool = False  # its LR is the lr_sweep's pick, not known until the sweep's runs are measured

    @property
    def regime(self) -> str:
        return self.cfg.data.regime


def load_experiment(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    return parse_experiment(read_mapping(path, "experiment"), overrides, path.parent, path)


def parse_experiment(data: dict, overrides: list[str], base_dir: Path, where: str | Path) -> ExperimentConfig:
    """An experiment from its YAML mapping; relative data paths in it resolve beside base_dir."""
    data = _lists_back(apply_overrides(data, _list_aware(list(overrides), data)))
    try:
        exp = from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if exp.eval.data_dir is not None:  # found from the working directory, else beside the file, as data paths
        exp.eval.data_dir = resolve_path(exp.eval.data_dir, Path(base_dir))
    return replace(exp, base_dir=Path(base_dir))


def _list_aware(overrides: list[str], data: dict) -> list[str]:
    """`settings.0.durations=[1]` addresses list items by index: turn those lists into index-keyed dicts first."""
    for item in overrides:
        parts = item.split("=", 1)[0].split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if isinstance(child, list) and i + 1 < len(parts) and parts[i + 1].isdigit():
                node[part] = _IndexedList(child)
                child = node[part]
            node = child if isinstance(child, dict) else {}
    return overrides


class _IndexedList(dict):
    """A list seen as {"0": item, ...} while overrides apply; _lists_back turns it back into a list."""

    def __init__(self, items: list):
        super().__init__({str(i): v for i, v in enumerate(items)})


def _lists_back(node):
    if isinstance(node, _IndexedList):
        if sorted(node, key=int) != [str(i) for i in range(len(node))]:
            raise ConfigError(f"override: list index out of range (items: {len(node)})")
        return [_lists_back(node[str(i)]) for i in range(len(node))]
    if isinstance(node, dict):
        return {k: _lists_back(v) for k, v in node.items()}
    return node


# ----------------------------------------------------------------------------- the runs


def learning_tasks(s: Setting) -> list[str]:
    """The setting's learning tasks: as it names them, else the held-out part of its own data."""
    return list(s.learning if s.learning is not None else DEFAULT_LEARNING)


def run_path(out: str | Path, name: str) -> Path:
    """Where the study in `out` keeps the run called `name` (runs/<setting>/<method>/<duration>)."""
    return StudyLayout(out).run(name)


def plan_runs(exp: ExperimentConfig, out: str | Path, chosen: dict[tuple[str, str], float] | None = None
              ) -> list[RunPlan]:
    """Every run of the study, validated; bad input fails here, before any training, naming the key. `chosen`:
    (setting, method label) -> the LR the lr_sweep picked (ftlab.experiment.study.sweep_picks, by the report's rule
    ftlab.report.select.best_lrs); a run whose LR is "sweep" and has no pick yet is planned with waits_for_sweep.
    Planning imports no torch: labels and step counts are functions of the config (ftlab.config)."""
    if not exp.settings:
        raise ConfigError("settings: the experiment has no settings (a target domain in a regime)")
    if not exp.methods:
        raise ConfigError("methods: the grid is empty; list at least one method (e.g. {name: full})")
    names = [s.name for s in exp.settings]
    for i, s in enumerate(exp.settings):
        if not s.durations:
            raise ConfigError(f"settings[{i}].durations: empty; list epochs (IFT) or token budgets (CPT)")
        if sorted(set(s.durations)) != sorted(s.durations) or any(d <= 0 for d in s.durations):
            raise ConfigError(f"settings[{i}].durations: expected distinct positive values, got {s.durations}")
        if names.count(s.name) > 1:
            raise ConfigError(f"settings[{i}].name: duplicate setting name {s.name!r}")
        if s.learning == []:
            raise ConfigError(f"settings[{i}].learning: empty, so nothing would measure what the runs learn; leave it "
                              f"out for the held-out part of the setting's own data ({', '.join(DEFAULT_LEARNING)}), "
                              "or name tasks: heldout_match (short answers), built-in tasks (ftlab eval --help), "
                              "gsm8k, humaneval or lm_eval:<task>")
        if s.kl_domain is not None and s.kl_domain not in PROMPT_DOMAINS:
            raise ConfigError(f"settings[{i}].kl_domain: expected one of {', '.join(PROMPT_DOMAINS)}, "
                              f"got {s.kl_domain!r}")
    methods = [m for i, entry in enumerate(exp.methods) for m in _methods(entry, i)]
    labels = [label for label, _, _ in methods]
    for label in labels:
        if labels.count(label) > 1:
            raise ConfigError(f"methods: duplicate method {label!r}; give one of the entries a `label`")

    sweeping = _swept(exp, methods)
    plans: list[RunPlan] = []
    for s in exp.settings:
        for label, method, entry_lr in methods:
            lr, waits = _pick(exp, s, label, method, _lr(exp, s, label, method, entry_lr), chosen)
            plans += _duration_runs(exp, s, "grid", label, method, lr, {}, out, waits=waits)
    if exp.regularization is not None:
        reg = exp.regularization
        s = _setting(exp, reg.setting, "regularization.setting")
        full = {"name": "full"}
        entry_lr = next((e for lab, m, e in methods if m["name"] == "full"), None)
        lr, waits = _pick(exp, s, "full", full, _lr(exp, s, "full", full, entry_lr), chosen)
        for wd in reg.weight_decay:
            plans += _duration_runs(exp, s, "regularization", f"full-wd{wd:g}", full, lr,
                                    {"train": {"weight_decay": wd}}, out, waits=waits)
        for p in reg.attention_dropout:
            plans += _duration_runs(exp, s, "regularization", f"full-attndrop{p:g}", full, lr,
                                    {"model": {"attention_dropout": p}}, out, waits=waits)
    for s in sweeping:
        duration = exp.lr_sweep.duration if exp.lr_sweep.duration is not None else min(s.durations)
        one = Setting(**{**s.__dict__, "durations": [duration], "durations_as": "runs"})
        for label, method, _ in methods:
            for lr in (exp.lr_sweep.full if method["name"] == "full" else exp.lr_sweep.lora):
                plans += _duration_runs(exp, one, "lr-sweep", label, method, lr, {}, out, tag=f"lr{lr:g}")
    names = [p.name for p in plans]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"run {name}: two different runs would share this name; give the method a `label`")
    # Runs of identical configurations (a sweep's run at the grid's LR and duration) all stay, each in its study
    # group; the study trains the configuration once and copies the finished run (Runner.run_one).
    return _seeded(exp, plans, out)


def same_training(a: RunPlan, b: RunPlan) -> bool:
    """Two runs that train identically: the same resolved config but for where they write."""
    def key(p: RunPlan) -> str:
        cfg = to_dict(p.cfg)
        cfg["output"].pop("dir")
        return json.dumps(cfg, sort_keys=True)

    return key(a) == key(b) and a.branch_of is None and b.branch_of is None


SWEEP = "sweep"  # a settings.lr value: the lr_sweep's best LR for that method


def _swept(exp: ExperimentConfig, methods: list) -> list[Setting]:
    """The settings the lr_sweep runs in: its `setting`, else every setting whose lr asks for "sweep" (else the
    first); a setting that asks for "sweep" without a sweep is an error naming the key."""
    asking = [s for s in exp.settings if SWEEP in s.lr.values()]
    if exp.lr_sweep is None:
        if asking:
            key = next(k for k, v in asking[0].lr.items() if v == SWEEP)
            raise ConfigError(f"settings[{asking[0].name}].lr.{key}: \"sweep\" needs an lr_sweep with the LRs to try")
        return []
    sweep = exp.lr_sweep
    chosen = [_setting(exp, sweep.setting, "lr_sweep.setting")] if sweep.setting or not asking else asking
    if len(chosen) > 1 and sweep.duration is not None:
        raise ConfigError("lr_sweep.duration: with several settings swept, each sweeps at its own shortest "
                          "duration; leave duration out or name one setting")
    for s in asking:
        if s not in chosen:
            raise ConfigError(f"settings[{s.name}].lr: asks for \"sweep\" but lr_sweep.setting is {sweep.setting!r}")
    kinds = {m["name"] for _, m, _ in methods}
    for kind in kinds:
        if not getattr(sweep, kind):
            raise ConfigError(f"lr_sweep.{kind}: list the LRs to try for {kind} (the grid has {kind} methods)")
    return chosen


def _pick(exp: ExperimentConfig, s: Setting, label: str, method: dict, lr, chosen) -> tuple[float, bool]:
    """(the LR a run trains at, whether it still waits for the sweep): a number stays; "sweep" is the sweep's pick
    for (setting, label) once known, else the sweep's first LR as a stand-in (the run waits)."""
    if lr != SWEEP:
        return lr, False
    if chosen and (s.name, label) in chosen:
        return chosen[s.name, label], False
    return (exp.lr_sweep.full if method["name"] == "full" else exp.lr_sweep.lora)[0], True


def _seeded(exp: ExperimentConfig, plans: list[RunPlan], out: str | Path) -> list[RunPlan]:
    """Each run once per seed of exp.seeds (runs/.../seed-<s> when there are several), else as planned."""
    if not exp.seeds:
        return plans
    if len(exp.seeds) != len(set(exp.seeds)):
        raise ConfigError(f"seeds: expected distinct seeds, got {exp.seeds}")
    out_plans = []
    for seed in exp.seeds:
        for p in plans:
            name = p.name if len(exp.seeds) == 1 else f"{p.name}/seed-{seed}"
            branch = p.branch_of if p.branch_of is None or len(exp.seeds) == 1 else f"{p.branch_of}/seed-{seed}"
            cfg = replace(p.cfg, train=replace(p.cfg.train, seed=seed),
                          output=replace(p.cfg.output, dir=str(run_path(out, name))))
            out_plans.append(replace(p, name=name, cfg=cfg, branch_of=branch))
    return out_plans


def _methods(entry: MethodEntry, i: int) -> list[tuple[str, dict, float | None]]:
    where = f"methods[{i}]"
    if entry.name == "full":
        if entry.ranks:
            raise ConfigError(f"{where}.ranks: full finetuning has no rank")
        return [(entry.label or "full", {"name": "full", **entry.options}, entry.lr)]
    if not entry.ranks:
        raise ConfigError(f"{where}.ranks: list at least one LoRA rank, e.g. [16, 64, 256]")
    out = []
    for r in entry.ranks:
        for alpha in entry.alphas or [None]:
            method = {"name": entry.name, "rank": r, "alpha": alpha, "targets": entry.targets, **entry.options}
            label = method_label(from_dict(MethodConfig, method, f"{where}.options"))
            if entry.label:
                label += f"-{entry.label}"
            out.append((label, method, entry.lr))
    return out


def _setting(exp: ExperimentConfig, name: str | None, key: str) -> Setting:
    if name is None:
        return exp.settings[0]
    for s in exp.settings:
        if s.name == name:
            return s
    raise ConfigError(f"{key}: no setting named {name!r}; settings: {', '.join(s.name for s in exp.settings)}")


def _lr(exp: ExperimentConfig, s: Setting, label: str, method: dict, entry_lr: float | None) -> float | str:
    """The LR of a method in a setting: settings.lr by the method's label (lora-r256-attn), by its rank (lora-r256:
    the paper lowers r=256's LR whatever the targets), by its name (lora, full); else methods[].lr, else
    defaults.train.lr."""
    name = method["name"]
    keys = (label, name) if name == "full" else (label, f"{name}-r{method['rank']}", name)
    if name == "qlora":  # QLoRA trains a LoRA adapter: LoRA's LR unless the setting names QLoRA's
        keys += (f"lora-r{method['rank']}", "lora")
    for key in dict.fromkeys(keys):
        if key in s.lr:
            value = s.lr[key]
            if value == SWEEP:
                return SWEEP
            try:
                value = float(value)  # YAML 1.1 reads 1e-3 as a string
            except (TypeError, ValueError):
                value = -1.0
            if value <= 0 or isinstance(s.lr[key], bool):
                raise ConfigError(f"settings[{s.name}].lr.{key}: expected a positive number, got {s.lr[key]!r}")
            return value
    if entry_lr is not None:
        return entry_lr
    default = exp.defaults.get("train", {}).get("lr")
    if default is None:
        raise ConfigError(f"no learning rate for {label} in setting {s.name}: set settings.lr.{name}, "
                          f"methods[].lr or defaults.train.lr")
    return float(default)


def _duration_runs(exp: ExperimentConfig, s: Setting, group: str, label: str, method: dict, lr: float,
                   extra: dict, out: str | Path, tag: str | None = None, waits: bool = False) -> list[RunPlan]:
    """The runs one (setting, method, LR) needs to cover the setting's durations."""
    regime = s.data.get("regime", exp.defaults.get("data", {}).get("regime", "ift"))
    prefix = f"{s.name}/{label}" + (f"/{tag}" if tag else "")
    durations = sorted(s.durations)

    def plan(name: str, train: dict, covers: list[float], **kw) -> RunPlan:
        cfg = _run_config(exp, s, method, {"train": {"lr": lr, **train}}, extra, str(run_path(out, name)),
                          where=f"run {name}")
        diversity = exp.analyses.diversity if s.diversity is None else s.diversity
        return RunPlan(name, s.name, group, label, lr, cfg, covers, learning=learning_tasks(s),
                       diversity=list(diversity), kl_domain=_kl_domain(s, cfg), waits_for_sweep=waits, **kw)

    if regime == "ift":
        if s.durations_as == "checkpoints":
            return [plan(f"{prefix}/{duration_name('epochs', durations[-1])}", {"epochs": durations[-1],
                         "tokens": None, "checkpoints": durations[:-1]}, durations)]
        return [plan(f"{prefix}/{duration_name('epochs', d)}", {"epochs": d, "tokens": None, "checkpoints": []}, [d])
                for d in durations]
    # CPT: one long WSD run; every shorter budget restarts from its state at the start of its own cooldown.
    probe = _run_config(exp, s, method, {"train": {"lr": lr}}, extra, "probe", where=f"setting {s.name}")
    t = probe.train
    longest = durations[-1]
    steps = {d: budget_steps(d, t.global_batch, probe.data.seq_len) for d in durations}
    cool_start = {d: steps[d] - cooldown_steps(t, steps[d]) for d in durations}
    # absolute, so every branch warms up exactly as the long run did; a budget whose cooldown starts inside the
    # warmup cools down from wherever the warmup got to (optim.lr_factor)
    warm = max(1, warmup_steps(t, steps[longest]))  # >= 1: read as steps, not as a fraction of a branch's
    common = {"schedule": "wsd", "warmup": warm, "epochs": None}
    long_name = f"{prefix}/{duration_name('tokens', longest)}"
    keep = sorted({cool_start[d] for d in durations[:-1] if cool_start[d] > 0})
    runs = [plan(long_name, {**common, "tokens": longest, "checkpoints": [], "keep_states": keep}, [longest])]
    for d in durations[:-1]:
        branch = {"branch_of": long_name, "branch_step": cool_start[d]} if cool_start[d] > 0 else {}
        runs.append(plan(f"{prefix}/{duration_name('tokens', d)}", {**common, "tokens": d, "checkpoints": []}, [d],
                         **branch))
    return runs


def _run_config(exp: ExperimentConfig, s: Setting, method: dict, lr: dict, extra: dict, out: str,
                where: str) -> RunConfig:
    data = copy.deepcopy(exp.defaults)
    for key in data:
        if key not in ("model", "data", "method", "train", "output"):
            raise ConfigError(f"defaults.{key}: unknown section; expected model, data, method, train or output")
    _merge(data, {"model": copy.deepcopy(exp.model)})
    _merge(data, {"data": copy.deepcopy(s.data), "train": copy.deepcopy(s.train)})
    _merge(data, {"method": {k: v for k, v in method.items() if v is not None or k != "alpha"}})
    _merge(data, copy.deepcopy(lr))
    _merge(data, copy.deepcopy(extra))
    data.setdefault("output", {})["dir"] = out
    try:
        cfg = from_dict(RunConfig, data)
        resolve_paths(cfg, exp.base_dir)
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _kl_domain(s: Setting, cfg: RunConfig) -> str | None:
    """Whose held-out prompts KL is measured on: the setting's kl_domain, else its built-in data's domain when that
    is a target domain (math, code); None (KL skipped) for the user's own data or the source domain."""
    domain = s.kl_domain or data_domain(cfg.data.path)
    return domain if domain in PROMPT_DOMAINS else None


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
