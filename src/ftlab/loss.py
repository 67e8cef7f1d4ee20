"""The training loss without full-vocabulary logits: the head and cross-entropy run on labelled positions only,
a chunk of tokens at a time, each chunk recomputed in the backward pass instead of stored.

A causal LM's usual loss materialises (B, T, V) logits (and their fp32 copy for the cross-entropy): at 8 x 2048
tokens and a 32k vocabulary that is 2 GiB in bf16 plus 8 GiB in fp32, the largest activation of the step. Here:
- the model runs its own forward (under FSDP the root's, whose hooks gather the embeddings and the head) with the
  head on the last position only (`logits_to_keep=1`), and the backbone's last hidden state is read by a hook;
- only positions with a label are projected (IFT masks the prompt: often half of the tokens or more), found from
  the labels where they are made (`with_targets`, on the host), so the loss needs no device sync;
- positions go through the head in chunks of `chunk` tokens; each chunk's logits live only inside a checkpointed
  function, so the backward pass recomputes them and peak memory holds one chunk's logits;
- the cross-entropy is taken in fp32 (as the full path does) and summed, so the loss is the same sum.

Models whose head is not a plain linear on the backbone's last hidden state (logit soft-capping, logit scales) use
the full path; `supports(model)` says which. Evaluation scores positions the same way (ftlab.evaluate.lm).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ftlab.data import IGNORE, model_inputs

CHUNK = 4096  # tokens per head chunk: (4096, 32k) fp32 logits = 512 MiB
TARGETS = "target_index"  # a micro-batch's key for the flat indices of its labelled positions (with_targets)


def _inner(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model: nn.Module) -> nn.Module:
    """The model's output head (under a PEFT wrapper: its base model's)."""
    return _inner(model).get_output_embeddings()


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
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return "its forward has no logits_to_keep (to run the head on one position)"
    return None


def with_targets(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The micro-batch with TARGETS added: the flat indices (N,) of its positions that predict a label (position t
    predicts token t+1). Made where the labels are (the host, before the batch moves), the indices give the loss
    its labelled positions and their count without reading anything back from the device."""
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (B, T)
    return {**batch, TARGETS: (targets != IGNORE).flatten().nonzero().squeeze(1)}


def target_index(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """TARGETS of the micro-batch: as made by with_targets, else computed here (a device sync when on a GPU)."""
    return batch[TARGETS] if TARGETS in batch else with_targets(batch)[TARGETS]


def hidden_states(model: nn.Module, inputs: dict[str, torch.Tensor], autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(the backbone's last hidden state (B, T, H), the logits of the last position (B, 1, V)) from the model's own
    forward with the head on one position: its root runs, so FSDP gathers the head and keeps it gathered for the
    caller (the root is sharded with reshard_after_forward=False)."""
    captured = []
    hook = _inner(model).base_model.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        with autocast:
            logits = model(**inputs, use_cache=False, logits_to_keep=1).logits  # (B, 1, V)
    finally:
        hook.remove()
    return captured[0], logits


def chunked_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], autocast,
                     chunk: int = CHUNK) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions of one micro-batch, and their count."""
    head = output_head(model)
    hidden, logits = hidden_states(model, model_inputs(batch), autocast)  # (B, T, H), (B, 1, V)
    index = target_index(batch)  # (N,)
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (B, T): position t predicts token t+1
    h = hidden.flatten(0, 1).index_select(0, index)  # (N, H): labelled positions only
    y = targets.flatten().index_select(0, index)  # (N,)
    # the root's output joins the graph (with weight 0) so FSDP's backward hooks see its forward as used; it also
    # keeps the backward valid when nothing is labelled
    total = (logits.sum() * 0.0).float()
    for start in range(0, h.shape[0], chunk):
        total = total + checkpoint(_head_loss, head.weight, h[start:start + chunk], y[start:start + chunk],
                                   autocast, use_reentrant=False)
    return total, index.numel()


def _head_loss(weight: torch.Tensor, h: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
    with autocast:
        logits = F.linear(h, weight)  # (n, V)
    return F.cross_entropy(logits.float(), y, reduction="sum")
