"""Learning measured on the setting's own data: the held-out part of its data, scored one example at a time.

    spec = bind(get_task("heldout_accuracy"), cfg.data, cfg.train.seed)   # the held-out part of this run's data
    scores, records = score(lm, spec)                                        # as every task: records per example

The held-out part is what training holds out and logs its loss on: data.eval_path when set, else the share
data.eval_fraction of data.path (IFT: a seeded random share of the examples, at most data.eval_max_examples; CPT: the
documents a hash of (seed, file, line) puts in the eval split). Examples are tokenized exactly as training tokenizes
them (ftlab.data.load_ift: the prompt template or the chat template, truncated to data.seq_len).

- heldout_loss, heldout_accuracy: IFT: the next-token loss and greedy token accuracy on each example's response
  tokens (its labels); CPT: each document's, from its second token on. Records are per example with their token
  counts, so the task's value is the token-weighted mean, as the loss training logs, and comparisons pair examples.
- heldout_match: IFT only: the greedy completion of the prompt (everything before the last response), at most as many
  new tokens as the longest response has, equals the response (whitespace at the ends aside; a completion that goes
  on past its response does not match). For short-answer data.

Finding the held-out part tokenizes the whole data set, as training does; it is done once per data set, seed and
tokenizer in a process (the examples are kept: at most data.eval_max_examples), not once per checkpoint.

An example's id is a hash of its tokens: the same example has the same id in every run that holds it out.
With several training seeds, data.path's held-out share differs between seeds; comparisons pair the examples both
sides hold (give data.eval_path for one held-out set across seeds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from ftlab.config import DataConfig, from_dict, to_dict
from ftlab.documents import Score
from ftlab.errors import FtlabError

HELDOUT = "setting:heldout"  # a TaskSpec source: the held-out part of the data of the run (or setting) evaluated
DEFAULT_LEARNING = ["heldout_accuracy", "heldout_loss"]  # a setting's learning tasks when it names none


def bind(spec, data: DataConfig, seed: int):
    """`spec` reading the held-out part of `data` as split with `seed` (train.seed); any other task unchanged."""
    if getattr(spec, "source", None) != HELDOUT:
        return spec
    return replace(spec, extra={**spec.extra, "data": to_dict(data), "seed": seed})


def score(lm, spec) -> tuple[list[Score], list[dict]]:
    """Scores and per-example records of a held-out task (bound by `bind`) on the model `lm` holds."""
    if "data" not in spec.extra:
        raise FtlabError(f"task {spec.name}: scores the held-out part of a run's own data; evaluate a run directory "
                         f"(ftlab eval RUN --tasks {spec.name}) or name it in a study setting's learning:")
    from ftlab.packing import IGNORE  # torch: only where a model is scored (the planner imports this module)

    data = from_dict(DataConfig, dict(spec.extra["data"]), "data")
    examples = _examples(data, lm.tokenizer, spec.extra["seed"])
    if spec.limit is not None:
        examples = examples[: spec.limit]
    if spec.name == "heldout_match":
        if data.regime != "ift":
            raise FtlabError(f"task heldout_match: matches generated responses, and {data.path} is CPT text; use "
                             f"heldout_loss or heldout_accuracy")
        return _match(lm, spec, examples)
    per = lm.sequence_scores([(ids, [label != IGNORE for label in labels]) for _, ids, labels in examples])
    records = [_record(doc, *values) for (doc, _, _), values in zip(examples, per)]
    count = sum(r["tokens"] for r in records)
    loss = sum(r["nll_sum"] for r in records) / max(count, 1)
    accuracy = sum(r["correct"] for r in records) / max(count, 1)
    return [Score(spec.name, spec.version, "loss", loss, count),
            Score(spec.name, spec.version, "token_accuracy", accuracy, count)], records


_FOUND: dict[tuple, list] = {}  # (data, seed, tokenizer) -> its held-out examples: once per process


def _examples(data: DataConfig, tokenizer, seed: int) -> list[tuple[str, list[int], list[int]]]:
    """(id, token ids, labels) of each held-out example, in the split's order; labels are IGNORE where not scored."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # no whole description of the tokenizer to know it again by: found afresh
        return _find(data, tokenizer, seed)
    what = backend.to_str() + str(getattr(tokenizer, "chat_template", None))
    key = (json.dumps(to_dict(data), sort_keys=True), seed, hashlib.sha256(what.encode()).hexdigest())
    if key not in _FOUND:
        if len(_FOUND) >= 4:
            _FOUND.pop(next(iter(_FOUND)))
        _FOUND[key] = _find(data, tokenizer, seed)
    return _FOUND[key]


def _find(data: DataConfig, tokenizer, seed: int) -> list[tuple[str, list[int], list[int]]]:
    from ftlab.packing import IGNORE, PackedText

    if data.regime == "ift":
        from ftlab.data import load_ift  # the one place examples are split and tokenized as training sees them

        _, held = load_ift(data, tokenizer, seed)
        out = [(e.input_ids, e.labels) for e in held]
    else:
        docs = PackedText(data, tokenizer, "eval", seed).documents()
        out = [(ids, [IGNORE] + ids[1:]) for _, ids in docs][: data.eval_max_examples]
    if not out:
        raise FtlabError(f"{data.path}: the held-out part is empty (data.eval_fraction {data.eval_fraction:g}); set "
                         "data.eval_path to a held-out file, or raise data.eval_fraction (a .txt file is one "
                         "document: split it into lines of a .jsonl to hold some out)")
    return list(zip(_ids([ids for ids, _ in out]), *zip(*out)))


def _ids(examples: list[list[int]]) -> list[str]:
    """A hash of each example's tokens, and -2, -3, ... after the hash of a repeat of an earlier example."""
    seen: dict[str, int] = {}
    out = []
    for ids in examples:
        digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        out.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return out


def _record(doc: str, nll_sum: float, tokens: int, correct: int) -> dict:
    """As a perplexity task's record (ftlab.evaluate.harness): summed NLL, tokens scored, greedy hits, per token."""
    loss = nll_sum / tokens if tokens else None
    return {"id": doc, "tokens": tokens, "nll_sum": nll_sum, "correct": correct,
            "metrics": {"loss": loss, "token_accuracy": correct / tokens if tokens else None}}


def _match(lm, spec, examples) -> tuple[list[Score], list[dict]]:
    """Greedy completions of the prompts, as many new tokens as the longest response has, against the responses: a
    completion that goes on past its response does not match."""
    from ftlab.packing import IGNORE

    tokenizer = lm.tokenizer
    prompts, answers, longest = [], [], 1
    for _, ids, labels in examples:
        end = max(t for t, label in enumerate(labels) if label != IGNORE) + 1
        start = end
        while start > 0 and labels[start - 1] != IGNORE:  # the last response: the last run of labelled tokens
            start -= 1
        prompts.append(tokenizer.decode(ids[:start]))
        answers.append(tokenizer.decode(ids[start:end], skip_special_tokens=True).strip())
        longest = max(longest, end - start)
    completions = [c[0] for c in lm.generate(prompts, max_new_tokens=longest, seed=0)]
    records = [{"id": doc, "response": answer, "completion": completion,
                "metrics": {"exact_match": float(completion.strip() == answer)}}
               for (doc, _, _), answer, completion in zip(examples, answers, completions)]
    value = sum(r["metrics"]["exact_match"] for r in records) / len(records)
    stderr = (value * (1 - value) / max(len(records) - 1, 1)) ** 0.5
    return [Score(spec.name, spec.version, "exact_match", value, len(records), stderr)], records
