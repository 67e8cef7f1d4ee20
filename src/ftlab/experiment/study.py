"""`ftlab run EXP.yaml --out DIR`: a whole study, resumable: train, evaluate, analyse, store, report.

    DIR/experiment.yaml       the experiment as run (a second `ftlab run` with another one is refused)
    DIR/results.sqlite        the results store (ftlab.results): every number of the study, and every planned run
    DIR/base/<setting>/       the base model's evaluation per setting
    DIR/runs/<setting>/<method>/<duration>/   each run (ftlab train's layout); each checkpoint holds what its
                              evaluation and analysis wrote (ftlab.rundir.CheckpointFiles)
    DIR/report.html           the report (ftlab report DIR), from the store alone

When the study starts, every run it plans is written to the store (status left, or waiting for the LR sweep's
pick); each run then goes running (training), evaluating, analysing and done (or failed, with its reason, while
the others go on), so `ftlab status` reads the store alone. Every stage is skipped when its artefacts or the store
already hold it, so the same command after a kill (or a crash) picks up where it stopped, and lands the same
numbers as an uninterrupted study. The runs train (launch.py) one after another in this process, or, with
`--backend ray`, in parallel on a Ray cluster (ray_backend.py, handed this module's Runner); either way this process
evaluates, analyses and writes the store.
"""

from __future__ import annotations

import fcntl
import gc
import shutil
import time
import traceback
from pathlib import Path

import torch
import yaml

from ftlab.analysis.diversity import diversity_into
from ftlab.analysis.kl import kl_into
from ftlab.analysis.merge import Options as MergeOptions
from ftlab.analysis.merge import merge_check_into
from ftlab.analysis.spectrum import BaseFactors, spectrum_into
from ftlab.analysis.steering import check_factors, steer_into
from ftlab.builtin import PROMPT_DOMAINS
from ftlab.config import read_mapping
from ftlab.errors import ConfigError, FtlabError
from ftlab.evaluate import heldout
from ftlab.evaluate.harness import read_results
from ftlab.evaluate.targets import Evaluator
from ftlab.evaluate.tasks import get_task, resolve_tasks
from ftlab.evaluate.vllm_engine import require_vllm
from ftlab.experiment.launch import RUN_ERRORS, failure_reason, train_plan
from ftlab.experiment.ray_backend import RayOptions, require_ray, run_on_ray
from ftlab.experiment.spec import ExperimentConfig, RunPlan, learning_tasks, load_experiment, plan_runs, same_training
from ftlab.experiment.tracking import Tracker
from ftlab.experiment.tracking import require as require_tracking
from ftlab.io import copy_dir, write_text
from ftlab.model import nf4_dtype, prepare_base
from ftlab.plan.study import check_study
from ftlab.report import write_report
from ftlab.report.select import best_lrs
from ftlab.results.index import base_record, index_training, measure_base, measure_checkpoint, run_record
from ftlab.results.records import FINISHED, STARTED, base_run
from ftlab.results.store import Store
from ftlab.results.study import load_study
from ftlab.rundir import RunLayout, StudyLayout, is_adapter, read_info, read_metrics


def saved_experiment(root: Path) -> dict:
    """The experiment a study was started with, as its runner saved it: {source, overrides, text}; a damaged file
    is a ConfigError naming it and what to do."""
    saved = StudyLayout(root).experiment
    fix = (f"delete it and run `ftlab run` with the study's experiment file and --out {root} again: it is written "
           "again and the study resumes")
    record = read_mapping(saved, "saved experiment", fix=fix)
    if not (isinstance(record.get("source"), str) and isinstance(record.get("text"), str)
            and isinstance(record.get("overrides", []), list)):
        raise ConfigError(f"{saved}: damaged (no source, text and overrides); {fix}")
    return record


class StudyDir:
    """The experiment directory, locked against a second runner."""

    def __init__(self, out: str | Path, exp_path: str | Path, overrides: list[str]):
        self.layout = StudyLayout(out)
        self.path = self.layout.path
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.layout.lock, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FtlabError(f"{self.path} is in use by another `ftlab run`; wait for it to finish or choose "
                             f"another --out (see `ftlab status {self.path}`)") from None
        saved = self.layout.experiment
        text = Path(exp_path).read_text()
        record = {"source": str(Path(exp_path).resolve()), "overrides": list(overrides), "text": text}
        if saved.exists():
            old = saved_experiment(self.path)
            if (old.get("text"), old.get("overrides")) != (text, list(overrides)):
                self._lock.close()
                raise ConfigError(f"{self.path} holds a study of another experiment (its {saved.name}: "
                                  f"{old.get('source')} with overrides {old.get('overrides')}); use another --out")
        else:
            write_text(saved, yaml.safe_dump(record, sort_keys=False))

    def close(self) -> None:
        self._lock.close()


def run_experiment(exp_path: str | Path, out: str | Path, overrides: list[str] = (),
                   report: bool = True, retry_failed: bool = False, ray: RayOptions | None = None,
                   nproc: int = 1) -> Path:
    """Run (or resume) the study; `ray` sends the training of its runs to a Ray cluster (None: train here, each
    run on `nproc` processes of this machine, sharded with FSDP when nproc > 1)."""
    if nproc < 1 or (nproc > 1 and ray is not None):
        raise ConfigError(f"--nproc: expected 1 or more, and 1 with --backend ray (a Ray task trains on one "
                          f"device); got {nproc}")
    exp = load_experiment(exp_path, list(overrides))
    plans = plan_runs(exp, out)  # every run validated before anything starts
    check_tasks(exp)
    check_factors("analyses.interpolation", exp.analyses.interpolation)
    check_factors("analyses.intruders", exp.analyses.intruders)
    require_tracking(exp.tracking)  # a missing backend fails before the study directory is made
    if ray is not None:
        require_ray()  # so does a missing Ray
    if exp.eval.engine == "vllm":
        require_vllm()  # and a missing vLLM
    check_study(exp, exp_path, out, nproc, ray is not None)  # every input, and each run's memory: printed, refused
    study = StudyDir(out, exp_path, list(overrides))
    store = Store(study.layout.store)
    tracker = Tracker(exp.tracking, study.path)
    try:
        print(f"ftlab run: {len(plans)} runs in {len(exp.settings)} settings -> {study.path}", flush=True)
        _note_skipped_kl(exp, plans)
        store.put_meta(STARTED, repr(time.time()))
        runner = Runner(exp, plans, study.path, store, tracker, retry_failed, nproc)
        runner.plan()
        while True:  # once more after an LR sweep, for the runs that train at its pick
            if ray is None:
                runner.run_all()
            else:
                run_on_ray(runner, ray)
            waiting = [p for p in runner.plans if p.waits_for_sweep]
            replanned = plan_runs(exp, out, sweep_picks(store, runner.plans)) if waiting else runner.plans
            if not waiting or sum(p.waits_for_sweep for p in replanned) == len(waiting):
                break
            runner.plans = replanned
            runner.plan()
        for plan in runner.plans:
            if plan.waits_for_sweep:
                print(f"ftlab run: {plan.name} not trained: no LR of its sweep finished with a learning score",
                      flush=True)
        if report:
            path = write_report(study.path)
            print(f"ftlab run: report in {path}", flush=True)
    finally:
        tracker.close()
        store.close()
        study.close()
    return study.path


def failed_runs(root: str | Path) -> dict[str, str]:
    """The study's failed runs and why, from its store (ftlab run exits 1 when there is one)."""
    with Store(StudyLayout(Path(root)).store) as store:
        return {name: r.reason or "" for name, r in store.runs().items() if r.status == "failed"}


def sweep_picks(store: Store, plans: list[RunPlan]) -> dict[tuple[str, str], float]:
    """(setting, method label) -> the LR the study's lr_sweep picked, by the report's own rule (select.best_lrs: the
    LR whose runs learned most at the sweep's duration, mean over seeds, ties to the smaller), over each method's
    sweep runs once every LR of that sweep is done or failed."""
    sweep = [p for p in plans if p.group == "lr-sweep"]
    runs = store.runs()
    finished = {(p.setting, p.method) for p in sweep}
    finished -= {(p.setting, p.method) for p in sweep if p.name not in runs or runs[p.name].status not in FINISHED}
    rows = [r for r in load_study(store).points()
            if r.grp == "lr-sweep" and r.learning is not None and (r.setting, r.label) in finished]
    return best_lrs(rows, key=lambda r: (r.setting, r.label))


def check_tasks(exp: ExperimentConfig) -> None:
    for s in exp.settings:
        try:
            resolve_tasks([*learning_tasks(s), *exp.forgetting, *exp.analyses.diversity])
        except FtlabError as e:
            raise ConfigError(f"settings[{s.name}]: {e}") from None


def _note_skipped_kl(exp: ExperimentConfig, plans: list[RunPlan]) -> None:
    """Say once per setting that KL is not measured where the runs have no target-domain prompts to measure it on."""
    if not exp.analyses.kl:
        return
    for setting in dict.fromkeys(p.setting for p in plans if p.kl_domain is None):
        print(f"ftlab run: settings[{setting}]: KL(base || finetuned) is skipped: its data is not a built-in target "
              f"domain; set the setting's kl_domain ({' or '.join(PROMPT_DOMAINS)}) to measure it on that domain's "
              f"held-out prompts", flush=True)


class Runner:
    """The study's runs, in order, and everything after training: evaluation and analysis write artefacts into each
    checkpoint, then ftlab.results.index puts their numbers into the store (the checkpoint's row last, so its
    presence means the checkpoint is done)."""

    def __init__(self, exp: ExperimentConfig, plans: list[RunPlan], root: Path, store: Store, tracker: Tracker,
                 retry_failed: bool = False, nproc: int = 1):
        self.exp, self.plans, self.root, self.store, self.tracker = exp, plans, root, store, tracker
        self.layout = StudyLayout(root)
        self.nproc = nproc  # processes (GPUs) each run trains on, one run after another
        self.finished = ("done",) if retry_failed else ("done", "failed")
        self.evaluator = None
        self.bases: set[str] = set()  # settings whose base model is measured
        self.factors = BaseFactors()  # the spectrum's base SVDs: once per matrix for the whole study
        self._status: dict[str, str] = {}  # run -> the status this process last recorded
        runs = store.runs()
        # long runs that failed (and stay failed): their CPT branches are recorded failed without training
        self.failed_long = {p.name for p in plans if p.branch_of is None and "failed" in self.finished
                            and p.name in runs and runs[p.name].status == "failed"}

    def plan(self) -> None:
        """Every planned run into the store (left, or waiting for the LR sweep's pick) unless it has started: what
        `ftlab status` shows of the runs to come."""
        self.store.put_planned([run_record(p.name, p.setting, p.group, p.method, p.cfg,
                                           "waiting" if p.waits_for_sweep else "left") for p in self.plans])

    def todo(self) -> list[RunPlan]:
        """The runs the store does not record as finished, in the study's order (not those still waiting for the LR
        sweep's pick)."""
        done = {name for name, r in self.store.runs().items() if r.status in self.finished}
        return [p for p in self.plans if p.name not in done and not p.waits_for_sweep]

    def run_all(self) -> None:
        """The local backend: each run in turn, in this process."""
        for plan in self.todo():
            if plan.branch_of in self.failed_long:
                self.branch_failed(plan)
                continue
            print(f"ftlab run: [{self.plans.index(plan) + 1}/{len(self.plans)}] {plan.name}", flush=True)
            self.run_one(plan)
        self.summary()

    def summary(self) -> None:
        failed = [n for n, r in self.store.runs().items() if r.status == "failed"]
        if failed:
            print(f"ftlab run: {len(failed)} run(s) failed: {', '.join(failed)} (reasons: ftlab status "
                  f"{self.root})", flush=True)

    def record(self, plan: RunPlan, status: str, reason: str | None = None) -> None:
        """The run's row in the store, with this status (ftlab.results.records: running, evaluating, analysing,
        done, failed)."""
        self.store.put_run(run_record(plan.name, plan.setting, plan.group, plan.method, plan.cfg, status, reason))
        self._status[plan.name] = status

    def phase(self, plan: RunPlan, status: str) -> None:
        """Record what the study is doing with the run (evaluating, analysing) when that changes."""
        if self._status.get(plan.name) != status:
            self.record(plan, status)

    # ------------------------------------------------------------------ one run

    def run_one(self, plan: RunPlan) -> None:
        self.record(plan, "running")
        self.release_evaluator()  # training here needs the device's memory
        self._copy_twin(plan)
        try:
            train_plan(plan, self.root, self.nproc)
        except RUN_ERRORS as e:
            self.fail(plan, failure_reason(e), traceback.format_exc())
            return
        self.finish(plan)

    def _copy_twin(self, plan: RunPlan) -> None:
        """A run that trains exactly as a finished run of the study (a sweep's run at the grid's LR and duration)
        starts from a copy of it: training then finds it complete, and its own evaluation reuses what was measured."""
        target = RunLayout(plan.cfg.output.dir)
        if target.path.exists():
            return
        done = {name for name, r in self.store.runs().items() if r.status == "done"}
        twin = next((p for p in self.plans if p.name in done and same_training(p, plan)), None)
        if twin is not None:
            print(f"ftlab run: {plan.name} trains as {twin.name} did: copied from it", flush=True)
            copy_dir(RunLayout(twin.cfg.output.dir).path, target.path, ignore=shutil.ignore_patterns(target.lock.name))

    def fail(self, plan: RunPlan, reason: str, trace: str) -> None:
        """Record a run whose training failed: the reason in the store, the traceback in <run>/failure.txt."""
        self.record(plan, "failed", reason)
        print(f"ftlab run: {plan.name} failed: {reason}", flush=True)
        run = RunLayout(plan.cfg.output.dir)
        if run.path.exists():
            write_text(run.failure, trace)
        if plan.branch_of is None:
            self.failed_long.add(plan.name)

    def branch_failed(self, plan: RunPlan) -> None:
        self.record(plan, "failed", f"the long run {plan.branch_of} it restarts from failed")

    def finish(self, plan: RunPlan) -> None:
        """A trained run: log it, evaluate and analyse its checkpoints, then record it done with its cost."""
        run = RunLayout(plan.cfg.output.dir)
        self.phase(plan, "evaluating")
        self.tracker.log_run(plan, run.path)
        for ckpt, duration in self._checkpoints(plan, run):
            self.evaluate_checkpoint(plan, ckpt, duration)
        self.steer(plan, run)
        self.record(plan, "done")
        index_training(self.store, plan.name, run.path)

    def _checkpoints(self, plan: RunPlan, run: RunLayout) -> list[tuple[Path, float]]:
        """(checkpoint dir, the duration it stands for): named checkpoints that are durations, then final/. A run
        that train.stop_at_forgetting stopped has the checkpoints it reached, and its final/ stands for the duration
        it trained (epochs or tokens at the stop)."""
        unit = plan.cfg.train.unit
        listed = [(run.checkpoint(unit, d), d) for d in plan.durations[:-1]] + [(run.final, plan.durations[-1])]
        if not any("stopped" in r for r in read_metrics(run.path)[-1:]):
            return listed
        info = read_info(run.final)
        return [(c, d) for c, d in listed[:-1] if c.exists()] + [(run.final, info["epoch" if unit == "epochs" else
                                                                                   "tokens"])]

    def evaluate_checkpoint(self, plan: RunPlan, ckpt: Path, duration: float) -> None:
        """Evaluate and analyse one checkpoint of a trained run into its directory, then index it (unless the store
        has it: every step below skips what its files already hold, so a killed study redoes only the rest)."""
        self._base(plan)
        if self.store.has_checkpoint(plan.name, ckpt.name):
            return
        self.phase(plan, "evaluating")
        self._evaluator(ckpt).evaluate(ckpt, self._specs(plan), self.exp.eval.data_dir)
        self.phase(plan, "analysing")
        self.analyse(plan, ckpt)
        result = measure_checkpoint(plan.name, ckpt, duration)
        self.store.put_checkpoint(result)
        self.tracker.log_checkpoint(plan, result)

    def steer(self, plan: RunPlan, run: RunLayout) -> None:
        """Steering without training (analyses.interpolation, analyses.intruders) of a grid run at its setting's
        longest duration, its final checkpoint (analyses.steer: all, every checkpoint of every grid run): each
        steered copy written into the run's steered/ (ftlab.analysis.steering), evaluated on the setting's learning
        tasks and its forgetting tasks (only those of the held-out source loss where the study measures it: the
        instrument the steering findings read, at a fraction of the benchmarks' cost), and stored as a steered row.
        DoRA is not steered (its change is not linear in B), nor a full or QLoRA run's intruders."""
        a, m = self.exp.analyses, plan.cfg.method
        longest = max(d for s in self.exp.settings if s.name == plan.setting for d in s.durations)
        if plan.group != "grid" or m.dora or (a.steer == "final" and plan.durations[-1] != longest):
            return
        kinds = [("interp", f) for f in a.interpolation]
        kinds += [("intruders", f) for f in a.intruders if m.name == "lora"]
        checkpoints = self._checkpoints(plan, run)
        for ckpt, duration in checkpoints[-1:] if a.steer == "final" else checkpoints:
            for kind, factor in kinds:
                if self.store.has_checkpoint(plan.name, run.steered_checkpoint(ckpt.name, kind, factor).name):
                    continue
                self.phase(plan, "analysing")
                steered = steer_into(self._base_model_dir(plan), ckpt, kind, factor)
                self._evaluator(steered).evaluate(steered, self._steer_tasks(plan), self.exp.eval.data_dir)
                self.store.put_checkpoint(measure_checkpoint(plan.name, steered, duration))

    def _steer_tasks(self, plan: RunPlan) -> list:
        """What a steered checkpoint is evaluated on: the learning tasks, and the forgetting tasks of the held-out
        source loss where the study has one (else every forgetting task)."""
        learning = resolve_tasks(plan.learning, self.exp.eval.limit)
        forgetting = [t for t in resolve_tasks(self.exp.forgetting, self.exp.eval.limit) if t not in learning]
        losses = [t for t in forgetting if not isinstance(t, str) and t.role == "source_loss"]
        return learning + (losses or forgetting)

    def _specs(self, plan: RunPlan) -> list:
        """The tasks a checkpoint is evaluated on: _tasks, but an LR sweep's runs only learning (they are there to
        pick an LR by it)."""
        return self._tasks(plan, forgetting=plan.group != "lr-sweep")

    def _tasks(self, plan: RunPlan, forgetting: bool = True) -> list:
        """Its setting's learning tasks, and (forgetting) the study's forgetting tasks; the held-out tasks read its
        own data's held-out part."""
        specs = resolve_tasks([*plan.learning, *(self.exp.forgetting if forgetting else [])], self.exp.eval.limit)
        return [heldout.bind(spec, plan.cfg.data, plan.cfg.train.seed) for spec in specs]

    def analyse(self, plan: RunPlan, ckpt: Path) -> None:
        """The analyse stage, beside the checkpoint's evaluation: its spectrum, its samples of the diversity tasks
        (final models, as the paper) and its KL to the base (none of these for an LR sweep's runs: they are there to
        pick an LR), then the diversity of every sampled task it was evaluated on; with analyses.merge, a LoRA
        checkpoint merged into its base against the adapter (merge_check.json). Each is reused when there."""
        a = self.exp.analyses
        if plan.group != "lr-sweep":
            if a.spectrum:
                spectrum_into(self._base_model_dir(plan), ckpt, singular_values=a.singular_values, factors=self.factors)
            if ckpt.name == "final" and plan.diversity:
                self._evaluator(ckpt).evaluate(ckpt, [get_task(t) for t in plan.diversity], self.exp.eval.data_dir)
            if a.kl and plan.kl_domain:
                kl_into(self._evaluator(ckpt), ckpt, plan.kl_domain, a.kl_prompts)
            if a.merge and is_adapter(ckpt):
                self.release_evaluator()  # the check loads its own models, in fp32 and in bf16
                e = self.exp.eval
                own = [t for t in self._tasks(plan) if not isinstance(t, str)]  # lm_eval tasks keep no records
                merge_check_into(ckpt, self._base_model_dir(plan), own, MergeOptions(e.data_dir, e.device, e.batch_size))
        diversity_into(ckpt)

    # ------------------------------------------------------------------ the base model

    def _evaluator(self, ckpt: Path | None = None) -> Evaluator:
        """The evaluator for `ckpt` (None: the base): the base as evaluation loads it, or in 4-bit NF4 for a QLoRA
        adapter (one of the two held at a time); its generation tasks sample on eval.engine."""
        four_bit = nf4_dtype(ckpt) if ckpt is not None and is_adapter(ckpt) else None
        if self.evaluator is not None and self.evaluator.base_4bit != four_bit:
            self.release_evaluator()
        if self.evaluator is None:
            e = self.exp.eval
            ranks = [p.cfg.method.rank for p in self.plans if p.cfg.method.adapter]
            self.evaluator = Evaluator(self._base_model_dir(self.plans[0]), e.device, e.batch_size, engine=e.engine,
                                       vllm_memory=e.vllm_memory, base_4bit=four_bit, lora_rank=max(ranks, default=0))
        return self.evaluator

    def release_evaluator(self) -> None:
        """Free the evaluator's base model (bf16, on the GPU) before a run trains in this process; the next
        evaluation loads it again (seconds, against a run's minutes or hours)."""
        if self.evaluator is None:
            return
        self.evaluator.close()
        self.evaluator = None
        gc.collect()  # the model's modules refer to each other (PEFT wrappers): free them now, not at some later gc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # back to the driver: --nproc runs train in child processes

    def _base_model_dir(self, plan: RunPlan) -> str:
        return prepare_base(plan.cfg.model, self.layout.base)

    def _base(self, plan: RunPlan) -> None:
        """The base model on this setting's tasks (and its sampled tasks), in DIR/base/<setting>, indexed once as the
        store's "(base)/<setting>"."""
        if plan.setting in self.bases:
            return
        directory = self.layout.base_eval(plan.setting)
        # every task of the setting, whichever run asks first (an LR sweep's runs are measured on learning only;
        # the base is the reference of forgetting for the whole setting)
        specs = self._tasks(plan) + [get_task(t) for t in plan.diversity]
        names = {spec if isinstance(spec, str) else spec.name for spec in specs}
        measured = {s["task"] for s in read_results(directory)["scores"]}
        if not self.store.has_checkpoint(base_run(plan.setting), "base") or not names <= measured:
            self._evaluator().evaluate_base(directory, specs, self.exp.eval.data_dir)  # only the tasks not there
            diversity_into(directory)
            self.store.put_run(base_record(plan.setting))
            self.store.put_checkpoint(measure_base(plan.setting, directory))
        self.bases.add(plan.setting)
