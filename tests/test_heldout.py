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


def test_learning_defaults_to_the_held_out_part_and_an_empty_list_is_refused(pairs, tmp_path, capsys):
    exp = parse_experiment(STUDY, [], pairs.parent, "study.yaml")
    assert learning_tasks(exp.settings[0]) == ["heldout_accuracy", "heldout_loss"]
    assert plan_runs(exp, tmp_path)[0].learning == ["heldout_accuracy", "heldout_loss"]
    empty = parse_experiment(yaml.safe_load(yaml.safe_dump(STUDY)), ["settings.0.learning=[]"], pairs.parent, "x")
    with pytest.raises(ConfigError, match=r"settings\[0\].learning: empty.*heldout_accuracy, heldout_loss"):
        plan_runs(empty, tmp_path)
    from ftlab.cli import main

    exp = pairs.parent / "empty.yaml"
    exp.write_text(yaml.safe_dump({**STUDY, "settings": [{**STUDY["settings"][0], "learning": []}]}))
    assert main(["run", str(exp), "--out", str(tmp_path / "out")]) == 2  # refused before anything runs
    assert "settings[0].learning: empty" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _qwen2_dir(directory):
    """A tiny random Qwen2 with the tokenizer zoo's Qwen2 tokenizer (byte-level BPE, ChatML), saved as a model
    directory: a model ftlab has nothing built in for."""
    import torch
    from tokenizer_zoo import build
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ftlab.model import save_pretrained

    tokenizer = build("qwen2")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=160,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    save_pretrained(Qwen2ForCausalLM(config), tokenizer, directory / "random")
    return directory / "random"


def _pretrained(directory, source_text):
    """The random Qwen2 pretrained a little on the source text (so finetuning elsewhere can make it forget)."""
    cfg = load_config(None, [f"model.name={_qwen2_dir(directory)}", "data.regime=cpt", f"data.path={source_text}",
                             "data.seq_len=64", "data.eval_fraction=0", "method.name=full", "train.epochs=null",
                             "train.tokens=12000", "train.lr=1e-2", "train.global_batch=8", "train.micro_batch=8",
                             "train.warmup=2"], out=str(directory / "pretrain"))
    return train(cfg) / "final"


def test_a_study_on_ones_own_model_and_data_gets_an_answer(tmp_path, capsys):
    """Alpaca-style JSONL on a local Qwen2 with no built-in task named: learning on the held-out part of the data,
    forgetting on the user's own source text (source_heldout), intervals, verdicts and a recommendation."""
    import random

    from conftest import WORDS

    from ftlab.cli import main
    from ftlab.report.advice import advise
    from ftlab.report.claims import check_claims
    from ftlab.report.measures import Measures
    from ftlab.report.select import best_arms
    from ftlab.results.index import study_of

    rng = random.Random(0)
    with open(tmp_path / "alpaca.jsonl", "w") as f:
        for _ in range(64):
            word = rng.choice(WORDS)
            f.write(json.dumps({"instruction": f"Reverse {word}", "input": "", "output": word[::-1]}) + "\n")
    (tmp_path / "benchmarks" / "source").mkdir(parents=True)
    write_text(tmp_path / "benchmarks" / "source" / "heldout.jsonl", n_docs=24, seed=1)
    base = _pretrained(tmp_path / "qwen2", write_text(tmp_path / "source.jsonl", n_docs=200, seed=2))
    study = {
        "model": {"name": str(base)},
        "defaults": {"train": {"global_batch": 16, "micro_batch": 16, "warmup": 1, "seed": 0},
                     "data": {"eval_fraction": 0.25}},
        "settings": [{"name": "reverse", "data": {"path": "alpaca.jsonl", "seq_len": 128}, "durations": [1, 3],
                      "durations_as": "checkpoints", "lr": {"full": 3e-3, "lora": 3e-2}}],
        "methods": [{"name": "full"}, {"name": "lora", "ranks": [2]}],
        "forgetting": ["source_heldout"],
        "eval": {"data_dir": "benchmarks"},
        "analyses": {"spectrum": False, "kl": False},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["run", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    s = study_of(tmp_path / "out")
    assert set(s.tasks) == {"heldout_accuracy", "heldout_loss", "source_heldout"}
    measures = Measures(s)
    points = [measures.point(a) for a in best_arms(s)]
    assert points and all(p.learning.low <= p.learning.estimate <= p.learning.high for p in points)
    assert all(p.forgetting is not None and p.instrument == "source_loss" for p in points)
    claims = check_claims(s)
    assert any(c.comparisons for c in claims)  # verdicts with paired intervals
    answers = advise(measures).answers
    assert answers and any(a.best is not None for a in answers)
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.index('id="answer"') < html.index('id="claims"')  # the answer first, the claims after it
    assert "learning: heldout_accuracy" in html and "<th>held-out loss</th>" in html  # the loss training logs
    # the same answer printed at the end of `ftlab run`: budgets, LoRA against full FT with intervals, the cost
    assert "What to train in reverse (learning: heldout_accuracy" in printed
    assert "within 50% of full FT's forgetting" in printed
    assert "LoRA r=2 against full FT at 3 epochs: learns" in printed and "x the device-hours" in printed


def test_the_plan_warns_of_an_empty_held_out_part_and_says_how_long_prompts_are(tmp_path):
    from ftlab.errors import DataError
    from ftlab.model import byte_tokenizer
    from ftlab.plan.inputs import data_size

    (tmp_path / "notes.txt").write_text("one long text file is one document\n" * 50)
    cfg = load_config(None, [f"data.path={tmp_path / 'notes.txt'}", "data.regime=cpt", "data.eval_fraction=0.05"],
                      out=str(tmp_path / "run"))
    size = data_size(cfg, byte_tokenizer())
    assert size.held_out == 0 and "WARNING: the held-out part is empty" in size.describe()
    jsonl = write_text(tmp_path / "notes.jsonl", n_docs=100)
    cfg = load_config(None, [f"data.path={jsonl}", "data.regime=cpt", "data.eval_fraction=0.05"],
                      out=str(tmp_path / "run"))
    size = data_size(cfg, byte_tokenizer())
    assert size.held_out > 0 and "WARNING" not in size.describe()
    with open(tmp_path / "alpaca.jsonl", "w") as f:  # 140 bytes of template + "Reverse apple": 153 byte tokens
        for word in ("apple", "river"):
            f.write(json.dumps({"instruction": f"Reverse {word}", "output": word[::-1]}) + "\n")
    cfg = load_config(None, [f"data.path={tmp_path / 'alpaca.jsonl'}", "data.seq_len=64"], out=str(tmp_path / "r"))
    with pytest.raises(DataError, match=r"their prompts, template included, are 153-153 tokens"):
        data_size(cfg, byte_tokenizer())


def test_the_held_out_part_is_found_once_per_data_seed_and_tokenizer(pairs, tmp_path, capsys):
    cfg = tiny_config(pairs, tmp_path / "run")
    _, tokenizer = build_tiny(cfg.model.tiny)
    first = heldout._examples(cfg.data, tokenizer, 0)
    assert "10 held out" in capsys.readouterr().out  # the data read and split, as training does
    assert heldout._examples(cfg.data, tokenizer, 0) is first and capsys.readouterr().out == ""
    assert [i for i, _, _ in heldout._examples(cfg.data, tokenizer, 1)] != [i for i, _, _ in first]  # another split
