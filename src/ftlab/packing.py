"""Raw text (CPT) packed into fixed-length sequences, streamed and resumable.

    packed = PackedText(cfg, tokenizer, "train", seed)     # doc0 + eos + doc1 + eos ... cut every seq_len
    state = packed.state()                                 # JSON-able; a new PackedText.load_state(state)
                                                           # yields exactly what this one would next

Documents are read through ftlab.records, and resume from a records.Position (the next unread document).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Literal

import torch

from ftlab.config import HUB_PREFIX, DataConfig
from ftlab.errors import DataError
from ftlab.records import Position, list_sources, records_from
from ftlab.text_tokens import encode_document

IGNORE = -100  # label of a position that carries no loss (prompt or padding)


class PackedText:
    """Documents of one split, tokenized and packed into sequences of exactly seq_len tokens (the last is padded).

    Iterating continues from the current position (after load_state, where the saved reader stopped);
    restart() goes back to the first document for the next epoch.
    """

    def __init__(self, cfg: DataConfig, tokenizer, split: Literal["train", "eval"], seed: int):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if tokenizer.eos_token_id is None:
            raise DataError(f"{cfg.path}: the tokenizer has no eos token to separate documents with")
        self.cfg, self.tokenizer, self.split, self.seed = cfg, tokenizer, split, seed
        self.path = cfg.eval_path if split == "eval" and cfg.eval_path else cfg.path
        self._by_hash = not cfg.eval_path  # no separate eval data: each document's hash picks its split
        self._sources = list_sources(self.path)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.restart()

    def restart(self) -> None:
        self._pos = Position()  # after the last document read into the buffer
        self._buffer: list[int] = []  # tokens read; those before _start were emitted already
        self._start = 0

    def _in_split(self, source: str, line: int) -> bool:
        """Without separate eval data, a document is held out by a hash of (seed, its file's path relative to
        data.path, its line): the same split wherever the data is, and however data.path names it."""
        if not self._by_hash:
            return True
        digest = hashlib.sha256(f"{self.seed}\0{self._relative(source)}\0{line}".encode()).digest()
        in_eval = int.from_bytes(digest[:8], "big") / 2**64 < self.cfg.eval_fraction
        return in_eval == (self.split == "eval")

    def _relative(self, source: str) -> str:
        """`source` relative to this split's path: a file under a directory by its relative path (with /), a single
        file by its name, a hub dataset by its name."""
        if source.startswith(HUB_PREFIX):
            return source
        root = Path(self.path)
        return Path(source).relative_to(root).as_posix() if root.is_dir() else Path(source).name

    def _documents(self, start: Position) -> Iterator[tuple[list[int], Position]]:
        """(tokens of a document + [eos], position after it) for this split's documents from `start` on."""
        for _, tokens, after in self._read(start):
            yield tokens, after

    def documents(self) -> Iterator[tuple[str, list[int]]]:
        """(FILE:LINE, tokens + [eos]) of each document of this split, from the first; this reader's position stays."""
        for where, tokens, _ in self._read(Position()):
            yield where, tokens

    def _read(self, start: Position) -> Iterator[tuple[str, list[int], Position]]:
        for source, line, record, after in records_from(self._sources, self.cfg, start):
            if not self._in_split(source, line):
                continue
            text = document_text(record, self.cfg.text_field, f"{source}:{line}")
            yield f"{source}:{line}", encode_document(self.tokenizer, text) + [self.tokenizer.eos_token_id], after

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        T = self.cfg.seq_len
        docs = self._documents(self._pos)
        while True:
            while len(self._buffer) - self._start < T and (doc := next(docs, None)) is not None:
                tokens, self._pos = doc
                self._buffer, self._start = self._buffer[self._start:] + tokens, 0
            if self._start == len(self._buffer):
                return
            chunk = self._buffer[self._start:self._start + T]
            self._start += len(chunk)  # state() is exact at every yield
            yield self._sequence(chunk)

    def _sequence(self, chunk: list[int]) -> dict[str, torch.Tensor]:
        T, n = self.cfg.seq_len, len(chunk)
        input_ids = torch.full((T,), self._pad, dtype=torch.long)  # (T,)
        input_ids[:n] = torch.tensor(chunk, dtype=torch.long)
        attention_mask = torch.zeros(T, dtype=torch.long)  # (T,)
        attention_mask[:n] = 1
        labels = torch.full((T,), IGNORE, dtype=torch.long)  # (T,)
        labels[:n] = input_ids[:n]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def state(self) -> dict:
        """JSON-able: the next unread document's position and the tokens read but not yet emitted."""
        p = self._pos
        source = self._sources[p.file] if p.file < len(self._sources) else None
        return {"path": self.path, "split": self.split, "seed": self.seed, "file": p.file, "source": source,
                "offset": p.offset, "line": p.line, "buffer": self._buffer[self._start:]}

    def load_state(self, state: dict) -> None:
        # Compared by file name: a run directory may move, and a CPT duration branch restarts from the state of
        # another run that reads its own copy of the same built-in data.
        saved = (Path(state["path"]).name, state["split"], state["seed"])
        if saved != (Path(self.path).name, self.split, self.seed):
            raise DataError(f"resume: the saved data position is for {saved} (file, split, seed), "
                            f"not {(Path(self.path).name, self.split, self.seed)}")
        f = state["file"]
        if f < len(self._sources) and Path(self._sources[f]).name != Path(state["source"]).name:
            raise DataError(f"resume: data file #{f} is now {self._sources[f]} but was {state['source']}; "
                            f"the files under {self.path} changed since the state was saved")
        self._pos = Position(f, state["offset"], state["line"])
        self._buffer, self._start = list(state["buffer"]), 0

    def count_sequences(self) -> int:
        """Sequences in one full pass over this split (reads it all once; this reader's position is untouched)."""
        tokens = sum(len(doc) for doc, _ in self._documents(Position()))
        return math.ceil(tokens / self.cfg.seq_len)


def document_text(record: dict, field: str, where: str) -> str:
    """The text of a raw-text record (its data.text_field), or a DataError naming FILE:LINE."""
    text = record.get(field)
    if not isinstance(text, str):
        got = "it is missing" if field not in record else f"got {type(text).__name__}"
        raise DataError(f"{where}: raw-text record needs a string field {field!r} (data.text_field); {got}")
    return text


def load_cpt_eval(cfg: DataConfig, tokenizer, seed: int) -> list[dict[str, torch.Tensor]]:
    """The first cfg.eval_max_examples sequences of the eval split (held-out loss)."""
    return list(itertools.islice(PackedText(cfg, tokenizer, "eval", seed), cfg.eval_max_examples))


def load_text_sample(path: str, cfg: DataConfig, tokenizer, seed: int) -> list[dict[str, torch.Tensor]]:
    """The first cfg.eval_max_examples sequences (data.seq_len tokens) of the raw text at `path`, every document
    read (none held out): a fixed sample whose loss is measured as a run trains (data.source_eval)."""
    whole = replace(cfg, path=path, eval_path=None, eval_fraction=0.0, text_field="text")
    return list(itertools.islice(PackedText(whole, tokenizer, "train", seed), cfg.eval_max_examples))
