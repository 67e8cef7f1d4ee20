"""Merged versus adapter: does the model a user deploys, the adapter merged into the base's weights, score as the
adapter ftlab evaluated?

    ftlab merge-check runs/lora                          # every LoRA checkpoint of a run, on the tasks it was evaluated on
    ftlab merge-check runs/lora/final --tasks math,source_loss --limit 100
    -> <checkpoint>/merge_check.json; each model's evaluation in <checkpoint>/merge_check/<model>/ (as ftlab eval's)

Per precision, fp32 and bf16, two models on the same base, evaluated by ftlab's harness on the same documents:
  adapter-<p>  the base loaded in that precision with the adapter applied unmerged, as `ftlab eval` runs it (in bf16
               the adapter fused in bf16: ftlab.lora_fused)
  merged-<p>   the base loaded in that precision with the adapter merged into its weights by PEFT (merge_and_unload:
               W + s·B·A, rounded to the precision), what a merged model saved for deployment computes
A QLoRA adapter has one reference, adapter-nf4: itself on the 4-bit base it trained on, computing in the dtype it
trained in; its merged models are merged into the full-precision base (how a QLoRA adapter is merged for deployment),
so they also carry the difference between the base and its NF4 rounding.

For each comparison (merged against its adapter): the largest |logit difference| over every position of the first
LOGIT_TEXTS held-out Python documentation texts (fp32 logits of both; at most LOGIT_TOKENS tokens each), and per task
the headline metric of both with their difference (merged - adapter) and its paired 95% bootstrap interval over the
task's documents (analysis.statistics.paired_difference). A change is flagged when it is beyond evaluation noise:
real (the paired interval excludes 0) and at least the standard error of the adapter's own score (the bootstrap
sd over documents that every score of that task carries: a smaller change moves no conclusion drawn from the
score). Merging in bf16 shifts a continuous metric such as a loss by a hair on every document alike, so its interval
excludes 0 long before the shift matters; the standard error keeps that from being flagged. merge_check.json,
version 1:
    {"version": 1, "checkpoint": str, "base": str, "kind": "lora" | "qlora", "logit_texts": int, "logit_tokens": int,
     "comparisons": [{"precision": "fp32" | "bf16", "adapter": "adapter-fp32" | ..., "merged": "merged-fp32" | ...,
                      "max_logit_diff": float,
                      "tasks": [{"task", "version", "metric", "adapter", "merged", "difference", "low", "high", "n",
                                 "stderr" (the adapter's score's), "significant" (interval excludes 0),
                                 "flagged": bool}]}],
     "flagged": ["<precision>:<task>", ...]}
A checkpoint whose merge_check.json holds the same tasks is not measured again; each model's finished tasks are not
rerun (eval.json), so a killed check resumes.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ftlab import domains
from ftlab.analysis.statistics import level_interval, paired_difference
from ftlab.config import ModelConfig
from ftlab.errors import FtlabError
from ftlab.evaluate.harness import example_values, evaluate_into, read_results
from ftlab.evaluate.lm import LM
from ftlab.evaluate.tasks import LM_EVAL_PREFIX, REGISTRY, TaskSpec, resolve_tasks
from ftlab.evaluate.targets import resolve
from ftlab.io import read_json, read_jsonl, write_json
from ftlab.model import load_adapter, load_model, nf4_dtype, resolve_device
from ftlab.progress import Progress
from ftlab.rundir import EVAL, CheckpointFiles, is_adapter

VERSION = 1
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOGIT_TEXTS = 8  # held-out source documents the logits are compared on
LOGIT_TOKENS = 256  # tokens of each at most


@dataclass
class Options:
    """How the models of a check are evaluated (as `ftlab eval`'s options)."""

    data_dir: str | None = None
    device: str = "auto"
    batch_size: int = 32


def merge_check_target(path: str, tasks: list[str] | None = None, base: str | None = None, limit: int | None = None,
                       options: Options = Options()) -> list[Path]:
    """Check every LoRA checkpoint `path` stands for (a run, or one adapter); returns their merge_check.json files.
    tasks None: the tasks each checkpoint's eval.json holds."""
    target = resolve(path, base)
    adapters = [c for c in target.checkpoints if is_adapter(c)]
    if not adapters:
        raise FtlabError(f"{path}: no LoRA adapter to merge (a full-FT checkpoint or model is already merged)")
    written = []
    units = Progress(len(adapters), unit="checkpoint")
    for ckpt in adapters:
        specs = _specs(ckpt, tasks, limit)
        written.append(merge_check_into(ckpt, target.base, specs, options))
        units.update(checkpoint=ckpt.name)
    units.close()
    return written


def _specs(ckpt: Path, tasks: list[str] | None, limit: int | None) -> list[TaskSpec]:
    """The tasks to check: those named, else those the checkpoint's eval.json holds (registered tasks only)."""
    if tasks is None:
        tasks = list(dict.fromkeys(s["task"] for s in read_results(ckpt)["scores"] if s["task"] in REGISTRY))
        if not tasks:
            raise FtlabError(f"{ckpt}: no evaluated task to check (its {EVAL} has none); name them: --tasks ...")
    specs = resolve_tasks(tasks, limit)
    refused = [s for s in specs if isinstance(s, str)]
    if refused:
        raise FtlabError(f"{refused[0]}: a merge check compares per-document records, which {LM_EVAL_PREFIX} tasks "
                         "do not write; choose ftlab's own tasks")
    return specs


def merge_check_into(ckpt: Path, base: str, specs: list[TaskSpec], options: Options = Options()) -> Path:
    """Measure one adapter against its merged models (the module docstring) into <ckpt>/merge_check.json."""
    ckpt = Path(ckpt)
    out = CheckpointFiles(ckpt).merge_check
    wanted = sorted((s.name, s.version, s.limit) for s in specs)
    if out.exists() and read_json(out, "merge check").get("tasks_checked") == [list(t) for t in wanted]:
        return out
    device = resolve_device(options.device)
    four_bit = nf4_dtype(ckpt)
    texts = [d.text for d in domains.source_texts("heldout")[:LOGIT_TEXTS]]
    comparisons, reference = [], None
    for precision, dtype in PRECISIONS.items():
        if reference is None or four_bit is None:  # a QLoRA adapter has one reference, on its 4-bit base
            reference = None
            gc.collect()  # the previous precision's reference, before the next is loaded
            name = "adapter-nf4" if four_bit is not None else f"adapter-{precision}"
            model, tokenizer = load_model(ModelConfig(name=base), device, four_bit or dtype,
                                          four_bit=four_bit is not None)
            reference = (name, load_adapter(model, ckpt).eval())
            _evaluate(ckpt, reference, tokenizer, specs, options, device)
        merged, tokenizer = load_model(ModelConfig(name=base), device, dtype)
        merged = load_adapter(merged, ckpt).merge_and_unload().eval()
        _evaluate(ckpt, (f"merged-{precision}", merged), tokenizer, specs, options, device)
        comparisons.append({"precision": precision, "adapter": reference[0], "merged": f"merged-{precision}",
                            "max_logit_diff": max_logit_diff(reference[1], merged, tokenizer, texts, device),
                            "tasks": [_task(ckpt, spec, reference[0], f"merged-{precision}") for spec in specs]})
        del merged
        gc.collect()
    doc = {"version": VERSION, "checkpoint": str(ckpt), "base": base, "kind": "qlora" if four_bit else "lora",
           "logit_texts": len(texts), "logit_tokens": LOGIT_TOKENS, "tasks_checked": [list(t) for t in wanted],
           "comparisons": comparisons,
           "flagged": [f"{c['precision']}:{t['task']}" for c in comparisons for t in c["tasks"] if t["flagged"]]}
    write_json(out, doc)
    for c in comparisons:
        flagged = [t["task"] for t in c["tasks"] if t["flagged"]]
        print(f"ftlab merge-check: {ckpt.name}: {c['merged']} vs {c['adapter']}: max |logit diff| "
              f"{c['max_logit_diff']:.3g}; " + (f"beyond evaluation noise on {', '.join(flagged)}" if flagged else
                                                 "no task changed beyond evaluation noise"), flush=True)
    return out


def _evaluate(ckpt: Path, model: tuple[str, torch.nn.Module], tokenizer, specs: list[TaskSpec], options: Options,
              device: torch.device) -> None:
    name, module = model
    directory = CheckpointFiles(ckpt).merge_models / name
    directory.mkdir(parents=True, exist_ok=True)
    evaluate_into(directory, LM(module, tokenizer, device, options.batch_size), module, tokenizer, specs,
                  options.data_dir)


def _task(ckpt: Path, spec: TaskSpec, adapter: str, merged: str) -> dict:
    """One task's headline metric on both models with the paired interval of merged - adapter over its documents."""
    values = []
    for name in (adapter, merged):
        samples = CheckpointFiles(CheckpointFiles(ckpt).merge_models / name).samples(spec.name)
        records = [r for _, r in read_jsonl(samples)]
        values.append(example_values(records, spec.kind, spec.metric))
    if values[0].keys() != values[1].keys():
        models = CheckpointFiles(ckpt).merge_models
        raise FtlabError(f"{models}: {spec.name}: {adapter} and {merged} scored different documents; "
                         f"delete {models} and run the check again")
    docs = list(values[0])
    a, b = (np.array([v[d][0] for d in docs]) for v in values)  # (n,) each
    weights = np.array([values[0][d][1] for d in docs])  # (n,): tokens (perplexity tasks) or 1
    weighted = weights if spec.kind == "perplexity" else None
    interval = paired_difference(a, b, weighted)
    stderr = level_interval([(a, weighted)]).se  # the noise of the adapter's score itself
    significant = interval.low > 0 or interval.high < 0
    mean = [float((x * weights).sum() / weights.sum()) for x in (a, b)]
    return {"task": spec.name, "version": spec.version, "metric": spec.metric, "adapter": mean[0], "merged": mean[1],
            "difference": interval.estimate, "low": interval.low, "high": interval.high, "n": interval.n,
            "stderr": stderr, "significant": significant,
            "flagged": significant and abs(interval.estimate) >= stderr}


@torch.inference_mode()
def max_logit_diff(a: torch.nn.Module, b: torch.nn.Module, tokenizer, texts: list[str], device: torch.device) -> float:
    """The largest |logit difference| between two models over every position of the texts (each cut to
    LOGIT_TOKENS tokens), in fp32."""
    largest = 0.0
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text)[:LOGIT_TOKENS]], device=device)  # (1, T)
        diff = (a(input_ids=ids).logits.float() - b(input_ids=ids).logits.float()).abs().max()  # over (1, T, V)
        largest = max(largest, float(diff))
    return largest
