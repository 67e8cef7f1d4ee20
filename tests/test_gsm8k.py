"""GSM8K: answer extraction and scoring as lm-eval's gsm8k task, and generation parity with lm-eval itself."""

import json
from pathlib import Path

import pytest

from ftlab.errors import DataError
from ftlab.evaluate.gsm8k import (INVALID, build_prompts, extract_flexible, extract_strict, gsm8k_doc,
                                  normalize_answer, score_gsm8k)
from ftlab.evaluate.lm import LM
from ftlab.model import build_tiny, save_pretrained
from test_choice import TINY, run_lm_eval

DATA = Path(__file__).parent / "data" / "benchmarks" / "gsm8k"  # GSM8K's first 50 test and train records


@pytest.mark.parametrize("text,strict,flexible", [
    ("so the answer is 42.\n#### 42", "42", "42"),
    ("#### 1,234", "1,234", "1,234"),
    ("It costs $5.00", INVALID, "$5.00"),
    ("no number here", INVALID, INVALID),
    ("#### -3 and later 7", "-3", "7"),
    ("first #### 5 then #### 6", "5", "6"),
    ("The total is 18.", INVALID, "18."),
])
def test_extraction(text, strict, flexible):
    assert extract_strict(text) == strict and extract_flexible(text) == flexible


def test_normalize_answer():
    assert normalize_answer("1,234") == "1234" == normalize_answer("$1,234.")
    assert normalize_answer("Step 1...\n#### 72") == "72"
    assert normalize_answer("18.") == normalize_answer("18") and normalize_answer("18.0") != "18"


def test_doc_and_bad_records():
    doc = gsm8k_doc({"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"}, "t.jsonl:3")
    assert doc.prompt == "Question: How many?\nAnswer:" and doc.answer == "4" and doc.target.endswith("#### 4")
    with pytest.raises(DataError, match="t.jsonl:3: missing field 'answer'"):
        gsm8k_doc({"question": "How many?"}, "t.jsonl:3")
    with pytest.raises(DataError, match="t.jsonl:4: field 'answer' has no"):
        gsm8k_doc({"question": "q", "answer": "4"}, "t.jsonl:4")


class CannedLM:
    """Returns hand-written completions, one per prompt, and records the prompts and arguments."""

    def __init__(self, completions):
        self.completions = completions

    def generate(self, prompts, max_new_tokens, stop=()):
        self.prompts, self.stop = prompts, stop
        return [[c] for c in self.completions]


def test_scoring_on_hand_written_completions():
    docs = [gsm8k_doc({"question": f"q{i}", "answer": f"work\n#### {a}"}, f"t:{i}")
            for i, a in enumerate(["1,234", "5", "7", "-2"])]
    shots = [gsm8k_doc({"question": f"s{i}", "answer": f"w{i}\n#### {i}"}, f"s:{i}") for i in range(3)]
    lm = CannedLM(["so #### 1234", "about $5.00 total", "#### 8 no, 7", "nothing"])
    scores, samples = score_gsm8k(lm, docs, shots, num_fewshot=2)
    values = {s.metric: s.value for s in scores}
    # strict: only "#### 1234"; flexible: 1234 and 7 ("$5.00" normalizes to "5.00", not "5", as in lm-eval)
    assert values == {"exact_match_strict": 0.25, "exact_match_flexible": 0.5}
    assert lm.stop == ["Question:", "</s>", "<|im_end|>"]
    assert lm.prompts[0].count("Question: s") == 2 and lm.prompts[0].endswith("\n\nQuestion: q0\nAnswer:")
    assert samples[1] == {"id": "t:1", "prompt": lm.prompts[1], "completion": "about $5.00 total",
                          "extracted_strict": INVALID, "extracted_flexible": "$5.00", "gold": "5",
                          "metrics": {"exact_match_strict": 0.0, "exact_match_flexible": 0.0}}
    assert [r["metrics"] for r in samples] == [{"exact_match_strict": s, "exact_match_flexible": f}
                                               for s, f in ((1.0, 1.0), (0.0, 0.0), (0.0, 1.0), (0.0, 0.0))]


def read(path: Path) -> list:
    return [gsm8k_doc(json.loads(line), f"{path}:{i}") for i, line in enumerate(path.open(), start=1)]


def test_parity_with_lm_eval(tmp_path):
    model_dir = tmp_path / "model"
    save_pretrained(*build_tiny(TINY), model_dir)
    ref = run_lm_eval(model_dir, ["ftlab_gsm8k"], 5, limit=10)
    docs, train = read(DATA / "test.jsonl")[:10], read(DATA / "train.jsonl")
    lm = LM(*build_tiny(TINY), batch_size=8)
    scores, samples = score_gsm8k(lm, docs, train, num_fewshot=5, max_new_tokens=32)
    theirs = {s["filter"]: s for s in ref["samples"]["ftlab_gsm8k"] if s["doc_id"] == 0}
    assert theirs["strict-match"]["arguments"][0][0] == build_prompts(docs[:1], train, 5, 1234)[0]
    by_doc = sorted((s for s in ref["samples"]["ftlab_gsm8k"] if s["filter"] == "strict-match"),
                    key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in by_doc] == [r["prompt"] for r in samples]
    assert [s["resps"][0][0] for s in by_doc] == [r["completion"] for r in samples]  # the same greedy text
    assert any(r["completion"] for r in samples)
    result = ref["results"]["ftlab_gsm8k"]
    ours = {s.metric: s.value for s in scores}
    assert ours["exact_match_strict"] == pytest.approx(result["exact_match,strict-match"], abs=1e-9)
    assert ours["exact_match_flexible"] == pytest.approx(result["exact_match,flexible-extract"], abs=1e-9)
    flexible = sorted((s for s in ref["samples"]["ftlab_gsm8k"] if s["filter"] == "flexible-extract"),
                      key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in flexible] == [r["extracted_flexible"] for r in samples]
    assert [s["filtered_resps"][0] for s in by_doc] == [r["extracted_strict"] for r in samples]
