"""The math domain: generated GSM8K-style word problems with worked solutions, and its learning task.

    math_problems(3, seed=0)   # [{"question": ..., "answer": "... <<4*12=48>>48 ...\\n#### 48"}, ...]

Each template draws names, objects and integers, then writes the solution the way GSM8K does: one line per
step with a calculator annotation <<expression=result>>, ending "#### <number>". All arithmetic is integer
(divisions are exact by construction), every intermediate and final answer lies in [0, 1000). The generator
draws only rng.random() (whose sequence Python guarantees across versions), so the problems are the same on
every machine and Python.
"""

from __future__ import annotations

import functools
import hashlib
import random

from ftlab.documents import GenDoc, TextDoc

POOL = 4000  # problems generated (seed POOL_SEED) before the split
POOL_SEED = 0
HELDOUT_EVERY = 10  # a question is held out when sha256(question) % HELDOUT_EVERY == 0 (about 10%)
FEWSHOT_SEED = 1234
QA_PROMPT = "Question: {question}\nAnswer:"  # GSM8K's prompt in lm-eval (and ftlab.evaluate.gsm8k)

NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam", "Maya",
         "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wes", "Yuki", "Zoe"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "stamps", "cards", "buttons",
         "beads", "muffins", "oranges", "crayons", "balloons"]
PACKS = ["bags", "boxes", "packs", "jars", "crates"]
GOODS = [("notebook", "notebooks"), ("toy car", "toy cars"), ("mug", "mugs"), ("ticket", "tickets"),
         ("plant", "plants"), ("shirt", "shirts"), ("puzzle", "puzzles"), ("lamp", "lamps")]
ANIMALS = [("cows", "chickens", "goats"), ("ducks", "geese", "rabbits"), ("sheep", "pigs", "horses")]


class _Draw:
    """Integers and choices from random.Random(seed).random() alone."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:  # inclusive
        return lo + min(int(self.rng.random() * (hi - lo + 1)), hi - lo)

    def pick(self, items: list):
        return items[self.int(0, len(items) - 1)]


def _step(text: str, expr: str) -> tuple[str, int]:
    """One solution line: `text` with {calc} replaced by 'expr = <<expr=value>>value'; returns (line, value)."""
    value = _evaluate(expr)
    return text.format(calc=f"{expr} = <<{expr}={value}>>{value}"), value


def _evaluate(expr: str) -> int:
    """The value of an integer expression of digits and + - * / ( ); division must be exact."""
    if set(expr) - set("0123456789+-*/() "):
        raise ValueError(f"not an arithmetic expression: {expr!r}")
    value = eval(expr, {"__builtins__": {}}, {})  # digits and operators only, checked above
    if value != int(value):
        raise ValueError(f"{expr} is not a whole number")
    return int(value)


# Each template: (draw) -> (question, [solution lines], answer), or None when the numbers drawn do not fit.

def _packs(d: _Draw):
    name, item, pack = d.pick(NAMES), d.pick(ITEMS), d.pick(PACKS)
    a, b = d.int(2, 9), d.int(3, 12)
    c = d.int(1, a * b - 1)
    q = (f"{name} buys {a} {pack} of {item} with {b} {item} in each. {name} gives {c} {item} to a friend. "
         f"How many {item} does {name} have left?")
    l1, total = _step(f"{name} buys {{calc}} {item}.", f"{a}*{b}")
    l2, left = _step(f"{name} has {{calc}} {item} left.", f"{total}-{c}")
    return q, [l1, l2], left


def _wages(d: _Draw):
    name = d.pick(NAMES)
    rate, h1, h2 = d.int(6, 20), d.int(2, 8), d.int(2, 8)
    q = (f"{name} earns ${rate} an hour babysitting. This week {name} worked {h1} hours on Saturday and {h2} hours "
         f"on Sunday. How much money did {name} earn this week?")
    l1, hours = _step(f"{name} worked {{calc}} hours in total.", f"{h1}+{h2}")
    l2, pay = _step(f"So {name} earned {{calc}} dollars.", f"{hours}*{rate}")
    return q, [l1, l2], pay


def _share(d: _Draw):
    name, item = d.pick(NAMES), d.pick(ITEMS)
    boxes, each, kept = d.int(2, 9), d.int(2, 15), d.int(1, 20)
    total = boxes * each + kept
    q = (f"{name} has {total} {item}. {name} keeps {kept} and shares the rest equally among {boxes} friends. "
         f"How many {item} does each friend get?")
    l1, rest = _step(f"{name} shares {{calc}} {item}.", f"{total}-{kept}")
    l2, share = _step(f"Each friend gets {{calc}} {item}.", f"{rest}/{boxes}")
    return q, [l1, l2], share


def _change(d: _Draw):
    name, (one, many) = d.pick(NAMES), d.pick(GOODS)
    count, price = d.int(2, 9), d.int(2, 25)
    cost = count * price
    paid = (cost // 10 + d.int(1, 5)) * 10
    q = f"{name} buys {count} {many} for ${price} each and pays with ${paid}. How much change does {name} get?"
    l1, spent = _step(f"The {many} cost {{calc}} dollars.", f"{count}*{price}")
    l2, back = _step(f"{name} gets {{calc}} dollars in change.", f"{paid}-{spent}")
    return q, [l1, l2], back


def _farm(d: _Draw):
    first, second, third = d.pick(ANIMALS)
    a, k = d.int(3, 30), d.int(2, 5)
    fewer = d.int(1, a * k - 1)
    q = (f"A farm has {a} {first}. It has {k} times as many {second} as {first}, and {fewer} fewer {third} than "
         f"{second}. How many animals are on the farm?")
    l1, b = _step(f"There are {{calc}} {second}.", f"{a}*{k}")
    l2, c = _step(f"There are {{calc}} {third}.", f"{b}-{fewer}")
    l3, total = _step(f"In total there are {{calc}} animals.", f"{a}+{b}+{c}")
    return q, [l1, l2, l3], total


def _reading(d: _Draw):
    name = d.pick(NAMES)
    p1, d1, p2, d2 = d.int(5, 30), d.int(2, 7), d.int(5, 30), d.int(2, 7)
    read = p1 * d1 + p2 * d2
    book = read + d.int(10, 200)
    q = (f"{name}'s book has {book} pages. {name} reads {p1} pages a day for {d1} days, then {p2} pages a day for "
         f"{d2} days. How many pages are left to read?")
    l1, x = _step(f"First {name} reads {{calc}} pages.", f"{p1}*{d1}")
    l2, y = _step(f"Then {name} reads {{calc}} pages.", f"{p2}*{d2}")
    l3, z = _step(f"Altogether {name} reads {{calc}} pages.", f"{x}+{y}")
    l4, left = _step(f"There are {{calc}} pages left.", f"{book}-{z}")
    return q, [l1, l2, l3, l4], left


def _savings(d: _Draw):
    name, (one, _) = d.pick(NAMES), d.pick(GOODS)
    weekly, weeks, gift = d.int(3, 25), d.int(2, 12), d.int(5, 50)
    price = d.int(1, weekly * weeks + gift - 1)
    q = (f"{name} saves ${weekly} every week for {weeks} weeks and gets ${gift} as a gift. Then {name} buys a "
         f"{one} for ${price}. How much money does {name} have left?")
    l1, saved = _step(f"{name} saves {{calc}} dollars.", f"{weekly}*{weeks}")
    l2, total = _step(f"With the gift {name} has {{calc}} dollars.", f"{saved}+{gift}")
    l3, left = _step(f"After buying the {one}, {name} has {{calc}} dollars left.", f"{total}-{price}")
    return q, [l1, l2, l3], left


def _halves(d: _Draw):
    name, item = d.pick(NAMES), d.pick(ITEMS)
    eaten, half = d.int(1, 12), d.int(3, 60)
    made = eaten + 2 * half
    q = (f"{name} has {made} {item}. {name} uses {eaten} of them and gives half of the rest to a neighbor. "
         f"How many {item} does {name} have now?")
    l1, rest = _step(f"{name} has {{calc}} {item} after using some.", f"{made}-{eaten}")
    l2, now = _step(f"{name} keeps {{calc}} {item}.", f"{rest}/2")
    return q, [l1, l2], now


def _trip(d: _Draw):
    s1, h1, s2, h2 = d.int(20, 70), d.int(1, 5), d.int(20, 70), d.int(1, 5)
    if s1 * h1 + s2 * h2 >= 1000:
        return None
    q = (f"A bus drives at {s1} miles per hour for {h1} hours and then at {s2} miles per hour for {h2} hours. "
         f"How many miles does the bus drive in total?")
    l1, x = _step("In the first part the bus drives {calc} miles.", f"{s1}*{h1}")
    l2, y = _step("In the second part it drives {calc} miles.", f"{s2}*{h2}")
    l3, total = _step("In total it drives {calc} miles.", f"{x}+{y}")
    return q, [l1, l2, l3], total


def _class_trip(d: _Draw):
    parts = d.pick([(2, "half"), (3, "a third"), (4, "a quarter"), (5, "a fifth")])
    den, word = parts
    students = den * d.int(4, 20)
    absent = d.int(1, students // den - 1)
    q = (f"A class has {students} students. {word.capitalize()} of them go on a trip, and {absent} of those who go "
         f"forget their lunch. How many students on the trip have their lunch?")
    l1, going = _step("{calc} students go on the trip.", f"{students}/{den}")
    l2, lunch = _step("{calc} of them have their lunch.", f"{going}-{absent}")
    return q, [l1, l2], lunch


TEMPLATES = [_packs, _wages, _share, _change, _farm, _reading, _savings, _halves, _trip, _class_trip]


def math_problems(n: int, seed: int) -> list[dict]:
    """n generated problems in GSM8K's record shape {"question", "answer"}; the same (n, seed) gives the same list."""
    d = _Draw(seed)
    out = []
    while len(out) < n:
        made = d.pick(TEMPLATES)(d)
        if made is None:
            continue
        question, lines, answer = made
        assert 0 <= answer < 1000, (question, answer)
        out.append({"question": question, "answer": "\n".join(lines) + f"\n#### {answer}"})
    return out


def _is_heldout(question: str) -> bool:
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % HELDOUT_EVERY == 0


@functools.lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[dict, ...]]:
    """The POOL problems, duplicates dropped, split by a hash of the question (so no question is in both)."""
    seen, out = set(), {"train": [], "heldout": []}
    for p in math_problems(POOL, POOL_SEED):
        if p["question"] not in seen:
            seen.add(p["question"])
            out["heldout" if _is_heldout(p["question"]) else "train"].append(p)
    return {k: tuple(v) for k, v in out.items()}


def math_pairs(split: str) -> list[dict]:
    """{"question", "answer"} problems of one split ("train" or "heldout")."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return [dict(p) for p in _splits()[split]]


def math_texts(split: str) -> list[TextDoc]:
    """CPT view: each problem with its worked solution, in the evaluation's prompt format."""
    return [TextDoc(text=QA_PROMPT.format(question=p["question"]) + " " + p["answer"], id=f"math:{split}:{i}")
            for i, p in enumerate(math_pairs(split))]


def _gen_doc(p: dict, doc_id: str) -> GenDoc:
    return GenDoc(prompt=QA_PROMPT.format(question=p["question"]), answer=p["answer"].rsplit("#### ", 1)[1],
                  target=p["answer"], id=doc_id)


def math_eval(n: int = 200, seed: int = 0) -> list[GenDoc]:
    """n held-out problems (a seeded sample, without replacement) for exact-match scoring of "#### <number>"."""
    held = math_pairs("heldout")
    if not 0 < n <= len(held):
        raise ValueError(f"math_eval: n must be in 1..{len(held)} (held-out problems), got {n}")
    d = _Draw(seed)
    order = list(range(len(held)))
    for i in range(len(order) - 1, 0, -1):
        j = d.int(0, i)
        order[i], order[j] = order[j], order[i]
    return [_gen_doc(held[i], f"math:heldout:{i}") for i in order[:n]]


def math_fewshot(k: int = 5) -> list[GenDoc]:
    """k solved problems from the train split (a fixed sample), for few-shot prompts."""
    train = math_pairs("train")
    d = _Draw(FEWSHOT_SEED)
    picked: list[int] = []
    while len(picked) < k:
        i = d.int(0, len(train) - 1)
        if i not in picked:
            picked.append(i)
    return [_gen_doc(train[i], f"math:train:{i}") for i in picked]
