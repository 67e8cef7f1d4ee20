"""The built-in domains: deterministic, disjoint splits, well-formed tasks, correct arithmetic, reproducible build."""

import ast
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from ftlab import domains
from ftlab.config import DataConfig
from ftlab.domains import build
from ftlab.domains.code import split_at_docstring
from ftlab.model import byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# Pinned so a change to the shipped data or the generators is a deliberate, reviewed change.
SHIPPED_SHA256 = {
    "source.jsonl.gz": "fffdc61c735847e176822f8e3a9fd922511a9b01fd2d207271834dd250ba16e1",
    "code.jsonl.gz": "07509a75732e44234e267d0fc0b8f42e7b536eb8e2f584a597d5e8c61bbba48b",
}
ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")


def shipped(name):
    return resources.files("ftlab.domains").joinpath("data", name).read_bytes()


def safe_eval(expr):
    assert re.fullmatch(r"[0-9+\-*/() ]+", expr), expr  # digits and operators only
    return eval(expr, {"__builtins__": {}}, {})


# ---- shipped files and their build ------------------------------------------------------------------------------

def test_shipped_bytes_are_pinned():
    for name, digest in SHIPPED_SHA256.items():
        assert hashlib.sha256(shipped(name)).hexdigest() == digest, name
        assert shipped(name)[4:8] == b"\0\0\0\0"  # gzip mtime 0


@pytest.mark.skipif(".".join(map(str, sys.version_info[:3])) != build.PYTHON_VERSION,
                    reason=f"the shipped files are built from the Python {build.PYTHON_VERSION} stdlib")
def test_build_reproduces_shipped_bytes(tmp_path):
    # A fresh interpreter with another hash seed: nothing may depend on set order or on what is already imported.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    for out in (tmp_path / "a", tmp_path / "b"):
        subprocess.run([sys.executable, str(ROOT / "scripts/build_domains.py"), "--out", str(out)], env=env,
                       check=True, capture_output=True, timeout=120)
    for name in build.FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() == shipped(name), name


def test_build_refuses_another_python(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "PYTHON_VERSION", "2.7.18")
    with pytest.raises(RuntimeError, match="2.7.18"):
        build.build(tmp_path)


def test_clean_prose():
    doc = """Summary line.

        More text   spread over
        two lines.

        >>> f(1)
        2

        Example:

            x = f(1)
            if x:
                print(x)

        Some heading
        ============
        """
    # doctest, code block, underline and one-word paragraphs ("Example:") go; paragraphs become lines
    assert build.clean_prose(doc) == "Summary line.\nMore text spread over two lines.\nSome heading"


# ---- splits and sizes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("texts", [domains.source_texts, domains.code_texts, domains.math_texts])
def test_text_splits_disjoint_and_deterministic(texts):
    train, held = texts("train"), texts("heldout")
    assert texts("train") == train and texts("heldout") == held
    assert not {d.id for d in train} & {d.id for d in held}
    assert not {d.text for d in train} & {d.text for d in held}
    assert 0.03 < len(held) / (len(train) + len(held)) < 0.15


def test_sizes_as_documented():
    source = domains.source_texts("train") + domains.source_texts("heldout")
    assert 2400 <= len(source) <= 2600 and 1.8e6 <= sum(len(d.text) for d in source) <= 2.0e6
    assert all(len(d.text) >= build.MIN_DOC_CHARS for d in source)
    code = domains.code_records("train") + domains.code_records("heldout")
    assert 2100 <= len(code) <= 2400 and 1.0e6 <= sum(len(r["source"]) for r in code) <= 1.2e6
    assert all(build.CODE_LINES[0] <= r["source"].count("\n") <= build.CODE_LINES[1] for r in code)
    assert len(domains.math_pairs("train")) > 3000 and len(domains.math_pairs("heldout")) >= 300


def test_source_text_is_clean():
    for d in domains.source_texts("train")[:500]:
        assert ">>>" not in d.text and "  " not in d.text and d.text == d.text.strip()


def test_math_splits_disjoint_and_seeded():
    train, held = domains.math_pairs("train"), domains.math_pairs("heldout")
    assert not {p["question"] for p in train} & {p["question"] for p in held}
    assert domains.math_problems(50, 3) == domains.math_problems(50, 3) != domains.math_problems(50, 4)


def test_code_pairs_rejoin_to_the_source():
    for split in ("train", "heldout"):
        sources = {r["source"] for r in domains.code_records(split)}
        pairs = domains.code_pairs(split)
        assert pairs and all(p["prompt"] + p["completion"] in sources for p in pairs)
        assert all(p["prompt"].rstrip().endswith(('"', "'")) and p["completion"].strip() for p in pairs)
    assert split_at_docstring("def f():\n    return 1\n") is None


# ---- math arithmetic ---------------------------------------------------------------------------------------------

def test_math_solutions_are_correct():
    problems = domains.math_pairs("train") + domains.math_pairs("heldout")
    for p in problems:
        lines = p["answer"].split("\n")
        assert re.fullmatch(r"#### \d+", lines[-1]), p
        assert 2 <= len(lines) - 1 <= 4
        results = []
        for line in lines[:-1]:
            notes = ANNOTATION.findall(line)
            assert len(notes) == 1, line
            expr, value = notes[0]
            assert safe_eval(expr) == int(value), line
            results.append(int(value))
        assert int(lines[-1][5:]) == results[-1] and 0 <= results[-1] < 1000


def test_math_eval_and_fewshot():
    docs = domains.math_eval(200, seed=0)
    assert docs == domains.math_eval(200, seed=0) != domains.math_eval(200, seed=1)
    held = {p["question"] for p in domains.math_pairs("heldout")}
    assert len({d.id for d in docs}) == 200
    for d in docs:
        assert d.prompt.startswith("Question: ") and d.prompt.endswith("\nAnswer:")
        assert d.prompt[len("Question: "):-len("\nAnswer:")] in held
        assert d.target.endswith(f"#### {d.answer}")
    shots = domains.math_fewshot(5)
    train = {p["question"] for p in domains.math_pairs("train")}
    assert len(shots) == 5 and all(s.prompt[10:-8] in train and s.target for s in shots)


# ---- multiple-choice tasks ---------------------------------------------------------------------------------------

CHOICE_TASKS = [(domains.source_continuation, 4), (domains.source_question, 4), (domains.source_cloze, 2),
                (domains.code_execution_choice, 4)]


@pytest.mark.parametrize("task,k", CHOICE_TASKS)
def test_choice_docs_well_formed(task, k):
    docs = task(n=100, seed=0)
    assert docs == task(n=100, seed=0) and docs != task(n=100, seed=1)
    assert len(docs) == 100 and len({d.id for d in docs}) == 100
    for d in docs:
        assert len(d.contexts) == len(d.continuations) == k and 0 <= d.gold < k
        pairs = list(zip(d.contexts, d.continuations))
        assert len(set(pairs)) == k  # distractors differ from the gold and from each other
        assert all(c.startswith(" ") for c in d.continuations)
    golds = [d.gold for d in docs]
    assert all(golds.count(g) >= 100 / k / 3 for g in range(k))  # the gold's position is not a giveaway


def test_continuation_gold_is_the_true_text():
    held = " ".join(" ".join(d.text.split()) for d in domains.source_texts("heldout"))
    for d in domains.source_continuation(200, seed=0):
        assert d.contexts[0] + d.continuations[d.gold] in held
        assert sum(d.contexts[0] + c in held for c in d.continuations) == 1
        assert len({len(c.split()) for c in d.continuations}) == 1


def test_question_masks_the_name():
    docs = domains.source_question()
    assert 80 <= len(docs) <= 200
    for d in docs:
        gold = d.continuations[d.gold].strip()
        assert d.contexts[0].startswith("Question: ") and d.contexts[0].endswith("\nAnswer:")
        assert not re.search(rf"\b{re.escape(gold)}\b", d.contexts[0])


def test_cloze_contexts_differ_only_by_the_option():
    held = "\n".join(d.text for d in domains.source_texts("heldout"))
    for d in domains.source_cloze(200, seed=0):
        a, b = d.contexts
        assert d.continuations[0] == d.continuations[1]
        (before_a, option_a), (before_b, option_b) = a.rsplit(" ", 1), b.rsplit(" ", 1)
        assert before_a == before_b and option_a != option_b and option_a.isalpha() and option_b.isalpha()
        assert d.contexts[d.gold] + d.continuations[0] in held  # the gold restores the held-out sentence


def test_execution_choice_gold_is_what_the_program_prints():
    for d in domains.code_execution_choice(200, seed=0):
        program = d.contexts[0].removesuffix("\n# Output:")
        ast.parse(program)  # our own template, not model output: running it is the independent check
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(program, {"__builtins__": {"print": print, "range": range, "len": len, "sum": sum}})
        assert d.continuations[d.gold] == " " + out.getvalue().strip()


# ---- JSONL export for ftlab train ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["math-ift", "code-ift"])
def test_write_jsonl_ift_loads(kind, tmp_path):
    from ftlab.data import load_ift

    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    domains.write_jsonl(kind, "train", train)
    domains.write_jsonl(kind, "heldout", held)
    cfg = DataConfig(path=str(train), eval_path=str(held), regime="ift", seq_len=8192)  # bytes
    tr, ho = load_ift(cfg, byte_tokenizer(), seed=0)
    assert len(tr) == len(domains.records(kind, "train")) and len(ho) == min(len(domains.records(kind, "heldout")),
                                                                            cfg.eval_max_examples)


@pytest.mark.parametrize("kind", ["source-cpt", "code-cpt", "math-cpt"])
def test_write_jsonl_cpt_records(kind, tmp_path):
    from ftlab.data import read_records

    path = tmp_path / "x.jsonl"
    domains.write_jsonl(kind, "heldout", path)
    rows = [r for _, _, r in read_records(str(path), DataConfig(path=str(path), regime="cpt"))]
    assert rows == domains.records(kind, "heldout") and all(set(r) == {"text"} for r in rows)


def test_kinds_match_write_jsonl():
    with pytest.raises(ValueError, match="unknown built-in data"):
        domains.write_jsonl("poetry-cpt", "train", "/dev/null")
    assert set(domains.KINDS) == {"source-cpt", "code-cpt", "code-ift", "math-cpt", "math-ift"}
    with gzip.open(io.BytesIO(shipped("source.jsonl.gz"))) as f:
        assert set(json.loads(f.readline())) == {"id", "text"}
