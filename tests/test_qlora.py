"""QLoRA (method.name qlora): LoRA on a bitsandbytes 4-bit NF4 base with double quantization, fp32 compute on the CPU.

Its gradients are LoRA's on the dequantized base, also after a held-out evaluation (which on an AVX512-BF16 CPU would
otherwise repack the 4-bit weights into a layout with no backward); a run trains and saves a plain PEFT adapter
that loads with PEFT on a 4-bit base and is evaluated there; its spectrum is against the dequantized base; the
bytes of its base are bitsandbytes'. Kill -9 and resume: tests/test_train.py. Skipped, saying why, where
bitsandbytes is not installed (pip install 'ftlab[qlora]'; the test extra has it).
"""

import contextlib
import importlib.util
import json
import sys

import pytest
import torch

from conftest import tiny_config, tiny_overrides
from ftlab.config import ModelConfig, TinyModelConfig
from ftlab.errors import ConfigError, FtlabError

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (pip install 'ftlab[qlora]')")
SHAPE = TinyModelConfig(hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128, max_position=64)
CPU = torch.device("cpu")


def test_qlora_config_and_names(pairs, tmp_path):
    from ftlab.config import method_label
    from ftlab.methods import describe

    cfg = tiny_config(pairs, tmp_path / "run", "method.name=qlora", "method.rank=4")
    assert cfg.method.adapter and method_label(cfg.method) == "qlora-r4"
    assert describe(cfg).startswith("QLoRA r=4 alpha=8") and "4-bit NF4 base" in describe(cfg)
    with pytest.raises(ConfigError, match="method.init: pissa rewrites the base weights"):
        tiny_config(pairs, tmp_path / "run", "method.name=qlora", "method.init=pissa")
    with pytest.raises(ConfigError, match="model.dtype: QLoRA computes in bf16 on GPUs"):
        tiny_config(pairs, tmp_path / "run", "method.name=qlora", "model.dtype=bfloat16")
    with pytest.raises(ConfigError, match="method.rank: 1000 is larger"):
        tiny_config(pairs, tmp_path / "run", "method.name=qlora", "method.rank=1000")


def test_without_bitsandbytes_a_qlora_run_is_refused_before_its_directory(pairs, tmp_path, monkeypatch, capsys):
    from ftlab.cli import main

    config = tmp_path / "cfg.yaml"
    config.write_text("{}\n")
    find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)  # as if not installed
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "bitsandbytes" else find_spec(name, *a, **k))
    out = tmp_path / "run"
    assert main(["train", str(config), *tiny_overrides(pairs, "method.name=qlora"), "--out", str(out)]) == 2
    assert "method.name: qlora needs bitsandbytes" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from ftlab.model import build_tiny, save_pretrained

    directory = tmp_path_factory.mktemp("qlora") / "base"
    save_pretrained(*build_tiny(SHAPE), directory)
    return directory


@needs_bnb
def test_the_4bit_base_computes_with_the_dequantized_weights(base_dir):
    from ftlab.architectures import linear_layers
    from ftlab.model import dequantized_nf4, load_model, require_bitsandbytes

    bnbf = require_bitsandbytes().functional  # imported as ftlab imports it: without reaching the hub

    four_bit, _ = load_model(ModelConfig(name=str(base_dir)), CPU, torch.float32, four_bit=True)
    full, _ = load_model(ModelConfig(name=str(base_dir)), CPU, torch.float32)
    quantized, original = linear_layers(four_bit), linear_layers(full)
    assert quantized.keys() == original.keys() and len(quantized) == 14  # 7 per block
    for name, layer in quantized.items():
        assert type(layer).__name__ == "Linear4bit" and layer.weight.quant_state.nested  # double quantization
        held = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        assert torch.equal(held, dequantized_nf4(original[name].weight)), name
        assert not torch.equal(held, original[name].weight)  # a 4-bit base is not the base
    assert four_bit.lm_head.weight.dtype == torch.float32  # the head (tied embeddings) is not quantized


def twins(base_dir, rank=4):
    """(QLoRA model, LoRA model on an fp32 base holding the NF4 rounding of the same weights), their adapters equal
    and B non-zero, dropout off."""
    from ftlab.architectures import linear_layers
    from ftlab.config import RunConfig
    from ftlab.methods import apply_method
    from ftlab.model import dequantized_nf4, load_model

    four_bit, _ = load_model(ModelConfig(name=str(base_dir)), CPU, torch.float32, four_bit=True)
    full, _ = load_model(ModelConfig(name=str(base_dir)), CPU, torch.float32)
    with torch.no_grad():
        for layer in linear_layers(full).values():
            layer.weight.copy_(dequantized_nf4(layer.weight))
    models = []
    for name, model in (("qlora", four_bit), ("lora", full)):
        cfg = RunConfig()
        cfg.method.name, cfg.method.rank, cfg.method.dropout = name, rank, 0.0
        models.append(apply_method(model, cfg))
    generator = torch.Generator().manual_seed(0)
    lora_params = dict(models[1].named_parameters())
    with torch.no_grad():
        for name, p in models[0].named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
                lora_params[name].copy_(p)
    return models


@needs_bnb
def test_qlora_gradients_are_lora_on_the_dequantized_base_also_after_an_evaluation(base_dir):
    qlora, lora = twins(base_dir)
    ids = torch.randint(3, 250, (4, 24), generator=torch.Generator().manual_seed(1))
    qlora.eval()
    with torch.no_grad():  # as train.eval_loss measures the base before step 1: must not change the 4-bit layers
        qlora(input_ids=ids)
    packed = [n for n, m in qlora.named_modules() if getattr(getattr(getattr(m, "weight", None), "quant_state", None),
                                                              "packing_format_for_cpu", False)]
    assert not packed, packed  # bitsandbytes' AVX512-BF16 inference layout has no backward through the weights
    losses = []
    for model in (qlora, lora):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    grads = dict(lora.named_parameters())
    checked = 0
    for name, p in qlora.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked == 2 * 14  # A and B of every adapted layer, gradients flowing through every 4-bit layer


@needs_bnb
def test_qlora_base_bytes_are_what_bitsandbytes_holds(base_dir):
    from ftlab.architectures import linear_layers, structure
    from ftlab.methods import qlora_base_bytes
    from ftlab.model import load_model

    four_bit, _ = load_model(ModelConfig(name=str(base_dir)), CPU, torch.float32, four_bit=True)
    held = {t.data_ptr(): t.numel() * t.element_size() for t in four_bit.state_dict().values()}  # tied: once
    predicted = qlora_base_bytes(structure(ModelConfig(name=str(base_dir))), torch.float32)
    full = sum(p.numel() * 4 for p in structure(ModelConfig(name=str(base_dir))).parameters())
    tables = 1536 * len(linear_layers(four_bit))  # per layer: NF4's 16 codes, the 256 of the absmax quantization,
    # the quantization state's description: constants, whatever the layer's size
    assert 0 <= sum(held.values()) - predicted <= tables
    assert predicted < full  # and the block linear weights took an eighth of their fp32 bytes and a bit


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    from conftest import write_pairs
    from ftlab.train import train

    root = tmp_path_factory.mktemp("qlora-run")
    cfg = tiny_config(write_pairs(root / "pairs.jsonl"), root / "run", "method.name=qlora", "method.rank=4",
                      "train.epochs=4", "train.lr=3e-2", "method.dropout=0", "train.checkpoints=[2]",
                      "model.tiny.hidden_size=64")  # in_features >= 64: plain bitsandbytes (below) cannot
    # repack a smaller layer for its AVX512-BF16 inference kernel
    return cfg, train(cfg)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@needs_bnb
def test_a_qlora_run_trains_and_its_adapter_loads_in_peft_on_a_4bit_base(qlora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ftlab.model import load_trained
    from ftlab.train import build_data, eval_loss

    cfg, run = qlora_run
    evals = [r["eval_loss"] for r in metrics(run) if "eval_loss" in r]
    assert evals[-1] < evals[0] - 0.1, evals
    info = json.loads((run / "final" / "ftlab.json").read_text())
    assert info["method"] == "qlora" and info["base_4bit"] == {"quant_type": "nf4", "double_quant": True,
                                                               "blocksize": 64, "dtype": "float32"}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run / "final").iterdir()}
    # plain transformers + PEFT, as a user loads it
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(run / "base", quantization_config=quantization, device_map="cpu")
    plain = PeftModel.from_pretrained(base, run / "final")
    # ftlab's loader: the 4-bit base as the run had it
    model, tokenizer = load_trained(run / "final")
    assert type(model.get_base_model().model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    _, held_out = build_data(cfg, tokenizer)
    assert eval_loss(model, held_out, contextlib.nullcontext()) == pytest.approx(evals[-1], abs=1e-5)
    # plain bitsandbytes in eval mode may compute with bf16-rounded scales (AVX512-BF16 CPUs): within 1%
    assert eval_loss(plain, held_out, contextlib.nullcontext()) == pytest.approx(evals[-1], rel=1e-2)


@needs_bnb
def test_ftlab_eval_of_a_qlora_run_loads_its_base_in_4_bits(qlora_run, tmp_path):
    from ftlab.evaluate.lm import LM
    from ftlab.evaluate.targets import Evaluator, evaluate_target
    from ftlab.model import load_trained

    _, run = qlora_run
    written = evaluate_target(str(run), ["math_loss"], limit=4)
    assert [p.name for p in written] == ["base_eval", "epochs-2", "final"]
    scores = {s["metric"]: s["value"] for s in json.loads((run / "final" / "eval.json").read_text())["scores"]}
    model, tokenizer = load_trained(run / "final")
    from ftlab.evaluate.tasks import get_task, load_docs
    from dataclasses import replace

    docs = load_docs(replace(get_task("math_loss"), limit=4))
    nll, count, _ = LM(model, tokenizer).token_scores([d.text for d in docs])
    assert scores["loss"] == pytest.approx(nll / count, rel=1e-6)
    evaluator = Evaluator(str(run / "base"), "cpu")  # a full-precision base refuses a QLoRA adapter
    with pytest.raises(FtlabError, match="a QLoRA adapter \\(its base in 4 bits\\)"):
        evaluator.load(run / "final")


@needs_bnb
def test_the_spectrum_of_a_qlora_adapter_is_against_the_dequantized_base(qlora_run, tmp_path):
    import shutil

    from ftlab.analysis.spectrum import spectrum_target
    from ftlab.analysis.spectrum_math import frobenius
    from ftlab.analysis.spectrum_sources import TensorFiles
    from ftlab.model import dequantized_nf4

    _, run = qlora_run
    entry = spectrum_target(run / "final", out=tmp_path / "q.json", top_k=2)["checkpoints"][0]
    assert entry["base_weights"] == "nf4-dequantized"
    # the same adapter read as a plain LoRA one (no 4-bit base recorded): the same ΔW, another W_base
    plain = tmp_path / "plain"
    shutil.copytree(run / "final", plain)
    info = json.loads((plain / "ftlab.json").read_text())
    del info["base_4bit"], info["files"]
    info["base"] = str(run / "base")
    (plain / "ftlab.json").write_text(json.dumps(info))
    other = spectrum_target(plain, out=tmp_path / "p.json", top_k=2)["checkpoints"][0]
    assert other["base_weights"] == "fp"
    weights = TensorFiles(run / "base")
    for q, p in zip(entry["matrices"], other["matrices"]):
        assert q["delta"] == p["delta"]
        w = weights.read(q["name"])
        assert q["base"]["fro"] == pytest.approx(frobenius(dequantized_nf4(w)), rel=1e-6)
        assert p["base"]["fro"] == pytest.approx(frobenius(w), rel=1e-6) != q["base"]["fro"]


@needs_bnb
def test_the_plan_predicts_a_qlora_runs_memory(base_dir):
    """The plan's QLoRA weights are the bytes the 4-bit model holds (plus its adapters), and its training peak is
    within 10% of a real step's on the CPU (bench/plan_vs_measured.py's LiveBytes: every storage alive)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import plan_vs_measured as bench

    from ftlab.architectures import structure
    from ftlab.methods import apply_method
    from ftlab.model import load_model
    from ftlab.plan.fit import setup
    from ftlab.plan.memory import architecture, predict
    from ftlab.train import prepare, train_step

    cfg = bench.run_config("qlora", False, 2, 64, CPU)
    meta = structure(ModelConfig(name=str(base_dir)))
    arch = architecture(meta)
    plan = predict(arch, setup(cfg, meta, arch, "cpu"))
    model, _ = load_model(ModelConfig(name=str(base_dir)), CPU, torch.float32, four_bit=True)
    model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, CPU)
    held = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in model.state_dict().values()}
    tables = 1536 * 14  # the quantization's per-layer constants (test_qlora_base_bytes_are_what_bitsandbytes_holds)
    assert 0 <= sum(held.values()) - plan.weights <= tables
    model.train()
    micro = [bench.batch(arch.vocab, 2, 64, CPU, seed) for seed in (1, 2)]
    train_step(model, micro, optimizer, params, 1.0, autocast, chunked)  # the optimizer's state exists from here
    resident = bench.resident_bytes(model, optimizer)
    with bench.LiveBytes() as live:
        train_step(model, micro, optimizer, params, 1.0, autocast, chunked)
    print(f"plan {plan.training / 2**20:.2f} MiB, measured {(resident + live.peak) / 2**20:.2f} MiB")
    assert abs(plan.training / (resident + live.peak) - 1) < 0.10, (plan, resident, live.peak)


STUDY = """
name: qlora-vs-lora
model:
  name: tiny
  tiny: {hidden_size: 64, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 128, max_position: 320}
defaults:
  train: {optimizer: adamw, global_batch: 8, micro_batch: 8, seed: 0, warmup: 1}
  data: {eval_max_examples: 8}
settings:
  - name: math-ift
    data: {regime: ift, path: "builtin:math-ift", seq_len: 320}
    durations: [0.005]
    learning: [math_solution]
    lr: {lora: 1.0e-2}
methods:
  - {name: lora, ranks: [2]}
  - {name: qlora, ranks: [2]}
forgetting: [source_loss]
eval: {limit: 6}
analyses: {spectrum: false, kl: false, diversity: [], merge: true}
"""


@needs_bnb
def test_a_study_compares_qlora_with_lora_and_checks_each_merge(tmp_path):
    """methods: qlora beside lora in an experiment: QLoRA trains at LoRA's LR, is evaluated on its 4-bit base, the
    report's cost section compares the two (learning and forgetting with paired intervals, time and memory), and
    analyses.merge writes each adapter's merge check."""
    import csv

    from ftlab.experiment.study import run_experiment
    from ftlab.results.store import Store
    from ftlab.rundir import CheckpointFiles, StudyLayout

    exp = tmp_path / "qlora.yaml"
    exp.write_text(STUDY)
    root = run_experiment(exp, tmp_path / "study")
    with Store(StudyLayout(root).store) as store:
        runs = {name: r for name, r in store.runs().items() if not name.startswith("(base)")}
    assert {n: r.status for n, r in runs.items()} == {"math-ift/lora-r2/epochs-0.005": "done",
                                                      "math-ift/qlora-r2/epochs-0.005": "done"}
    assert runs["math-ift/qlora-r2/epochs-0.005"].lr == runs["math-ift/lora-r2/epochs-0.005"].lr == 1e-2
    for name in runs:
        check = json.loads(CheckpointFiles(root / "runs" / name / "final").merge_check.read_text())
        assert check["kind"] == name.split("/")[1].split("-")[0]
        assert {t["task"] for c in check["comparisons"] for t in c["tasks"]} == {"math_solution", "source_loss"}
    with open(root / "report" / "qlora_vs_lora.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["qlora"], row["lora"], row["forgetting_instrument"]) == ("QLoRA r=2", "LoRA r=2", "source_loss")
    for name in ("learning", "forgetting"):
        assert float(row[f"{name}_low"]) <= float(row[f"{name}_estimate"]) <= float(row[f"{name}_high"])
    assert float(row["qlora_wall_s"]) > 0 and float(row["lora_peak_memory_gb"]) > 0
    page = (root / "report.html").read_text()
    assert 'id="qlora"' in page and "QLoRA r=2 vs LoRA r=2" in page


def test_eval_engine_vllm_without_vllm_is_refused_before_the_study_starts(tmp_path, capsys):
    from ftlab.cli import main

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the refusal is for where it is not")
    exp = tmp_path / "qlora.yaml"
    exp.write_text(STUDY)
    assert main(["run", str(exp), "--out", str(tmp_path / "study"), "eval.engine=vllm"]) == 2
    assert "vLLM is not installed" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()
