"""The source domain (what the base model is pretrained on) and the forgetting tasks built from its held-out text.

Documents are the stdlib's own documentation: docstrings and the language-reference topics (see build.py). The
three tasks mirror the paper's forgetting suite and use held-out documents only, so they measure what pretraining
taught in general (vocabulary, phrasing, how Python documentation talks) rather than memorised text:

    source_continuation  HellaSwag-style: pick the true next words of a passage
    source_question      ARC-style: "Question: ...\\nAnswer:" pick the name a docstring documents
    source_cloze         WinoGrande-style: which of two words fills the blank (partial scoring)

Every task is a pure function of (n, seed) and the shipped bytes: random.Random(seed), consumed only through
random() (whose sequence Python guarantees across versions), over documents in sorted-id order.
"""

from __future__ import annotations

import functools
import random
import re

from ftlab.domains.build import in_split, read_shipped, short_name
from ftlab.documents import ChoiceDoc, TextDoc

CONTEXT_WORDS = 24  # continuation task: words of context ...
ENDING_WORDS = 10  # ... and of each ending
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
STOPWORDS = frozenset("""
    about above after again also although always another because been before being below between both cannot could
    does doing down during each either else even every from further have having here however into itself just
    less many more most much must never none only other otherwise over same should since some such than that their
    theirs them then there these they this those through under until upon very what when where whether which while
    will with within without would your
""".split())


def _index(rng: random.Random, n: int) -> int:
    """An integer in [0, n) from rng.random() alone (randrange's algorithm is not guaranteed across versions)."""
    return min(int(rng.random() * n), n - 1)


def _shuffle(rng: random.Random, items: list) -> list:
    """Fisher-Yates on a copy, drawing only rng.random()."""
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = _index(rng, i + 1)
        items[i], items[j] = items[j], items[i]
    return items


@functools.lru_cache(maxsize=1)
def _records() -> tuple[dict, ...]:
    return tuple(read_shipped("source.jsonl.gz"))


def source_texts(split: str) -> list[TextDoc]:
    """The source documents of one split ("train" or "heldout"), in id order."""
    return [TextDoc(text=r["text"], id=r["id"]) for r in in_split(_records(), split, lambda r: r["id"])]


def _check_n(task: str, n: int, available: int) -> None:
    if not 0 < n <= available:
        raise ValueError(f"{task}: n must be in 1..{available} (the held-out source text gives {available}), got {n}")


# ---- HellaSwag-style continuation ------------------------------------------------------------------------------

def _windows() -> list[tuple[str, str, str]]:
    """(doc id, context, ending) for non-overlapping windows of every held-out document, each at a sentence start."""
    out = []
    for doc in source_texts("heldout"):
        words = doc.text.split()
        starts = [0] + [i + 1 for i, w in enumerate(words[:-1]) if w.endswith((".", "!", "?"))]
        free = 0  # the first word not yet used by a window
        for s in starts:
            if s >= free and s + CONTEXT_WORDS + ENDING_WORDS <= len(words):
                context = " ".join(words[s:s + CONTEXT_WORDS])
                ending = " ".join(words[s + CONTEXT_WORDS:s + CONTEXT_WORDS + ENDING_WORDS])
                out.append((doc.id, context, ending))
                free = s + CONTEXT_WORDS + ENDING_WORDS
    return out


def source_continuation(n: int = 200, seed: int = 0) -> list[ChoiceDoc]:
    """HellaSwag-style: CONTEXT_WORDS words of a held-out passage; pick its true next ENDING_WORDS words.

    The three wrong endings are true endings of windows from other held-out documents, so every ending is fluent
    documentation prose of the same length; only fit with the context tells them apart. A model pretrained on the
    source has learned how documentation sentences continue (syntax, topic words, Python vocabulary carrying over
    from the context), so it beats chance (0.25). Endings start with " " (lm-eval's target delimiter).
    """
    windows = _windows()
    _check_n("source_continuation", n, len(windows))
    held = " ".join(" ".join(d.text.split()) for d in source_texts("heldout"))
    rng = random.Random(seed)
    docs = []
    for k, (doc_id, context, ending) in enumerate(_shuffle(rng, windows)[:n]):
        wrong: list[str] = []
        while len(wrong) < 3:
            other_id, _, other = windows[_index(rng, len(windows))]
            true_too = f"{context} {other}" in held  # repeated boilerplate: it follows this context somewhere
            if other_id != doc_id and other != ending and other not in wrong and not true_too:
                wrong.append(other)
        gold = _index(rng, 4)
        endings = wrong[:gold] + [ending] + wrong[gold:]
        docs.append(ChoiceDoc(contexts=[context] * 4, continuations=[" " + e for e in endings], gold=gold,
                              id=f"source_continuation:{seed}:{k}:{doc_id}"))
    return docs


# ---- ARC-style question -----------------------------------------------------------------------------------------

def _name_parts(name: str) -> list[str]:
    """Lowercase parts of a snake_case / CamelCase name, at least 3 letters each: 'getLineNo' -> get, line."""
    parts = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)
    return [p.lower() for p in parts if len(p) >= 3]


def _documented() -> list[tuple[str, str, str]]:
    """(item id, first paragraph, name) of every held-out docstring: whole documents and "name: text" lines of
    the short-docstring groups."""
    out = []
    for doc in source_texts("heldout"):
        if doc.id.endswith("#short"):
            for k, line in enumerate(doc.text.split("\n")):
                name, _, text = line.partition(": ")
                out.append((f"{doc.id}:{k}", text, name))
        elif doc.id.startswith("doc:"):
            out.append((doc.id, doc.text.split("\n", 1)[0], short_name(doc.id)))
    return out


def _questions() -> list[tuple[str, str, str]]:
    """(item id, masked first sentence, name) for held-out docstrings whose name a reader could infer."""
    out = []
    for item_id, paragraph, name in _documented():
        words = SENTENCE_END.split(paragraph, 1)[0].split()
        if name.startswith("__") or len(words) < 4:
            continue  # dunder methods all read alike; too little to go on
        masked = re.sub(rf"\b{re.escape(name)}\b", "___", " ".join(words[:40]))
        # Keep the items with a clue: a part of the name (>= 3 letters) shows in the text, as "isdir" in
        # "... an existing directory". Without one the item is a guess for any model.
        if any(part in masked.lower() for part in _name_parts(name)):
            out.append((item_id, masked, name))
    return out


def source_question(n: int = 200, seed: int = 0) -> list[ChoiceDoc]:
    """ARC-style: "Question: Which Python name does this documentation describe? "<sentence>"\nAnswer:" + name.

    Items: held-out docstrings of functions, classes, methods and modules (whole documents, and the lines of the
    held-out groups of short docstrings). The sentence is the docstring's first, with the name masked as ___.
    Kept only are items where a part of the name still shows in the sentence ("Return true if the pathname
    refers to an existing directory" -> isdir); the three wrong choices are names of other such items that show
    no part of themselves in the sentence, so exactly one choice fits. Why this task: a model pretrained on
    Python's documentation has seen names next to the words that describe them ("name: docstring" lines, and
    prose mentioning functions), and small LMs copy from context, so it scores above chance (0.25) without
    having seen this docstring. n is capped at the number of such items (about 110).
    """
    items = _questions()
    n = min(n, len(items))
    _check_n("source_question", n, len(items))
    rng = random.Random(seed)
    docs = []
    for k, (doc_id, masked, name) in enumerate(_shuffle(rng, items)[:n]):
        wrong: list[str] = []
        while len(wrong) < 3:
            other = items[_index(rng, len(items))][2]
            clue = any(part in masked.lower() for part in _name_parts(other))  # it would fit the text too
            if other != name and other not in wrong and not clue:
                wrong.append(other)
        gold = _index(rng, 4)
        names = wrong[:gold] + [name] + wrong[gold:]
        query = f'Question: Which Python name does this documentation describe? "{masked}"\nAnswer:'
        docs.append(ChoiceDoc(contexts=[query] * 4, continuations=[" " + c for c in names], gold=gold,
                              id=f"source_question:{seed}:{k}:{doc_id}"))
    return docs


# ---- WinoGrande-style cloze -------------------------------------------------------------------------------------

def _kind(word: str) -> str:
    """A coarse word class from the ending, so the wrong option is the same kind of word as the right one."""
    for suffix in ("ing", "ed", "ly", "tion", "s"):
        if word.endswith(suffix):
            return suffix
    return ""


def _is_content(word: str) -> bool:
    return word.isalpha() and word.islower() and len(word) >= 4 and word not in STOPWORDS


def _sentences() -> list[tuple[str, list[str]]]:
    """(doc id, words) of held-out sentences of 8 to 40 words."""
    out = []
    for doc in source_texts("heldout"):
        for paragraph in doc.text.split("\n"):
            for sentence in SENTENCE_END.split(paragraph):
                words = sentence.split()
                if 8 <= len(words) <= 40:
                    out.append((doc.id, words))
    return out


def source_cloze(n: int = 200, seed: int = 0) -> list[ChoiceDoc]:
    """WinoGrande-style: a held-out sentence with one content word blanked; two options, lm-eval partial scoring.

    The blank is a lowercase word of >= 4 letters (no stopword), with at least 2 words before it and 3 after; the
    wrong option is a content word of the same kind (same ending: -ing, -ed, -ly, -tion, -s or none) from another
    held-out sentence. Choice i has context sentence[:blank] + option_i and the shared continuation
    " " + the rest of the sentence, so the score is how well each option predicts the words after it: a model
    that learned the source's collocations ("the absolute value of", "raise an exception if") beats chance (0.5).
    """
    sentences = _sentences()
    pool: dict[str, list[str]] = {}
    for _, words in sentences:
        for w in words:
            if _is_content(w) and w not in pool.setdefault(_kind(w), []):
                pool[_kind(w)].append(w)
    rng = random.Random(seed)
    docs: list[ChoiceDoc] = []
    for doc_id, words in _shuffle(rng, sentences):
        if len(docs) == n:
            break
        blanks = [i for i in range(2, len(words) - 3) if _is_content(words[i])]
        if not blanks:
            continue
        i = blanks[_index(rng, len(blanks))]
        candidates = pool[_kind(words[i])]
        wrong = candidates[_index(rng, len(candidates))]
        if wrong in words or len(candidates) < 2:
            continue
        before, rest = " ".join(words[:i]) + " ", " " + " ".join(words[i + 1:])
        options = [words[i], wrong] if rng.random() < 0.5 else [wrong, words[i]]
        docs.append(ChoiceDoc(contexts=[before + o for o in options], continuations=[rest, rest],
                              gold=options.index(words[i]), id=f"source_cloze:{seed}:{len(docs)}:{doc_id}"))
    _check_n("source_cloze", n, len(docs))
    return docs
