"""The reference ΔW that ftlab's one ΔW (ftlab.analysis.spectrum_sources: open_checkpoint, Checkpoint.load) is
checked against, computed without ftlab: PEFT's own merge (`merge_and_unload()` of a copy) minus the base weights
for an adapter, W_ft - W_base for a full model.

Every linear layer (nn.Linear or transformers' Conv1D) but the output head, by weight name, as (out, in) in fp32:
a Conv1D stores (in, out) and is transposed here, so the oracle and ftlab read the same orientation.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """weight name -> weight as (out, in), fp32, for every nn.Linear and Conv1D but the output head, model order."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    out = {}
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, nn.Linear):
            out[f"{name}.weight"] = module.weight.detach().float().clone()  # (out, in)
        elif isinstance(module, Conv1D):
            out[f"{name}.weight"] = module.weight.detach().float().T.contiguous()  # stored (in, out)
    return out


def merged_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The linear weights of a model as one set of weights: PEFT's merge of a copy for a PeftModel (the live
    model is left as it was), the model's own weights otherwise."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return linear_weights(model)


def delta(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ΔW = W_ft - W_base for every weight of the base, in the base's order."""
    return {name: tuned[name] - w for name, w in base.items()}


def base_weights(base_dir: Path | str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return linear_weights(AutoModelForCausalLM.from_pretrained(base_dir))


def saved_delta(base_dir: Path | str, finetuned: Path | str) -> dict[str, torch.Tensor]:
    """ΔW of a saved checkpoint as plain transformers and PEFT load it: an adapter directory on the base, merged
    by PEFT, or a full model directory; minus the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    finetuned = Path(finetuned)
    if (finetuned / "adapter_config.json").exists():
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), finetuned)
    else:
        tuned = AutoModelForCausalLM.from_pretrained(finetuned)
    return delta(base_weights(base_dir), merged_weights(tuned))


def assert_spectrum_delta_is(base_dir: Path | str, finetuned: Path | str, reference: dict[str, torch.Tensor],
                             atol: float = 1e-6):
    """ftlab's (W_base, W_ft, ΔW) of every matrix it analyses equals the reference; the layers it leaves out (an
    adapter's unadapted ones) have a reference ΔW of exactly zero. Returns ftlab's Checkpoint."""
    from ftlab.analysis.spectrum_sources import open_checkpoint

    ckpt = open_checkpoint(base_dir, finetuned)
    assert ckpt.names == [n for n in reference if n in ckpt.names], "not in model order, or not a linear layer"
    assert ckpt.names, "nothing analysed"
    for name, expected in reference.items():
        if name not in ckpt.names:
            assert not expected.any(), f"{name} changed but ftlab does not analyse it"
            continue
        w_base, w_ft, d = ckpt.load(name)
        assert ckpt.shapes[name] == tuple(d.shape) == tuple(expected.shape), name
        torch.testing.assert_close(d, expected, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")
        # (W_ft - W_base) + W_base rounds: W_ft is checked to float precision, whatever atol ΔW is held to
        torch.testing.assert_close(w_ft, w_base + d, atol=max(atol, 1e-6), rtol=0, msg=lambda m: f"{name}: {m}")
    return ckpt


def record_saves(monkeypatch) -> dict[Path, dict[str, torch.Tensor]]:
    """Make every checkpoint a run saves also record the live model's weights as PEFT merges them (before ftlab
    writes anything): checkpoint directory -> linear weights, (out, in). The oracle for what a saved checkpoint
    should hold, PiSSA's conversion included (the live PiSSA model's base layers are the residual weights).

    ftlab.checkpoint.save_checkpoint is replaced in every ftlab module that imported it (the training loop does)."""
    import sys

    from ftlab import checkpoint

    real, seen = checkpoint.save_checkpoint, {}

    def save(model, tokenizer, directory, *args, **kwargs):
        seen[Path(directory)] = merged_weights(model)
        return real(model, tokenizer, directory, *args, **kwargs)

    users = [m for name, m in list(sys.modules.items())
             if name.split(".")[0] == "ftlab" and getattr(m, "save_checkpoint", None) is real]
    assert any(m is not checkpoint for m in users), "no ftlab module calls checkpoint.save_checkpoint"
    for module in users:
        monkeypatch.setattr(module, "save_checkpoint", save)
    return seen
