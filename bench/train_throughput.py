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

Reference loop: `model(input_ids, labels=labels).loss.backward()`, clip 1.0, AdamW (fused on CUDA), PEFT defaults
(fp32 adapters) for LoRA, fp32 master weights under bf16 autocast on CUDA. ftlab: `ftlab.train.train_step` with
the optimizer and precision it would choose for a run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

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


def run_case(impl: str, method: str, rank: int, args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    frozen_dtype = torch.bfloat16 if cuda and method == "lora" and impl == "ftlab" else torch.float32
    model = build(args.shape, device, frozen_dtype)
    data = batch(args.shape, args.batch, args.seq, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    if impl == "ftlab":
        from ftlab.config import RunConfig, apply_overrides, from_dict, to_dict
        from ftlab.methods import apply_method
        from ftlab.train import prepare, train_step

        settings = [f"method.name={method}", f"method.rank={rank or 8}", "method.dropout=0.05", "train.lr=1e-5",
                    f"train.loss={args.loss}", *args.set]
        cfg = from_dict(RunConfig, apply_overrides(to_dict(RunConfig()), settings))
        model, params, opt, ftlab_autocast, chunked = prepare(apply_method(model, cfg), cfg, device)

        def step():
            train_step(model, [data], opt, params, 1.0, ftlab_autocast, chunked)
    else:
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                                                     target_modules=TARGETS, task_type="CAUSAL_LM"))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), fused=cuda or None)

        def step():
            with autocast:
                loss = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], labels=data["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    model.train()
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
            "flops_per_token": (6 if method == "full" else 4) * n_params,
            "peak_gib": peak / 2**30, "peak_kind": "cuda allocated" if cuda else "process RSS"}


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
    parser.add_argument("--case", help=argparse.SUPPRESS)  # impl:method:rank, run in a child process
    args = parser.parse_args()
    if args.case:
        impl, method, rank = args.case.split(":")
        print(json.dumps(run_case(impl, method, int(rank), args)))
        return

    cases = ([] if args.no_full else [("full", 0)]) + [("lora", int(r)) for r in args.ranks.split(",") if r]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    print(f"shape {args.shape}, batch {args.batch} x {args.seq}, {args.steps} timed steps, device {device}, "
          f"torch {torch.__version__}, ftlab settings {args.set or 'default'}")
    print(f"{'method':<10} {'ftlab tok/s':>12} {'ref tok/s':>10} {'speed x':>8} {'ftlab MFU':>9} {'ref MFU':>8} "
          f"{'ftlab GiB':>10} {'ref GiB':>8} {'mem x':>6}")
    for method, rank in cases:
        results = {}
        for impl in ("ftlab", "reference"):
            child = [sys.executable, __file__, "--case", f"{impl}:{method}:{rank}", "--shape", args.shape,
                     "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
                     "--warmup", str(args.warmup), "--loss", args.loss, *(f"--set={kv}" for kv in args.set)]
            proc = subprocess.run(child, capture_output=True, text=True)
            if proc.returncode != 0:  # out of memory and the like: say so and go on with the other cases
                print(f"  {impl} {method} r={rank} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
                continue
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        label = "full" if method == "full" else f"lora r={rank}"
        if len(results) < 2:
            for impl, x in results.items():
                print(f"{label:<10} {impl}: {x['tokens_per_s']:,.0f} tok/s, {x['peak_gib']:.2f} GiB")
            continue
        f, r = results["ftlab"], results["reference"]
        mfu = [f"{x['tokens_per_s'] * x['flops_per_token'] / (peak * 1e12):.1%}" if peak else "-" for x in (f, r)]
        print(f"{label:<10} {f['tokens_per_s']:>12,.0f} {r['tokens_per_s']:>10,.0f} {f['tokens_per_s'] / r['tokens_per_s']:>8.2f} "
              f"{mfu[0]:>9} {mfu[1]:>8} {f['peak_gib']:>10.2f} {r['peak_gib']:>8.2f} {f['peak_gib'] / r['peak_gib']:>6.2f}")


if __name__ == "__main__":
    main()
