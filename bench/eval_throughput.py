"""Evaluation wall time: ftlab's evaluators versus lm-evaluation-harness on the same model and the same tasks.

Same random Llama (speed does not depend on the weights) with the byte tokenizer, already loaded for both;
lm-eval gets it as an HFLM instance, so neither side pays for loading. Tasks: multiple choice on HellaSwag-format
documents (synthetic, original release format) and 5-shot GSM8K generation (real problems from
../shared/benchmarks/gsm8k). Each side's time includes building its documents from the same local files.

    python bench/eval_throughput.py                        # CPU: 200 choice docs, 20 GSM8K docs, 64 new tokens
    python bench/eval_throughput.py --choice-docs 1000 --gsm8k-docs 100 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ftlab.config import TinyModelConfig
from ftlab.evaluate.choice import hellaswag_doc, score_choices
from ftlab.evaluate.gsm8k import gsm8k_doc, score_gsm8k
from ftlab.evaluate.lm import LM
from ftlab.model import build_tiny

REPO = Path(__file__).parents[1]
GSM8K = REPO.parent / "shared/benchmarks/gsm8k"
TASKS = REPO / "tests/lm_eval_tasks"
SHAPE = TinyModelConfig(hidden_size=128, layers=4, heads=4, kv_heads=2, intermediate_size=344, max_position=1024)


def write_hellaswag(path: Path, n: int) -> None:
    rng = random.Random(0)
    words = "the a man woman dog ball runs jumps slowly then quickly picks up puts down water cake door".split()
    with path.open("w") as f:
        for i in range(n):
            sentence = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
            f.write(json.dumps({"ind": i, "activity_label": sentence(2), "ctx_a": sentence(rng.randint(10, 30)) + ".",
                                "ctx_b": sentence(3), "endings": [sentence(rng.randint(5, 20)) + "." for _ in range(4)],
                                "label": rng.randrange(4)}) + "\n")


def task_yaml(directory: Path, name: str, template: str, data_files: dict[str, str], extra: dict[str, str | None]) -> None:
    """A copy of one of the test task YAMLs with absolute data paths (keys in `extra` replaced, or dropped if None)."""
    lines = (TASKS / template).read_text().splitlines()
    out, skip = [], False
    for line in lines:
        if line.startswith("task:"):
            line = f"task: {name}"
        if line.startswith("dataset_kwargs:"):
            out += ["dataset_kwargs:", "  data_files:"] + [f"    {k}: {v}" for k, v in data_files.items()]
            skip = True
            continue
        if skip and line.startswith("  "):
            continue
        skip = False
        key = line.strip().split(":")[0]
        if key in extra and extra[key] is None:
            continue
        out.append(line.split(":")[0] + f": {extra[key]}" if key in extra else line)
    (directory / f"{name}.yaml").write_text("\n".join(out) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--choice-docs", type=int, default=200)
    p.add_argument("--gsm8k-docs", type=int, default=20)
    p.add_argument("--max-gen-toks", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = build_tiny(SHAPE)
    tmp = Path(tempfile.mkdtemp(prefix="ftlab-bench-"))
    write_hellaswag(tmp / "hellaswag.jsonl", args.choice_docs)
    task_yaml(tmp, "bench_hellaswag", "ftlab_hellaswag.yaml", {"validation": str(tmp / "hellaswag.jsonl")},
              {"training_split": None})  # zero-shot: no train file
    task_yaml(tmp, "bench_gsm8k", "ftlab_gsm8k.yaml",
              {"train": str(GSM8K / "train.jsonl"), "test": str(GSM8K / "test.jsonl")},
              {"max_gen_toks": str(args.max_gen_toks)})
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch, device="cpu")
    manager = TaskManager(include_path=str(tmp))
    lm = LM(model, tokenizer, batch_size=args.batch)

    def read(path: Path, make, limit=None) -> list:
        lines = path.read_text().splitlines()[:limit]
        return [make(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, start=1)]

    rows = []
    start = time.perf_counter()
    ref = lm_eval.simple_evaluate(model=hflm, tasks=["bench_hellaswag"], task_manager=manager, num_fewshot=0)
    theirs = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_choices(lm, read(tmp / "hellaswag.jsonl", hellaswag_doc), "hellaswag", "1")
    ours = time.perf_counter() - start
    same = abs(scores[1].value - ref["results"]["bench_hellaswag"]["acc_norm,none"]) < 1e-9
    rows.append((f"choice ({args.choice_docs} docs x 4)", theirs, ours, same))

    start = time.perf_counter()
    ref = lm_eval.simple_evaluate(model=hflm, tasks=["bench_gsm8k"], task_manager=manager, num_fewshot=5,
                                  limit=args.gsm8k_docs)
    theirs = time.perf_counter() - start
    start = time.perf_counter()
    docs = read(GSM8K / "test.jsonl", gsm8k_doc, args.gsm8k_docs)
    scores, _ = score_gsm8k(lm, docs, read(GSM8K / "train.jsonl", gsm8k_doc), max_new_tokens=args.max_gen_toks)
    ours = time.perf_counter() - start
    same = abs(scores[1].value - ref["results"]["bench_gsm8k"]["exact_match,flexible-extract"]) < 1e-9
    rows.append((f"gsm8k 5-shot ({args.gsm8k_docs} docs, {args.max_gen_toks} tok)", theirs, ours, same))

    print(f"\nmodel: Llama {SHAPE.hidden_size}x{SHAPE.layers}, byte tokenizer, batch {args.batch}, "
          f"{torch.get_num_threads()} CPU threads, fp32")
    print(f"{'task':<34}{'lm-eval s':>11}{'ftlab s':>10}{'lm-eval/ftlab':>15}{'same score':>12}")
    for name, theirs, ours, same in rows:
        print(f"{name:<34}{theirs:>11.2f}{ours:>10.2f}{theirs / ours:>15.2f}{str(same):>12}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
