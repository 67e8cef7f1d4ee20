"""`ftlab demo`: full finetuning and LoRA of the same tiny model on the same data, then a side-by-side summary.

Everything runs on a CPU with no network: the tiny model is built from its config and the data ships in the repo.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ftlab.config import load_config
from ftlab.methods import base_reader, count_params, delta_weights
from ftlab.model import load_trained
from ftlab.train import train

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "examples"


def run_demo(out: str) -> list[dict]:
    if not EXAMPLES.is_dir():
        raise FileNotFoundError(f"the example configs are not at {EXAMPLES}; run the demo from a clone of the repo")
    rows = []
    for name in ("tiny-full", "tiny-lora"):
        cfg = load_config(EXAMPLES / f"{name}.yaml", [], out=str(Path(out) / name))
        run = train(cfg)
        rows.append(summarize(run, name))
    print_table(rows)
    print(f"\nftlab: runs, checkpoints and metrics.jsonl are in {Path(out).resolve()}")
    return rows


def summarize(run: Path, name: str) -> dict:
    """Held-out loss before/after, throughput, and the size and rank of the weight change, read from disk."""
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("eval_loss") is not None]
    speeds = [r["tokens_per_s"] for r in log if "tokens_per_s" in r]
    model, _ = load_trained(run / "final")  # the saved checkpoint, loaded as any other tool would
    info = json.loads((run / "final" / "ftlab.json").read_text())
    base = base_reader(info["base"])
    ratios, ranks = [], []
    for weight, delta in delta_weights(model, base):
        ratios.append(float(delta.norm() / base(weight).float().norm()))
        ranks.append(int(torch.linalg.matrix_rank(delta)))
    return {
        "run": name,
        "trainable": count_params(model).trainable if info["method"] == "full" else _adapter_size(run / "final"),
        "eval_before": evals[0]["eval_loss"], "eval_after": evals[-1]["eval_loss"],
        "tokens_per_s": sum(speeds) / len(speeds),
        "dW_rel": sum(ratios) / len(ratios), "dW_rank": max(ranks), "matrices": len(ranks),
    }


def _adapter_size(directory: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(directory / "adapter_model.safetensors").values())


def print_table(rows: list[dict]) -> None:
    header = f"{'run':<10} {'trainable':>10} {'held-out loss':>17} {'tokens/s':>9} {'|dW|/|W|':>9} {'max rank dW':>12}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['run']:<10} {r['trainable']:>10,} {r['eval_before']:>7.3f} -> {r['eval_after']:<6.3f} "
              f"{r['tokens_per_s']:>9,.0f} {r['dW_rel']:>9.3f} {r['dW_rank']:>12}")
