"""Resume of CPT runs, gradient accumulation, LoRA variants end to end (the ΔW ftlab reads from what a run saved is
the trained model's, by PEFT's merge), and model loading rules."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import ftlab.train as train_module
from conftest import tiny_config
from delta_oracle import assert_spectrum_delta_is, base_weights, delta, record_saves
from ftlab.config import ModelConfig, TinyModelConfig
from ftlab.errors import ConfigError
from ftlab.model import build_tiny, load_model, load_trained, save_pretrained
from ftlab.train import build_data, eval_loss, train


def weights(run):
    final = run / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(final / name)


def interrupt_after(monkeypatch, n_steps):
    """Make train_step raise KeyboardInterrupt on call n_steps + 1, as a kill between steps would."""
    real, calls = train_module.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_steps:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)


def test_cpt_resume_gives_identical_weights(text, tmp_path, monkeypatch):
    args = ("data.regime=cpt", "train.epochs=2", "method.name=lora", "method.rank=2", "method.dropout=0.1",
            "train.global_batch=8", "train.micro_batch=4", "output.resume_every=2")
    reference = train(tiny_config(text, tmp_path / "ref", *args))
    cfg = tiny_config(text, tmp_path / "cut", *args)
    with monkeypatch.context() as m:
        interrupt_after(m, 5)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    assert json.loads((tmp_path / "cut" / "state" / "LATEST").read_text())["dir"] == "step-00000004"
    train(cfg)
    a, b = weights(reference), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_one_big_batch(pairs, tmp_path):
    """The loss is normalised over the whole global batch, so micro-batching changes nothing but rounding."""
    common = ("method.name=full", "train.epochs=1", "train.global_batch=16")
    one = weights(train(tiny_config(pairs, tmp_path / "one", *common, "train.micro_batch=16")))
    four = weights(train(tiny_config(pairs, tmp_path / "four", *common, "train.micro_batch=4")))
    for k in one:
        torch.testing.assert_close(one[k], four[k], atol=1e-5, rtol=1e-4)


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("variant", [[], ["method.init=pissa"], ["method.dora=true"],
                                     ["method.rslora=true", "method.loraplus_ratio=4"]],
                         ids=["lora", "pissa", "dora", "rslora-loraplus"])
def test_lora_variants_train_and_their_adapters_load_on_the_original_base(pairs, tmp_path, monkeypatch, variant):
    live = record_saves(monkeypatch)
    cfg = tiny_config(pairs, tmp_path / "run", "method.name=lora", "method.rank=4", "method.dropout=0",
                      "train.epochs=1", *variant)
    run = train(cfg)
    ids = torch.randint(3, 259, (2, 10), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(run / "base").eval()
    base_logits = logits_of(base, ids)
    model = PeftModel.from_pretrained(base, run / "final").eval()
    tuned = logits_of(model, ids)
    assert not torch.allclose(tuned, base_logits, atol=1e-4)  # training changed something
    # the same adapter through ftlab's loader agrees with plain PEFT, and reproduces the trained model's
    # held-out loss logged at the end of training (for PiSSA: the conversion to plain LoRA is exact)
    again, tokenizer = load_trained(run / "final")
    torch.testing.assert_close(logits_of(again, ids), tuned)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]["eval_loss"]
    _, held_out = build_data(cfg, tokenizer)
    assert eval_loss(again, held_out, torch.autocast("cpu", enabled=False)) == pytest.approx(logged, abs=1e-4)
    # ftlab's ΔW of the saved adapter is the trained model's weight change: PEFT's merge of the live model (for
    # PiSSA: residual base + adapter) minus the original base, recorded as the run saved it
    reference = delta(base_weights(run / "base"), live[run / "final"])
    ckpt = assert_spectrum_delta_is(run / "base", run / "final", reference, atol=2e-6)
    assert ckpt.kind == ("dora" if "method.dora=true" in variant else "lora")
    if "method.init=pissa" in variant:  # converted: a rank-2r LoRA adapter of the original base
        assert json.loads((run / "final" / "adapter_config.json").read_text())["r"] == 8
        assert {mod.rank for mod in ckpt.lora.values()} == {8}


def test_full_finetuning_delta_is_the_trained_weights_minus_the_base(pairs, tmp_path, monkeypatch):
    live = record_saves(monkeypatch)
    run = train(tiny_config(pairs, tmp_path / "run", "method.name=full", "train.epochs=1",
                            "train.checkpoints=[0.5]"))
    for saved in (run / "final", run / "checkpoints" / "epochs-0.5"):
        reference = delta(base_weights(run / "base"), live[saved])
        assert all(d.abs().max() > 0 for d in reference.values())  # every layer trained
        ckpt = assert_spectrum_delta_is(run / "base", saved, reference, atol=0)
        assert ckpt.kind == "full" and ckpt.names == list(reference)


def test_training_from_a_local_model_directory(pairs, tmp_path):
    model, tok = build_tiny(tiny_config(pairs, tmp_path / "x").model.tiny)
    save_pretrained(model, tok, tmp_path / "my-model")
    run = train(tiny_config(pairs, tmp_path / "run", f"model.name={tmp_path / 'my-model'}", "method.name=lora",
                            "method.rank=2", "train.epochs=1"))
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tmp_path / "my-model")
    assert not (run / "base").exists()


def test_only_safetensors_are_loaded(tmp_path):
    model, tok = build_tiny(TinyModelConfig(hidden_size=16, layers=1, heads=2, kv_heads=2, intermediate_size=32))
    save_pretrained(model, tok, tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")  # a pickle: must not be loaded
    with pytest.raises(ConfigError, match="no \\*.safetensors weights"):
        load_model(ModelConfig(name=str(tmp_path / "m")), torch.device("cpu"), torch.float32)
