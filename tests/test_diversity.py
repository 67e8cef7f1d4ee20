"""Diversity of sampled generations, and the sampled math task (math_sampled) whose records it reads."""

import json
import math
from dataclasses import replace

import pytest

from ftlab.analysis.diversity import diversity, diversity_of, normalize
from ftlab.config import TinyModelConfig
from ftlab.errors import FtlabError
from ftlab.evaluate.lm import LM
from ftlab.evaluate.harness import evaluate_into, run_task
from ftlab.evaluate.tasks import SUITES, get_task, load_docs
from ftlab.model import build_tiny


def rec(problem, completion, passed):
    return {"task_id": problem, "completion": completion, "status": "passed" if passed else "failed",
            "passed": passed}


def closed_form(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_whitespace_variants_count_once_and_pass_fail_split():
    assert normalize("  def f():\n\treturn 1  \n\n") == "def f(): return 1"
    records = [rec("A", "    return x\n", True), rec("A", "\treturn  x", True), rec("A", "return x   \n\n", True),
               rec("A", "return y", False), rec("A", "return  y", False), rec("A", "pass", False),
               rec("B", "x", False), rec("B", "y", False), rec("B", "z", False), rec("B", "z ", False),
               rec("B", "x\n", False), rec("B", "y", False)]
    out = diversity(records, "humaneval")
    a, b = out["per_problem"]
    assert (a["problem"], a["n"], a["passed"], a["unique"], a["unique_pass"], a["unique_fail"]) == ("A", 6, 3, 3, 1, 2)
    assert a["unique_raw"] == 6 and a["unique_pass_share"] == pytest.approx(1 / 6)
    assert (b["unique"], b["unique_raw"], b["unique_pass"], b["unique_fail"], b["unique_fail_share"]) == (3, 5, 0, 3,
                                                                                                          0.5)
    assert out["n"] == 6 and out["problems"] == 2 and out["unique_mean"] == 3.0
    assert out["unique_pass_mean"] == 0.5 and out["unique_fail_mean"] == 2.5
    json.dumps(out)  # JSON-able


def test_pass_at_k_curve_is_the_closed_form_and_pass_at_n_is_any_pass():
    passes = {"p0": 0, "p1": 1, "p2": 3, "p3": 7, "p4": 2}
    n = 7
    records = [{"id": p, "sample": i, "completion": f"{p} {i}", "passed": i < c} for p, c in passes.items()
               for i in range(n)]
    curve = diversity(records)["pass_at_k"]
    assert list(curve) == list(range(1, n + 1))
    for k in range(1, n + 1):
        expected = sum(closed_form(n, c, k) for c in passes.values()) / len(passes)
        assert curve[k] == pytest.approx(expected, abs=1e-12)
    assert curve[1] == pytest.approx(sum(passes.values()) / (n * len(passes)))
    assert curve[n] == pytest.approx(sum(c > 0 for c in passes.values()) / len(passes))  # 4 of 5 problems


def test_interleaved_problems_are_grouped_and_bad_files_are_named(tmp_path):
    interleaved = [rec("A", "a", True), rec("B", "b", False), rec("A", "a2", False), rec("B", "b", True)]
    out = diversity(interleaved)
    assert [(p["problem"], p["n"], p["passed"]) for p in out["per_problem"]] == [("A", 2, 1), ("B", 2, 1)]
    samples = tmp_path / "ckpt" / "eval_samples"
    with pytest.raises(FtlabError, match=r"math_sampled\.jsonl: no samples; run `ftlab eval"):
        diversity_of(tmp_path / "ckpt", "math_sampled")
    samples.mkdir(parents=True)
    rows = [rec("A", "a", True), rec("A", "b", True), rec("B", "c", False), rec("C", "d", True), rec("C", "e", True)]
    (samples / "humaneval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(FtlabError, match=r"humaneval\.jsonl:3: problem B has 1 samples"):
        diversity_of(tmp_path / "ckpt", "humaneval")
    greedy = {"id": "math:heldout:1", "prompt": "Q", "completion": "#### 4", "extracted_strict": "4", "gold": "4"}
    (samples / "math.jsonl").write_text(json.dumps(greedy) + "\n")
    with pytest.raises(FtlabError, match=r"math\.jsonl:1: sample record lacks passed"):
        diversity_of(tmp_path / "ckpt", "math")


class CannedSampler:
    """n completions per prompt, cycling over `texts` by the global sample index (problem * n + sample), with
    {gold} filled in from `golds`; records the generate arguments."""

    def __init__(self, texts, golds):
        self.texts, self.golds = texts, golds

    def generate(self, prompts, max_new_tokens, stop=(), temperature=0.0, top_p=1.0, n=1, seed=0):
        self.args = dict(max_new_tokens=max_new_tokens, stop=stop, temperature=temperature, top_p=top_p, n=n,
                         seed=seed)
        return [[self.texts[(p * n + i) % len(self.texts)].format(gold=self.golds[p]) for i in range(n)]
                for p in range(len(prompts))]


def test_math_sampled_scores_pass_at_k_over_strict_matches():
    spec = replace(get_task("math_sampled"), limit=3, samples=10, ks=(1, 5, 10))
    assert (get_task("math_sampled").samples, get_task("math_sampled").ks) == (8, (1, 4, 8))
    assert (spec.kind, spec.temperature, spec.top_p, spec.role) == ("gsm8k", 0.8, 0.95, "other")
    assert SUITES["builtin-diversity"] == ["math_sampled"] and "math_sampled" not in SUITES["builtin"]
    golds = [d.answer for d in load_docs(spec, None)]
    # strict match passes "so #### {gold}" only: not a longer number, a bare number, or two spaces after ####
    lm = CannedSampler(["so #### {gold}", "#### {gold}1", "{gold}", "then\n####  {gold}"], golds)
    scores, samples = run_task(lm, spec, None)
    assert lm.args == dict(max_new_tokens=160, stop=["Question:", "</s>", "<|im_end|>"], temperature=0.8, top_p=0.95,
                           n=10, seed=1234)
    correct = [sum(s["passed"] for s in samples[p * 10:(p + 1) * 10]) for p in range(3)]
    assert correct == [3, 2, 3]  # sample indices p*10+i that are 0 mod 4
    values = {s.metric: s.value for s in scores}
    assert set(values) == {"pass@1", "pass@5", "pass@10"} and all(s.task == "math_sampled" for s in scores)
    for k in (1, 5, 10):
        assert values[f"pass@{k}"] == pytest.approx(sum(closed_form(10, c, k) for c in correct) / 3)
        assert sum(s["metrics"][f"pass@{k}"] for s in samples) / len(samples) == pytest.approx(values[f"pass@{k}"])
    per_problem = {f"pass@{k}": closed_form(10, correct[0], k) for k in (1, 5, 10)}
    assert samples[1] == {"id": samples[0]["id"], "sample": 1, "prompt": samples[0]["prompt"],
                          "completion": f"#### {golds[0]}1", "extracted_strict": f"{golds[0]}1", "gold": golds[0],
                          "passed": False, "metrics": pytest.approx(per_problem)}


class GreedyOnly:
    """The greedy generate signature: a sampled argument passed to it would fail."""

    def generate(self, prompts, max_new_tokens, stop=()):
        self.max_new_tokens = max_new_tokens
        return [["#### 0"] for _ in prompts]


def test_greedy_math_task_keeps_its_greedy_path():
    scores, samples = run_task(GreedyOnly(), replace(get_task("math"), limit=2), None)
    assert {s.metric for s in scores} == {"exact_match_strict", "exact_match_flexible"}
    assert set(samples[0]) == {"id", "prompt", "completion", "extracted_strict", "extracted_flexible", "gold",
                               "metrics"}
    with pytest.raises(FtlabError, match="temperature 0"):
        run_task(GreedyOnly(), replace(get_task("math"), limit=2, samples=3), None)


def test_math_sampled_end_to_end_on_a_tiny_model(tmp_path):
    model, tokenizer = build_tiny(TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2,
                                                  intermediate_size=64, max_position=512))
    spec = replace(get_task("math_sampled"), limit=3, samples=5, num_fewshot=0, max_new_tokens=12)
    lm = LM(model, tokenizer, batch_size=8)
    results = evaluate_into(tmp_path, lm, model, tokenizer, [spec], None)
    assert {s["metric"] for s in results["scores"]} == {"pass@1", "pass@4"}
    out = diversity_of(tmp_path, "math_sampled")
    assert (out["task"], out["n"], out["problems"]) == ("math_sampled", 5, 3) and len(out["pass_at_k"]) == 5
    assert out["unique_mean"] > 1  # sampled at T=0.8: a random model does not repeat itself
    rows = [json.loads(line) for line in (tmp_path / "eval_samples" / "math_sampled.jsonl").open()]
    assert [r["sample"] for r in rows[:5]] == [0, 1, 2, 3, 4] and len(rows) == 15
    again = run_task(lm, spec, None)[1]
    assert [r["completion"] for r in again] == [r["completion"] for r in rows]  # seeded: the same samples
