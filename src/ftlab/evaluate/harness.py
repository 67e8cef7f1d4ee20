"""The evaluation harness: run tasks on a loaded model and write the results next to its checkpoint.

    ftlab eval runs/lora --tasks builtin            # the base once, then every checkpoint of the run
    ftlab eval path/to/model --tasks gsm8k,hellaswag --data-dir benchmarks/
    ftlab eval path/to/adapter --tasks lm_eval:arc_easy

Results land in <checkpoint>/eval.json (each task's scores as computed: task, version, metric, value, n, stderr; and
under "samples" each samples file's size and sha256) and per-example records in
<checkpoint>/eval_samples/<task>.jsonl, one line per
document in document order (one per sample for sampled tasks), each with the document's "id" and a "metrics"
mapping of its value of each metric the task reports: a task's metric is the mean of its records' values (for
perplexity tasks the token-weighted mean; see score_choices, score_gsm8k, score_completions and _text_record).
A task whose result with the same version is already there is not run again. These are the checkpoint's
artefacts; numbers derived from several tasks or models (learning, the source score, forgetting) are computed once,
in the results store's reader (ftlab.results.study), which ftlab.results.index fills from these files.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ftlab import __version__
from ftlab.documents import Score
from ftlab.errors import FtlabError
from ftlab.evaluate.choice import score_choices
from ftlab.evaluate.code import STOP, generation_prompt, score_completions, truncate_completion
from ftlab.evaluate.gsm8k import score_gsm8k, score_gsm8k_sampled
from ftlab.evaluate import heldout
from ftlab.evaluate.heldout import HELDOUT
from ftlab.evaluate.isolation import Isolation
from ftlab.evaluate.tasks import LM_EVAL_PREFIX, TaskSpec, load_docs
from ftlab.hub import hub_offline, offline_mode
from ftlab.io import file_digest, read_json, write_json, write_jsonl
from ftlab.rundir import CheckpointFiles


def run_task(lm, spec: TaskSpec, data_dir: str | None, seed: int = 1234,
             isolation: Isolation | None = None) -> tuple[list[Score], list[dict]]:
    """Scores and per-example records of one task on one model. isolation: how a code task's programs run
    (None: the strongest that works here; see sandbox.choose_isolation)."""
    if spec.source == HELDOUT:
        return heldout.score(lm, spec)
    docs = load_docs(spec, data_dir)
    if spec.kind == "choice":
        # k-shot examples come from the train split when the task names one; otherwise, as lm-eval does for a
        # task without one, from the evaluated split itself with the document being scored left out.
        from_eval = spec.num_fewshot > 0 and spec.fewshot_source is None
        shots = None
        if spec.num_fewshot:
            shots = load_docs(replace(spec, limit=None), data_dir) if from_eval else load_docs(spec, data_dir,
                                                                                               fewshot=True)
        return score_choices(lm, docs, spec.name, spec.version, shots_docs=shots, num_fewshot=spec.num_fewshot,
                             seed=seed, shots_from_eval_split=from_eval)
    if spec.kind == "gsm8k":
        shots = load_docs(spec, data_dir, fewshot=True)
        if spec.samples > 1 or spec.temperature > 0:  # sampled: pass@k over spec.samples completions per problem
            scores, samples = score_gsm8k_sampled(lm, docs, shots, num_fewshot=spec.num_fewshot,
                                                  max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                                                  top_p=spec.top_p, n=spec.samples, ks=spec.ks, seed=seed)
        else:  # greedy: exact match, as lm-eval's gsm8k
            scores, samples = score_gsm8k(lm, docs, shots, num_fewshot=spec.num_fewshot,
                                          max_new_tokens=spec.max_new_tokens, seed=seed)
        return [_renamed(s, spec) for s in scores], samples
    if spec.kind == "code":
        outs = lm.generate([generation_prompt(d) for d in docs], max_new_tokens=spec.max_new_tokens, stop=STOP,
                           temperature=spec.temperature, top_p=spec.top_p, n=spec.samples, seed=seed)
        completions = [[truncate_completion(c) for c in row] for row in outs]
        ks = tuple(k for k in spec.ks if k <= spec.samples)
        scores, samples = score_completions(docs, completions, ks=ks, isolation=isolation)
        return [_renamed(s, spec) for s in scores], samples
    if spec.kind == "perplexity":
        contexts = [d.context for d in docs] if any(d.context for d in docs) else None
        per_text = lm.text_scores([d.text for d in docs], contexts)
        records = [_text_record(d.id, *values) for d, values in zip(docs, per_text)]
        count = sum(r["tokens"] for r in records)
        loss = sum(r["nll_sum"] for r in records) / max(count, 1)
        accuracy = sum(r["correct"] for r in records) / max(count, 1)
        return [Score(spec.name, spec.version, "loss", loss, count),
                Score(spec.name, spec.version, "perplexity", _exp(loss), count),
                Score(spec.name, spec.version, "token_accuracy", accuracy, count)], records  # tokens are not
        # independent draws, so no binomial stderr is given
    raise FtlabError(f"task {spec.name}: unknown kind {spec.kind!r}")


def _text_record(doc_id: str, nll_sum: float, tokens: int, correct: int) -> dict:
    """A perplexity task's record of one document: its summed NLL (nats), tokens scored and tokens that were the
    greedy argmax, and metrics per token (None without a scored token). The task's loss and token_accuracy are
    the means of the records' values weighted by their tokens; its perplexity is exp(loss), not a mean of the
    records' perplexities."""
    loss = nll_sum / tokens if tokens else None
    return {"id": doc_id, "tokens": tokens, "nll_sum": nll_sum, "correct": correct,
            "metrics": {"loss": loss, "perplexity": _exp(loss) if tokens else None,
                        "token_accuracy": correct / tokens if tokens else None}}


TOKEN_WEIGHTED = ("loss", "token_accuracy")  # perplexity tasks: per-document means weighted by their tokens


def example_values(records: list[dict], kind: str, metric: str) -> dict[str, tuple[float, float]]:
    """A task's per-document (value, weight) of one metric, from its eval_samples records in order: what its score
    is the (weighted) mean of. A sampled task's records are per sample and carry their problem's pass@k, so the
    first record of a problem stands for it; weights are the tokens for a perplexity task's loss and token accuracy,
    else 1; a document without a value (no token scored) is left out. Perplexity is exp(loss), not a mean of
    per-document values: asked for, it is an FtlabError."""
    if kind == "perplexity" and metric not in TOKEN_WEIGHTED:
        raise FtlabError(f"metric {metric}: a perplexity task's per-document values are {', '.join(TOKEN_WEIGHTED)}")
    out: dict[str, tuple[float, float]] = {}
    for r in records:
        doc, value = str(r["id"]), r["metrics"].get(metric)
        if doc in out or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[doc] = (float(value), float(r["tokens"]) if kind == "perplexity" else 1.0)
    return out


def _exp(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float64).exp())  # inf, not an OverflowError, past e^709


def _renamed(score: Score, spec: TaskSpec) -> Score:
    return Score(spec.name, spec.version, score.metric, score.value, score.n, score.stderr, score.extra)


def run_lm_eval_task(model, tokenizer, name: str, limit: int | None) -> list[Score]:
    """Any lm-evaluation-harness task, run by lm-eval itself on an already loaded model."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise FtlabError(f"task {LM_EVAL_PREFIX}{name}: lm-evaluation-harness is not installed "
                         "(pip install 'ftlab[lm-eval]')") from None
    offline = hub_offline()
    with offline_mode() if offline else contextlib.nullcontext():
        try:
            out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer), tasks=[name], limit=limit)
        except (ConnectionError, FileNotFoundError) as e:
            if offline is None:
                raise
            raise FtlabError(_offline_message(name, offline, e)) from None
    scores = []
    for task, metrics in out["results"].items():
        version = str(out.get("versions", {}).get(task, "?"))
        for key, value in metrics.items():
            if "," not in key or "stderr" in key or not isinstance(value, (int, float)):
                continue
            metric = key.split(",")[0] + ("" if key.endswith(",none") else "_" + key.split(",", 1)[1])
            stderr = metrics.get(key.replace(",", "_stderr,", 1))
            n = out.get("n-samples", {}).get(task, {}).get("effective", 0)
            scores.append(Score(f"{LM_EVAL_PREFIX}{task}", version, metric, float(value), int(n),
                                float(stderr) if isinstance(stderr, (int, float)) else None))
    return scores


def check_lm_eval_offline(names: list[str]) -> None:
    """Before any model is loaded: where the hub cannot be reached, each lm_eval:<task> must find its data in the
    local cache, else an FtlabError says so (at once, not after datasets' retries and a model load)."""
    offline = hub_offline() if names else None
    if offline is None:
        return
    try:
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise FtlabError(f"task {LM_EVAL_PREFIX}{names[0]}: lm-evaluation-harness is not installed "
                         "(pip install 'ftlab[lm-eval]')") from None
    manager = TaskManager()
    for name in names:
        with offline_mode():
            try:
                get_task_dict([name], manager)
            except (ConnectionError, FileNotFoundError) as e:
                raise FtlabError(_offline_message(name, offline, e)) from None


def _offline_message(name: str, why: str, error: BaseException) -> str:
    return (f"task {LM_EVAL_PREFIX}{name}: lm-eval needs its dataset from the Hugging Face hub, which cannot be used "
            f"here ({why}), and the local cache has no copy ({str(error).splitlines()[0][:200]}). Run it once where "
            "the hub is reachable (the dataset is cached in ~/.cache/huggingface), or copy that cache here")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def read_results(directory: Path) -> dict:
    path = CheckpointFiles(directory).eval
    return read_json(path, "evaluation results") if path.exists() else {"scores": []}


def evaluate_into(directory: Path, lm, model, tokenizer, specs: list, data_dir: str | None,
                  isolation: Isolation | None = None) -> dict:
    """Run the tasks not yet recorded in directory/eval.json, rewriting it (atomically) after each task."""
    files = CheckpointFiles(directory)
    directory = files.path
    results = read_results(directory)
    done = {(s["task"], s["version"]) for s in results["scores"]}
    for spec in specs:
        name, version = (spec, None) if isinstance(spec, str) else (spec.name, spec.version)
        if any(t == name and (version is None or v == version) for t, v in done):
            continue
        start = time.perf_counter()
        if isinstance(spec, str):
            scores, samples = run_lm_eval_task(model, tokenizer, spec.removeprefix(LM_EVAL_PREFIX), None), []
        else:
            scores, samples = run_task(lm, spec, data_dir, isolation=isolation)
        seconds = time.perf_counter() - start
        headline = [s for s in scores if isinstance(spec, str) or s.metric == spec.metric]
        shown = ", ".join(f"{s.metric} {s.value:.4f}" for s in headline[:2])
        print(f"ftlab eval: {directory.name}: {name} {shown} ({seconds:.1f} s)", flush=True)
        results["scores"] = [s for s in results["scores"] if s["task"] != name] + [asdict(s) for s in scores]
        if samples:
            files.samples_dir.mkdir(exist_ok=True)
            write_jsonl(files.samples(name), samples)
            # its size and checksum: a samples file cut or changed later is found when it is indexed
            results.setdefault("samples", {})[name] = file_digest(files.samples(name))
        results.update(ftlab_version=__version__, git_commit=git_commit())
        write_json(files.eval, results)  # after every task: a kill loses at most one task
    return results
