"""Task registry, suites, local-file loading of the paper's formats, and the forgetting score."""

import json
from pathlib import Path

import pytest

from ftlab.errors import DataError, FtlabError
from ftlab.evaluate.tasks import PAPER_SUITE, REGISTRY, get_task, load_docs, resolve_tasks
from ftlab.io import read_jsonl

BENCHMARKS = Path(__file__).parent / "data" / "benchmarks"  # the first 50 records of GSM8K's test and train


def test_suites_expand_in_order_without_duplicates():
    specs = resolve_tasks(["paper-forgetting", "hellaswag", "gsm8k", "lm_eval:arc_easy"], limit=5)
    assert [s if isinstance(s, str) else s.name for s in specs] == [
        "hellaswag", "arc_challenge", "winogrande", "gsm8k", "lm_eval:arc_easy"]
    assert all(s.limit == 5 for s in specs if not isinstance(s, str))


def test_unknown_task_names_the_closest():
    with pytest.raises(FtlabError, match="unknown task 'hellaswg' \\(did you mean 'hellaswag'\\?\\)"):
        get_task("hellaswg")


def test_paper_presets_follow_the_paper():
    he, gsm = PAPER_SUITE["humaneval"], PAPER_SUITE["gsm8k"]
    assert (he.samples, he.temperature, he.top_p, he.metric) == (50, 0.2, 0.95, "pass@1")
    assert (gsm.num_fewshot, gsm.temperature, gsm.metric) == (5, 0.0, "exact_match_strict")
    assert {n for n, s in REGISTRY.items() if s.role == "forgetting" and n in PAPER_SUITE} == {
        "hellaswag", "arc_challenge", "winogrande"}


def test_gsm8k_from_the_original_files():
    spec = get_task("gsm8k")
    docs = load_docs(spec, data_dir=str(BENCHMARKS))
    shots = load_docs(spec, data_dir=str(BENCHMARKS), fewshot=True)
    assert len(docs) == 50 and len(shots) == 50
    assert docs[0].answer == "18"  # Janet's ducks
    assert "#### 18" in docs[0].target


def test_bad_task_files_name_file_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(DataError, match="test.jsonl:2: not valid JSON"):
        load_docs(get_task("gsm8k"), data_dir=str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")


ARC_ORIGINAL = {"id": "Mercury_7175875", "answerKey": "C",
                "question": {"stem": "An astronomer observes that a planet rotates faster after a meteorite impact. "
                                     "Which is the most likely effect of this increase in rotation?",
                             "choices": [{"text": "Planetary density will decrease.", "label": "A"},
                                         {"text": "Planetary years will become longer.", "label": "B"},
                                         {"text": "Planetary days will become shorter.", "label": "C"},
                                         {"text": "Planetary gravity will become stronger.", "label": "D"}]}}


def test_arc_original_nested_release_reads_like_the_hub_shape(tmp_path):
    hub = {"id": ARC_ORIGINAL["id"], "question": ARC_ORIGINAL["question"]["stem"], "answerKey": "C",
           "choices": {"text": [c["text"] for c in ARC_ORIGINAL["question"]["choices"]],
                       "label": ["A", "B", "C", "D"]}}
    folder = tmp_path / "ARC-Challenge"
    folder.mkdir()
    (folder / "ARC-Challenge-Test.jsonl").write_text(json.dumps(ARC_ORIGINAL) + "\n" + json.dumps(hub) + "\n")
    original, flat = load_docs(get_task("arc_challenge"), data_dir=str(tmp_path))
    assert (original.contexts, original.continuations, original.gold) == (flat.contexts, flat.continuations, 2)
    assert original.contexts[0].startswith("Question: An astronomer") and original.contexts[0].endswith("\nAnswer:")
    assert original.continuations[2] == " Planetary days will become shorter."


def test_kshot_without_a_train_split_draws_from_the_evaluated_split(tmp_path):
    from dataclasses import replace

    from ftlab.evaluate.harness import run_task

    folder = tmp_path / "winogrande"
    folder.mkdir()
    rows = [{"sentence": f"Item {i} went to the _ because it rained.", "option1": "house", "option2": "park",
             "answer": "1"} for i in range(4)]
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    class Recorder:
        def loglikelihood(self, requests):
            self.requests = requests
            return [(-1.0, False)] * len(requests)

    lm = Recorder()
    spec = replace(get_task("winogrande"), num_fewshot=2, limit=2)
    scores, _ = run_task(lm, spec, str(tmp_path))
    assert scores[0].n == 2 and len(lm.requests) == 4
    for i, (context, _) in enumerate(lm.requests[::2]):  # each document's own sentence is never among its shots
        shots = context.split("\n\n")[:-1]
        assert len(shots) == 2 and not any(s.startswith(f"Item {i} ") for s in shots)


def test_a_later_call_adds_its_tasks_and_keeps_the_others(tmp_path):
    """eval.json holds each task's own scores; a later call (sampling for diversity, say) adds its task and leaves
    the others as they were (numbers across tasks, like the source score, are the store reader's)."""
    from dataclasses import replace

    from ftlab.evaluate.harness import evaluate_into

    class Constant:
        def loglikelihood(self, requests):
            return [(-float(len(c)), False) for _, c in requests]

        def text_scores(self, texts, contexts=None):
            return [(2.0, 1, 1)] * len(texts)

    first = evaluate_into(tmp_path, Constant(), None, None, [replace(get_task("source_cloze"), limit=4)], None)
    later = evaluate_into(tmp_path, Constant(), None, None, [replace(get_task("math_loss"), limit=2)], None)
    assert "forgetting" not in later and {s["task"] for s in later["scores"]} == {"source_cloze", "math_loss"}
    assert [s for s in later["scores"] if s["task"] == "source_cloze"] == first["scores"]


def test_held_out_source_text_is_read_from_the_data_dir(tmp_path):
    from ftlab.evaluate.harness import run_task

    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "heldout.jsonl").write_text('{"id": "a", "text": "one two"}\n{"text": "three"}\n')
    spec = get_task("source_heldout")
    assert (spec.kind, spec.role, spec.metric) == ("perplexity", "source_loss", "loss")
    docs = load_docs(spec, data_dir=str(tmp_path))
    assert [(d.id, d.text) for d in docs] == [("a", "one two"), (f"{folder / 'heldout.jsonl'}:2", "three")]

    class Constant:
        def text_scores(self, texts, contexts=None):
            return [(2.0 * len(t), len(t), 0) for t in texts]

    scores, records = run_task(Constant(), spec, str(tmp_path))
    assert {s.metric: s.value for s in scores}["loss"] == 2.0 and [r["tokens"] for r in records] == [7, 5]
    (folder / "heldout.jsonl").write_text('{"content": "no text field"}\n')
    with pytest.raises(DataError, match="heldout.jsonl:1: expected a non-empty string field 'text'"):
        load_docs(spec, data_dir=str(tmp_path))
