"""Optimizer steps of micro-batches, in a fixed order given by the seed, resumable at any step.

IFT: each epoch is a seeded permutation of the examples; step k takes the next `global_batch` of them.
CPT: the packed stream is read in order; an epoch is one pass over it. Either way the position is a few
numbers (plus the packer's state for CPT), saved with every resumable state.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ftlab.config import RunConfig, budget_steps
from ftlab.data import IGNORE, Example, PackedText, collate


@dataclass
class Plan:
    """How long the run is, in optimizer steps, and where its checkpoints fall."""

    total_steps: int
    steps_per_epoch: int | None  # None: a CPT stream whose length was not counted (duration in tokens)
    tokens_per_step: float  # expected input tokens per step (exact for CPT)


class IFTSteps:
    def __init__(self, examples: list[Example], cfg: RunConfig, pad_id: int):
        self.examples, self.cfg, self.pad_id = examples, cfg, pad_id
        g = cfg.train.global_batch
        self.steps_per_epoch = math.ceil(len(examples) / g)
        self.epoch, self.index = 0, 0  # index: next step within the epoch
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        return torch.randperm(len(self.examples), generator=gen).tolist()

    def tokens_per_epoch(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        g, mb = self.cfg.train.global_batch, self.cfg.train.micro_batch
        chosen = [self.examples[i] for i in self._order[self.index * g:(self.index + 1) * g]]
        self.index += 1
        return [collate(chosen[i:i + mb], self.pad_id) for i in range(0, len(chosen), mb)]

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)


def replay_draw(seed: int, index: int) -> float:
    """A uniform number in [0, 1) for the index-th sequence of a CPT run: below data.replay.fraction, the sequence is
    replayed source text. A hash, so a resumed run draws the same."""
    digest = hashlib.sha256(f"replay\0{seed}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class CPTSteps:
    """The packed stream in order; with data.replay, each sequence is drawn from the replay source's own packed
    stream instead with probability fraction (replay_draw; that stream starts again when it runs out). An epoch is
    one pass over the training data."""

    def __init__(self, packed: PackedText, cfg: RunConfig, replay: PackedText | None = None):
        self.packed, self.cfg, self.replay = packed, cfg, replay
        self.epoch, self.drawn = 0, 0  # drawn: sequences taken so far, both sources
        self._it = iter(self.packed)
        self._replay_it = iter(self.replay) if replay is not None else None

    def _next_sequence(self) -> dict[str, torch.Tensor] | None:
        if self.replay is not None:
            self.drawn += 1
            if replay_draw(self.cfg.train.seed, self.drawn - 1) < self.cfg.data.replay.fraction:
                return self._next_replayed()
        try:
            return next(self._it)
        except StopIteration:
            return None

    def _next_replayed(self) -> dict[str, torch.Tensor]:
        seq = next(self._replay_it, None)
        if seq is None:
            self.replay.restart()
            self._replay_it = iter(self.replay)
            seq = next(self._replay_it, None)
            if seq is None:
                raise RuntimeError("the replay stream is empty")
        return seq

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        g, mb = self.cfg.train.global_batch, self.cfg.train.micro_batch
        seqs = []
        while len(seqs) < g:
            seq = self._next_sequence()
            if seq is None:
                if seqs:  # an epoch ends with a partial step
                    break
                self.epoch += 1
                self.packed.restart()
                self._it = iter(self.packed)
                seq = self._next_sequence()
                if seq is None:
                    raise RuntimeError("the CPT stream is empty")
            seqs.append(seq)
        return [stack(seqs[i:i + mb]) for i in range(0, len(seqs), mb)]

    def state(self) -> dict:
        saved = {"epoch": self.epoch, "packer": self.packed.state()}
        if self.replay is not None:
            saved.update(drawn=self.drawn, replay=self.replay.state())
        return saved

    def load_state(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.packed.load_state(state["packer"])
        self._it = iter(self.packed)
        if self.replay is not None:
            self.drawn = state["drawn"]
            self.replay.load_state(state["replay"])
            self._replay_it = iter(self.replay)


def stack(seqs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Packed sequences, each (T,), into one micro-batch, each (B, T)."""
    return {k: torch.stack([s[k] for s in seqs]) for k in seqs[0]}


def make_plan(cfg: RunConfig, steps) -> Plan:
    t = cfg.train
    if isinstance(steps, IFTSteps):
        spe = steps.steps_per_epoch
        per_step = steps.tokens_per_epoch() / spe
    else:
        per_step = float(t.global_batch * cfg.data.seq_len)
        sequences = steps.packed.count_sequences() / (1 - cfg.data.replay.fraction) if t.epochs is not None else 0
        spe = math.ceil(sequences / t.global_batch) if t.epochs is not None else None  # replayed ones included
    if t.epochs is not None:
        total = max(1, round(t.epochs * spe))
    elif isinstance(steps, CPTSteps):
        total = budget_steps(t.tokens, t.global_batch, cfg.data.seq_len)
    else:  # an IFT token budget: met on average
        total = max(1, math.ceil(t.tokens / per_step))
    return Plan(total_steps=total, steps_per_epoch=spe, tokens_per_step=per_step)


def checkpoint_due(cfg: RunConfig, plan: Plan, step: int, tokens_before: int, tokens_after: int) -> list[float]:
    """The train.checkpoints values reached by finishing 1-based step `step` (tokens counted in inputs).

    The last step takes every value not yet reached (an IFT token budget is met only on average).
    """
    last = step == plan.total_steps
    due = []
    for c in cfg.train.checkpoints:
        if cfg.train.unit == "epochs":
            at = min(plan.total_steps, max(1, round(c * plan.steps_per_epoch)))
            if at == step:
                due.append(c)
        elif tokens_before < c <= tokens_after or (last and c > tokens_before):
            due.append(c)
    return due


def count_targets(micro: list[dict[str, torch.Tensor]]) -> int:
    """Tokens that carry loss in one optimizer step (labels are shifted by one inside the loss)."""
    return int(sum((b["labels"][:, 1:] != IGNORE).sum() for b in micro))


def count_inputs(micro: list[dict[str, torch.Tensor]]) -> int:
    return int(sum(b["attention_mask"].sum() for b in micro))
