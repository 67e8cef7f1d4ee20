"""A LoRA linear layer as one autograd function: y = x·Wᵀ + bias + s·(drop(x)·Aᵀ)·Bᵀ, with gradients for A and B.

PEFT's LoRA forward (peft.tuners.lora.layer.Linear) casts every input activation up to the adapter's fp32 dtype,
runs dropout in fp32, lets autocast cast the result back to bf16 for lora_A, then scales and adds in separate
kernels; backward replays each of those steps. Here the whole layer runs in the compute dtype (bf16 under
autocast; the adapters' fp32 master weights are cast once per call, r·(in+out) numbers): no fp32 round trip of
activations, the scaling and the add fused into one addmm, and when dropout is off a single saved activation
serves both the frozen path and the adapter's gradient (passed once: torch.compile cannot trace an autograd function
given the same tensor twice, and broke its graph at every adapted layer). The frozen weight never gets a gradient.

The same math as PEFT's forward for a single active vanilla LoRA adapter (tests/test_lora_fused.py compares
outputs, gradients and trained weights with PEFT's); DoRA, several adapters, merged or disabled adapters fall
back to PEFT's own forward. The layer stays a PEFT LoRA layer, so saving, loading and merging are unchanged.

    enable(model)      # after get_peft_model: every plain LoRA Linear now runs fused
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_FUSED: dict[type, type] = {}  # PEFT's LoRA Linear class -> its fused subclass


class _LoraLinear(torch.autograd.Function):
    """Inputs already in the compute dtype; xd = dropout(x), or None when dropout is off (then x serves both)."""

    @staticmethod
    def forward(ctx, x, xd, weight, bias, a, b, scaling: float):
        # x, xd: (N, in); weight: (out, in) frozen; bias: (out,) or None; a: (r, in); b: (out, r)
        ctx.same = xd is None
        xd = x if xd is None else xd
        y = F.linear(x, weight, bias)  # (N, out)
        u = xd @ a.t()  # (N, r)
        y = torch.addmm(y, u, b.t(), alpha=scaling)  # y + s·u·Bᵀ, one kernel
        ctx.scaling = scaling
        ctx.save_for_backward(xd, u, weight, a, b)
        return y

    @staticmethod
    def backward(ctx, g):
        xd, u, weight, a, b = ctx.saved_tensors  # g: (N, out)
        s = ctx.scaling
        gu = (g @ b).mul_(s)  # (N, r): the gradient reaching u = xd·Aᵀ
        gb = (g.t() @ u).mul_(s) if ctx.needs_input_grad[5] else None  # (out, r)
        ga = gu.t() @ xd if ctx.needs_input_grad[4] else None  # (r, in)
        gx = gxd = None
        if ctx.same and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            gx = torch.addmm(g @ weight, gu, a)  # (N, in): through W and through the adapter, one sum
        else:
            if ctx.needs_input_grad[0]:
                gx = g @ weight  # (N, in)
            if ctx.needs_input_grad[1]:
                gxd = gu @ a  # (N, in): autograd carries it through the dropout to x
        return gx, gxd, None, None, ga, gb, None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapter = _single_plain_adapter(self)
    if adapter is None or args or kwargs:
        return super(type(self), self).forward(x, *args, **kwargs)
    base = self.get_base_layer()
    dtype = _compute_dtype(x)
    flat = x.reshape(-1, x.shape[-1]).to(dtype)  # (N, in)
    dropped = self.lora_dropout[adapter](flat)  # nn.Identity when dropout is 0 (and dropout in eval): the same tensor
    weight = base.weight.to(dtype)  # a no-op for a bf16 frozen base under bf16 autocast
    bias = base.bias.to(dtype) if base.bias is not None else None
    a = self.lora_A[adapter].weight.to(dtype)  # (r, in)
    b = self.lora_B[adapter].weight.to(dtype)  # (out, r)
    with torch.autocast(x.device.type, enabled=False):  # every operand is already in the compute dtype
        y = _LoraLinear.apply(flat, None if dropped is flat else dropped, weight, bias, a, b,
                              float(self.scaling[adapter]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _single_plain_adapter(layer) -> str | None:
    """The one active vanilla LoRA adapter of a layer in its usual state, or None (then PEFT's forward runs)."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}) or layer.use_dora.get(active[0], False):
        return None
    if not isinstance(layer.get_base_layer(), nn.Linear):
        return None
    return active[0]


def fused_class(cls: type) -> type:
    """A subclass of PEFT's LoRA Linear whose forward is fused (made once per class)."""
    if cls not in _FUSED:
        _FUSED[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_forward, "__module__": __name__})
    return _FUSED[cls]


def enable(model: nn.Module) -> int:
    """Switch every plain PEFT LoRA Linear of `model` to the fused forward, in place; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:  # exactly PEFT's Linear: not quantized or other subclasses
            module.__class__ = fused_class(LoraLinear)
            count += 1
    return count
