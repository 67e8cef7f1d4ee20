"""Multiple choice: documents built and scored exactly as lm-evaluation-harness builds and scores them."""

import json
import os
from pathlib import Path

import pytest

from ftlab.config import TinyModelConfig
from ftlab.errors import DataError
from ftlab.evaluate.choice import arc_doc, build_requests, hellaswag_doc, score_choices, winogrande_doc
from ftlab.documents import ChoiceDoc
from ftlab.evaluate.lm import LM
from ftlab.model import build_tiny, save_pretrained

REPO = Path(__file__).parents[1]
TASKS = REPO / "tests/lm_eval_tasks"
BUILDERS = {"hellaswag": hellaswag_doc, "arc": arc_doc, "winogrande": winogrande_doc}
TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=512)


def read(name: str, split: str) -> list[ChoiceDoc]:
    path = TASKS / f"data/{name}_{split}.jsonl"
    lines = path.read_text().splitlines()
    return [BUILDERS[name](json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, start=1)]


def test_documents_follow_lm_eval_preprocessing():
    record = {"activity_label": "Home and Garden", "ctx_a": "A man opens the door.", "ctx_b": "he",
              "endings": ["walks in [title] Step two.", "[header] sits down.", "falls  over."], "label": "1"}
    doc = hellaswag_doc(record, "x:1")
    assert doc.contexts == ["Home and Garden: A man opens the door. He"] * 3
    # lm-eval strips before it drops "[header]", so that choice keeps a leading space
    assert doc.continuations == [" walks in. Step two.", "  sits down.", " falls over."] and doc.gold == 1
    arc = arc_doc({"id": "q", "question": "Why?", "choices": {"text": ["a", "b"], "label": ["1", "2"]},
                   "answerKey": "2"}, "x:2")
    assert arc.contexts == ["Question: Why?\nAnswer:"] * 2 and arc.continuations == [" a", " b"] and arc.gold == 1
    wino = winogrande_doc({"sentence": "Ann hugged Bo because _ was sad .", "option1": "Ann", "option2": "Bo",
                           "answer": "2"}, "x:3")
    assert wino.contexts == ["Ann hugged Bo because Ann", "Ann hugged Bo because Bo"]
    assert wino.continuations == [" was sad ."] * 2 and wino.gold == 1


@pytest.mark.parametrize("builder,record,missing", [
    (hellaswag_doc, {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "label": 0}, "endings"),
    (arc_doc, {"question": "q", "choices": {"text": ["a"]}, "answerKey": "A"}, "label"),
    (winogrande_doc, {"sentence": "a _ b", "option1": "x", "answer": "1"}, "option2"),
])
def test_missing_field_names_place_and_field(builder, record, missing):
    with pytest.raises(DataError, match=f"data.jsonl:7: missing field '{missing}'"):
        builder(record, "data.jsonl:7")


class FixedLM:
    """Returns preset log-likelihoods, one per request, in order."""

    def __init__(self, lls):
        self.lls = lls

    def loglikelihood(self, requests):
        assert len(requests) == len(self.lls)
        return [(ll, False) for ll in self.lls]


def test_acc_norm_divides_by_characters_of_the_choice_without_delimiter():
    # choice "ab" (2 chars): -3.0 -> -1.5/char; choice "abcd" (4 chars): -5.0 -> -1.25/char.
    # Dividing by len(" ab")=3 and len(" abcd")=5 would tie at -1.0 and pick choice 0 instead.
    doc = ChoiceDoc(contexts=["Q:"] * 2, continuations=[" ab", " abcd"], gold=1)
    scores, records = score_choices(FixedLM([-3.0, -5.0]), [doc], "t", "1")
    assert {s.metric: s.value for s in scores} == {"acc": 0.0, "acc_norm": 1.0}
    assert records == [{"id": "", "gold": 1, "loglikelihoods": [-3.0, -5.0], "greedy": [False, False],
                        "prediction": 0, "prediction_norm": 1, "metrics": {"acc": 0.0, "acc_norm": 1.0}}]
    wino = ChoiceDoc(contexts=["A", "B"], continuations=[" x"] * 2, gold=0, id="w1")
    scores, records = score_choices(FixedLM([-1.0, -2.0]), [wino], "t", "1")
    assert [s.metric for s in scores] == ["acc"] and records[0]["metrics"] == {"acc": 1.0}
    assert "prediction_norm" not in records[0] and records[0]["id"] == "w1"


# ----------------------------------------------------------------------------- parity with lm-eval


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(*build_tiny(TINY), directory)
    return directory


def run_lm_eval(model_dir, tasks: list[str], num_fewshot: int, **kwargs) -> dict:
    """lm-eval itself on the local task YAMLs (their data paths are relative to the repo root), offline.
    model_dir: a model directory, or an lm-eval model object (HFLM(pretrained=model, tokenizer=tokenizer))."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    cwd = os.getcwd()
    os.chdir(REPO)
    model = {"model": "hf", "model_args": f"pretrained={model_dir},dtype=float32", "device": "cpu", "batch_size": 8}
    if not isinstance(model_dir, (str, Path)):
        model = {"model": model_dir}
    try:
        # only the local tasks are indexed: lm-eval's own 14k task YAMLs take ~5 s to read
        manager = TaskManager(include_path=str(TASKS), include_defaults=False)
        return lm_eval.simple_evaluate(**model, tasks=tasks, task_manager=manager, num_fewshot=num_fewshot,
                                       log_samples=True, **kwargs)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_parity_with_lm_eval(model_dir, num_fewshot):
    names = ["hellaswag", "arc", "winogrande"]
    eval_split_shots = {"hellaswag": True, "arc": False, "winogrande": True}  # no test_split in lm-eval's config
    ref = run_lm_eval(model_dir, [f"ftlab_{n}" for n in names], num_fewshot)
    lm = LM(*build_tiny(TINY), batch_size=8)
    for name in names:
        task = f"ftlab_{name}"
        docs = read(name, "val")
        shots = read(name, "train")
        samples = sorted(ref["samples"][task], key=lambda s: s["doc_id"])
        requests = build_requests(docs, shots, num_fewshot, shots_from_eval_split=eval_split_shots[name])
        assert [[tuple(a) for a in s["arguments"]] for s in samples] == requests  # the very same strings
        lls = lm.loglikelihood([r for doc_requests in requests for r in doc_requests])
        ref_lls = [tuple(r) for s in samples for r in s["filtered_resps"]]  # (ll, greedy) per choice
        assert [ll for ll, _ in lls] == pytest.approx([ll for ll, _ in ref_lls], abs=1e-4)
        assert [g for _, g in lls] == [g for _, g in ref_lls]
        scores, records = score_choices(lm, docs, task, "1", shots_docs=shots, num_fewshot=num_fewshot,
                                        shots_from_eval_split=eval_split_shots[name])
        ours = {s.metric: s for s in scores}
        assert [ll for r in records for ll in r["loglikelihoods"]] == pytest.approx([ll for ll, _ in ref_lls],
                                                                                     abs=1e-4)
        for metric in ours:  # the records' per-document values are lm-eval's, and their mean the score
            assert [r["metrics"][metric] for r in records] == [s[metric] for s in samples]
        theirs = ref["results"][task]
        assert set(ours) == {k.split(",")[0] for k in theirs if k.endswith(",none") and "stderr" not in k}
        for metric, score in ours.items():
            assert score.value == pytest.approx(theirs[f"{metric},none"], abs=1e-6), (task, metric)
            assert score.stderr == pytest.approx(theirs[f"{metric}_stderr,none"], abs=1e-6), (task, metric)
            assert score.n == len(docs)
