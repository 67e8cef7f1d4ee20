"""Full finetuning versus LoRA: the only place the two methods differ is which parameters train.

QLoRA is LoRA on a base whose block linear layers were loaded in 4-bit NF4 (ftlab.model.load_model four_bit): the
same PEFT adapter, trained and saved the same way (a plain PEFT adapter); only the base's loading differs.

LoRA comes from PEFT, so its adapters are the ecosystem's standard format; which layers it adapts
(method.targets) is ftlab.architectures' table per architecture. LoRA+ is two optimizer groups (`param_groups`).
A method's label and its LoRA variant words are pure functions of its config (ftlab.config: method_label,
lora_variant), so a study can be planned without torch.
ΔW of either method is computed in one place, from a saved checkpoint against its base, in fp32:
ftlab.analysis.spectrum_sources (W_ft - W_base for a full model; for an adapter, PEFT's merge arithmetic, checked
against PEFT's own merge by tests/delta_oracle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ftlab.architectures import check_rank, is_conv1d, linear_layers, target_modules, targeted_layers
from ftlab.config import RunConfig, lora_variant
from ftlab.model import NF4_BLOCK, NF4_STATS_BLOCK


@dataclass
class ParamCounts:
    trainable: int
    frozen: int

    def __str__(self) -> str:
        total = self.trainable + self.frozen
        return (f"trainable {self.trainable:,} ({100 * self.trainable / max(total, 1):.2f}%) | "
                f"frozen {self.frozen:,} | total {total:,}")


def apply_method(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Return the model to train: the same model with chosen parameters trainable (full) or a PeftModel."""
    m = cfg.method
    if m.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if m.freeze_embeddings:
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                if module is not None:
                    for p in module.parameters():
                        p.requires_grad_(False)
        return model

    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, m.targets)
    check_rank(model, targets, m.rank)
    lora = LoraConfig(
        r=m.rank,
        lora_alpha=cfg.lora_alpha(),
        lora_dropout=m.dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores its weight as (in, out): PEFT needs to know (it would warn and set it itself)
        fan_in_fan_out=any(is_conv1d(layer) for layer in targeted_layers(model, targets).values()),
        use_rslora=m.rslora,
        use_dora=m.dora,
        init_lora_weights={"default": True, "gaussian": "gaussian", "pissa": "pissa"}[m.init],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_params(model: nn.Module) -> ParamCounts:
    trainable = frozen = 0
    for p in model.parameters():  # parameters() yields tied weights once
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return ParamCounts(trainable, frozen)


def qlora_base_bytes(model: nn.Module, compute_dtype: torch.dtype) -> int:
    """Bytes of a QLoRA base's weights, from its structure (built on the meta device: architectures.structure): the
    block linear layers in NF4 (half a byte per weight, one 8-bit absmax per NF4_BLOCK weights, one fp32 scale per
    NF4_STATS_BLOCK absmax values, as bitsandbytes stores them), everything else (embeddings, norms, the head) in
    compute_dtype. Full FT and LoRA hold every weight in their load dtype instead."""
    quantized = {id(m.weight) for m in linear_layers(model).values()}
    size = torch.empty((), dtype=compute_dtype, device="meta").element_size()
    total = 0
    for p in model.parameters():  # tied weights once
        if id(p) in quantized:
            blocks = -(-p.numel() // NF4_BLOCK)
            total += -(-p.numel() // 2) + blocks + 4 * -(-blocks // NF4_STATS_BLOCK)
        else:
            total += p.numel() * size
    return total


def describe(cfg: RunConfig) -> str:
    """The method in one line, as a run prints it when it starts."""
    m = cfg.method
    if m.name == "full":
        return "full finetuning" + (" (embeddings frozen)" if m.freeze_embeddings else "")
    variant = (["4-bit NF4 base"] if m.name == "qlora" else []) + lora_variant(m)
    name = "QLoRA" if m.name == "qlora" else "LoRA"
    return f"{name} r={m.rank} alpha={cfg.lora_alpha():g} dropout={m.dropout:g} targets={m.targets}" + (
        f" ({', '.join(variant)})" if variant else "")


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, PEFT LoRA layer) for every adapted linear layer; name is the base model's module name."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield _base_name(name), module


def param_groups(model: nn.Module, cfg: RunConfig) -> list[dict]:
    """Optimizer groups: one for all trainable parameters, or LoRA+'s two (B at loraplus_ratio x the LR)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    ratio = cfg.method.loraplus_ratio
    if not cfg.method.adapter or ratio is None:
        return [{"params": trainable, "lr": cfg.train.lr}]
    b_ids = {id(p) for _, layer in lora_layers(model) for b in layer.lora_B.values() for p in b.parameters()}
    a_rest = [p for p in trainable if id(p) not in b_ids]
    b = [p for p in trainable if id(p) in b_ids]
    return [{"params": a_rest, "lr": cfg.train.lr}, {"params": b, "lr": cfg.train.lr * ratio}]


def _base_name(name: str) -> str:
    """Strip PEFT's wrapper prefix so names match the base checkpoint: base_model.model.X -> X."""
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name
