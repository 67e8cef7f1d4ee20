"""`ftlab run EXP.yaml --out DIR --backend ray`: the study's runs train in parallel as tasks on a Ray cluster.

    ftlab run EXP.yaml --out DIR --backend ray [--ray-address ADDR] [--gpus-per-run N]

This process (the driver) stays the study's runner: it holds DIR's lock, is the only writer of results.sqlite, and
evaluates and analyses each run when its training comes back, with the local backend's code (the study's Runner,
handed in by its caller as a `StudyRunner`), on its own device. A Ray task only trains: `launch.train_plan` in a
worker, holding the GPUs the run asks for.

- Dependencies: a CPT branch restarts from a state its long run keeps, so it is submitted once its long run has
  trained; if the long run failed, the branch is recorded failed without training, as locally.
- Retries: a worker that dies (killed, out of host memory, its node lost) has its task retried by Ray, up to
  MAX_RETRIES times; `train` resumes from the run directory's last saved state (output.resume_minutes), so a retry
  redoes only the steps since then and ends with the same weights. An error that training raises (bad data, a
  non-finite loss, CUDA out of memory) is not retried: the run is recorded failed with its reason, as locally.
- Files: a worker trains from the driver's working directory and writes the run directory at the path the driver
  gives, so DIR and the data must be on a filesystem every node mounts at the same path (NFS, Lustre, ...).
- The driver's GPU: where the driver evaluates on CUDA (eval.device auto or cuda) and its node gives Ray two or
  more GPUs, it holds one of them through Ray for the whole study (a placeholder actor on its node) and evaluates
  there, so no run trains beside an evaluation (a local `ray.init()` claims every GPU of the machine, and the
  driver evaluated on cuda:0 beside a run: an out-of-memory error failed that run or stopped the study).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from ftlab.errors import ConfigError, FtlabError
from ftlab.experiment.launch import RUN_ERRORS, failure_reason, train_plan
from ftlab.experiment.spec import RunPlan
from ftlab.progress import quiet_libraries
from ftlab.rundir import RunLayout
from ftlab.state import saved_step

INSTALL = "pip install 'ftlab[ray]'"
MAX_RETRIES = 3  # Ray's retries of a run whose worker died; each resumes from the run's last saved state


@dataclass
class RayOptions:
    """Where the runs train and what each asks for (`ftlab run --backend ray`)."""

    address: str | None = None  # ray.init(address=...): host:port, ray://host:10001 or auto; None: RAY_ADDRESS, else
    # a cluster already started on this machine, else a new local one. A Ray already initialized here is used as is.
    gpus_per_run: float | None = None  # None: 1 when the cluster has a GPU, else 0; a fraction shares a GPU

    def __post_init__(self) -> None:
        if self.gpus_per_run is not None and not 0 <= self.gpus_per_run <= 1:
            raise ConfigError(f"--gpus-per-run: expected 0 to 1 (a study's run trains in one process, on one "
                              f"device; a fraction shares a GPU between runs), got {self.gpus_per_run:g}")


class StudyRunner(Protocol):
    """What the Ray backend needs of the study's runner (ftlab.experiment.study.Runner): the runs, how to record a
    run's status, and what to do with a run once its training is over (evaluate and record it, or record it
    failed)."""

    plans: list[RunPlan]
    root: Path
    exp: Any  # the ExperimentConfig: its eval.device is where this process evaluates
    failed_long: set[str]  # long runs that failed: their CPT branches fail without training

    def todo(self) -> list[RunPlan]: ...
    def record(self, plan: RunPlan, status: str, reason: str | None = None) -> None: ...
    def finish(self, plan: RunPlan) -> None: ...
    def fail(self, plan: RunPlan, reason: str, trace: str) -> None: ...
    def branch_failed(self, plan: RunPlan) -> None: ...
    def summary(self) -> None: ...
    def release_evaluator(self) -> None: ...


def require_ray() -> ModuleType:
    """The ray module, imported only here (for --backend ray), or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise FtlabError(f"--backend ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def run_on_ray(runner: StudyRunner, options: RayOptions) -> None:
    """Train the study's unfinished runs as Ray tasks; evaluate, analyse and record each here as it comes back."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=options.address)
        except ConnectionError as e:
            where = options.address or os.environ.get("RAY_ADDRESS")
            raise FtlabError(f"--ray-address {where}: no Ray cluster there ({e})") from None
    try:
        with evaluation_gpu(ray, runner):
            _run_all(ray, runner, _gpus(ray, options))
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def evaluation_gpu(ray: ModuleType, runner: StudyRunner):
    """While this lasts, this process evaluates on a GPU of its node that Ray gives no run (see the module's
    docstring): where it evaluates on CUDA without naming a device and its node has two or more GPUs in Ray."""
    import torch

    eval_device = runner.exp.eval.device
    if not (eval_device == "cuda" or (eval_device == "auto" and torch.cuda.is_available())):
        if eval_device.startswith("cuda:"):
            print(f"ftlab run: eval.device is {eval_device}: Ray may train a run on that GPU too (eval.device auto "
                  "or cuda holds a GPU of its own for evaluation)", flush=True)
        yield
        return
    held = hold_gpu(ray)
    if held is None:
        yield
        return
    actor, index = held
    before = torch.cuda.current_device()
    torch.cuda.set_device(index)  # "cuda" and "auto" now mean this GPU in this process
    print(f"ftlab run: evaluation holds GPU {index} of this node; the runs train on the others", flush=True)
    try:
        yield
    finally:
        runner.release_evaluator()  # its model is on the held GPU, which Ray may give a run from now on
        torch.cuda.set_device(before)
        ray.kill(actor)


class _GpuHolder:
    """A placeholder that holds one GPU of its node for the driver's evaluation; it runs nothing on it."""

    def gpu(self):
        import ray

        return ray.get_gpu_ids()[0]


def hold_gpu(ray: ModuleType) -> tuple[Any, int] | None:
    """(the actor holding one GPU of this process's node, that GPU's index among the devices this process sees),
    or None when the node has fewer than two GPUs in Ray (with one, evaluation shares it with a training run: said
    so here)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    gpus = next((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["NodeID"] == node and n["Alive"]), 0)
    if gpus < 2:
        if gpus:
            print("ftlab run: warning: this node has one GPU in Ray, which the runs train on; evaluation shares it "
                  "with a training run (set eval.device: cpu, or use the local backend, to keep them apart)",
                  file=sys.stderr, flush=True)
        return None
    holder = ray.remote(num_gpus=1, num_cpus=0)(_GpuHolder)
    actor = holder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    gpu = str(ray.get(actor.gpu.remote()))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # Ray's ids are the node's; this process may see a subset
    if visible and gpu not in visible.split(","):
        ray.kill(actor)
        print(f"ftlab run: warning: Ray's GPU {gpu} is not among this process's CUDA_VISIBLE_DEVICES ({visible}); "
              "evaluation may share a GPU with a training run", file=sys.stderr, flush=True)
        return None
    return actor, visible.split(",").index(gpu) if visible else int(gpu)


def _gpus(ray: ModuleType, options: RayOptions) -> float:
    """GPUs per run: as asked, else 1 on a cluster with GPUs (a run trains in one process, on one device), else 0."""
    have = ray.cluster_resources().get("GPU", 0)
    gpus = options.gpus_per_run if options.gpus_per_run is not None else (1.0 if have > 0 else 0.0)
    if gpus > 0 and have == 0:  # an autoscaler may add GPU nodes; a fixed cluster never will
        print(f"ftlab run: warning: each run asks for {gpus:g} GPU and the cluster has none yet; the runs wait "
              f"until a node with a GPU joins", flush=True)
    return gpus


def _run_all(ray: ModuleType, runner: StudyRunner, gpus: float) -> None:
    """Submit every run that waits on nothing; as each comes back, submit its branches, then evaluate it."""
    task = ray.remote(train_task).options(num_gpus=gpus, max_retries=MAX_RETRIES)  # num_cpus: Ray's default 1
    todo = runner.todo()
    training = {p.name for p in todo}
    pending: dict[Any, RunPlan] = {}  # ObjectRef -> the RunPlan it trains
    waiting: dict[str, list[RunPlan]] = {}  # long run -> the branches that restart from its kept states
    cwd = os.getcwd()

    def submit(plan: RunPlan) -> None:
        print(f"ftlab run: [{runner.plans.index(plan) + 1}/{len(runner.plans)}] {plan.name} -> Ray "
              f"({gpus:g} GPU)", flush=True)
        runner.record(plan, "running")  # submitted: queued or training
        pending[task.remote(plan, str(runner.root), cwd)] = plan

    for plan in todo:
        if plan.branch_of in runner.failed_long:
            runner.branch_failed(plan)
        elif plan.branch_of in training:
            waiting.setdefault(plan.branch_of, []).append(plan)
        else:
            submit(plan)
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(ref)
            result = _result(ray, ref)
            branches = waiting.pop(plan.name, [])
            if not result["ok"]:
                runner.fail(plan, result["reason"], result["traceback"])
                for branch in branches:
                    runner.branch_failed(branch)
                continue
            if not RunLayout(plan.cfg.output.dir).plan.exists():
                raise FtlabError(f"{plan.name} trained on Ray node {result['node']}, but its run directory "
                                 f"{plan.cfg.output.dir} is not here: --out must be on a filesystem every node "
                                 f"shares")
            if result["resumed_at"] is not None:
                print(f"ftlab run: {plan.name} resumed at step {result['resumed_at']} (a worker died or the study "
                      f"was stopped)", flush=True)
            for branch in branches:  # submitted first: they train while this run is evaluated
                submit(branch)
            runner.finish(plan)
    except BaseException:  # the study stops (an error, Ctrl-C): so do its runs; the same command resumes them
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    runner.summary()


def _result(ray: ModuleType, ref: Any) -> dict:
    """A task's result; a worker that died more than MAX_RETRIES times makes a failed run, not a failed study."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, FtlabError):  # raised outside training, e.g. no shared filesystem: stop the study
            raise e.cause from None
        raise  # a bug: the study stops, as it does locally
    except ray.exceptions.RayError as e:  # WorkerCrashedError, NodeDiedError, OutOfMemoryError, ...
        reason = f"{failure_reason(e)} (retried {MAX_RETRIES} times)"
        return {"ok": False, "reason": reason[:500], "traceback": f"{type(e).__name__}, retried {MAX_RETRIES} "
                f"times: {e}\n"}


def train_task(plan: RunPlan, root: str, cwd: str) -> dict:
    """In a Ray worker: train one run from the driver's working directory, resuming from its saved state.

    Returns what the driver records (workers never write the store): {"ok": True, "resumed_at": the step of the
    state it started from, or None, "node": ...} or {"ok": False, "reason": ..., "traceback": ...}.
    """
    quiet_libraries()  # a worker process is an entry point of its own, as `ftlab` is (cli.process_settings)
    node = socket.gethostname()
    previous = os.getcwd()
    if Path(cwd).is_dir():
        os.chdir(cwd)  # relative paths (--out, data) mean what they mean to the driver
    elif not Path(plan.cfg.output.dir).is_absolute():
        raise FtlabError(f"--out {plan.cfg.output.dir} is relative to {cwd}, which does not exist on Ray node "
                         f"{node}: the study directory must be on a filesystem every node mounts at the same path")
    try:
        resumed_at = saved_step(RunLayout(plan.cfg.output.dir).state)
        try:
            train_plan(plan, Path(root))
        except RUN_ERRORS as e:
            return {"ok": False, "reason": failure_reason(e), "traceback": traceback.format_exc(), "node": node}
        return {"ok": True, "resumed_at": resumed_at, "node": node}
    finally:
        os.chdir(previous)
