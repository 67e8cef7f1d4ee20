"""Multiple choice by log-likelihood: HellaSwag, ARC and WinoGrande documents, scored as lm-eval scores them.

    docs = [hellaswag_doc(record, "hellaswag_val.jsonl:1")]    # one JSON object of the original release
    scores, records = score_choices(lm, docs, "hellaswag", "1")   # acc, acc_norm (with stderr); one record a doc

A document becomes one (context, continuation) request per choice; the prediction is the choice with the
highest summed log-likelihood (acc), or the highest log-likelihood per character of the choice text (acc_norm:
lm-eval's `len(choice)`, Unicode characters without the leading target delimiter " "). Documents whose choices
fill the context (WinoGrande) report acc only. k-shot: k solved examples from `shots_docs`, drawn per document
by one `random.Random(seed)` in document order as lm-eval's default sampler draws them, each rendered as
context + gold continuation, joined and followed by "\n\n". Where lm-eval's few-shot split counts as the
evaluation split (its hellaswag and winogrande configs, which set neither), it draws k + 1, drops the evaluated
document and keeps k: pass `shots_from_eval_split=True` to draw the same examples.
"""

from __future__ import annotations

import math
import random
import re

from ftlab.errors import DataError, FtlabError
from ftlab.documents import ChoiceDoc, Score

TARGET_DELIMITER = " "  # between a context and its answer (lm-eval's target_delimiter)
FEWSHOT_DELIMITER = "\n\n"  # after each solved example (lm-eval's fewshot_delimiter)


def field(record: dict, name: str, where: str):
    """record[name], or a DataError naming the place and the field."""
    if name not in record or record[name] is None:
        raise DataError(f"{where}: missing field '{name}'")
    return record[name]


# ----------------------------------------------------------------------------- documents


def _hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag preprocess: strip, WikiHow "[title]" -> ". ", drop other [brackets], squeeze "  "."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(record: dict, where: str) -> ChoiceDoc:
    """A HellaSwag record (activity_label, ctx_a, ctx_b, endings, label) as lm-eval's hellaswag task builds it."""
    ctx = field(record, "ctx_a", where) + " " + field(record, "ctx_b", where).capitalize()
    query = _hellaswag_clean(field(record, "activity_label", where) + ": " + ctx)
    endings = [_hellaswag_clean(e) for e in field(record, "endings", where)]
    label = field(record, "label", where)
    try:
        gold = int(label)
    except ValueError:
        raise DataError(f"{where}: field 'label' must be an integer, got {label!r}") from None
    return _shared_context_doc(query, endings, gold, str(record.get("ind", where)), where)


def arc_doc(record: dict, where: str) -> ChoiceDoc:
    """An ARC record in the hub shape (question, choices {text, label}, answerKey): "Question: ...\\nAnswer:"."""
    choices = field(record, "choices", where)
    texts, labels = field(choices, "text", where), field(choices, "label", where)
    answer = field(record, "answerKey", where)
    if answer not in labels:  # lm-eval: choices.label.index(answerKey), labels "A".."E" or "1".."5" as given
        raise DataError(f"{where}: field 'answerKey' {answer!r} is not one of the labels {labels}")
    query = f"Question: {field(record, 'question', where)}\nAnswer:"
    return _shared_context_doc(query, texts, labels.index(answer), str(record.get("id", where)), where)


def winogrande_doc(record: dict, where: str) -> ChoiceDoc:
    """A WinoGrande record (sentence with "_", option1, option2, answer "1"/"2"), lm-eval's partial scoring.

    Each option fills the blank to make the context, sentence[:blank] + option; the continuation is the rest of
    the sentence, " " + sentence[blank + 1:].strip(), the same for both.
    """
    sentence = field(record, "sentence", where)
    if "_" not in sentence:
        raise DataError(f"{where}: field 'sentence' has no '_' blank")
    blank = sentence.index("_")
    answer = field(record, "answer", where)
    if str(answer) not in ("1", "2"):
        raise DataError(f"{where}: field 'answer' must be '1' or '2', got {answer!r}")
    options = [field(record, "option1", where), field(record, "option2", where)]
    rest = TARGET_DELIMITER + sentence[blank + 1:].strip()
    return ChoiceDoc(contexts=[sentence[:blank] + o for o in options], continuations=[rest, rest],
                     gold=int(answer) - 1, id=str(record.get("qID", where)))


def _shared_context_doc(query: str, choices: list[str], gold: int, doc_id: str, where: str) -> ChoiceDoc:
    if not 0 <= gold < len(choices):
        raise DataError(f"{where}: gold answer {gold} is not among the {len(choices)} choices")
    return ChoiceDoc(contexts=[query] * len(choices), continuations=[TARGET_DELIMITER + c for c in choices],
                     gold=gold, id=doc_id)


# ----------------------------------------------------------------------------- scoring


def draw_shots(rnd: random.Random, pool: list, k: int, exclude=None) -> list:
    """k few-shot documents as lm-eval's default sampler draws them; with `exclude`, k + 1 drawn, it dropped."""
    if k == 0:
        return []
    if len(pool) < k + (exclude is not None):
        raise FtlabError(f"{k}-shot evaluation needs at least {k + (exclude is not None)} few-shot documents, "
                         f"got {len(pool)}")
    if exclude is None:
        return [pool[j] for j in rnd.sample(range(len(pool)), k)]  # the same draws as rnd.sample(pool, k)
    shots = [pool[j] for j in rnd.sample(range(len(pool)), k + 1) if pool[j] != exclude][:k]
    return shots if len(shots) == k else rnd.sample([d for d in pool if d != exclude], k)  # duplicates of it drawn


def build_requests(docs: list[ChoiceDoc], shots_docs: list[ChoiceDoc] | None = None, num_fewshot: int = 0,
                   seed: int = 1234, shots_from_eval_split: bool = False) -> list[list[tuple[str, str]]]:
    """The (context, continuation) pairs of every document, few-shot examples prepended to each context."""
    rnd = random.Random(seed)
    requests = []
    for doc in docs:
        shots = draw_shots(rnd, shots_docs or [], num_fewshot, doc if shots_from_eval_split else None)
        prefix = "".join(s.contexts[s.gold] + s.continuations[s.gold] + FEWSHOT_DELIMITER for s in shots)
        requests.append([(prefix + c, k) for c, k in zip(doc.contexts, doc.continuations)])
    return requests


def score_choices(lm, docs: list[ChoiceDoc], task: str, version: str, shots_docs: list[ChoiceDoc] | None = None,
                  num_fewshot: int = 0, seed: int = 1234, shots_from_eval_split: bool = False
                  ) -> tuple[list[Score], list[dict]]:
    """acc (and acc_norm where the choices are continuations of one shared context), each with its stderr, and
    one record per document in order: {id, gold, loglikelihoods (per choice), greedy (per choice), prediction
    (argmax of the log-likelihoods), metrics {acc (0/1)}}, plus prediction_norm (the argmax per character) and
    metrics acc_norm where acc_norm is reported. Each metric is the mean of the records' values."""
    if not docs:
        raise FtlabError(f"task {task}: no documents to score")
    per_doc = build_requests(docs, shots_docs, num_fewshot, seed, shots_from_eval_split)
    flat = lm.loglikelihood([r for requests in per_doc for r in requests])
    shared = all(len(set(d.contexts)) == 1 for d in docs)  # acc_norm only where every document shares its context
    records, at = [], 0
    for doc in docs:
        results = flat[at:at + len(doc.contexts)]
        at += len(doc.contexts)
        lls = [ll for ll, _ in results]
        lengths = [len(c.removeprefix(TARGET_DELIMITER)) for c in doc.continuations]
        if 0 in lengths:
            raise FtlabError(f"task {task}: document {doc.id} has an empty choice; acc_norm divides by its length")
        record = {"id": doc.id, "gold": doc.gold, "loglikelihoods": lls, "greedy": [g for _, g in results],
                  "prediction": _argmax(lls), "metrics": {}}
        record["metrics"]["acc"] = float(record["prediction"] == doc.gold)
        if shared:
            record["prediction_norm"] = _argmax([ll / n for ll, n in zip(lls, lengths)])
            record["metrics"]["acc_norm"] = float(record["prediction_norm"] == doc.gold)
        records.append(record)
    metrics = ["acc", "acc_norm"] if shared else ["acc"]
    return [mean_score(task, version, m, [r["metrics"][m] for r in records]) for m in metrics], records


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as numpy's argmax


def mean_score(task: str, version: str, metric: str, values: list[float]) -> Score:
    """The mean, with lm-eval's stderr: sample standard deviation (n - 1) / sqrt(n); None for one value."""
    n = len(values)
    mean = sum(values) / n
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    return Score(task, version, metric, mean, n, stderr)
