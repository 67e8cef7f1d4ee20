"""What `ftlab eval` evaluates: a model directory, an adapter on its base, or every checkpoint of a run.

For a run, the base model is loaded once and evaluated (into <run>/base_eval/), then each LoRA checkpoint is
swapped in as an adapter on that same base; full-FT checkpoints are whole models, loaded one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ftlab.config import ModelConfig
from ftlab.errors import FtlabError
from ftlab.evaluate.runner import evaluate_into, read_results
from ftlab.evaluate.tasks import expand
from ftlab.model import load_model, resolve_device
from ftlab.progress import Progress


@dataclass
class Target:
    """What to evaluate: the base and, in order, the checkpoints tuned from it."""

    base: str  # model directory or hub id
    base_results: Path | None  # where the base's results go (None: the base is itself the target)
    checkpoints: list[Path]  # adapter or full model directories (empty: evaluate the base only)


def _is_adapter(d: Path) -> bool:
    return (d / "adapter_config.json").exists()


def resolve(path: str, base: str | None = None) -> Target:
    p = Path(path)
    if (p / "config.yaml").exists() and ((p / "final").exists() or (p / "checkpoints").exists()):
        ckpts = sorted((p / "checkpoints").glob("*/"), key=_checkpoint_order) if (p / "checkpoints").exists() else []
        ckpts = [c for c in ckpts if not c.name.endswith(".tmp")] + ([p / "final"] if (p / "final").exists() else [])
        info = json.loads((ckpts[-1] / "ftlab.json").read_text()) if ckpts else {}
        run_base = base or info.get("base")
        if run_base is None:
            raise FtlabError(f"{p}: a run with no finished checkpoint; nothing to evaluate yet")
        return Target(run_base, p / "base_eval", ckpts)
    if _is_adapter(p):
        adapter_base = base or json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]
        return Target(adapter_base, None, [p])
    if (p / "config.json").exists():
        return Target(str(p), None, [])
    raise FtlabError(f"{path}: not a run directory, an adapter directory or a model directory")


def _checkpoint_order(d: Path) -> tuple:
    info = d / "ftlab.json"
    return (json.loads(info.read_text())["step"],) if info.exists() else (float("inf"),)


def evaluate_target(path: str, tasks: list[str], data_dir: str | None = None, base: str | None = None,
                    device: str = "auto", batch_size: int = 32, limit: int | None = None) -> list[Path]:
    """Evaluate everything `path` stands for; returns the directories whose eval.json was written."""
    from ftlab.evaluate.lm import LM

    specs = expand(tasks, limit)
    target = resolve(path, base)
    dev = resolve_device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model, tokenizer = load_model(ModelConfig(name=target.base), dev, dtype)
    model.eval()
    written = []
    units = Progress(len(target.checkpoints) + 1, unit="model")

    base_dir = target.base_results or Path(target.base)
    if target.base_results is not None or not target.checkpoints:
        base_dir.mkdir(parents=True, exist_ok=True)
        evaluate_into(base_dir, LM(model, tokenizer, dev, batch_size), model, tokenizer, specs, data_dir, None)
        written.append(base_dir)
    units.update(model="base")
    base_results = read_results(base_dir) if written else None

    peft_model = None
    for ckpt in target.checkpoints:
        if _is_adapter(ckpt):
            peft_model = _swap_adapter(peft_model, model, ckpt)
            current = peft_model
        else:
            current, _ = load_model(ModelConfig(name=str(ckpt)), dev, dtype)
        current.eval()
        evaluate_into(ckpt, LM(current, tokenizer, dev, batch_size), current, tokenizer, specs, data_dir, base_results)
        written.append(ckpt)
        units.update(model=ckpt.name)
    units.close()
    return written


def _swap_adapter(peft_model, base_model, directory: Path):
    """Load `directory` as the active adapter on the one base, dropping the previous adapter."""
    from peft import PeftModel

    name = f"ckpt_{abs(hash(str(directory)))}"
    if peft_model is None:
        return PeftModel.from_pretrained(base_model, directory, adapter_name=name)
    previous = peft_model.active_adapter
    peft_model.load_adapter(directory, adapter_name=name)
    peft_model.set_adapter(name)
    peft_model.delete_adapter(previous)
    return peft_model
