"""The document shapes evaluators consume, whatever file format or built-in domain they came from.

A neutral module: the built-in domains (ftlab.domains) make these documents and the evaluators (ftlab.evaluate)
score them; neither imports the other for them. It imports nothing of ftlab.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChoiceDoc:
    """A multiple-choice item scored by log-likelihood: choice i is the pair (contexts[i], continuations[i]).

    HellaSwag/ARC: one shared context, a continuation per choice. WinoGrande: the option fills the blank, so the
    context differs per choice and the continuation (the rest of the sentence) is shared.
    """

    contexts: list[str]  # one per choice (the same string repeated when the context is shared)
    continuations: list[str]  # one per choice
    gold: int  # index of the correct choice
    id: str = ""


@dataclass
class GenDoc:
    """A prompt whose greedy completion is scored by answer extraction (GSM8K)."""

    prompt: str  # the question, formatted for the model (few-shot examples are added by the evaluator)
    answer: str  # the gold answer string, e.g. "18"
    target: str = ""  # the full gold solution, when there is one (used for few-shot examples)
    id: str = ""


@dataclass
class CodeDoc:
    """A HumanEval-format problem: the model completes `prompt`; `test` defines check(candidate)."""

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


@dataclass
class TextDoc:
    """Held-out text for loss / perplexity."""

    text: str
    id: str = ""
    context: str = ""  # scored as the continuation of this (e.g. the question before a worked solution)


@dataclass
class Score:
    """One number an evaluation produced."""

    task: str
    version: str
    metric: str
    value: float
    n: int  # documents (or tokens, for perplexity) behind the value
    stderr: float | None = None
    extra: dict = field(default_factory=dict)
