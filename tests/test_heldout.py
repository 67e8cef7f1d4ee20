"""Learning on the user's own data: the held-out tasks (heldout_loss, heldout_accuracy, heldout_match) score the
held-out part of a run's data one example at a time, as training holds it out."""

import json

import pytest
import yaml
from conftest import tiny_config, write_text

from ftlab.config import load_config
from ftlab.errors import ConfigError, FtlabError
from ftlab.evaluate import heldout
from ftlab.evaluate.harness import example_values, run_task
from ftlab.evaluate.lm import LM
from ftlab.evaluate.targets import evaluate_target
from ftlab.evaluate.tasks import get_task
from ftlab.experiment.spec import learning_tasks, parse_experiment, plan_runs
from ftlab.io import read_json, read_jsonl
from ftlab.model import build_tiny
from ftlab.rundir import read_metrics
from ftlab.train import train


def test_heldout_loss_is_the_loss_training_logs_and_pairs_examples(pairs, tmp_path):
    cfg = tiny_config(pairs, tmp_path / "run", "train.epochs=1")
    run = train(cfg)
    evaluate_target(str(run), ["heldout_loss", "heldout_accuracy"], device="cpu")
    final = read_json(run / "final" / "eval.json", "eval")
    score = {(s["task"], s["metric"]): s for s in final["scores"]}
    logged = [m["eval_loss"] for m in read_metrics(run) if m.get("eval_loss") is not None]
    assert score["heldout_loss", "loss"]["value"] == pytest.approx(logged[-1], abs=1e-5)
    assert score["heldout_loss", "loss"]["n"] == score["heldout_accuracy", "token_accuracy"]["n"] > 0
    records = [r for _, r in read_jsonl(run / "final" / "eval_samples" / "heldout_accuracy.jsonl")]
    assert len(records) == 10  # eval_fraction 0.1 of 96 examples
    values = example_values(records, "perplexity", "token_accuracy")
    assert len(values) == 10 and all(0 <= v <= 1 and w >= 1 for v, w in values.values())
    base = [r for _, r in read_jsonl(run / "base_eval" / "eval_samples" / "heldout_accuracy.jsonl")]
    assert [r["id"] for r in base] == [r["id"] for r in records]  # the same examples, paired by id


def test_heldout_match_generates_the_response(pairs, tmp_path):
    cfg = tiny_config(pairs, tmp_path / "run")
    model, tokenizer = build_tiny(cfg.model.tiny)
    spec = heldout.bind(get_task("heldout_match"), cfg.data, cfg.train.seed)
    lm = LM(model, tokenizer, "cpu", batch_size=4)
    scores, records = run_task(lm, spec, None)
    assert scores[0].metric == "exact_match" and scores[0].n == len(records) == 10
    for r in records:  # the response of a reversal pair, and a match exactly when the completion is it
        assert r["response"] in {json.loads(line)["completion"] for line in open(pairs)}
        assert r["metrics"]["exact_match"] == float(r["completion"].strip() == r["response"])


def test_cpt_scores_each_held_out_document(tmp_path):
    text = write_text(tmp_path / "text.jsonl", n_docs=60)
    cfg = load_config(None, [f"data.path={text}", "data.regime=cpt", "data.eval_fraction=0.2", "data.seq_len=32",
                             "model.tiny.hidden_size=32", "model.tiny.layers=1", "model.tiny.heads=2",
                             "model.tiny.kv_heads=2", "model.tiny.intermediate_size=64", "model.tiny.max_position=64"],
                      out=str(tmp_path / "run"))
    model, tokenizer = build_tiny(cfg.model.tiny)
    lm = LM(model, tokenizer, "cpu", batch_size=4)
    scores, records = run_task(lm, heldout.bind(get_task("heldout_loss"), cfg.data, 0), None)
    docs = [len(tokenizer.encode(r["text"])) for _, r in read_jsonl(text)]
    assert 0 < len(records) < 60
    # each document is scored from its second token on (its eos included), over windows of 64 tokens
    assert {r["tokens"] for r in records} <= {n for n in docs}
    assert scores[0].value == pytest.approx(sum(r["nll_sum"] for r in records) / sum(r["tokens"] for r in records))


def test_an_unbound_heldout_task_and_an_empty_held_out_part_say_what_to_do(pairs, tmp_path):
    model, tokenizer = build_tiny(tiny_config(pairs, tmp_path / "run").model.tiny)
    lm = LM(model, tokenizer, "cpu")
    with pytest.raises(FtlabError, match="held-out part of a run's own data"):
        run_task(lm, get_task("heldout_loss"), None)
    cfg = tiny_config(pairs, tmp_path / "run", "data.eval_fraction=0")
    with pytest.raises(FtlabError, match="held-out part is empty"):
        run_task(lm, heldout.bind(get_task("heldout_loss"), cfg.data, 0), None)


STUDY = {
    "model": {"name": "tiny", "tiny": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 2,
                                       "intermediate_size": 64, "max_position": 64}},
    "defaults": {"train": {"lr": 1e-3, "global_batch": 8, "micro_batch": 8}},
    "settings": [{"name": "mine", "data": {"path": "pairs.jsonl", "seq_len": 32}, "durations": [1]}],
    "methods": [{"name": "full"}],
}


def test_learning_defaults_to_the_held_out_part_and_an_empty_list_is_refused(pairs, tmp_path):
    exp = parse_experiment(STUDY, [], pairs.parent, "study.yaml")
    assert learning_tasks(exp.settings[0]) == ["heldout_accuracy", "heldout_loss"]
    assert plan_runs(exp, tmp_path)[0].learning == ["heldout_accuracy", "heldout_loss"]
    empty = parse_experiment(yaml.safe_load(yaml.safe_dump(STUDY)), ["settings.0.learning=[]"], pairs.parent, "x")
    with pytest.raises(ConfigError, match=r"settings\[0\].learning: empty.*heldout_accuracy, heldout_loss"):
        plan_runs(empty, tmp_path)
