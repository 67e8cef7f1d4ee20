"""The plan's predicted memory beside what real training steps use: one row per (architecture, method,
activation checkpointing).

    python bench/plan_vs_measured.py --arch llama --shape 1.1b --batch 4 --seq 2048   # a GPU: max_memory_allocated
    python bench/plan_vs_measured.py --dry                                           # tiny shapes, CPU (CI)

A random model of the architecture (transformers' config class for it, at the shape's widths) trains with ftlab's
own step (ftlab.train.prepare and train_step: the run's dtypes, fused LoRA, loss) on global batches of two
micro-batches, so the gradients of the first are held while the second runs, as the plan assumes. Measured:
- kept: the bytes autograd keeps for the backward pass after one forward pass and its loss (the plan's activations
  and model-level tensors, weight copies included): on the CPU the live bytes of the tensors the forward pass made
  (LiveBytes below); with checkpointing off also the saved-tensor bytes (torch.autograd.graph.saved_tensors_hooks,
  each storage once, parameters excluded), which count the same tensors another way;
- peak: the most memory a training step holds, weights and optimizer state included: on CUDA
  torch.cuda.max_memory_allocated, on the CPU the tensors alive before the step plus LiveBytes' peak during it.
The predictions are ftlab.plan.memory's, from the model's shapes alone.
"""

from __future__ import annotations

import argparse
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "dry": (128, 2, 4, 2, 352, 259),
    "small": (512, 4, 8, 4, 1408, 2048),
    "1.1b": (2048, 22, 32, 4, 5632, 32000),
    "7b": (4096, 32, 32, 32, 11008, 32000),
}
DRY = dict(archs="llama", shape="dry", batch=2, seq=64, methods="full,lora", checkpointing="off,on")


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops run under it made and that are still alive (`now`), and their peak.

    Every new storage an op returns is counted until Python's weak reference to it (a storage's Python object
    lives exactly as long as the storage) says it is freed; outputs that share an input's storage (views, in-place
    ops) are not new."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int, size: int) -> None:
        if self.live.pop(key, None) is not None:
            self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in inputs:
                    size = storage.nbytes()
                    self.live[key] = size
                    self.now += size
                    weakref.finalize(storage, self._free, key, size)
        self.peak = max(self.peak, self.now)
        return out


def random_model(model_type: str, shape: str | tuple, dtype: torch.dtype, device: torch.device):
    """A randomly initialised causal LM of transformers' `model_type` at the shape's widths (dropouts off)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hidden, layers, heads, kv_heads, intermediate, vocab = SHAPES[shape] if isinstance(shape, str) else shape
    config = AutoConfig.for_model(model_type, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config.hidden_size, config.num_hidden_layers, config.num_attention_heads = hidden, layers, heads
    config.max_position_embeddings = 4096
    settings = {"num_key_value_heads": kv_heads, "head_dim": hidden // heads, "intermediate_size": intermediate,
                "n_inner": intermediate, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "n_positions": 4096}
    for key, value in settings.items():
        if hasattr(config, key):
            setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def run_config(method: str, checkpointing: bool, micro_batch: int, seq: int, device: torch.device, extra=()):
    from ftlab.config import RunConfig, apply_overrides, from_dict, to_dict

    settings = [f"method.name={method}", "method.rank=8", "method.dropout=0.05", f"train.micro_batch={micro_batch}",
                f"train.global_batch={2 * micro_batch}", f"data.seq_len={seq}", "data.path=unused",
                f"train.activation_checkpointing={str(checkpointing).lower()}", f"train.device={device.type}", *extra]
    return from_dict(RunConfig, apply_overrides(to_dict(RunConfig()), settings))


def batch(vocab: int, b: int, t: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (b, t), generator=torch.Generator().manual_seed(seed)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def saved_bytes(model, data: dict, autocast, chunked: bool) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass and its loss: each storage once,
    parameters excluded (a bf16 copy autocast makes of an fp32 weight is counted: it is kept too)."""
    from ftlab.train import token_loss_sum

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen.setdefault(storage._cdata, storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = token_loss_sum(model, data, autocast, chunked)
    del loss
    return sum(seen.values())


def resident_bytes(model, optimizer) -> int:
    """Bytes of the tensors a run holds between steps: weights, buffers, optimizer state (gradients are None)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())


def measure(model_type: str, shape, method: str, checkpointing: bool, micro_batch: int, seq: int,
            device: torch.device, extra=()) -> dict:
    """Predicted and measured bytes of one case (see the module's docstring)."""
    from ftlab.methods import apply_method
    from ftlab.model import resolve_dtype
    from ftlab.plan.fit import setup
    from ftlab.plan.memory import architecture, predict
    from ftlab.train import prepare, token_loss_sum, train_step

    cfg = run_config(method, checkpointing, micro_batch, seq, device, extra)
    dtype = resolve_dtype(cfg.model, device, method == "full", cfg.train.precision)
    model = random_model(model_type, shape, dtype, device)
    arch = architecture(model)
    memory = predict(arch, setup(cfg, model, arch, device.type, checkpointing=checkpointing))
    model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, device)
    model.train()
    micro = [batch(arch.vocab, micro_batch, seq, device, seed) for seed in (1, 2)]
    train_step(model, micro, optimizer, params, 1.0, autocast, chunked)  # the optimizer's state exists from here
    out = {"arch": model_type, "method": method, "checkpointing": checkpointing, "predicted": memory,
           "saved": None if checkpointing else saved_bytes(model, micro[0], autocast, chunked)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        with torch.no_grad():
            before = torch.cuda.memory_allocated()
        loss, _ = token_loss_sum(model, micro[0], autocast, chunked)
        out["kept"] = torch.cuda.memory_allocated() - before
        del loss
        torch.cuda.reset_peak_memory_stats()
        train_step(model, micro, optimizer, params, 1.0, autocast, chunked)
        out["peak"] = torch.cuda.max_memory_allocated()
        return out
    with LiveBytes() as live:
        loss, _ = token_loss_sum(model, micro[0], autocast, chunked)
        out["kept"] = live.now
        del loss
    resident = resident_bytes(model, optimizer)
    with LiveBytes() as live:
        train_step(model, micro, optimizer, params, 1.0, autocast, chunked)
    out["peak"] = resident + live.peak
    return out


def row(r: dict) -> str:
    m, mib = r["predicted"], 2**20
    kept = m.activations  # what the forward pass keeps, by the plan
    saved = f"{r['saved'] / mib:9.2f}" if r["saved"] is not None else f"{'-':>9}"
    ratio = f"{kept / r['saved']:7.3f}" if r["saved"] is not None else f"{kept / r['kept']:7.3f}"
    return (f"{r['arch']:<9} {r['method']:<5} {'on' if r['checkpointing'] else 'off':<4} {kept / mib:9.2f} "
            f"{r['kept'] / mib:9.2f} {saved} {ratio} {m.training / mib:9.2f} {r['peak'] / mib:9.2f} "
            f"{m.training / r['peak']:7.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="llama", help="transformers model types, comma-separated")
    p.add_argument("--shape", default="small", choices=list(SHAPES))
    p.add_argument("--methods", default="full,lora")
    p.add_argument("--checkpointing", default="off,on")
    p.add_argument("--batch", type=int, default=2, help="micro-batch (each step: two)")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run-config override")
    p.add_argument("--dry", action="store_true", help="the tiny Llama shape on the CPU (checks the script)")
    args = p.parse_args(argv)
    if args.dry:
        for key, value in DRY.items():
            setattr(args, key, value)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    how = "max_memory_allocated" if device.type == "cuda" else "live tensor bytes (LiveBytes)"
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, shape {args.shape}, "
          f"micro-batch {args.batch} x {args.seq}, measured peak: {how}; MiB (plan/x: the plan over the measured "
          f"saved bytes, else the kept bytes; the plan's peak over the measured peak)")
    print(f"{'arch':<9} {'method':<5} {'ckpt':<4} {'plan kept':>9} {'kept':>9} {'saved':>9} {'plan/x':>7} "
          f"{'plan peak':>9} {'peak':>9} {'plan/x':>7}")
    for model_type in args.archs.split(","):
        for method in args.methods.split(","):
            for ckpt in args.checkpointing.split(","):
                r = measure(model_type, args.shape, method, ckpt == "on", args.batch, args.seq, device, args.set)
                print(row(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
