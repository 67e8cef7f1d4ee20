"""The training loss without full-vocabulary logits: the head and cross-entropy run on labelled positions only,
a chunk of tokens at a time, each chunk recomputed in the backward pass instead of stored.

A causal LM's usual loss materialises (B, T, V) logits (and their fp32 copy for the cross-entropy): at 8 x 2048
tokens and a 32k vocabulary that is 2 GiB in bf16 plus 8 GiB in fp32, the largest activation of the step. Here:
- only positions with a label are projected (IFT masks the prompt: often half of the tokens or more);
- positions go through the head in chunks of `chunk` tokens; each chunk's logits live only inside a checkpointed
  function, so the backward pass recomputes them and peak memory holds one chunk's logits;
- the cross-entropy is taken in fp32 (as the full path does) and summed, so the loss is the same sum.

Models whose head is not a plain linear on the backbone's last hidden state (logit soft-capping, logit scales) use
the full path; `supports(model)` says which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ftlab.data import IGNORE, model_inputs

CHUNK = 4096  # tokens per head chunk: (4096, 32k) fp32 logits = 512 MiB


def _inner(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model: nn.Module) -> bool:
    """True when logits = lm_head(backbone(...).last_hidden_state) exactly, so the chunked loss is the same loss."""
    return unsupported(model) is None


def unsupported(model: nn.Module) -> str | None:
    """Why the chunked loss would not be this model's loss (a phrase naming the setting), or None when it is."""
    inner = _inner(model)
    config = getattr(inner, "config", None)
    if config is None:
        return "the model has no config"
    for key, what in (("final_logit_softcapping", "soft-caps"), ("logit_scale", "scales")):
        if getattr(config, key, None):
            return f"{config.model_type} {what} its logits ({key}={getattr(config, key)})"
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return "its output head is not a bias-free nn.Linear"
    backbone = getattr(inner, "base_model", None)
    if backbone is None or backbone is inner:
        return "it has no backbone (base_model) to run without the head"
    return None


def chunked_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], autocast,
                     chunk: int = CHUNK) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions of one micro-batch, and their count."""
    inner = _inner(model)
    head = inner.get_output_embeddings()
    with autocast:
        hidden = inner.base_model(**model_inputs(batch), use_cache=False)[0]  # (B, T, H)
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (B, T): position t predicts token t+1
    keep = (targets != IGNORE).flatten()  # (B*T,)
    h = hidden.flatten(0, 1)[keep]  # (N, H): labelled positions only
    y = targets.flatten()[keep]  # (N,)
    total = (hidden.sum() * 0.0).float()  # keeps the graph (and backward) valid when nothing is labelled
    for start in range(0, h.shape[0], chunk):
        total = total + checkpoint(_head_loss, head.weight, h[start:start + chunk], y[start:start + chunk],
                                   autocast, use_reentrant=False)
    return total, int(keep.sum())


def _head_loss(weight: torch.Tensor, h: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
    with autocast:
        logits = F.linear(h, weight)  # (n, V)
    return F.cross_entropy(logits.float(), y, reduction="sum")
