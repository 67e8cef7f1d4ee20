"""Generation diversity: unique outputs among the n samples of each problem, split by passing and failing, and the
pass@k curve for k = 1..n (the paper's "LoRA and full FT collapse" analysis of HumanEval samples).

    report = diversity_of("runs/lora/final", "humaneval")     # reads <ckpt>/eval_samples/humaneval.jsonl
    report["unique_mean"], report["pass_at_k"][10]
    diversity_into("runs/lora/final")     # <ckpt>/diversity.json: {task: report} of every sampled task evaluated

Records come from `ftlab eval`: code tasks write {task_id, completion, status, passed} per sample, sampled math
tasks (math_sampled) {id, sample, completion, extracted_strict, gold, passed}. A problem is its task_id (else id).

Unique means unique after `normalize`: every run of whitespace (spaces, tabs, newlines) becomes one space, and the
ends are stripped. Samples that differ only in layout (trailing spaces, blank lines, indent width) are one output:
the question is whether the model says different things, not whether it spaces them differently. The price is
that two Python programs differing only in indentation that changes block structure count as one (rare; the
exact-string count is reported too, as unique_raw).
"""

from __future__ import annotations

from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.evaluate.code import pass_at_k
from ftlab.evaluate.tasks import REGISTRY
from ftlab.io import read_json, read_jsonl, write_json
from ftlab.rundir import CheckpointFiles


def normalize(text: str) -> str:
    """Runs of whitespace -> one space, ends stripped: "def f():\\n    return 1  \\n" -> "def f(): return 1"."""
    return " ".join(text.split())


def problem_diversity(problem: str, completions: list[str], passed: list[bool]) -> dict:
    """Unique outputs of one problem's n samples, overall and among passing / failing ones, and their share of n.

    unique_pass + unique_fail can exceed unique when one normalized output both passed and failed (a flaky
    program, or whitespace that mattered to the check); each count is over its own samples.
    """
    n = len(completions)
    norm = [normalize(c) for c in completions]
    unique_pass = len({c for c, ok in zip(norm, passed) if ok})
    unique_fail = len({c for c, ok in zip(norm, passed) if not ok})
    unique = len(set(norm))
    return {"problem": problem, "n": n, "passed": sum(passed), "unique": unique, "unique_raw": len(set(completions)),
            "unique_pass": unique_pass, "unique_fail": unique_fail, "unique_share": unique / n,
            "unique_pass_share": unique_pass / n, "unique_fail_share": unique_fail / n}


def diversity(records: list[dict], task: str = "", where: list[str] | None = None) -> dict:
    """Per-problem diversity and its means over problems, with pass@k for k = 1..n (unbiased estimator).

    records: one per sample, each with "completion", "passed" and a problem key ("task_id", else "id"); a
    problem's samples need not be adjacent. where[i] names record i in errors (default "record i+1").
    Every problem must have the same n.
    """
    where = where or [f"record {i + 1}" for i in range(len(records))]
    if not records:
        raise FtlabError(f"diversity: no samples{f' for task {task}' if task else ''}")
    groups: dict[str, list[int]] = {}  # problem -> indices of its records, in order
    for i, r in enumerate(records):
        key = r.get("task_id", r.get("id"))
        missing = [f for f in ("completion", "passed") if f not in r] + ([] if key is not None else ["task_id/id"])
        if missing:
            raise FtlabError(f"{where[i]}: sample record lacks {', '.join(missing)} (greedy records have no "
                             "'passed'; diversity needs a sampled task such as humaneval or math_sampled)")
        groups.setdefault(str(key), []).append(i)
    n = len(next(iter(groups.values())))
    for problem, idx in groups.items():
        if len(idx) != n:
            first = where[next(iter(groups.values()))[0]]
            raise FtlabError(f"{where[idx[0]]}: problem {problem} has {len(idx)} samples, but the first problem "
                             f"({first}) has {n}; pass@k and unique shares need the same n for every problem")
    per_problem = [problem_diversity(p, [records[i]["completion"] for i in idx],
                                     [bool(records[i]["passed"]) for i in idx]) for p, idx in groups.items()]

    def mean(key: str) -> float:
        return sum(p[key] for p in per_problem) / len(per_problem)

    return {"task": task, "n": n, "problems": len(per_problem),
            "unique_mean": mean("unique"), "unique_pass_mean": mean("unique_pass"),
            "unique_fail_mean": mean("unique_fail"), "unique_raw_mean": mean("unique_raw"),
            "unique_share_mean": mean("unique_share"), "unique_pass_share_mean": mean("unique_pass_share"),
            "unique_fail_share_mean": mean("unique_fail_share"),
            "pass_at_k": {k: sum(pass_at_k(n, p["passed"], k) for p in per_problem) / len(per_problem)
                          for k in range(1, n + 1)},
            "per_problem": per_problem}


def diversity_of(ckpt_dir: str | Path, task: str) -> dict:
    """`diversity` of the samples `ftlab eval` wrote to <ckpt_dir>/eval_samples/<task>.jsonl."""
    path = CheckpointFiles(ckpt_dir).samples(task)
    if not path.exists():
        raise FtlabError(f"{path}: no samples; run `ftlab eval {ckpt_dir} --tasks {task}` first (a task that "
                         "samples several completions per problem, e.g. humaneval or math_sampled)")
    rows = read_jsonl(path)
    if not rows:
        raise FtlabError(f"{path}: empty; no samples to measure")
    return diversity([r for _, r in rows], task, [w for w, _ in rows])


def diversity_into(directory: str | Path) -> dict:
    """Write <directory>/diversity.json: {task: diversity_of} of every sampled task (several samples per problem)
    whose samples the directory's evaluation holds; returns it ({} and no file when there is none). What a study's
    analyse stage and `ftlab eval` do after evaluating a checkpoint or a base model; the results index reads it."""
    files = CheckpointFiles(directory)
    if not files.eval.exists():
        return {}
    tasks = sorted({s["task"] for s in read_json(files.eval, "evaluation").get("scores", [])})
    reports = {task: diversity_of(files.path, task) for task in tasks
               if task in REGISTRY and REGISTRY[task].samples > 1 and files.samples(task).exists()}
    if reports:
        write_json(files.diversity, reports)
    return reports
