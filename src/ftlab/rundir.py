"""The run directory: what one training run writes, and the one place that knows where each part of it is.

    runs/x/
      config.yaml, config.json        the resolved config (YAML to read, JSON for programs)
      .lock                           held by the process that trains the run
      metrics.jsonl                   one line per logged step (appended while training)
      plan.json                       {total_steps, tokens_per_step}, once the run knows them
      run.json                        what training cost: wall_s (summed over resumes), peak_memory_gb, device, params
      base/                           the base model of model.name=tiny, built once
      data/<kind>-<split>.jsonl       data.path=builtin:<kind>, materialised
      pissa-init/                     PiSSA's starting adapter (method.init=pissa)
      checkpoints/epochs-2/, checkpoints/tokens-250000/    the train.checkpoints, named <unit>-<value>
      final/                          the final model (full FT) or adapter (LoRA)
      state/, kept/                   the resumable state (ftlab.state); kept/: states other runs restart from
      base_eval/                      the base model's evaluation beside the run (ftlab run)
      failure.txt, launch.yaml        why training failed; the config a torchrun launch reads (ftlab run)

A checkpoint (final/ or one under checkpoints/) is a Hugging Face model directory or a PEFT adapter directory, plus
ftlab.json {step, tokens, epoch, method, base} and what evaluation and analysis write into it (CheckpointFiles):

      eval.json, eval_samples/<task>.jsonl    each task's scores; per-example records (ftlab eval)
      spectrum.json, kl.json, diversity.json  ΔW per matrix, KL to the base, unique outputs of sampled tasks (analysis)

A folder is a run when it holds config.yaml and final/ or checkpoints/. A study (`ftlab run`, StudyLayout) holds
experiment.yaml, results.sqlite, base/<setting>/ (the base model's evaluation), runs/<setting>/<label>/<duration>/
and report.html. Every artefact's name is written here once; everything that reads or writes a run or a study asks
here: training (RunDir: the lock, the config check, the metrics log), evaluation and analysis (the ordered
checkpoints, the base of a checkpoint, their files), the results index, the study and its status.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from ftlab.builtin import BUILTIN_PREFIX, builtin_model_dir, builtin_models
from ftlab.config import RunConfig, TrainConfig, dump_yaml, from_dict, parse_mapping, resolve_paths, to_dict
from ftlab.errors import ConfigError, DataError, FtlabError
from ftlab.io import TMP_SUFFIX, parse_json_line, read_json, write_json, write_text

INFO = "ftlab.json"  # in every checkpoint: where in the run it was saved, and its base
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: a checkpoint holding it is an adapter
EVAL = "eval.json"  # a checkpoint's evaluation: each task's scores, and its samples files' checksums
SAMPLES = "eval_samples"  # a checkpoint's per-example records, <task>.jsonl
SPECTRUM = "spectrum.json"  # ΔW's spectrum per matrix
KL = "kl.json"  # KL(base || finetuned) on the setting's target prompts
DIVERSITY = "diversity.json"  # unique outputs per problem of each sampled task: {task: report}
MERGE_CHECK = "merge_check.json"  # ftlab merge-check: the merged models against the adapter
MERGE_MODELS = "merge_check"  # each compared model's eval.json and eval_samples/, in merge_check/<model>/


class CheckpointFiles:
    """What evaluation and analysis write into a checkpoint (or into a base model's evaluation folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.info = self.path / INFO
        self.eval = self.path / EVAL
        self.samples_dir = self.path / SAMPLES
        self.spectrum = self.path / SPECTRUM
        self.kl = self.path / KL
        self.diversity = self.path / DIVERSITY
        self.merge_check = self.path / MERGE_CHECK
        self.merge_models = self.path / MERGE_MODELS

    def samples(self, task: str) -> Path:
        return self.samples_dir / f"{task}.jsonl"


class StudyLayout:
    """Where each part of the study at `path` lives (`ftlab run --out path`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.experiment = self.path / "experiment.yaml"  # the experiment as run: {source, overrides, text}
        self.store = self.path / "results.sqlite"  # every number (ftlab.results)
        self.lock = self.path / ".ftlab-run.lock"  # held by the study's runner
        self.report = self.path / "report.html"  # ftlab report; its data in report/
        self.base = self.path / "base"  # the prepared base model (model.name=tiny) and base/<setting>/
        self.runs = self.path / "runs"

    def run(self, name: str) -> Path:
        """runs/<name>: the run called `name` (<setting>/<label>/<duration>)."""
        return self.runs / name

    def base_eval(self, setting: str) -> Path:
        """base/<setting>: the base model evaluated on the setting's tasks."""
        return self.base / setting


class RunLayout:
    """Where each part of the run at `path` lives (paths only: nothing is read or written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_yaml = self.path / "config.yaml"
        self.config_json = self.path / "config.json"
        self.lock = self.path / ".lock"
        self.metrics = self.path / "metrics.jsonl"
        self.plan = self.path / "plan.json"
        self.cost = self.path / "run.json"
        self.base = self.path / "base"
        self.data = self.path / "data"
        self.pissa_init = self.path / "pissa-init"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"
        self.steered = self.path / "steered"
        self.state = self.path / "state"
        self.kept = self.path / "kept"
        self.base_eval = self.path / "base_eval"
        self.failure = self.path / "failure.txt"
        self.launch = self.path / "launch.yaml"

    def checkpoint(self, unit: str, value: float) -> Path:
        """checkpoints/<unit>-<value>: the checkpoint saved when the run reached `value` (epochs or tokens)."""
        return self.checkpoints / duration_name(unit, value)

    def steered_checkpoint(self, checkpoint: str, kind: str, factor: float) -> Path:
        """steered/<checkpoint>+<kind>-<factor>: a checkpoint changed without training (ftlab.analysis.steering:
        interp, intruders), evaluated like a checkpoint; its name is its row's in the store."""
        return self.steered / f"{checkpoint}+{kind}-{factor:g}"

    def builtin_data(self, kind: str, split: str) -> Path:
        return self.data / f"{kind}-{split}.jsonl"

    def kept_state(self, step: int) -> Path:
        """The state kept after optimizer step `step` (train.keep_states), which another run restarts from."""
        return self.kept / state_name(step)


STATE_PREFIX = "step-"


def state_name(step: int) -> str:
    """The folder of the resumable state saved after optimizer step `step` (under state/ and kept/)."""
    return f"{STATE_PREFIX}{step:08d}"


def state_step(name: str) -> int | None:
    """The step a state folder's name stands for (state_name's inverse); None for any other name (a temporary
    one being written)."""
    digits = name.removeprefix(STATE_PREFIX)
    return int(digits) if name.startswith(STATE_PREFIX) and digits.isdigit() else None


# ----------------------------------------------------------------------------- checkpoints


def duration_name(unit: str, value: float) -> str:
    """epochs-2, tokens-250000: a duration as a folder name (a checkpoint's under checkpoints/; in a study, the run
    that trains for it)."""
    return f"{unit}-{value:g}"


def checkpoint_duration(train: TrainConfig, name: str, info: dict) -> float | None:
    """The duration, in train.unit, that a checkpoint of a run trained with `train` stands for: from its name
    (epochs-2), the run's own duration for final/, else what its ftlab.json `info` measured (epoch or tokens)."""
    prefix = f"{train.unit}-"
    if name.startswith(prefix):
        try:
            return float(name.removeprefix(prefix))
        except ValueError:
            pass
    if name == "final":
        return float(train.duration)
    value = info.get("epoch" if train.unit == "epochs" else "tokens")
    return float(value) if isinstance(value, (int, float)) else None


def is_run(path: str | Path) -> bool:
    """A run directory: config.yaml, and final/ or checkpoints/."""
    run = RunLayout(path)
    return run.config_yaml.is_file() and (run.final.is_dir() or run.checkpoints.is_dir())


def find_runs(root: str | Path) -> list[Path]:
    """Run directories below root, sorted (a run's own subfolders are not searched, nor hidden or temporary ones)."""
    found = []
    for here, dirs, _ in os.walk(root):
        if is_run(here):
            found.append(Path(here))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(TMP_SUFFIX))
    return sorted(found)


def run_checkpoints(path: str | Path) -> list[Path]:
    """A run's finished checkpoints in training order: those under checkpoints/ by step (their ftlab.json), then
    final/. A checkpoint being written (its temporary name) is not one yet."""
    run = RunLayout(path)
    named = [c for c in run.checkpoints.glob("*") if c.is_dir() and not c.name.endswith(TMP_SUFFIX)]
    named.sort(key=lambda c: (_step(c), c.name))
    return named + ([run.final] if run.final.is_dir() else [])


def _step(checkpoint: Path) -> float:
    """A checkpoint's step, for ordering; without a readable ftlab.json it sorts last (whoever reads the file for
    its numbers reports the damage: read_info)."""
    try:
        return read_info(checkpoint).get("step", float("inf"))
    except FtlabError:
        return float("inf")


def is_adapter(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / ADAPTER_CONFIG).exists()


def read_info(checkpoint: str | Path) -> dict:
    """A checkpoint's ftlab.json ({} when it has none: a model or adapter that ftlab did not train)."""
    path = CheckpointFiles(checkpoint).info
    return read_json(path, "checkpoint info", fix=weights_remedy(checkpoint)) if path.exists() else {}


def weights_remedy(directory: str | Path) -> str:
    """What to do about a damaged file in a model or adapter directory, by where the directory is in a run."""
    directory = Path(directory).absolute()
    run = RunLayout(directory.parent)
    if directory.name == "final" and run.config_yaml.exists():
        return (f"delete {directory} and run `ftlab train` with the run's config and --out {run.path} again: it "
                "writes final/ again from the run's last resumable state")
    if directory.name == "base" and run.config_yaml.exists():
        return (f"delete {directory} and run `ftlab train` with the run's config and --out {run.path} again: the "
                "tiny base model is rebuilt identically")
    if directory.parent.name == "checkpoints" and RunLayout(directory.parent.parent).config_yaml.exists():
        return (f"delete {directory}; a checkpoint saved before the end of a run is made again only by training "
                "the run again (into a new --out)")
    if directory.parent.name == "steered":
        return f"delete {directory}; `ftlab run` on its study writes it again from the checkpoint it steers"
    return f"replace {directory} with an intact copy of the model (copy or download it again)"


def run_root(checkpoint: str | Path) -> Path | None:
    """The run a checkpoint belongs to (final/ or checkpoints/<name>/ of a folder holding config.yaml), else None."""
    checkpoint = Path(checkpoint).absolute()
    for root in (checkpoint.parent, checkpoint.parent.parent):
        if RunLayout(root).config_yaml.exists() and checkpoint.parent.name in (root.name, "checkpoints", "steered"):
            return root
    return None


def base_reference(base: str, checkpoint: str | Path) -> str:
    """How a checkpoint's ftlab.json names its base, so that a run moved or copied elsewhere still finds its own:
    a shipped model as `builtin:<name>`, a base inside the same run (the tiny base) relative to the checkpoint,
    anything else (the user's model directory, a hub id) as given."""
    path = Path(base)
    if path.is_dir():
        path = path.resolve()
        for name, directory in builtin_models().items():
            if directory.resolve() == path:
                return BUILTIN_PREFIX + name
        root = run_root(checkpoint)
        if root is not None and path.is_relative_to(root.resolve()):
            return os.path.relpath(path, Path(checkpoint).resolve())
    return base


def base_of(checkpoint: str | Path) -> str | None:
    """The base model a checkpoint was tuned from: its ftlab.json's "base" (any checkpoint of an ftlab run:
    base_reference's, read back from where the checkpoint is now), else its adapter_config.json's
    base_model_name_or_path (an adapter ftlab did not train); None when neither names one. A base named by a
    path that is not there is an FtlabError saying so (a run moved without the model it was tuned from)."""
    checkpoint = Path(checkpoint)
    recorded = read_info(checkpoint).get("base")
    if recorded:
        base = _resolve_base(recorded, checkpoint)
        where = f"{checkpoint / INFO}"
    elif is_adapter(checkpoint):
        base = read_json(checkpoint / ADAPTER_CONFIG, "adapter config").get("base_model_name_or_path") or None
        where = f"{checkpoint / ADAPTER_CONFIG} (base_model_name_or_path)"
    else:
        return None
    if base is not None and _looks_like_path(base) and not Path(base).is_dir():
        raise FtlabError(f"{checkpoint}: its base model {base} (named in {where}) is not there: moved or deleted? "
                         "Put it back, or name it: ftlab eval --base DIR, ftlab spectrum BASE CHECKPOINT")
    return base


def _resolve_base(recorded: str, checkpoint: Path) -> str:
    if recorded.startswith(BUILTIN_PREFIX):
        return str(builtin_model_dir(recorded))
    if recorded.startswith("."):  # relative to the checkpoint (base_reference)
        return str((checkpoint.absolute() / recorded).resolve())
    return recorded


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (owner/name): absolute, relative with ./ or ../, or home-relative."""
    return name.startswith(("/", ".", "~"))


# ----------------------------------------------------------------------------- metrics and plan


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order ([] before it exists). The log is appended to while the run
    trains, so a last line without its newline (cut short by a kill, or read mid-write) is left out; any other line
    that is not a JSON object in UTF-8 is damage, an FtlabError naming FILE:LINE."""
    metrics = RunLayout(path).metrics
    if not metrics.exists():
        return []
    data = metrics.read_bytes()
    lines = data.split(b"\n")  # the last item: b"" after a final newline, else a line being written
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{metrics}:{i}"
        try:
            records.append(parse_json_line(line, where))
        except DataError as e:
            if i == len(lines):
                break
            raise FtlabError(f"{where}: a damaged metrics line ({str(e).removeprefix(where + ': ')}); delete that "
                             "line (the training curve loses that point; nothing else reads it)") from None
    return records


def read_plan(path: str | Path) -> dict | None:
    """The run's plan.json ({total_steps, tokens_per_step}), or None before training has planned the run."""
    plan = RunLayout(path).plan
    fix = "delete it: `ftlab train` with the same --out writes it again (ftlab status shows 'starting' until then)"
    return read_json(plan, "run plan", fix=fix) if plan.exists() else None


def saved_configs(path: str | Path) -> dict[Path, dict]:
    """The readable copies of the config a run was trained with, {file: config as to_dict gives it}: config.yaml
    and its machine-readable twin config.json, written together from one config. Relative paths in them (runs
    saved before paths were stored absolute) are resolved from the working directory, as load_config resolves
    them. A copy that cannot be read, or a config.yaml that is a cut-short copy of what config.json holds, is
    damaged: a note names it and the other is used. Neither readable: an FtlabError names both (a ConfigError
    when both parse but hold keys this ftlab does not know: a run of another version)."""
    layout = RunLayout(path)
    copies, texts, damaged, foreign = {}, {}, [], []
    for file in (layout.config_yaml, layout.config_json):
        if not file.exists():
            continue  # config.json: not written by the earliest runs
        try:
            texts[file] = file.read_text(encoding="utf-8")
            data = json.loads(texts[file]) if file.suffix == ".json" else parse_mapping(texts[file], file)
        except (ConfigError, json.JSONDecodeError, UnicodeDecodeError) as e:
            damaged.append(f"{file} ({e})")
            continue
        try:
            copies[file] = from_dict(RunConfig, data)
        except ConfigError as e:
            foreign.append(f"{file} ({e})")
    if len(copies) == 2 and _cut_short(texts[layout.config_yaml], copies[layout.config_json]):
        damaged.append(f"{layout.config_yaml} (cut short)")
        del copies[layout.config_yaml]
    if not copies and (damaged or foreign):
        error = ConfigError if not damaged else FtlabError
        raise error(f"{layout.path}: the run's saved config cannot be read: {'; '.join(damaged + foreign)}; "
                    f"{_config_fix(layout)}")
    if damaged or foreign:
        print(f"ftlab: {(damaged + foreign)[0]} is damaged; {next(iter(copies))} read instead", file=sys.stderr,
              flush=True)
    for cfg in copies.values():
        resolve_paths(cfg, Path.cwd())
    return {file: to_dict(cfg) for file, cfg in copies.items()}


def _cut_short(yaml_text: str, cfg: RunConfig) -> bool:
    """Whether a config.yaml holds the first part, only, of what its twin's config `cfg` is written as."""
    full = dump_yaml(cfg)
    return len(yaml_text) < len(full) and full.startswith(yaml_text)


def _config_fix(layout: RunLayout) -> str:
    return (f"delete the damaged copy (both, if neither holds the config you trained with) and run `ftlab train` "
            f"with the run's config and --out {layout.path} again: it writes both again")


def _disagree(copies: dict[Path, dict]) -> bool:
    """Whether the two readable copies of a saved config hold different configs."""
    return len(copies) == 2 and len({json.dumps(c, sort_keys=True) for c in copies.values()}) == 2


def _disagreement(layout: RunLayout, copies: dict[Path, dict]) -> FtlabError:
    a, b = copies.values()
    key = _first_difference(a, b)
    return FtlabError(f"{layout.config_yaml} and {layout.config_json} disagree ({key}: {_lookup(a, key)!r} and "
                       f"{_lookup(b, key)!r}), so one of them is damaged; {_config_fix(layout)}")


def saved_config(path: str | Path) -> RunConfig | None:
    """The config a run was trained with (saved_configs: a damaged copy is a note, or an FtlabError when neither
    can be read or they disagree), or None when it has none."""
    copies = saved_configs(path)
    if _disagree(copies):
        raise _disagreement(RunLayout(path), copies)
    return from_dict(RunConfig, next(iter(copies.values()))) if copies else None


class RunDir(RunLayout):
    """The run directory as its training process holds it: locked, its config checked and written, its metrics log.

    Only the main process (rank 0) locks and writes it; the others read it and log nothing."""

    def __init__(self, cfg: RunConfig, main: bool = True):
        super().__init__(cfg.output.dir)
        self.main = main
        self._lock = None
        if not main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.lock, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FtlabError(f"{self.path} is in use by another ftlab process; wait for it or choose another "
                             "--out") from None
        try:
            self._check_config(cfg)
        except BaseException:
            self._lock.close()
            raise

    def _check_config(self, cfg: RunConfig) -> None:
        """The run here must have been trained with `cfg` (compared with every readable copy of its saved config,
        whose relative paths are read from the working directory); one that has not trained yet (no resumable
        state, no checkpoint) starts over with `cfg` instead. Then `cfg` is saved, both copies rewritten."""
        copies = saved_configs(self.path)
        new = to_dict(cfg)
        for old in copies.values():
            old["output"]["dir"] = new["output"]["dir"]  # the same run may be reached by another path
        if copies and new not in copies.values():  # equal to one copy: the other was damaged, and is rewritten
            if _disagree(copies):
                raise _disagreement(self, copies)
            old = next(iter(copies.values()))
            key = _first_difference(old, new)
            change = f"{key}: {_lookup(old, key)!r} there, {_lookup(new, key)!r} now"
            if self.has_trained():
                raise ConfigError(f"{self.path} holds a run with a different config ({change}); use another --out")
            print(f"ftlab: {self.path} holds a run that saved no state or checkpoint yet; it starts over with this "
                  f"config ({change})", flush=True)
            self._forget_start()
        write_json(self.config_json, new)  # machine-readable twin
        write_text(self.config_yaml, dump_yaml(cfg))

    def has_trained(self) -> bool:
        """Whether the run has saved a resumable state or a checkpoint (what a changed config would invalidate)."""
        saved = [*self.state.glob(f"{STATE_PREFIX}*"), *self.kept.glob(f"{STATE_PREFIX}*"),
                 *self.checkpoints.glob("*"), self.final]
        return any(p.exists() and not p.name.endswith(TMP_SUFFIX) for p in saved)

    def _forget_start(self) -> None:
        """Remove what a run that never saved a state made from its old config (the tiny base, PiSSA's start,
        the base's evaluation, the log, the plan, the cost, a failure note); built-in data depends on no setting."""
        for path in (self.base, self.pissa_init, self.base_eval, self.state):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.metrics, self.plan, self.cost, self.failure):
            path.unlink(missing_ok=True)

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock

    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log records after `step` (written before a kill, redone after the resume)."""
        if not self.main or not self.metrics.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", step + 1) <= step]
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def write_plan(self, total_steps: int, tokens_per_step: float) -> None:
        if self.main:
            write_json(self.plan, {"total_steps": total_steps, "tokens_per_step": tokens_per_step})


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if va != vb:
            if isinstance(va, dict) and isinstance(vb, dict):
                return _first_difference(va, vb, f"{prefix}{key}.")
            return f"{prefix}{key}"
    return prefix.rstrip(".")


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
