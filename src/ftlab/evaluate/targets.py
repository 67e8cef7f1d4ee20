"""What `ftlab eval` evaluates: a model directory, an adapter on its base, or every checkpoint of a run.

For a run, the base model is loaded once and evaluated (into <run>/base_eval/), then each LoRA checkpoint is
swapped in as an adapter on that same base; full-FT checkpoints are whole models, loaded one at a time. A QLoRA run's
base is loaded in 4 bits, as it trained (its checkpoints' ftlab.json says how: ftlab.model.nf4_dtype), and its
base_eval/ is that 4-bit base's.

engine "vllm": the generation tasks sample on vLLM (vllm_engine.py: one engine per base, LoRA checkpoints as LoRA
requests on it; a full-FT checkpoint its own engine); log-likelihood tasks stay on the transformers model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ftlab.analysis.diversity import diversity_into
from ftlab.config import ModelConfig, RunConfig, from_dict
from ftlab.evaluate import heldout
from ftlab.errors import FtlabError
from ftlab.evaluate.harness import check_lm_eval_offline, evaluate_into
from ftlab.evaluate.isolation import Isolation
from ftlab.evaluate.lm import LM
from ftlab.evaluate.sandbox import choose_isolation
from ftlab.evaluate.tasks import LM_EVAL_PREFIX, resolve_tasks
from ftlab.evaluate.vllm_engine import VLLMEngines, adapter_rank, require_vllm
from ftlab.model import load_model, nf4_dtype, resolve_device
from ftlab.progress import Progress
from ftlab.rundir import RunLayout, base_of, is_adapter, is_run, run_checkpoints, saved_configs
from ftlab.weights import check_adapter


@dataclass
class Target:
    """What to evaluate: the base and, in order, the checkpoints tuned from it."""

    base: str  # model directory or hub id
    base_results: Path | None  # where the base's results go (None: the base is itself the target)
    checkpoints: list[Path]  # adapter or full model directories (empty: evaluate the base only)


def resolve(path: str, base: str | None = None) -> Target:
    """What `path` stands for: a run (its base and its checkpoints in order), an adapter (on `base`, else the base
    it names), or a model directory (evaluated on its own)."""
    p = Path(path)
    if is_run(p):
        ckpts = run_checkpoints(p)
        run_base = base or (base_of(ckpts[-1]) if ckpts else None)
        if run_base is None:
            raise FtlabError(f"{p}: a run with no finished checkpoint; nothing to evaluate yet")
        return Target(run_base, RunLayout(p).base_eval, ckpts)
    if is_adapter(p):
        adapter_base = base or base_of(p)
        if adapter_base is None:
            raise FtlabError(f"{p}: the adapter names no base model; pass it (--base / BASE)")
        return Target(adapter_base, None, [p])
    if (p / "config.json").exists():
        return Target(str(p), None, [])
    raise FtlabError(f"{path}: not a run directory, an adapter directory or a model directory")


Engine = Literal["hf", "vllm"]


def evaluate_target(path: str, tasks: list[str], data_dir: str | None = None, base: str | None = None,
                    device: str = "auto", batch_size: int = 32, limit: int | None = None,
                    isolation: str = "auto", engine: Engine = "hf", vllm_memory: float = 0.5) -> list[Path]:
    """Evaluate everything `path` stands for; returns the directories whose eval.json was written.
    isolation: what a task that runs generated code requires (sandbox.choose_isolation: auto, os, bwrap).
    engine: what the generation tasks sample on (hf: ftlab's own sampler; vllm: vLLM, taking vllm_memory of the
    GPU)."""
    if engine == "vllm":
        require_vllm()  # before anything is read or loaded
    specs = resolve_tasks(tasks, limit)
    sandbox = None
    if any(getattr(spec, "kind", None) == "code" for spec in specs):  # refused here, before a model is loaded
        sandbox = choose_isolation(isolation)
        print(f"ftlab eval: generated code runs under {sandbox.describe()}", flush=True)
    check_lm_eval_offline([s.removeprefix(LM_EVAL_PREFIX) for s in specs if isinstance(s, str)])
    target = resolve(path, base)
    if is_run(Path(path)):  # the held-out tasks read the held-out part of the run's own data
        cfg = from_dict(RunConfig, next(iter(saved_configs(path).values())))
        specs = [heldout.bind(spec, cfg.data, cfg.train.seed) for spec in specs]
    adapters = [c for c in target.checkpoints if is_adapter(c)]
    evaluator = Evaluator(target.base, device, batch_size, isolation=sandbox, engine=engine, vllm_memory=vllm_memory,
                          base_4bit=_base_4bit(adapters), lora_rank=max(map(adapter_rank, adapters), default=0))
    written = []
    units = Progress(len(target.checkpoints) + 1, unit="model")
    base_dir = target.base_results or Path(target.base)
    try:
        if target.base_results is not None or not target.checkpoints:
            evaluator.evaluate_base(base_dir, specs, data_dir)
            diversity_into(base_dir)
            written.append(base_dir)
        units.update(model="base")
        for ckpt in target.checkpoints:
            evaluator.evaluate(ckpt, specs, data_dir)
            diversity_into(ckpt)  # the unique outputs of its sampled tasks, beside their samples
            written.append(ckpt)
            units.update(model=ckpt.name)
    finally:
        evaluator.close()
    units.close()
    return written


def _base_4bit(adapters: list[Path]) -> torch.dtype | None:
    """The dtype the checkpoints' 4-bit base was loaded from (QLoRA), None for a base in full precision; checkpoints
    of both kinds cannot share one evaluator's base."""
    kinds = {nf4_dtype(c) for c in adapters}
    if len(kinds) > 1:
        raise FtlabError(f"{adapters[0].parent}: QLoRA and other adapters together; evaluate them separately (a "
                         "QLoRA adapter's base is loaded in 4 bits)")
    return kinds.pop() if kinds else None


class Evaluator:
    """One base model, loaded once; LoRA checkpoints are swapped onto it, full-FT checkpoints loaded whole.
    base_4bit: the base in 4-bit NF4 from that dtype (QLoRA checkpoints; ftlab.model.nf4_dtype). engine "vllm":
    generation samples on vLLM (lora_rank: the largest adapter rank to come, so one engine serves them all)."""

    def __init__(self, base: str, device: str = "auto", batch_size: int = 32, isolation: Isolation | None = None,
                 engine: Engine = "hf", vllm_memory: float = 0.5, base_4bit: torch.dtype | None = None,
                 lora_rank: int = 0):
        if engine not in ("hf", "vllm"):
            raise FtlabError(f"eval.engine: expected hf or vllm, got {engine!r}")
        if engine == "vllm" and base_4bit is not None:
            raise FtlabError("eval.engine vllm: QLoRA checkpoints are evaluated with --engine hf (vLLM's 4-bit "
                             "loading is not the bitsandbytes NF4 base with double quantization they trained on)")
        self.isolation = isolation  # how code tasks run their programs (None: the strongest that works here)
        self.device = resolve_device(device)
        if engine == "vllm":
            require_vllm()  # before the model loads: a missing vLLM is said at once
        self.engines = VLLMEngines(self.device, vllm_memory, base, lora_rank) if engine == "vllm" else None
        self.dtype = base_4bit or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.base_4bit = base_4bit
        self.batch_size = batch_size
        self.base = base
        self.model, self.tokenizer = load_model(ModelConfig(name=base), self.device, self.dtype,
                                                four_bit=base_4bit is not None)
        self.model.eval()
        self.peft_model = None
        self.adapter: Path | None = None  # the checkpoint whose adapter peft_model holds

    def lm(self, model, source: str | Path, adapter: Path | None = None) -> LM:
        """The LM every task of `model` runs on; with the vLLM engine its generation samples from `source` (a model
        directory) with `adapter` on it."""
        sampler = self.engines.sampler(source, adapter) if self.engines is not None else "ftlab"
        return LM(model, self.tokenizer, self.device, self.batch_size, sampler=sampler)

    def close(self) -> None:
        """Shut down a vLLM engine (its worker processes and memory); the transformers models go with the object."""
        if self.engines is not None:
            self.engines.close()

    @contextlib.contextmanager
    def plain_base(self):
        """The base model as loaded: an adapter swapped onto it earlier is disabled while this lasts."""
        if self.peft_model is None:
            yield self.model
        else:
            with self.peft_model.disable_adapter():
                yield self.peft_model

    def evaluate_base(self, directory: Path, specs: list, data_dir: str | None) -> dict:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with self.plain_base() as base:
            return evaluate_into(directory, self.lm(base, self.base), base, self.tokenizer, specs, data_dir,
                                 isolation=self.isolation)

    def load(self, ckpt: Path):
        """The model a checkpoint stands for (an adapter swapped onto the base, or a whole model)."""
        if is_adapter(ckpt):
            if nf4_dtype(ckpt) != self.base_4bit:
                raise FtlabError(f"{ckpt}: " + ("a QLoRA adapter (its base in 4 bits), but this evaluator's base is "
                                                 "not" if self.base_4bit is None else "not a QLoRA adapter, but this "
                                                 "evaluator's base is in 4 bits") + "; evaluate it on its own")
            if ckpt != self.adapter:
                check_adapter(ckpt)  # checksums, headers, finite tensors; a whole model is checked by load_model
                self.peft_model = _swap_adapter(self.peft_model, self.model, ckpt)
                self.adapter = ckpt
            current = self.peft_model
        else:
            current, _ = load_model(ModelConfig(name=str(ckpt)), self.device, self.dtype)
        current.eval()
        return current

    def evaluate(self, ckpt: Path, specs: list, data_dir: str | None) -> dict:
        ckpt = Path(ckpt)
        current = self.load(ckpt)
        lm = self.lm(current, self.base, ckpt) if is_adapter(ckpt) else self.lm(current, ckpt)
        return evaluate_into(ckpt, lm, current, self.tokenizer, specs, data_dir, isolation=self.isolation)


ADAPTER = "checkpoint"  # the one adapter name a base ever holds: the compiled decode step guards on the active
# adapter's name, so a name per checkpoint (or per run) made it recompile for each one


def _swap_adapter(peft_model, base_model, directory: Path):
    """Make `directory` the active adapter on the one base and return the PEFT model.

    An adapter of the structure already loaded (the same LoRA config up to its base's name, and the same tensor
    names and shapes: every checkpoint of a run) is copied into the loaded adapter's tensors in place: the adapter's
    name and its tensors' addresses stay, so the compiled decode step (sampler.py; its guards check the active
    adapter's name, its CUDA graphs read the tensors where they were captured) serves every checkpoint without
    recompiling. Another structure replaces it: the LoRA layers are removed from the base (nothing merged) and
    the new adapter loaded under the same name, as on a fresh base."""
    from peft import PeftModel

    if peft_model is not None:
        if _copy_in_place(peft_model, peft_model.active_adapter, directory):
            return peft_model
        base_model = peft_model.unload()  # the base as loaded, without LoRA layers
    return PeftModel.from_pretrained(base_model, directory, adapter_name=ADAPTER)


def _copy_in_place(peft_model, adapter: str, directory: Path) -> bool:
    """Load the adapter in `directory` into the tensors of `adapter` when both have the same structure; else False."""
    from peft import PeftConfig
    from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

    bookkeeping = {"base_model_name_or_path", "revision", "inference_mode"}  # no effect on the forward
    old, new = (
        {k: v for k, v in config.to_dict().items() if k not in bookkeeping}
        for config in (peft_model.peft_config[adapter], PeftConfig.from_pretrained(str(directory)))
    )
    if old != new:
        return False
    current = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    weights = load_peft_weights(str(directory), device="cpu")
    if {k: v.shape for k, v in current.items()} != {k: v.shape for k, v in weights.items()}:
        return False
    with torch.no_grad():
        result = set_peft_model_state_dict(peft_model, weights, adapter_name=adapter)  # load_state_dict: copy_
    if result.unexpected_keys:
        raise FtlabError(f"{directory}: adapter tensors {result.unexpected_keys[:3]} were not loaded")
    return True
