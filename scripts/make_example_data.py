# This script generated configs/examples/data/tiny-instruct.jsonl (rerun it to regenerate; the output is deterministic).
"""600 tiny prompt/completion tasks for the examples: python scripts/make_example_data.py

Short, rule-following tasks with short answers, so a tiny randomly-initialised byte-level model visibly
learns them in a minute on CPU. Deterministic: random.Random(0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "configs/examples/data/tiny-instruct.jsonl"
N = 600

ANIMALS = ["cat", "dog", "cow", "fox", "owl", "bee", "pig", "rat", "emu", "yak", "ant", "bat"]
FRUITS = ["apple", "pear", "plum", "kiwi", "lime", "fig", "grape", "melon", "mango", "peach"]
COLORS = ["red", "blue", "green", "pink", "gold", "gray", "teal", "black", "white", "brown"]
WORDS = ANIMALS + FRUITS + COLORS


def reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Reverse: {word}", word[::-1]


def add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"Add {a} and {b}.", str(a + b)


def uppercase(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.sample(WORDS, 2))
    return f"Uppercase: {words}", words.upper()


def sort_letters(rng: random.Random) -> tuple[str, str]:
    letters = "".join(rng.sample("abcdefghij", rng.randint(3, 5)))
    return f"Sort the letters: {letters}", "".join(sorted(letters))


def next_number(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 98)
    return f"Next number after {n}:", str(n + 1)


TASKS = [reverse, add, uppercase, sort_letters, next_number]


def main() -> None:
    rng = random.Random(0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        for i in range(N):
            prompt, answer = TASKS[i % len(TASKS)](rng)
            f.write(json.dumps({"prompt": prompt + "\n", "completion": answer}) + "\n")
    print(f"wrote {N} examples to {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
