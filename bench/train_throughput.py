"""Training throughput and peak memory: ftlab's training step versus a plain Transformers + PEFT loop.

Same model (random Llama weights; speed does not depend on them), same batch, same device, side by side.
Each case runs in its own process so peak memory is its own.

    python bench/train_throughput.py                       # CPU, tiny model (what CI can afford)
    python bench/train_throughput.py --shape 1.1b --batch 8 --seq 2048 --steps 20 --ranks 16,256   # one GPU
    python bench/train_throughput.py --set train.fused_lora=false --set train.loss=full   # one option off

--set KEY=VALUE (repeatable) changes ftlab's run config (train.fused_lora, train.loss, train.compile,
train.activation_checkpointing, ...) for every ftlab case; --variant 'LABEL:KEY=VALUE,KEY=VALUE' (repeatable) adds
an ftlab case with those settings on top, measured against the same reference, so each optimization is measured on
its own in one run. With train.activation_checkpointing the reference loop checkpoints its blocks too (its memory
regime: a 7B full finetuning fits one GPU only so).

MFU: ftlab.plan.cost.train_flops_per_token (6N + 12·L·h·s per token for full finetuning, 4N + 6·N_adapter + 12·L·h·s
for LoRA, N without the input embedding) against the device's dense bf16 peak (--peak-tflops, or known from the
GPU's name); on a CPU it is not given.

--in-process runs every case in this process, one after another (no process start or second import per case);
on CUDA each case's memory is freed before the next and the peak-memory counter reset, so the GiB columns stay
each case's own; on the CPU they are the process's peak so far. Every case takes --warmup untimed steps first (with
train.compile: its compiles).

Reference loop: `model(input_ids, labels=labels).loss.backward()`, clip 1.0, AdamW (fused), PEFT defaults for
LoRA: fp32 adapters on an fp32 frozen base, and fp32 master weights, under bf16 autocast where ftlab's run
computes in bf16 (train.precision; auto: on CUDA). ftlab: `ftlab.train.train_step` with the weights' dtype,
optimizer and precision it would choose for a run: its LoRA holds the frozen base in bf16 under bf16 autocast, so
LoRA gets a second reference row ("ref bf16 base") with the same loop on a bf16 frozen base: the plain
Transformers + PEFT loop given ftlab's memory layout, which separates ftlab's kernels from its choice of dtype.
"""

from __future__ import annotations

import argparse
import gc
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
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_config(shape: str):
    from transformers import LlamaConfig

    h, n, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=inter, vocab_size=vocab, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    return config


def build(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(llama_config(shape)).to(dtype)


def batch(shape: str, b: int, t: int, device: torch.device) -> dict[str, torch.Tensor]:
    vocab = SHAPES[shape][-1]
    ids = torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def ftlab_config(method: str, rank: int, args, extra: list[str] = ()):
    from ftlab.config import RunConfig, apply_overrides, from_dict, to_dict

    settings = [f"method.name={method}", f"method.rank={rank or 8}", "method.dropout=0.05", "train.lr=1e-5",
                f"train.loss={args.loss}", *args.set, *extra]
    return from_dict(RunConfig, apply_overrides(to_dict(RunConfig()), settings))


def flops_per_token(method: str, rank: int, args) -> float:
    from ftlab.plan.cost import train_flops_per_token

    return train_flops_per_token(llama_config(args.shape), ftlab_config(method, rank, args).method, args.seq)


def frozen_dtypes(method: str, rank: int, args, device: torch.device) -> tuple[torch.dtype, bool]:
    """(the dtype ftlab loads this run's weights in, whether it computes under bf16 autocast): ftlab's own rules
    (ftlab.model), which the reference follows."""
    from ftlab.model import resolve_dtype, resolve_precision

    cfg = ftlab_config(method, rank, args)
    dtype = resolve_dtype(cfg.model, device, method == "full", cfg.train.precision)
    return dtype, resolve_precision(cfg.train.precision, device) == "bf16-autocast"


def run_case(impl: str, method: str, rank: int, args, extra: list[str] = ()) -> dict:
    """impl: ftlab (with the `extra` settings), reference (PEFT defaults: fp32 frozen base) or reference-bf16 (the
    frozen base in bf16)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:  # the previous case's tensors are gone (in-process): this case's peak is its own
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ftlab_dtype, bf16 = frozen_dtypes(method, rank, args, device)
    dtype = {"ftlab": ftlab_dtype, "reference": torch.float32, "reference-bf16": torch.bfloat16}[impl]
    model = build(args.shape, device, dtype)
    data = batch(args.shape, args.batch, args.seq, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    if impl == "ftlab":
        from ftlab.methods import apply_method
        from ftlab.train import prepare, to_device, train_step

        cfg = ftlab_config(method, rank, args, extra)
        model, params, opt, ftlab_autocast, chunked = prepare(apply_method(model, cfg), cfg, device)
        micro = to_device([data], device)  # as the loop hands it over: its labelled positions found on the host

        def step():
            train_step(model, micro, opt, params, 1.0, ftlab_autocast, chunked)
    else:
        if ftlab_config(method, rank, args).train.activation_checkpointing:  # the same memory regime as ftlab's
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
    for _ in range(args.warmup):  # with train.compile: every compile happens here
        step()
    frames = dict(counters["frames"])
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"impl": impl, "method": method, "rank": rank, "tokens_per_s": args.batch * args.seq * args.steps / seconds,
            "flops_per_token": flops_per_token(method, rank, args), "frozen_dtype": str(dtype),
            "peak_gib": peak / 2**30, "peak_kind": "cuda allocated" if cuda else "process RSS",
            "compiled_in_timed_steps": counters["frames"]["total"] - frames.get("total", 0),
            "compiled": counters["frames"]["ok"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=SHAPES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ranks", default="16,256", help="comma-separated LoRA ranks")
    parser.add_argument("--no-full", action="store_true", help="LoRA only")
    parser.add_argument("--no-lora", action="store_true", help="full finetuning only")
    parser.add_argument("--loss", default="auto", choices=["auto", "chunked", "full"], help="ftlab's train.loss")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of ftlab's run config, e.g. train.compile=true (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="one more ftlab case with these settings on top, against the same reference")
    parser.add_argument("--reference", default="both", choices=["both", "fp32", "bf16", "none"],
                        help="which reference loops run (bf16: the frozen base in bf16, LoRA under bf16 only)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: from its name)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the cases in this process, one after another (quicker; see above for memory)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # impl:method:rank[:settings], run in a child process
    args = parser.parse_args()
    if args.case:
        impl, method, rank, *extra = args.case.split(":", 3)
        print(json.dumps(run_case(impl, method, int(rank), args, extra[0].split(",") if extra else [])))
        return

    cases = ([] if args.no_full else [("full", 0)]) + ([] if args.no_lora else
                                                         [("lora", int(r)) for r in args.ranks.split(",") if r])
    variants = [(v.split(":", 1)[0], v.split(":", 1)[1].split(",")) for v in args.variant]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    from ftlab.plan.cost import GPUS  # dense bf16 peaks, by device name: the planner's table

    peak = args.peak_tflops or next((g.peak_tflops for g in GPUS.values() if g.name in name), None)
    print(f"shape {args.shape}, batch {args.batch} x {args.seq}, {args.warmup} warm-up and {args.steps} timed steps, "
          f"device {name}, torch {torch.__version__}, ftlab settings {args.set or 'default'}"
          + (" (in one process" + (": the GiB columns are its peak so far)" if device.type == "cpu" else ")")
             if args.in_process else ""))
    lora_dtype, bf16 = frozen_dtypes("lora", 8, args, device)
    both = args.reference == "both" and lora_dtype == torch.bfloat16
    ref_base = "bfloat16" if args.reference == "bf16" and lora_dtype == torch.bfloat16 else "float32 (PEFT defaults)"
    print(f"bf16 autocast: {'on' if bf16 else 'off'} (both sides); LoRA's frozen base: ftlab "
          f"{str(lora_dtype).removeprefix('torch.')}, reference {ref_base if args.reference != 'none' else '-'}")
    if both:
        print("'ref bf16 base' rows: ftlab against the reference loop on a bf16 frozen base, as ftlab holds it")
    print(f"{'case':<28} {'ftlab tok/s':>12} {'ref tok/s':>10} {'speed x':>8} {'ftlab MFU':>9} {'ref MFU':>8} "
          f"{'ftlab GiB':>10} {'ref GiB':>8} {'mem x':>6}")
    for method, rank in cases:
        label = "full" if method == "full" else f"lora r={rank}"
        refs = {"both": ["reference", "reference-bf16"], "fp32": ["reference"], "bf16": ["reference-bf16"],
                "none": []}[args.reference]
        if method == "full" or lora_dtype != torch.bfloat16:
            refs = [r for r in refs if r != "reference-bf16"] or (["reference"] if refs else [])
        ours = {"": child_case("ftlab", method, rank, args)}
        ours.update({v: child_case("ftlab", method, rank, args, extra) for v, extra in variants})
        results = {impl: child_case(impl, method, rank, args) for impl in refs}
        reference = results.get("reference") or results.get("reference-bf16")
        for variant, x in ours.items():
            shown = f"{label} {variant}".strip()
            if x is None:
                continue
            print(row(shown, x, reference, peak))
            if x["compiled_in_timed_steps"]:
                print(f"  {shown}: torch.compile compiled {x['compiled_in_timed_steps']} frame(s) in the timed steps "
                      "(raise --warmup)")
        if both and method == "lora" and results.get("reference-bf16") is not None and ours[""] is not None:
            print(row(f"ref bf16 base r={rank}", ours[""], results["reference-bf16"], peak))


def child_case(impl: str, method: str, rank: int, args, extra: list[str] = ()) -> dict | None:
    """One case in its own process (its own peak memory) unless --in-process; None, with the reason printed, when
    it failed (out of memory and the like: the other cases go on)."""
    if args.in_process:
        try:
            return run_case(impl, method, rank, args, list(extra))
        except torch.OutOfMemoryError as e:
            print(f"  {impl} {method} r={rank} {' '.join(extra)} failed: out of memory ({str(e).splitlines()[0]})")
            return None
    child = [sys.executable, __file__, "--case", ":".join([impl, method, str(rank), *([",".join(extra)] if extra
                                                                                      else [])]),
             "--shape", args.shape, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--loss", args.loss, *(f"--set={kv}" for kv in args.set)]
    proc = subprocess.run(child, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {impl} {method} r={rank} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(label: str, f: dict, r: dict | None, peak: float | None) -> str:
    """ftlab's figures against a reference's (dashes without one): tok/s, speed ratio, MFU, peak GiB, memory ratio."""
    def mfu(x):
        return f"{x['tokens_per_s'] * x['flops_per_token'] / (peak * 1e12):.1%}" if peak and x else "-"

    if r is None:
        return (f"{label:<28} {f['tokens_per_s']:>12,.0f} {'-':>10} {'-':>8} {mfu(f):>9} {'-':>8} "
                f"{f['peak_gib']:>10.2f} {'-':>8} {'-':>6}")
    return (f"{label:<28} {f['tokens_per_s']:>12,.0f} {r['tokens_per_s']:>10,.0f} "
            f"{f['tokens_per_s'] / r['tokens_per_s']:>8.2f} {mfu(f):>9} {mfu(r):>8} {f['peak_gib']:>10.2f} "
            f"{r['peak_gib']:>8.2f} {f['peak_gib'] / r['peak_gib']:>6.2f}")


if __name__ == "__main__":
    main()
