"""Built-in data domains of the embedded default: deterministic, identical bytes on every machine.

    source   Python's own documentation (stdlib docstrings + language-reference topics): what the tiny base model
             is pretrained on, and where forgetting is measured (source_continuation / _question / _cloze, and
             the held-out loss on source_texts("heldout")).
    code     real Python functions from the stdlib: CPT text, HumanEval-shaped IFT pairs; learning is measured by
             held-out loss and code_execution_choice.
    math     generated GSM8K-style word problems with worked solutions ending "#### <number>": IFT pairs, CPT
             text; learning is measured by math_eval (exact match) with math_fewshot examples.

Source and code are shipped processed (data/*.jsonl.gz, built by scripts/build_domains.py from the Python 3.11.7
stdlib, PSF licence: data/LICENSES.md); math is generated from a fixed seed. Every split is a hash of the item's
id (or question), so train and held-out are disjoint and stable.

    ftlab train data.path=builtin:math-ift ...     # a run materialises the data with write_jsonl(kind, split, path)

The training views (KINDS) and the domain each belongs to are ftlab.builtin's table.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftlab.builtin import DATA_KINDS as KINDS
from ftlab.domains.code import code_execution_choice, code_pairs, code_records, code_texts
from ftlab.domains.math import math_eval, math_fewshot, math_pairs, math_problems, math_texts
from ftlab.domains.source import source_cloze, source_continuation, source_question, source_texts
from ftlab.io import write_text

__all__ = [
    "KINDS", "code_execution_choice", "code_pairs", "code_records", "code_texts", "math_eval", "math_fewshot",
    "math_pairs", "math_problems", "math_texts", "records", "source_cloze", "source_continuation",
    "source_question", "source_texts", "write_jsonl",
]


def records(kind: str, split: str) -> list[dict]:
    """The JSONL records of one training view (a KINDS name) and split ("train" or "heldout")."""
    if kind not in KINDS:
        raise ValueError(f"unknown built-in data {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "code-ift":
        return code_pairs(split)
    if kind == "math-ift":
        return math_pairs(split)
    texts = {"source-cpt": source_texts, "code-cpt": code_texts, "math-cpt": math_texts}[kind](split)
    return [{"text": t.text} for t in texts]


def write_jsonl(kind: str, split: str, path: str | Path) -> None:
    """Write one view as JSONL that ftlab's data loaders read (data.path=<path>, regime cpt or ift by the kind),
    atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records(kind, split)))
