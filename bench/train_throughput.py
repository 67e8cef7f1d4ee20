"""Training throughput and peak memory: ftlab's training step versus a plain Transformers + PEFT loop.

Same model (random Llama weights; speed does not depend on them), same batch, same device, side by side.
Each case runs in its own process so peak memory is its own.

    python bench/train_throughput.py                       # CPU, tiny model (what CI can afford)
    python bench/train_throughput.py --shape 1.1b --batch 8 --seq 2048 --steps 20 --ranks 16,256   # one GPU
    python bench/train_throughput.py --set train.fused_lora=false --set train.loss=full   # one option off

--set KEY=VALUE (repeatable) changes ftlab's run config (train.fused_lora, train.loss, train.compile,
train.activation_checkpointing, ...), so each optimization is measured on its own against the same reference.

MFU counts 6N FLOPs per token for full finetuning and 4N for LoRA (N = every parameter of the model; the
backward pass needs no weight gradients of frozen matrices) against the device's dense bf16 peak (--peak-tflops,
or known from the GPU's name); on a CPU it is not given.

Reference loop: `model(input_ids, labels=labels).loss.backward()`, clip 1.0, AdamW (fused), PEFT defaults for
LoRA: fp32 adapters on an fp32 frozen base, and fp32 master weights, under bf16 autocast where ftlab's run
computes in bf16 (train.precision; auto: on CUDA). ftlab: `ftlab.train.train_step` with the weights' dtype,
optimizer and precision it would choose for a run: its LoRA holds the frozen base in bf16 under bf16 autocast, so
LoRA gets a second reference row ("ref bf16 base") with the same loop on a bf16 frozen base: the plain
Transformers + PEFT loop given ftlab's memory layout, which separates ftlab's kernels from its choice of dtype.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch._dynamo.utils import counters

SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (256, 4, 4, 4, 688, 2048),
    "small": (512, 8, 8, 8, 1376, 8192),
    "1.1b": (2048, 22, 32, 4, 5632, 32000),
    "7b": (4096, 32, 32, 32, 11008, 32000),
}
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}  # dense bf16, by device name
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    h, n, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=inter, vocab_size=vocab, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype)


def batch(shape: str, b: int, t: int, device: torch.device) -> dict[str, torch.Tensor]:
    vocab = SHAPES[shape][-1]
    ids = torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def ftlab_config(method: str, rank: int, args):
    from ftlab.config import RunConfig, apply_overrides, from_dict, to_dict

    settings = [f"method.name={method}", f"method.rank={rank or 8}", "method.dropout=0.05", "train.lr=1e-5",
                f"train.loss={args.loss}", *args.set]
    return from_dict(RunConfig, apply_overrides(to_dict(RunConfig()), settings))


def frozen_dtypes(method: str, rank: int, args, device: torch.device) -> tuple[torch.dtype, bool]:
    """(the dtype ftlab loads this run's weights in, whether it computes under bf16 autocast): ftlab's own rules
    (ftlab.model), which the reference follows."""
    from ftlab.model import resolve_dtype, resolve_precision

    cfg = ftlab_config(method, rank, args)
    dtype = resolve_dtype(cfg.model, device, method == "full", cfg.train.precision)
    return dtype, resolve_precision(cfg.train.precision, device) == "bf16-autocast"


def run_case(impl: str, method: str, rank: int, args) -> dict:
    """impl: ftlab, reference (PEFT defaults: fp32 frozen base) or reference-bf16 (the frozen base in bf16)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    ftlab_dtype, bf16 = frozen_dtypes(method, rank, args, device)
    dtype = {"ftlab": ftlab_dtype, "reference": torch.float32, "reference-bf16": torch.bfloat16}[impl]
    model = build(args.shape, device, dtype)
    data = batch(args.shape, args.batch, args.seq, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    if impl == "ftlab":
        from ftlab.methods import apply_method
        from ftlab.train import prepare, train_step

        cfg = ftlab_config(method, rank, args)
        model, params, opt, ftlab_autocast, chunked = prepare(apply_method(model, cfg), cfg, device)

        def step():
            train_step(model, [data], opt, params, 1.0, ftlab_autocast, chunked)
    else:
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                                                     target_modules=TARGETS, task_type="CAUSAL_LM"))
        params = [p for p in model.parameters() if p.requires_grad]  # fp32: PEFT casts adapters up by default
        opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), fused=True)

        def step():
            with autocast:
                loss = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], labels=data["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    model.train()
    frames = dict(counters["frames"])  # torch.compile's frames so far (this process may have run other cases)
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return {"impl": impl, "method": method, "rank": rank, "tokens_per_s": args.batch * args.seq * args.steps / seconds,
            "flops_per_token": (6 if method == "full" else 4) * n_params, "frozen_dtype": str(dtype),
            "peak_gib": peak / 2**30, "peak_kind": "cuda allocated" if cuda else "process RSS",
            "compiled": {k: counters["frames"][k] - frames.get(k, 0) for k in ("total", "ok")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=SHAPES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ranks", default="16,256", help="comma-separated LoRA ranks")
    parser.add_argument("--no-full", action="store_true", help="LoRA only (e.g. 7B: full FT needs > 80 GiB)")
    parser.add_argument("--loss", default="auto", choices=["auto", "chunked", "full"], help="ftlab's train.loss")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of ftlab's run config, e.g. train.compile=true (repeatable)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: from its name)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the cases in this process, not one child each (quicker; the peak memory "
                             "columns then hold the whole process's peak, so they compare nothing)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # impl:method:rank, run in a child process
    args = parser.parse_args()
    if args.case:
        impl, method, rank = args.case.split(":")
        print(json.dumps(run_case(impl, method, int(rank), args)))
        return

    cases = ([] if args.no_full else [("full", 0)]) + [("lora", int(r)) for r in args.ranks.split(",") if r]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"shape {args.shape}, batch {args.batch} x {args.seq}, {args.steps} timed steps, device {name}, "
          f"torch {torch.__version__}, ftlab settings {args.set or 'default'}"
          + (" (in one process: the GiB columns are its peak so far)" if args.in_process else ""))
    lora_dtype, bf16 = frozen_dtypes("lora", 8, args, device)
    print(f"bf16 autocast: {'on' if bf16 else 'off'} (both sides); LoRA's frozen base: ftlab "
          f"{str(lora_dtype).removeprefix('torch.')}, reference float32 (PEFT defaults)")
    if lora_dtype == torch.bfloat16:
        print("'ref bf16 base' rows: ftlab against the reference loop on a bf16 frozen base, as ftlab holds it")
    print(f"{'method':<10} {'ftlab tok/s':>12} {'ref tok/s':>10} {'speed x':>8} {'ftlab MFU':>9} {'ref MFU':>8} "
          f"{'ftlab GiB':>10} {'ref GiB':>8} {'mem x':>6}")
    for method, rank in cases:
        impls = ["ftlab", "reference"]
        if method == "lora" and lora_dtype == torch.bfloat16:
            impls.append("reference-bf16")
        results = {impl: x for impl in impls if (x := child_case(impl, method, rank, args)) is not None}
        label = "full" if method == "full" else f"lora r={rank}"
        if "ftlab" not in results or "reference" not in results:
            for impl, x in results.items():
                print(f"{label:<10} {impl}: {x['tokens_per_s']:,.0f} tok/s, {x['peak_gib']:.2f} GiB")
            continue
        print(row(label, results["ftlab"], results["reference"], peak))
        compiled = results["ftlab"]["compiled"]
        if compiled["total"]:  # train.compile: one graph shared by the blocks (a few), none left uncompiled
            print(f"  ftlab torch.compile: {compiled['ok']} graphs compiled, {compiled['total'] - compiled['ok']} "
                  "frames left uncompiled (recompile limit or error)")
        if "reference-bf16" in results:
            print(row(f"ref bf16 base r={rank}", results["ftlab"], results["reference-bf16"], peak))


def child_case(impl: str, method: str, rank: int, args) -> dict | None:
    """One case in its own process (its own peak memory); None, with the reason printed, when it failed."""
    if args.in_process:
        return run_case(impl, method, rank, args)
    child = [sys.executable, __file__, "--case", f"{impl}:{method}:{rank}", "--shape", args.shape,
             "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--loss", args.loss, *(f"--set={kv}" for kv in args.set)]
    proc = subprocess.run(child, capture_output=True, text=True)
    if proc.returncode != 0:  # out of memory and the like: say so and go on with the other cases
        print(f"  {impl} {method} r={rank} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(label: str, f: dict, r: dict, peak: float | None) -> str:
    """ftlab's figures against a reference's: tok/s, speed ratio, MFU, peak GiB, memory ratio."""
    mfu = [f"{x['tokens_per_s'] * x['flops_per_token'] / (peak * 1e12):.1%}" if peak else "-" for x in (f, r)]
    return (f"{label:<10} {f['tokens_per_s']:>12,.0f} {r['tokens_per_s']:>10,.0f} "
            f"{f['tokens_per_s'] / r['tokens_per_s']:>8.2f} {mfu[0]:>9} {mfu[1]:>8} {f['peak_gib']:>10.2f} "
            f"{r['peak_gib']:>8.2f} {f['peak_gib'] / r['peak_gib']:>6.2f}")


if __name__ == "__main__":
    main()
