"""The code domain: real Python functions from the stdlib, and its learning tasks.

Views of the shipped functions (see build.py): CPT text (each function's source) and IFT pairs in HumanEval's
shape (prompt = decorators, signature and docstring; completion = the body after the docstring). Learning is
measured by held-out likelihood (code_texts("heldout")) and by `code_execution_choice`, a multiple-choice task
a tiny model can move on, where generation pass@k would sit at zero.
"""

from __future__ import annotations

import ast
import functools
import random

from ftlab.domains.build import in_split, read_shipped
from ftlab.documents import ChoiceDoc, TextDoc


@functools.lru_cache(maxsize=1)
def _records() -> tuple[dict, ...]:
    return tuple(read_shipped("code.jsonl.gz"))


def code_records(split: str) -> list[dict]:
    """{id, module, name, docstring, source} of one split ("train" or "heldout"), in id order."""
    return [dict(r) for r in in_split(_records(), split, lambda r: f"code:{r['id']}")]


def code_texts(split: str) -> list[TextDoc]:
    """CPT view: each function's source."""
    return [TextDoc(text=r["source"], id=f"code:{r['id']}") for r in code_records(split)]


def split_at_docstring(source: str) -> tuple[str, str] | None:
    """(signature + docstring, body after it) of a function's source; None without a docstring or a body after it."""
    node = ast.parse(source).body[0]
    if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node) is not None):
        return None
    if len(node.body) < 2:
        return None
    lines = source.split("\n")
    end = node.body[0].end_lineno  # the docstring's last line (1-based)
    return "\n".join(lines[:end]) + "\n", "\n".join(lines[end:])


def code_pairs(split: str) -> list[dict]:
    """IFT view, HumanEval's shape: {"prompt": decorators + def line + docstring, "completion": the rest of the body}.

    Only functions with a docstring and at least one statement after it. The prompt is what a HumanEval problem
    gives the model; the completion is what it must write.
    """
    pairs = []
    for r in code_records(split):
        parts = split_at_docstring(r["source"])
        if parts is not None:
            pairs.append({"prompt": parts[0], "completion": parts[1]})
    return pairs


# ---- execution choice -------------------------------------------------------------------------------------------

def _int(rng: random.Random, lo: int, hi: int) -> int:  # inclusive, from rng.random() alone
    return lo + min(int(rng.random() * (hi - lo + 1)), hi - lo)


# Each program template: (rng) -> (program text, the value it prints, near misses a reader might compute).
# The value is computed here in Python from the same numbers, never by running the program text.

def _linear(rng):
    a, b, x = _int(rng, 2, 9), _int(rng, 1, 20), _int(rng, 1, 12)
    src = f"def f(x):\n    return x * {a} + {b}\n\nprint(f({x}))"
    return src, x * a + b, [x * (a + b), x + a + b, (x + b) * a, x * a]


def _loop_sum(rng):
    a, n = _int(rng, 1, 5), _int(rng, 3, 8)
    src = f"def f(n):\n    total = 0\n    for i in range(n):\n        total += i * {a}\n    return total\n\n"
    src += f"print(f({n}))"
    value = sum(i * a for i in range(n))
    return src, value, [sum(i * a for i in range(n + 1)), sum(i * a for i in range(n - 1)), n * a, value + a]


def _branch(rng):
    t, a, b, x = _int(rng, 3, 15), _int(rng, 1, 9), _int(rng, 1, 9), _int(rng, 1, 20)
    src = f"def f(x):\n    if x > {t}:\n        return x - {a}\n    return x + {b}\n\nprint(f({x}))"
    value = x - a if x > t else x + b
    return src, value, [x + b if x > t else x - a, x, t, value + 1]


def _list_count(rng):
    xs, t = [_int(rng, 0, 20) for _ in range(_int(rng, 4, 7))], _int(rng, 5, 15)
    src = f"def f(xs):\n    return len([x for x in xs if x > {t}])\n\nprint(f({xs}))"
    value = len([x for x in xs if x > t])
    return src, value, [len([x for x in xs if x >= t]), len(xs) - value, len(xs), value + 1]


def _list_sum(rng):
    xs, a = [_int(rng, 1, 9) for _ in range(_int(rng, 3, 5))], _int(rng, 2, 4)
    src = f"def f(xs):\n    return sum(x * {a} for x in xs)\n\nprint(f({xs}))"
    value = sum(x * a for x in xs)
    return src, value, [sum(xs), sum(xs) + a, value + a, max(xs) * a]


def _halving(rng):
    x = _int(rng, 5, 200)
    src = "def f(x):\n    steps = 0\n    while x > 1:\n        x = x // 2\n        steps += 1\n    return steps\n\n"
    src += f"print(f({x}))"
    value, y = 0, x
    while y > 1:
        y, value = y // 2, value + 1
    return src, value, [value + 1, value - 1, x // 2, value + 2]


def _string_len(rng):
    word = ["python", "module", "string", "lambda", "return", "import", "object", "class"][_int(rng, 0, 7)]
    a = _int(rng, 2, 5)
    src = f"def f(s):\n    return len(s) * {a}\n\nprint(f({word!r}))"
    return src, len(word) * a, [len(word) + a, (len(word) + 2) * a, len(word), len(word) * (a + 1)]


PROGRAMS = [_linear, _loop_sum, _branch, _list_count, _list_sum, _halving, _string_len]
OUTPUT_PROMPT = "\n# Output:"


def code_execution_choice(n: int = 200, seed: int = 0) -> list[ChoiceDoc]:
    """Four-way choice of what a short generated program prints, e.g.

        def f(x):
            return x * 3 + 1

        print(f(4))
        # Output:            -> " 13" among " 21", " 8", " 15"

    The gold is computed directly from the drawn numbers; the wrong choices are near misses (off by one, the
    other branch, a wrong operator), distinct from the gold and from each other. Scored by log-likelihood.
    """
    rng = random.Random(seed)
    docs = []
    while len(docs) < n:
        src, value, misses = PROGRAMS[_int(rng, 0, len(PROGRAMS) - 1)](rng)
        wrong: list[int] = []
        for m in misses:
            if m != value and m not in wrong and m >= 0:
                wrong.append(m)
        k = 1
        while len(wrong) < 3:  # top up with value +- k when the near misses coincide
            for m in (value + k, value - k):
                if len(wrong) < 3 and m >= 0 and m != value and m not in wrong:
                    wrong.append(m)
            k += 1
        wrong = wrong[:3]
        gold = _int(rng, 0, 3)
        values = wrong[:gold] + [value] + wrong[gold:]
        docs.append(ChoiceDoc(contexts=[src + OUTPUT_PROMPT] * 4, continuations=[f" {v}" for v in values], gold=gold,
                              id=f"code_exec:{seed}:{len(docs)}"))
    return docs
