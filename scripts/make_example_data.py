# This script generated configs/examples/data/tiny-{instruct,source,target}.jsonl (rerun to regenerate; deterministic).
"""Tiny prompt/completion tasks for the examples and the demo: python scripts/make_example_data.py

tiny-instruct.jsonl: 600 pairs of all five tasks (the examples). For the demo's learning-versus-forgetting
story, tiny-source.jsonl holds 1,200 pairs of the three word tasks (what the base model is first taught) and
tiny-target.jsonl 600 pairs of the two number tasks (what full FT and LoRA then learn).

Short, rule-following tasks with short answers, so a tiny randomly-initialised byte-level model visibly
learns them in a minute on CPU. Deterministic: random.Random(0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "configs/examples/data"

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


def write(name: str, tasks: list, n: int, seed: int) -> None:
    rng = random.Random(seed)
    out = DATA / name
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            prompt, answer = tasks[i % len(tasks)](rng)
            f.write(json.dumps({"prompt": prompt + "\n", "completion": answer}) + "\n")
    print(f"wrote {n} examples to {out} ({out.stat().st_size:,} bytes)")


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    write("tiny-instruct.jsonl", TASKS, 600, seed=0)
    write("tiny-source.jsonl", [reverse, uppercase, sort_letters], 1200, seed=1)
    write("tiny-target.jsonl", [add, next_number], 600, seed=2)


if __name__ == "__main__":
    main()
