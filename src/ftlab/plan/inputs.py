"""A run's inputs resolved without training: its tokenizer and its data's size, and so its steps and tokens.

    size = data_size(cfg, tokenizer)       # records and tokens: counted, or estimated from a sample of a big set
    schedule = schedule_of(cfg, size)      # optimizer steps, tokens per step, tokens

A data set is read whole when it has at most SAMPLE_RECORDS records; a bigger one is estimated from its first
SAMPLE_RECORDS, scaled by the bytes they take of its files (records per byte and tokens per byte of the sample). IFT
examples are tokenized as training tokenizes them (truncated to seq_len; those left without a response token are
dropped), and packed as training packs them, to count sequences. Hub datasets are not read before training.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ftlab import domains
from ftlab.batches import budget_steps
from ftlab.builtin import BUILTIN_PREFIX, builtin_model_dir
from ftlab.config import HUB_PREFIX, ModelConfig, RunConfig
from ftlab.data import detect_format, pack_examples, prompt_response, tokenize_example
from ftlab.errors import ConfigError, DataError
from ftlab.packing import PackedText, document_text
from ftlab.records import Position, list_sources, records_from

SAMPLE_RECORDS = 1000  # records read of a data set to count it; a bigger set is estimated from them


@dataclass(frozen=True)
class DataSize:
    """What a run trains on: its training records and tokens, after the held-out share."""

    records: float  # training examples (IFT, after those dropped by truncation) or documents (CPT)
    tokens: float  # their tokens (IFT: truncated to seq_len; CPT: each document and its EOS)
    exact: bool  # counted; False: estimated from a sample
    per_sequence: float = 1.0  # IFT with packing: examples per packed sequence
    known: bool = True  # False: a hub dataset, not read before training
    how: str = "counted"  # or how it was estimated
    held_out: float | None = None  # held-out examples (IFT) or documents (CPT) of data.path; None: not counted

    def describe(self) -> str:
        if not self.known:
            return "a hub dataset: streamed when the run trains, not counted here"
        about = "" if self.exact else "~"
        packed = f", {self.per_sequence:.1f} examples per packed sequence" if self.per_sequence > 1 else ""
        held = "" if self.held_out is None else f"; {self.held_out:,.0f} held out" + (
            " - WARNING: the held-out part is empty, so there is no held-out loss and the held-out learning tasks "
            "cannot run; set data.eval_path, or raise data.eval_fraction (a .txt or .md file is one document: write "
            "the text as JSONL, one {\"text\": ...} per document)" if self.held_out == 0 else "")
        return f"{about}{self.records:,.0f} records, {about}{_short(self.tokens)} tokens{packed} ({self.how}){held}"


@dataclass(frozen=True)
class Schedule:
    """How long a run trains."""

    steps: int | None  # optimizer steps (None: the data's size is unknown)
    tokens_per_step: float | None
    tokens: float | None  # tokens trained (IFT: without padding)
    exact: bool


def tokenizer_for(model: ModelConfig):
    """The tokenizer a run of `model` tokenizes with (the tiny model's byte tokenizer or model.tiny.tokenizer)."""
    from transformers import AutoTokenizer

    from ftlab.model import byte_tokenizer

    if model.name == "tiny":
        return AutoTokenizer.from_pretrained(model.tiny.tokenizer) if model.tiny.tokenizer else byte_tokenizer()
    name = str(builtin_model_dir(model.name)) if model.name.startswith(BUILTIN_PREFIX) else model.name
    try:
        return AutoTokenizer.from_pretrained(name, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: no tokenizer could be loaded from {name!r}: {str(e).splitlines()[0]}") from None


def data_size(cfg: RunConfig, tokenizer) -> DataSize:
    """The training data's records and tokens (see the module's docstring); a malformed record is a DataError naming
    its file and line, as training would raise it."""
    d = cfg.data
    if d.path.startswith(HUB_PREFIX):
        return DataSize(0, 0, False, known=False)
    if d.path.startswith(BUILTIN_PREFIX):  # built-in data: its train split, held out separately
        kind = d.path.removeprefix(BUILTIN_PREFIX)
        items = [(f"{d.path}:{i + 1}", r) for i, r in enumerate(domains.records(kind, "train"))]
        return _count(cfg, tokenizer, items, 1.0, held_out=False)
    sources = list_sources(d.path)
    sizes = [os.path.getsize(s) for s in sources]
    items, after = [], Position()
    for source, line, record, after in records_from(sources, d, Position()):
        items.append((f"{source}:{line}", record))
        if len(items) == SAMPLE_RECORDS:
            break
    read = sum(sizes[:after.file]) + (after.offset if after.file < len(sizes) else 0)
    whole = len(items) < SAMPLE_RECORDS or read >= sum(sizes)
    scale = 1.0 if whole or read == 0 else sum(sizes) / read
    return _count(cfg, tokenizer, items, scale, held_out=d.eval_path is None)


def _count(cfg: RunConfig, tokenizer, items: list[tuple[str, dict]], scale: float, held_out: bool) -> DataSize:
    """The size of a data set of which `items` were read, `scale` times as big; minus the held-out share."""
    d = cfg.data
    if not items:
        raise DataError(f"{d.path}: no records")
    if d.regime == "cpt":
        eos = 1
        tokens = [len(tokenizer(document_text(r, d.text_field, where), add_special_tokens=False)["input_ids"]) + eos
                  for where, r in items]
        share = 1 - d.eval_fraction if held_out else 1.0  # documents are held out by a hash of where they are
        how = _how(scale) + (f"; {d.eval_fraction:g} of the documents held out, by a hash" if share < 1 else "")
        held = None
        if held_out and scale == 1.0:  # the whole set was read: count the documents the hash holds out
            held = sum(1 for _ in PackedText(d, tokenizer, "eval", cfg.train.seed).documents())
        return DataSize(len(items) * scale * share, sum(tokens) * scale * share, scale == 1.0 and share == 1.0,
                        how=how, held_out=held)
    fmt = d.format
    examples = []
    for where, record in items:
        if fmt == "auto":
            fmt = detect_format(record, where, d.text_field)
        example = tokenize_example(record, fmt, tokenizer, d.seq_len, where)
        if example is not None:
            examples.append(example)
    if not examples:
        which = f"its {len(items)} records" if scale == 1.0 else f"its first {len(items)} records"
        raise DataError(f"{d.path}: no training examples (none of {which} has a response token within "
                        f"data.seq_len={d.seq_len}{_prompt_lengths(items, fmt, tokenizer)}); raise data.seq_len or "
                        "shorten the prompts (the README's Quickstart 4 gives each template's length)")
    n = len(examples) * scale
    held = min(max(round(d.eval_fraction * n), 1), d.eval_max_examples) if held_out and d.eval_fraction > 0 else 0
    share = (n - held) / n
    per_sequence = len(examples) / len(pack_examples(examples, d.seq_len, cfg.train.seed)) if d.packing else 1.0
    tokens = sum(len(e.input_ids) for e in examples) * scale * share
    return DataSize(n - held, tokens, scale == 1.0, per_sequence, how=_how(scale),
                    held_out=None if not held_out else held)


def _prompt_lengths(items: list[tuple[str, dict]], fmt: str, tokenizer) -> str:
    """"; their prompts are 158-171 tokens" (template included) for plain records; "" for chat records."""
    if fmt == "messages":
        return ""
    lengths = [len(tokenizer(prompt_response(r, fmt, where)[0])["input_ids"]) for where, r in items]
    return f"; their prompts, template included, are {min(lengths)}-{max(lengths)} tokens"


def _how(scale: float) -> str:
    return "counted" if scale == 1.0 else f"estimated from its first {SAMPLE_RECORDS} records, by bytes"


def schedule_of(cfg: RunConfig, size: DataSize) -> Schedule:
    """Optimizer steps and tokens of a run on data of `size`, as ftlab.batches.make_plan counts them."""
    t, seq = cfg.train, cfg.data.seq_len
    if cfg.data.regime == "cpt" and t.tokens is not None:  # packed: every step is global_batch x seq_len tokens
        steps = budget_steps(t.tokens, t.global_batch, seq)
        return Schedule(steps, t.global_batch * seq, steps * t.global_batch * seq, True)
    if not size.known:
        return Schedule(None, None, None, False)
    if cfg.data.regime == "cpt":
        per_epoch = math.ceil(math.ceil(size.tokens / seq) / t.global_batch)
        steps = max(1, round(t.epochs * per_epoch))
        return Schedule(steps, t.global_batch * seq, steps * t.global_batch * seq, size.exact)
    per_epoch = math.ceil(size.records / size.per_sequence / t.global_batch)
    per_step = size.tokens / per_epoch
    steps = max(1, round(t.epochs * per_epoch)) if t.epochs is not None else max(1, math.ceil(t.tokens / per_step))
    return Schedule(steps, per_step, steps * per_step, size.exact)


def _short(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"

