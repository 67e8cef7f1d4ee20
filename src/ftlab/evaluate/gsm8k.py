"""GSM8K: k-shot greedy generation, answers extracted and compared as lm-eval's gsm8k task (v3) does.

    docs = [gsm8k_doc(record, "test.jsonl:1")]           # {"question", "answer": "...#### 18"}
    scores, samples = score_gsm8k(lm, docs, train_docs)  # exact_match_strict, exact_match_flexible

Prompt: k solved train problems "Question: {q}\\nAnswer: {full solution}\\n\\n", then "Question: {q}\\nAnswer:";
generation stops at "Question:", "</s>" or "<|im_end|>". Extraction: strict takes the first "#### <number>",
flexible the last number-like string; both compare to the gold after `normalize_answer` (lm-eval's exact_match
with ignore_case and regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"]). A completion is LM.generate's text
after the prompt: on a SentencePiece tokenizer it keeps the leading space that lm-eval, decoding the new tokens
alone, drops; the extractions and scores are the same.

Sampled (`score_gsm8k_sampled`, a task with samples > 1 or temperature > 0): n completions per problem from the
same prompts, each passing when its strict extraction matches the gold; reported as pass@k (the unbiased
estimator of ftlab.evaluate.code.pass_at_k), with one record per completion.
"""

from __future__ import annotations

import random
import re

from ftlab.errors import DataError, FtlabError
from ftlab.evaluate.choice import draw_shots, field, mean_score
from ftlab.evaluate.code import pass_at_k
from ftlab.documents import GenDoc, Score

STOP = ["Question:", "</s>", "<|im_end|>"]
INVALID = "[invalid]"  # what extraction returns when nothing matches (lm-eval's regex filter fallback)
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORED = [",", "\\$", "(?s).*#### ", "\\.$"]  # removed in this order from prediction and gold


def gsm8k_doc(record: dict, where: str) -> GenDoc:
    """{question, answer} -> GenDoc; answer is the text after the last "#### " of the solution."""
    question, solution = field(record, "question", where), field(record, "answer", where)
    if "#### " not in solution:
        raise DataError(f"{where}: field 'answer' has no '#### <number>' final answer")
    return GenDoc(prompt=f"Question: {question}\nAnswer:", answer=solution.rsplit("#### ", 1)[1], target=solution,
                  id=str(record.get("id", where)))


def extract_strict(text: str) -> str:
    """The number of the first "#### <number>", or INVALID."""
    match = STRICT.search(text)
    return match.group(1).strip() if match else INVALID


def extract_flexible(text: str) -> str:
    """The last number-like string ("$1,234.50", "-7", "42."), or INVALID."""
    matches = FLEXIBLE.findall(text)  # [(longer form, bare integer)], one of the two empty
    return next((g for g in matches[-1] if g), INVALID).strip() if matches else INVALID


def normalize_answer(text: str) -> str:
    """lm-eval's exact_match normalization for gsm8k: drop commas, "$", everything to "#### ", a final "."; lower."""
    for pattern in IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def build_prompts(docs: list[GenDoc], fewshot_docs: list[GenDoc], num_fewshot: int, seed: int) -> list[str]:
    """Each document's prompt after num_fewshot solved examples drawn by one random.Random(seed), in order."""
    unsolved = [d.id for d in fewshot_docs if not d.target]
    if num_fewshot and unsolved:
        raise FtlabError(f"few-shot documents need a full solution (target); {unsolved[0]} has none")
    rnd = random.Random(seed)
    prompts = []
    for doc in docs:
        shots = draw_shots(rnd, fewshot_docs, num_fewshot)  # train split: lm-eval excludes nothing
        prompts.append("".join(f"{s.prompt} {s.target}\n\n" for s in shots) + doc.prompt)
    return prompts


def score_gsm8k(lm, docs: list[GenDoc], fewshot_docs: list[GenDoc], num_fewshot: int = 5, max_new_tokens: int = 256,
                seed: int = 1234) -> tuple[list[Score], list[dict]]:
    """Strict and flexible exact match (mean, stderr) and one record per document, in order: {id, prompt,
    completion, extracted_strict, extracted_flexible, gold, metrics {exact_match_strict, exact_match_flexible}
    (0/1)}; each metric is the mean of the records' values."""
    if not docs:
        raise FtlabError("gsm8k: no documents to score")
    prompts = build_prompts(docs, fewshot_docs, num_fewshot, seed)
    completions = [outs[0] for outs in lm.generate(prompts, max_new_tokens=max_new_tokens, stop=STOP)]
    samples = []
    for doc, prompt, completion in zip(docs, prompts, completions):
        gold = normalize_answer(doc.answer)
        record = {"id": doc.id, "prompt": prompt, "completion": completion, "extracted_strict":
                  extract_strict(completion), "extracted_flexible": extract_flexible(completion), "gold": doc.answer}
        record["metrics"] = {
            "exact_match_strict": float(normalize_answer(record["extracted_strict"]) == gold),
            "exact_match_flexible": float(normalize_answer(record["extracted_flexible"]) == gold)}
        samples.append(record)
    return [mean_score("gsm8k", "1", m, [r["metrics"][m] for r in samples])
            for m in ("exact_match_strict", "exact_match_flexible")], samples


def score_gsm8k_sampled(lm, docs: list[GenDoc], fewshot_docs: list[GenDoc], num_fewshot: int = 5,
                        max_new_tokens: int = 256, temperature: float = 0.8, top_p: float = 0.95, n: int = 10,
                        ks: tuple[int, ...] = (1,), seed: int = 1234) -> tuple[list[Score], list[dict]]:
    """pass@k (mean over problems, with its stderr) for each k in ks up to n, from n sampled completions per
    problem scored by strict match; one record {id, sample, prompt, completion, extracted_strict, gold, passed,
    metrics} per completion, problem by problem, in sample order. metrics: the problem's pass@k, the same on
    each of its n records, so every reported pass@k is the mean of the records' values."""
    if not docs:
        raise FtlabError("gsm8k: no documents to score")
    if temperature <= 0 and n > 1:
        raise FtlabError(f"gsm8k: {n} samples per problem at temperature 0 would be {n} copies of the greedy "
                         f"completion; set a temperature > 0 or samples 1")
    prompts = build_prompts(docs, fewshot_docs, num_fewshot, seed)
    outs = lm.generate(prompts, max_new_tokens=max_new_tokens, stop=STOP, temperature=temperature, top_p=top_p,
                       n=n, seed=seed)  # [problem][sample]
    reported = [k for k in ks if k <= n]
    per_problem, samples = [], []  # {pass@k: value} of each problem
    for doc, prompt, row in zip(docs, prompts, outs):
        gold = normalize_answer(doc.answer)
        records = []
        for i, completion in enumerate(row):
            extracted = extract_strict(completion)
            records.append({"id": doc.id, "sample": i, "prompt": prompt, "completion": completion,
                            "extracted_strict": extracted, "gold": doc.answer,
                            "passed": normalize_answer(extracted) == gold})
        c = sum(r["passed"] for r in records)
        per_problem.append({f"pass@{k}": pass_at_k(n, c, k) for k in reported})
        samples += [{**r, "metrics": dict(per_problem[-1])} for r in records]
    return [mean_score("gsm8k", "1", f"pass@{k}", [values[f"pass@{k}"] for values in per_problem])
            for k in reported], samples
