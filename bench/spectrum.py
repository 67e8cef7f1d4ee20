"""ΔW spectrum: `ftlab spectrum` versus a plain per-matrix torch.linalg.svdvals loop, on the same pair of checkpoints.

    python bench/spectrum.py --shape small                    # CPU, a minute
    python bench/spectrum.py --shape 1b --layers 2            # CPU: 2 of TinyLlama-1.1B's 22 blocks
    python bench/spectrum.py --shape 7b                       # one GPU: Llama-2-7B's 32 blocks

First, singular values of one matrix both ways (svdvals in fp32, eigenvalues of the float64 Gram matrix) at the
shapes of --single, with their k values compared. Then a base/ and finetuned/ model directory are written
(config.json and fp32 safetensors, one shard per block, only the blocks' seven linear weights: W_base ~ N(0, 0.02²),
W_ft = W_base + ΔW with ΔW of rank min(m, n)/4 plus small dense noise) and analysed by
  ftlab:     ftlab.analysis.spectrum.spectrum_of(base, finetuned, top_k=0): streamed, --method (default auto)
  reference: for each matrix, read both tensors, ΔW = W_ft - W_base, torch.linalg.svdvals of ΔW, W_base and W_ft,
             k values from the cumulative σ²; a Gaussian matrix per shape once, as ftlab does
each in its own process, so time and peak memory (process RSS on a CPU, torch.cuda.max_memory_allocated on a GPU)
are its own; --repeats N alternates the cases N times and keeps each one's fastest. Both compute the same
quantities (intruder dimensions, which need two full SVDs per matrix, are off; --intruders adds a third,
timed-only run of ftlab with them on, which analyses the finetuned checkpoint twice with one BaseFactors, as a
study analyses its checkpoints: the second time W_base's SVDs are reused). The k values must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {  # hidden, layers, heads, kv heads, intermediate
    "small": (512, 4, 8, 2, 1408),
    "1b": (2048, 22, 32, 4, 5632),  # TinyLlama-1.1B: k/v are 256 x 2048
    "7b": (4096, 32, 32, 32, 11008),  # Llama-2-7B
}
MODULES = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
           ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]
QUANTILES = (0.5, 0.9, 0.99)


def module_shapes(shape: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each of the seven linear layers of one block."""
    h, _, heads, kv, inter = SHAPES[shape]
    kv_dim = h // heads * kv
    return {"q_proj": (h, h), "k_proj": (kv_dim, h), "v_proj": (kv_dim, h), "o_proj": (h, h),
            "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}


def write_pair(shape: str, layers: int, root: Path) -> tuple[Path, Path]:
    """base/ and finetuned/ model directories with random block weights, one safetensors shard per block."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    h, _, heads, kv, inter = SHAPES[shape]
    config = LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=inter, vocab_size=32000)
    gen = torch.Generator().manual_seed(0)
    dirs = root / "base", root / "finetuned"
    maps: list[dict[str, str]] = [{}, {}]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(d)
    for layer in range(layers):
        shard = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        tensors: list[dict[str, torch.Tensor]] = [{}, {}]
        for (block, module), (m, n) in zip(MODULES, module_shapes(shape).values()):
            name = f"model.layers.{layer}.{block}.{module}.weight"
            w = torch.randn(m, n, generator=gen) * 0.02  # (m, n)
            s = min(m, n) // 4
            delta = (torch.randn(m, s, generator=gen) @ torch.randn(s, n, generator=gen)) * (2e-3 / s ** 0.5)
            delta += torch.randn(m, n, generator=gen) * 2e-4
            tensors[0][name], tensors[1][name] = w, w + delta
            for i in range(2):
                maps[i][name] = shard
        for d, t in zip(dirs, tensors):
            save_file(t, d / shard, metadata={"format": "pt"})
    for d, weight_map in zip(dirs, maps):
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dirs


def reference_k(sigma: torch.Tensor) -> list[int]:
    energy = sigma.double().square()
    share = energy.cumsum(0) / energy.sum()
    return [int((share < q).sum()) + 1 for q in QUANTILES]


def run_reference(base: Path, finetuned: Path, device: torch.device) -> dict[str, dict[str, list[int]]]:
    """The plain loop a user would write: one matrix at a time, torch.linalg.svdvals, fp32."""
    from safetensors import safe_open

    weight_map = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    ks, gaussian = {}, {}
    for name, shard in weight_map.items():
        with safe_open(base / shard, "pt") as fb, safe_open(finetuned / shard, "pt") as ff:
            w_base = fb.get_tensor(name).float().to(device)
            w_ft = ff.get_tensor(name).float().to(device)
        shape = tuple(w_base.shape)
        if shape not in gaussian:
            g = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
            gaussian[shape] = reference_k(torch.linalg.svdvals(g))
        ks[name] = {"delta": reference_k(torch.linalg.svdvals(w_ft - w_base)),
                    "base": reference_k(torch.linalg.svdvals(w_base)),
                    "finetuned": reference_k(torch.linalg.svdvals(w_ft)), "gaussian": gaussian[shape]}
    return ks


def run_ftlab(base: Path, finetuned: Path, method: str, top_k: int, factors=None) -> dict[str, dict[str, list[int]]]:
    from ftlab.analysis.spectrum import spectrum_of

    entry = spectrum_of(base, finetuned, method=method, top_k=top_k, factors=factors)
    return {m["name"]: {key: [m[key][k] for k in ("k50", "k90", "k99")]
                        for key in ("delta", "base", "finetuned", "gaussian")} for m in entry["matrices"]}


def run_case(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, finetuned = Path(args.dir) / "base", Path(args.dir) / "finetuned"
    start = time.perf_counter()
    again = None
    if args.case == "reference":
        ks = run_reference(base, finetuned, device)
    elif args.case == "ftlab":
        ks = run_ftlab(base, finetuned, args.method, 0)
    else:  # with intruders: a first checkpoint, then the next one against the same base (its SVDs reused)
        from ftlab.analysis.spectrum import BaseFactors

        factors = BaseFactors()
        ks = run_ftlab(base, finetuned, args.method, 10, factors)
        if device.type == "cuda":
            torch.cuda.synchronize()
        again = time.perf_counter()
        run_ftlab(base, finetuned, args.method, 10, factors)
    if device.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": args.case, "seconds": (end if again is None else again) - start,
            "next_seconds": None if again is None else end - again, "peak_gib": peak / 2**30,
            "peak_kind": "cuda allocated" if cuda else "process RSS", "k": ks}


def single_matrices(shapes: str, repeats: int) -> None:
    """svdvals (fp32) versus the float64 Gram eigenvalues on one random matrix per shape; same k values?"""
    from ftlab.analysis.spectrum_math import k_values, singular_values

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{'matrix':<12} {'svd s':>8} {'gram s':>8} {'svd / gram':>10}  k50/k90/k99 equal")
    for text in shapes.split(","):
        m, n = (int(x) for x in text.split("x"))
        w = (torch.randn(m, n, generator=torch.Generator().manual_seed(1)) * 0.02).to(device)
        times, ks = {"svd": [], "gram": []}, {}
        for _ in range(repeats):  # alternating, the fastest of each: a shared machine's load comes and goes
            for method in ("svd", "gram"):
                singular_values(w[:64, :64], method)  # warm up the library
                start = time.perf_counter()
                sigma = singular_values(w, method)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[method].append(time.perf_counter() - start)
                ks[method] = k_values(sigma)
        times = {k: min(v) for k, v in times.items()}
        assert ks["svd"] == ks["gram"], (text, ks)
        print(f"{text:<12} {times['svd']:>8.2f} {times['gram']:>8.2f} {times['svd'] / times['gram']:>10.2f}  "
              f"yes {tuple(ks['gram'].values())}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=SHAPES)
    parser.add_argument("--layers", type=int,
                        help="number of blocks (default: the shape's own; 0: only the one-matrix timing)")
    parser.add_argument("--method", default="auto", choices=["auto", "svd", "gram"], help="ftlab's method")
    parser.add_argument("--single", default="2048x2048,2048x5632,5632x2048",
                        help="shapes for the one-matrix svd-versus-gram timing ('' to skip)")
    parser.add_argument("--repeats", type=int, default=1, help="run each case N times, alternating; the fastest")
    parser.add_argument("--intruders", action="store_true", help="also time ftlab with intruder dimensions on")
    parser.add_argument("--dir", help="where the checkpoints go (default: a temporary directory, removed)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # ftlab | reference | ftlab+intruders, in a child
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.single:
        single_matrices(args.single, args.repeats)
    layers = SHAPES[args.shape][1] if args.layers is None else args.layers
    if layers == 0:  # --layers 0: the one-matrix timing only
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="ftlab-spectrum-bench-"))
    try:
        start = time.perf_counter()
        write_pair(args.shape, layers, root)
        print(f"shape {args.shape}, {layers} blocks x 7 matrices, written in {time.perf_counter() - start:.0f} s")
        results: dict[str, dict] = {}
        for _ in range(args.repeats):
            for case in ["ftlab", "reference"] + (["ftlab+intruders"] if args.intruders else []):
                child = [sys.executable, __file__, "--case", case, "--dir", str(root), "--method", args.method]
                out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                print(f"  {case}: {res['seconds']:.1f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
                if case not in results or res["seconds"] < results[case]["seconds"]:
                    results[case] = res
    finally:
        if not args.dir:
            shutil.rmtree(root)
    f, r = results["ftlab"], results["reference"]
    assert f["k"] == r["k"], "ftlab and the reference disagree on a k value"
    if "ftlab+intruders" in results:
        assert results["ftlab+intruders"]["k"].keys() == r["k"].keys()
        assert all(results["ftlab+intruders"]["k"][n]["delta"] == r["k"][n]["delta"] for n in r["k"])
    n = len(r["k"])
    print(f"k50/k90/k99 of ΔW, W_base, W_ft and the Gaussian identical for all {n} matrices")
    print(f"{'case':<16} {'seconds':>8} {'s/matrix':>9} {'peak GiB':>9}  ({f['peak_kind']})")
    for res in results.values():
        print(f"{res['case']:<16} {res['seconds']:>8.1f} {res['seconds'] / n:>9.2f} {res['peak_gib']:>9.2f}")
        if res.get("next_seconds") is not None:
            print(f"{'  next ckpt':<16} {res['next_seconds']:>8.1f} {res['next_seconds'] / n:>9.2f}  (W_base's SVDs "
                  "reused: a study's later checkpoints)")
    print(f"speed: reference / ftlab = {r['seconds'] / f['seconds']:.2f}x; "
          f"memory: ftlab / reference = {f['peak_gib'] / r['peak_gib']:.2f}")


if __name__ == "__main__":
    main()
