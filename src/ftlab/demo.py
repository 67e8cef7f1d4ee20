"""`ftlab demo`: a learning-versus-forgetting study in miniature, on a CPU with no network, in about a minute.

1. A tiny Llama (built from its config) is taught the *source* tasks (word games) by full finetuning: the base.
2. From that base, full finetuning and LoRA each learn the *target* tasks (number games).
3. Every model is loaded back from its checkpoint on disk and scored by held-out loss on the target tasks
   (what it learned) and on the source tasks (what it forgot), with the size and rank of its weight change.

The embedded default of later releases replaces the stand-in base with a pretrained one and held-out loss with
benchmark tasks; the shape of the study is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ftlab.config import RunConfig, load_config
from ftlab.methods import base_reader, count_params, delta_weights
from ftlab.model import load_trained
from ftlab.train import build_data, eval_loss, train

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "examples"
NO_AUTOCAST = torch.autocast("cpu", enabled=False)


def run_demo(out: str) -> list[dict]:
    if not EXAMPLES.is_dir():
        raise FileNotFoundError(f"the example configs are not at {EXAMPLES}; run the demo from a clone of the repo")
    out_dir = Path(out)
    source = str(EXAMPLES / "data" / "tiny-source.jsonl")
    target = str(EXAMPLES / "data" / "tiny-target.jsonl")

    print("ftlab demo 1/3: teaching the base model the source tasks (full finetuning)", flush=True)
    base_cfg = load_config(EXAMPLES / "tiny-full.yaml", [f"data.path={source}", "train.checkpoints=[]"],
                           out=str(out_dir / "base"))
    base = train(base_cfg) / "final"

    runs = {}
    for i, name in enumerate(("tiny-full", "tiny-lora"), start=2):
        print(f"ftlab demo {i}/3: {name} learns the target tasks from that base", flush=True)
        cfg = load_config(EXAMPLES / f"{name}.yaml", [f"model.name={base}", f"data.path={target}"],
                          out=str(out_dir / name.removeprefix("tiny-")))
        runs[name.removeprefix("tiny-")] = (cfg, train(cfg))

    any_cfg = next(iter(runs.values()))[0]
    suites = {"target": any_cfg, "source": _with_data(any_cfg, source)}  # same seed: the runs' own held-out splits
    rows = [score("base", base, suites, None)]
    rows += [score(name, run / "final", suites, run) for name, (cfg, run) in runs.items()]
    print_table(rows)
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(rows, indent=2))
    print(f"\nftlab: runs, checkpoints and metrics.jsonl are in {out_dir.resolve()}; this table in {summary}")
    return rows


def _with_data(cfg: RunConfig, path: str) -> RunConfig:
    from dataclasses import replace

    return replace(cfg, data=replace(cfg.data, path=path))


def score(name: str, checkpoint: Path, suites: dict[str, RunConfig], run: Path | None) -> dict:
    """Held-out losses of a checkpoint loaded from disk, and its weight change against the base it was tuned from."""
    model, tokenizer = load_trained(checkpoint)
    row = {"run": name}
    for suite, cfg in suites.items():
        _, held_out = build_data(cfg, tokenizer)
        row[f"{suite}_loss"] = eval_loss(model, held_out, NO_AUTOCAST)
    if run is None:
        return row
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in log if "tokens_per_s" in r]
    info = json.loads((checkpoint / "ftlab.json").read_text())
    base = base_reader(info["base"])
    ratios, ranks = [], []
    for weight, delta in delta_weights(model, base):
        ratios.append(float(delta.norm() / base(weight).float().norm()))
        ranks.append(int(torch.linalg.matrix_rank(delta)))
    trainable = count_params(model).trainable if info["method"] == "full" else _adapter_size(checkpoint)
    row.update(trainable=trainable, tokens_per_s=sum(speeds) / len(speeds),
               dW_rel=sum(ratios) / len(ratios), dW_rank=max(ranks))
    return row


def _adapter_size(directory: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(directory / "adapter_model.safetensors").values())


def print_table(rows: list[dict]) -> None:
    base = rows[0]
    header = (f"{'model':<6} {'trainable':>10} {'target loss (learned)':>22} {'source loss (forgot)':>21} "
              f"{'tokens/s':>9} {'|dW|/|W|':>9} {'max rank dW':>12}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        learned = f"{r['target_loss']:.3f} ({r['target_loss'] - base['target_loss']:+.3f})"
        forgot = f"{r['source_loss']:.3f} ({r['source_loss'] - base['source_loss']:+.3f})"
        extra = (f"{r['trainable']:>10,}", f"{r['tokens_per_s']:>9,.0f}", f"{r['dW_rel']:>9.3f}", f"{r['dW_rank']:>12}") \
            if "trainable" in r else (f"{'-':>10}", f"{'-':>9}", f"{'-':>9}", f"{'-':>12}")
        print(f"{r['run']:<6} {extra[0]} {learned:>22} {forgot:>21} {extra[1]} {extra[2]} {extra[3]}")
    print("Losses are held-out nats per response token; lower target loss = learned more, "
          "higher source loss = forgot more.")
