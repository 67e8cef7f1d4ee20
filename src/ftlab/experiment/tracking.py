"""Optional experiment tracking: every run's training curve and evaluation scores to TensorBoard, W&B or MLflow.

    tracking: {backend: tensorboard}     # in the experiment file; none (the default) needs nothing installed

The tracker reads what the run already wrote (metrics.jsonl, and a checkpoint's scores as indexed), so tracking never changes training and
a resumed study logs each run once, when it finishes. Backends are imported only when named.
"""

from __future__ import annotations

from pathlib import Path

from ftlab.errors import ConfigError
from ftlab.rundir import read_metrics

INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def require(cfg) -> None:
    """Fail, naming the key, when the backend is not installed (checked before a study starts)."""
    if cfg.backend == "none":
        return
    try:
        if cfg.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        elif cfg.backend == "wandb":
            import wandb  # noqa: F401
        elif cfg.backend == "mlflow":
            import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"tracking.backend: {cfg.backend} is not installed (pip install "
                          f"{INSTALL[cfg.backend]}), or set tracking.backend: none") from None


class Tracker:
    def __init__(self, cfg, root: Path):
        self.backend = cfg.backend
        self.project = cfg.project
        self.root = Path(root)
        self._writer = None
        if self.backend == "none":
            return
        require(cfg)
        if self.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.root / "tensorboard"))
        elif self.backend == "mlflow":
            import mlflow

            mlflow.set_tracking_uri(f"file:{(self.root / 'mlruns').resolve()}")
            mlflow.set_experiment(self.project)

    def log_run(self, plan, run_dir: Path) -> None:
        """The run's training curve (loss, lr, eval_loss by step)."""
        if self.backend == "none":
            return
        records = read_metrics(run_dir)
        series = [(r["step"], {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
                  for r in records]
        self._log(plan.name, series, {"lr": plan.lr, "method": plan.method, "setting": plan.setting})

    def log_checkpoint(self, plan, result) -> None:
        """A checkpoint's scores (result: the ftlab.results.records.CheckpointResult the store got), at its step."""
        if self.backend == "none":
            return
        values = {f"eval/{m.task}/{m.metric}": m.value for m in result.metrics if isinstance(m.value, (int, float))}
        self._log(plan.name, [(result.checkpoint.step or 0, values)], None)

    def _log(self, run: str, series: list[tuple[int, dict]], params: dict | None) -> None:
        if self.backend == "tensorboard":
            for step, values in series:
                for key, value in values.items():
                    self._writer.add_scalar(f"{run}/{key}", value, step)
            self._writer.flush()
        elif self.backend == "wandb":
            import wandb

            with wandb.init(project=self.project, name=run, dir=str(self.root), config=params or {},
                            resume="allow", id=run.replace("/", "-")) as session:
                for step, values in series:
                    session.log(values, step=step)
        elif self.backend == "mlflow":
            import mlflow

            with mlflow.start_run(run_name=run):
                if params:
                    mlflow.log_params(params)
                for step, values in series:
                    mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
