"""The distributed path's own cost: ftlab's training step sharded with FSDP2 on one process versus unsharded.

Both sides run `ftlab.train.train_step` on the same model, batch and device, with the run's default loss (chunked on
CUDA, under FSDP too); the FSDP side is started by torchrun with one process (gloo on the CPU, NCCL on CUDA), so
the difference is FSDP's wrapping, hooks and collectives.

    python bench/fsdp_overhead.py                                  # CPU, tiny model
    python bench/fsdp_overhead.py --shape 1.1b --batch 8 --seq 2048 --steps 20 --method lora   # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import SHAPES, batch, build  # noqa: E402  (the same model and batch as that benchmark)


def run_case(args) -> dict:
    from ftlab import distributed
    from ftlab.config import RunConfig, apply_overrides, from_dict, to_dict
    from ftlab.methods import apply_method
    from ftlab.model import resolve_dtype
    from ftlab.train import prepare, to_device, train_step

    if distributed.launched():
        world, device = distributed.init("auto")
    else:
        world, device = distributed.SINGLE, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = from_dict(RunConfig, apply_overrides(to_dict(RunConfig()), [
        f"method.name={args.method}", "method.rank=16", "method.dropout=0.05", "train.lr=1e-5"]))  # loss: auto
    frozen = resolve_dtype(cfg.model, device, args.method == "full", cfg.train.precision)  # as a run loads it
    model = apply_method(build(args.shape, torch.device("cpu") if world.distributed else device, frozen), cfg)
    model, params, opt, autocast, chunked = prepare(model, cfg, device, world)
    data = to_device([batch(args.shape, args.batch, args.seq, torch.device("cpu"))], device)
    model.train()
    cuda = device.type == "cuda"
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        train_step(model, data, opt, params, 1.0, autocast, chunked, world)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"tokens_per_s": args.batch * args.seq * args.steps / seconds,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    distributed.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=SHAPES)
    parser.add_argument("--method", default="full", choices=["full", "lora"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        out = run_case(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(out), flush=True)
        return
    common = [__file__, "--case", "--shape", args.shape, "--method", args.method, "--batch", str(args.batch),
              "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))}
    for name, launcher in (("plain", [sys.executable]),
                           ("fsdp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"])):
        # torchrun would set OMP_NUM_THREADS=1: both sides get the same threads
        out = subprocess.run([*launcher, *common], capture_output=True, text=True, check=True, env=env).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    p, f = results["plain"], results["fsdp"]
    print(f"shape {args.shape}, {args.method}, batch {args.batch} x {args.seq}, {args.steps} timed steps, device "
          f"{device}, torch {torch.__version__}")
    print(f"plain {p['tokens_per_s']:,.0f} tok/s | FSDP on 1 process {f['tokens_per_s']:,.0f} tok/s | "
          f"FSDP / plain {f['tokens_per_s'] / p['tokens_per_s']:.2f}" +
          (f" | peak GiB {p['peak_gib']:.2f} vs {f['peak_gib']:.2f}" if p["peak_gib"] else ""))


if __name__ == "__main__":
    main()
