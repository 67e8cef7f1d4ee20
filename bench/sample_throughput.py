"""Sampling throughput: ftlab's sampler versus `model.generate`, on the same random Llama, rows and device.

P problems x n samples x new tokens, the shape of a HumanEval/GSM8K pass@k evaluation. Prompts are random token
ids of varied length (--prompt-len / 2 to 3/2, so batches are left-padded); random weights, since speed does not
depend on them. Each side is timed on the same rows, batch_size rows at a time, nucleus sampling at
--temperature / --top-p, after an untimed warm-up of one batch of every shape the timed part and the greedy check
meet (rows, cache slots: the last batch may be smaller, and prompt lengths change the static cache's size), which
holds torch.compile's compiles and the CUDA graph captures of every shape; the script prints how many compiles
happened after it (0 expected). With --adapters, the first adapter's decode is the adapters' warm-up (a PEFT model
is a new model state for the compiled step) and the others must compile nothing.

    python bench/sample_throughput.py                                                  # CPU, tiny model, < 1 min
    python bench/sample_throughput.py --shape 1.1b --problems 20 --n 50 --new-tokens 256 --batch 200   # one GPU

Reference: `model.generate` on the expanded rows (each prompt repeated n times: every row prefills its prompt,
dynamic cache), top_k 0, as `LM(sampler="hf")` runs it. ftlab: `Sampler` with --cache (auto: StaticCache +
torch.compile "reduce-overhead" on CUDA, dynamic cache on CPU). bf16 on CUDA, fp32 on CPU. Then both decode
greedily on the first --check-problems problems and the completions (up to EOS) are compared token for token:
identical in fp32; in bf16 the prefill's different batch shape (and compiled kernels) can move a logit by a
rounding step and flip a near-tie argmax, so a few rows may part ways (run --cache dynamic to separate the two).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers
from torch._dynamo.utils import counters

from ftlab.evaluate.sampler import Decoding, Sampler, static_slots

sys.path.insert(0, str(Path(__file__).parent))
import train_throughput  # noqa: E402  (the same shapes and random Llama as the training benchmark)
from train_throughput import SHAPES  # noqa: E402

PAD = 0


def build(shape: str, device: torch.device, dtype: torch.dtype):
    return train_throughput.build(shape, device, dtype).eval()


def prompts(shape: str, problems: int, length: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(length // 2, length * 3 // 2 + 1, (problems,), generator=gen).tolist()
    return [torch.randint(3, SHAPES[shape][-1], (n,), generator=gen).tolist() for n in lengths]


def reference(model, rows: list[list[int]], d: Decoding, batch: int, device: torch.device) -> list[list[int]]:
    """model.generate, batch rows at a time: each row's new tokens up to and including its first EOS."""
    sampling = {"do_sample": False}
    if d.temperature:
        sampling = {"do_sample": True, "temperature": d.temperature, "top_p": d.top_p, "top_k": 0}
    eos = model.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else eos or [])
    torch.manual_seed(d.seed)
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([[PAD] * (width - len(r)) + r for r in chunk], device=device)  # (B, P)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=device)  # (B, P)
        with torch.inference_mode():
            new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=d.max_new_tokens,
                                 pad_token_id=PAD, **sampling)[:, width:].tolist()  # (B, new)
        for tokens in new:
            end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
            out.append(tokens[:end])
    return out


def warmup_batches(rows: list[list[int]], batch: int, new_tokens: int) -> list[list[list[int]]]:
    """One batch of each (rows, static cache slots) shape that running `rows` batch at a time meets."""
    shapes: dict[tuple[int, int], list[list[int]]] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        shapes.setdefault((len(chunk), static_slots(max(map(len, chunk)), new_tokens)), chunk)
    return list(shapes.values())


def timed(fn, device: torch.device) -> tuple[float, list[list[int]]]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=SHAPES)
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="samples per problem")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prompt-len", type=int, default=96, help="mean prompt length in tokens")
    parser.add_argument("--batch", type=int, default=16, help="rows per batch (both sides)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--cache", default="auto", choices=["auto", "dynamic", "static"], help="ftlab's cache")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="torch.compile ftlab's decode step (auto: with a static cache on CUDA)")
    parser.add_argument("--check-problems", type=int, default=2, help="problems decoded greedily by both sides")
    parser.add_argument("--adapters", type=int, default=0,
                        help="then swap this many random LoRA checkpoints onto the model, as `ftlab eval` of a run "
                             "does, and decode each greedily with the same sampler settings and model.generate")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(args.shape, device, dtype)
    sampler = Sampler(model, None, device, PAD, cache=args.cache,
                      compile={"auto": None, "on": True, "off": False}[args.compile])
    problems = prompts(args.shape, args.problems, args.prompt_len)
    rows = [p for p in problems for _ in range(args.n)]  # a problem's n samples are adjacent rows
    sampled = Decoding(args.new_tokens, args.temperature, args.top_p, seed=0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"shape {args.shape} {str(dtype).removeprefix('torch.')}, {args.problems} problems x {args.n} samples x "
          f"{args.new_tokens} new tokens, prompts ~{args.prompt_len} tokens, batch {args.batch}, T {args.temperature} "
          f"top_p {args.top_p}, device {name}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"ftlab sampler: cache {sampler.cache}, compile {sampler.compile}")

    check = [p for p in problems[:args.check_problems] for _ in range(args.n)]
    greedy = Decoding(args.new_tokens)
    warm = warmup_batches(rows, args.batch, args.new_tokens)
    warm_check = [c for c in warmup_batches(check, args.batch, args.new_tokens) if c not in warm]
    first, _ = timed(lambda: [sampler.sample(chunk, sampled, args.batch) for chunk in warm + warm_check], device)
    timed(lambda: reference(model, warm[0], sampled, args.batch, device), device)
    compiles = counters["frames"]["total"]
    ours_s, ours = timed(lambda: sampler.sample(rows, sampled, args.batch), device)
    compiles = counters["frames"]["total"] - compiles  # should be 0: every shape was warmed up
    ref_s, ref = timed(lambda: reference(model, rows, sampled, args.batch, device), device)
    per_k = 1000 / len(rows)
    print(f"ftlab warm-up: {len(warm + warm_check)} batch shape(s) of the timed part and the greedy check, holding "
          f"their compiles: {first:.1f} s; compiles in the timed part: {compiles}; still compiled: {sampler.compile}")
    print(f"{'':<22} {'s / 1k samples':>15} {'new tok/s':>10}")
    for label, seconds, out in (("ftlab sampler", ours_s, ours), ("model.generate (ref)", ref_s, ref)):
        print(f"{label:<22} {seconds * per_k:>15.2f} {sum(map(len, out)) / seconds:>10,.0f}")
    print(f"speedup (ref time / ftlab time): {ref_s / ours_s:.2f}x")

    compiles = counters["frames"]["total"]
    ours_g = sampler.sample(check, greedy, args.batch)
    compiles = counters["frames"]["total"] - compiles
    ref_g = reference(model, check, greedy, args.batch, device)
    same = sum(a == b for a, b in zip(ours_g, ref_g))
    prefix = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) / max(len(b), 1)
                 for a, b in zip(ours_g, ref_g)) / len(check)  # bf16: a rounding step can flip a near-tie argmax
    print(f"greedy samples identical: {'yes' if same == len(check) else 'no'} ({same}/{len(check)} rows, "
          f"{args.check_problems} problems x {args.n}; tokens agree up to {prefix:.1%} of a row on average); "
          f"compiles in the greedy check: {compiles}")
    if args.adapters:
        adapters_check(model, check, args, device)


def adapters_check(model, rows: list[list[int]], args, device: torch.device) -> None:
    """Random LoRA adapters (r=16, every linear layer) swapped onto the model one after another with ftlab's
    swap (ftlab.evaluate.targets: copied into one adapter's tensors in place), fused in the base's dtype where it is
    not fp32 (as LM runs them), each decoded greedily by a new Sampler (sharing the process's compiled step, as
    every checkpoint's evaluation does) and by model.generate.
    The compiled step must not recompile per adapter, and its CUDA graphs must read each adapter's weights."""
    import tempfile

    from peft import LoraConfig, get_peft_model

    from ftlab import lora_fused
    from ftlab.evaluate.targets import _swap_adapter

    greedy, targets = Decoding(args.new_tokens), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]
    with tempfile.TemporaryDirectory() as tmp:
        writer = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
        for i in range(args.adapters):  # B != 0, so each adapter changes the output
            torch.manual_seed(i)
            with torch.no_grad():
                for name, p in writer.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.02)
            writer.save_pretrained(f"{tmp}/adapter-{i}")
        base = writer.unload()
        peft_model, same, first, compiles = None, 0, None, counters["frames"]["total"]
        for i in range(args.adapters):
            peft_model = _swap_adapter(peft_model, base, Path(f"{tmp}/adapter-{i}")).eval()
            if next(base.parameters()).dtype != torch.float32:  # as LM does: adapters in the base's dtype
                lora_fused.enable(peft_model)
            sampler = Sampler(peft_model, None, device, PAD, cache=args.cache,
                              compile={"auto": None, "on": True, "off": False}[args.compile])
            ours = sampler.sample(rows, greedy, args.batch)
            same += ours == reference(peft_model, rows, greedy, args.batch, device)
            if i == 0:
                first = counters["frames"]["total"]  # the adapter's first decode may compile (a new model state)
    later = counters["frames"]["total"] - first
    print(f"adapters: {args.adapters} swapped in; compiles: {first - compiles} for the first, {later} for the others; "
          f"still compiled: {sampler.compile}; greedy identical to model.generate: {same}/{args.adapters} adapters")


if __name__ == "__main__":
    main()
