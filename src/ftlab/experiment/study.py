"""`ftlab run EXP.yaml --out DIR`: a whole study, resumable: train, evaluate, analyse, store, report.

    DIR/experiment.yaml       the experiment as run (a second `ftlab run` with another one is refused)
    DIR/results.sqlite        the results store (ftlab.experiment.store): runs, checkpoints, metrics, spectra
    DIR/base/<setting>/       the base model's evaluation per setting (eval.json)
    DIR/runs/<setting>/<method>/<duration>/   each run (ftlab train's layout) with eval.json, spectrum.json, ...
    DIR/report.html           the report (ftlab report DIR)

Every stage is skipped when the store already records it, so the same command after a kill (or a crash) picks up
where it stopped; a run that fails is recorded with its reason and the others go on. The runs train one after
another in this process, or, with `--backend ray`, in parallel on a Ray cluster (ray_backend.py); either way this
process evaluates, analyses and writes the store.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ftlab.checkpoint import branch_state, write_json_atomic
from ftlab.errors import ConfigError, FtlabError, TrainingError
from ftlab.experiment.spec import ExperimentConfig, RunPlan, expand, load_experiment
from ftlab.experiment.store import BASE, Store
from ftlab.experiment.tracking import Tracker
from ftlab.experiment.tracking import require as require_tracking

if TYPE_CHECKING:
    from ftlab.experiment.ray_backend import RayOptions

LOCK = ".ftlab-run.lock"
# What training raises for a run that failed on its own (recorded with its reason; the other runs go on).
# RuntimeError: CUDA out of memory and the like.
RUN_ERRORS = (TrainingError, FtlabError, RuntimeError)


class StudyDir:
    """The experiment directory, locked against a second runner."""

    def __init__(self, out: str | Path, exp_path: str | Path, overrides: list[str]):
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FtlabError(f"{self.path} is in use by another `ftlab run`; wait for it to finish or choose "
                             f"another --out (see `ftlab status {self.path}`)") from None
        saved = self.path / "experiment.yaml"
        text = Path(exp_path).read_text()
        record = {"source": str(Path(exp_path).resolve()), "overrides": list(overrides), "text": text}
        if saved.exists():
            old = yaml.safe_load(saved.read_text())
            if (old.get("text"), old.get("overrides")) != (text, list(overrides)):
                self._lock.close()
                raise ConfigError(f"{self.path} holds a study of another experiment ({old.get('source')} with "
                                  f"overrides {old.get('overrides')}); use another --out")
        else:
            tmp = saved.with_name("experiment.yaml.tmp")
            tmp.write_text(yaml.safe_dump(record, sort_keys=False))
            tmp.replace(saved)

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
    plans = expand(exp, out)  # every run validated before anything starts
    _check_tasks(exp)
    require_tracking(exp.tracking)  # a missing backend fails before the study directory is made
    if ray is not None:
        from ftlab.experiment.ray_backend import require_ray

        require_ray()  # so does a missing Ray
    study = StudyDir(out, exp_path, list(overrides))
    store = Store(study.path / "results.sqlite")
    tracker = Tracker(exp.tracking, study.path)
    try:
        print(f"ftlab run: {len(plans)} runs in {len(exp.settings)} settings -> {study.path}", flush=True)
        runner = Runner(exp, plans, study.path, store, tracker, retry_failed, nproc)
        if ray is None:
            runner.run_all()
        else:
            from ftlab.experiment.ray_backend import run_on_ray

            run_on_ray(runner, ray)
        if report:
            from ftlab.report import write_report

            path = write_report(study.path)
            print(f"ftlab run: report in {path}", flush=True)
    finally:
        tracker.close()
        store.close()
        study.close()
    return study.path


def _check_tasks(exp: ExperimentConfig) -> None:
    from ftlab.evaluate.tasks import expand as expand_tasks

    for s in exp.settings:
        try:
            expand_tasks([*s.learning, *exp.forgetting, *exp.analyses.diversity])
        except FtlabError as e:
            raise ConfigError(f"settings[{s.name}]: {e}") from None


def train_plan(plan: RunPlan, root: Path, nproc: int = 1) -> None:
    """Train one run of the study (a CPT branch first takes its long run's kept state); resumes a killed run.

    nproc > 1: the run trains sharded over that many processes (FSDP under torchrun), in child processes."""
    from ftlab.train import train

    if plan.branch_of is not None:
        kept = root / "runs" / plan.branch_of / "kept" / f"step-{plan.branch_step:08d}"
        if not kept.exists():
            raise FtlabError(f"{kept}: the state {plan.name} restarts from is missing")
        branch_state(kept, Path(plan.cfg.output.dir) / "state")
    if nproc > 1:
        train_processes(plan, nproc)
    else:
        train(plan.cfg)


def train_processes(plan: RunPlan, nproc: int) -> None:
    """`ftlab train <run>/launch.yaml --out <run>` under torchrun with nproc processes on this machine."""
    import subprocess

    from ftlab.config import dump_yaml
    from ftlab.distributed import check_supported, launch_command

    check_supported(plan.cfg)
    run_dir = Path(plan.cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "launch.yaml"
    tmp = config.with_name("launch.yaml.tmp")
    tmp.write_text(dump_yaml(plan.cfg))
    tmp.replace(config)
    code = subprocess.call(launch_command(nproc, str(config), [], str(run_dir)))
    if code != 0:
        raise TrainingError(f"training on {nproc} processes exited with status {code} (its messages are above)")


def failure_reason(e: BaseException) -> str:
    """The one line the store keeps for a failed run."""
    return f"{type(e).__name__}: {e}".splitlines()[0][:500]


class Runner:
    """The study's runs, in order, and everything after training: evaluation, analysis, the store."""

    def __init__(self, exp: ExperimentConfig, plans: list[RunPlan], root: Path, store: Store, tracker: Tracker,
                 retry_failed: bool = False, nproc: int = 1):
        self.exp, self.plans, self.root, self.store, self.tracker = exp, plans, root, store, tracker
        self.nproc = nproc  # processes (GPUs) each run trains on, one run after another
        self.finished = ("done",) if retry_failed else ("done", "failed")
        self.evaluator = None
        self.base_results: dict[str, dict] = {}
        runs = store.runs()
        # long runs that failed (and stay failed): their CPT branches are recorded failed without training
        self.failed_long = {p.name for p in plans if p.branch_of is None and "failed" in self.finished
                            and runs.get(p.name, {}).get("status") == "failed"}

    def todo(self) -> list[RunPlan]:
        """The runs the store does not record as finished, in the study's order."""
        done = {name for name, r in self.store.runs().items() if r["status"] in self.finished}
        return [p for p in self.plans if p.name not in done]

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
        failed = [n for n, r in self.store.runs().items() if r["status"] == "failed"]
        if failed:
            print(f"ftlab run: {len(failed)} run(s) failed: {', '.join(failed)} (reasons: ftlab status "
                  f"{self.root})", flush=True)

    # ------------------------------------------------------------------ one run

    def run_one(self, plan: RunPlan) -> None:
        self.store.put_run(plan, "running")
        self.release_evaluator()  # training here needs the device's memory
        try:
            train_plan(plan, self.root, self.nproc)
        except RUN_ERRORS as e:
            self.fail(plan, failure_reason(e), traceback.format_exc())
            return
        self.finish(plan)

    def fail(self, plan: RunPlan, reason: str, trace: str) -> None:
        """Record a run whose training failed: the reason in the store, the traceback in <run>/failure.txt."""
        self.store.put_run(plan, "failed", reason)
        print(f"ftlab run: {plan.name} failed: {reason}", flush=True)
        run_dir = Path(plan.cfg.output.dir)
        if run_dir.exists():
            (run_dir / "failure.txt").write_text(trace)
        if plan.branch_of is None:
            self.failed_long.add(plan.name)

    def branch_failed(self, plan: RunPlan) -> None:
        self.store.put_run(plan, "failed", f"the long run {plan.branch_of} it restarts from failed")

    def finish(self, plan: RunPlan) -> None:
        """A trained run: log it, evaluate and analyse its checkpoints, then record it done."""
        run_dir = Path(plan.cfg.output.dir)
        speed = _tokens_per_s(run_dir)
        self.tracker.log_run(plan, run_dir)
        for ckpt, duration in self._checkpoints(plan, run_dir):
            self.checkpoint(plan, ckpt, duration)
        self.store.put_run(plan, "done", None, speed)

    def _checkpoints(self, plan: RunPlan, run_dir: Path) -> list[tuple[Path, float]]:
        """(checkpoint dir, the duration it stands for): named checkpoints that are durations, then final/."""
        out = []
        for d in plan.durations[:-1]:
            out.append((run_dir / "checkpoints" / f"{_unit(plan)}-{d:g}", d))
        out.append((run_dir / "final", plan.durations[-1]))
        return out

    def checkpoint(self, plan: RunPlan, ckpt: Path, duration: float) -> None:
        from ftlab.evaluate.tasks import expand as expand_tasks

        base = self._base(plan)
        base_copy = Path(plan.cfg.output.dir) / "base_eval"
        if not (base_copy / "eval.json").exists():  # the report reads each run's base results beside it
            base_copy.mkdir(parents=True, exist_ok=True)
            write_json_atomic(base_copy / "eval.json", base)
            diversity = self.root / "base" / plan.setting / "diversity.json"
            if diversity.exists():
                shutil.copyfile(diversity, base_copy / "diversity.json")
        if not self.store.has_checkpoint(plan.name, ckpt.name):
            specs = expand_tasks([*plan.learning, *self.exp.forgetting], self.exp.eval.limit)
            results = self._evaluator().evaluate(ckpt, specs, self.exp.eval.data_dir, base)
            info = json.loads((ckpt / "ftlab.json").read_text())
            self.store.put_checkpoint(plan.name, ckpt.name, str(ckpt), info, duration, results["scores"])
            self.tracker.log_checkpoint(plan, ckpt.name, info, results)
        self.analyse(plan, ckpt)

    def analyse(self, plan: RunPlan, ckpt: Path) -> None:
        a = self.exp.analyses
        base_dir = self._base_model_dir(plan)
        if a.spectrum and not self.store.has_spectrum(plan.name, ckpt.name):
            from ftlab.analysis.spectrum import _document, settings_of, spectrum_of

            entry = spectrum_of(base_dir, ckpt, singular_values=a.singular_values)
            doc = _document(str(Path(base_dir).resolve()), settings_of(singular_values=a.singular_values), [entry])
            write_json_atomic(ckpt / "spectrum.json", doc)
            self.store.put_spectrum(plan.name, ckpt.name, entry["matrices"])
        for task in plan.diversity if ckpt.name == "final" else []:  # the paper: diversity of final models
            if not self.store.has_analysis(plan.name, ckpt.name, f"diversity:{task}"):
                value = self._diversity(ckpt, task, base=False)
                self.store.put_analysis(plan.name, ckpt.name, f"diversity:{task}", value)
        if a.kl and _domain(plan) and not self.store.has_analysis(plan.name, ckpt.name, "kl"):
            from ftlab.analysis.kl import kl_divergence, target_prompts

            evaluator = self._evaluator()
            model = evaluator.load(ckpt)
            texts = target_prompts(_domain(plan), a.kl_prompts)
            if hasattr(model, "disable_adapter"):  # an adapter: kl_divergence disables it for the base's logits
                value = kl_divergence(None, model, evaluator.tokenizer, texts, device=evaluator.device)
            else:
                with evaluator.plain_base() as base:
                    value = kl_divergence(base, model, evaluator.tokenizer, texts, device=evaluator.device)
            value = {k: value[k] for k in ("kl", "tokens", "texts")}
            write_json_atomic(ckpt / "kl.json", value)
            self.store.put_analysis(plan.name, ckpt.name, "kl", value)

    def _diversity(self, directory: Path, task: str, base: bool) -> dict:
        """Sample the task on a checkpoint (or the base), then count unique outputs: <dir>/diversity.json."""
        from ftlab.analysis.diversity import diversity_of
        from ftlab.evaluate.tasks import get_task

        spec = get_task(task)
        if base:
            self._evaluator().evaluate_base(directory, [spec], self.exp.eval.data_dir)
        else:
            self._evaluator().evaluate(directory, [spec], self.exp.eval.data_dir, None)
        value = diversity_of(directory, spec.name)
        write_json_atomic(directory / "diversity.json", value)
        return value

    # ------------------------------------------------------------------ the base model

    def _evaluator(self):
        if self.evaluator is None:
            from ftlab.evaluate.checkpoints import Evaluator

            self.evaluator = Evaluator(self._base_model_dir(self.plans[0]), self.exp.eval.device,
                                       self.exp.eval.batch_size)
        return self.evaluator

    def release_evaluator(self) -> None:
        """Free the evaluator's base model (bf16, on the GPU) before a run trains in this process; the next
        evaluation loads it again (seconds, against a run's minutes or hours)."""
        if self.evaluator is None:
            return
        import gc

        import torch

        self.evaluator = None
        gc.collect()  # the model's modules refer to each other (PEFT wrappers): free them now, not at some later gc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # back to the driver: --nproc runs train in child processes

    def _base_model_dir(self, plan: RunPlan) -> str:
        from ftlab.model import prepare_base

        return prepare_base(plan.cfg.model, self.root / "base")

    def _base(self, plan: RunPlan) -> dict:
        """The base model's results on this setting's tasks (evaluated once, stored under (base)/<setting>)."""
        if plan.setting not in self.base_results:
            from ftlab.evaluate.tasks import expand as expand_tasks

            specs = expand_tasks([*plan.learning, *self.exp.forgetting], self.exp.eval.limit)
            directory = self.root / "base" / plan.setting
            results = self._evaluator().evaluate_base(directory, specs, self.exp.eval.data_dir)
            self.store.put_base(plan.setting)
            if not self.store.has_checkpoint(f"{BASE}/{plan.setting}", "base"):
                self.store.put_checkpoint(f"{BASE}/{plan.setting}", "base", str(directory), {"step": 0, "tokens": 0},
                                          0.0, results["scores"])
            for task in plan.diversity:
                if not self.store.has_analysis(f"{BASE}/{plan.setting}", "base", f"diversity:{task}"):
                    value = self._diversity(directory, task, base=True)
                    self.store.put_analysis(f"{BASE}/{plan.setting}", "base", f"diversity:{task}", value)
            self.base_results[plan.setting] = results
        return self.base_results[plan.setting]


def _unit(plan: RunPlan) -> str:
    return "epochs" if plan.cfg.train.epochs is not None else "tokens"


def _domain(plan: RunPlan) -> str | None:
    """The built-in target domain whose held-out prompts KL is measured on (None for the user's own data)."""
    path = plan.cfg.data.path
    if not path.startswith("builtin:"):
        return None
    return "code" if "code" in path else "math"


def _tokens_per_s(run_dir: Path) -> float | None:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    speeds = [json.loads(line).get("tokens_per_s") for line in metrics.read_text().splitlines() if line.strip()]
    speeds = [s for s in speeds if s]
    return round(sum(speeds) / len(speeds), 1) if speeds else None

