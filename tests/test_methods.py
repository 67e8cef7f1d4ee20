"""What ftlab adds to PEFT for the two methods: the LoRA config it builds from method.*, which parameters train
(targets, counts, frozen embeddings, rank limits), LoRA+'s optimizer groups in a real step, and the checkpoints it
saves and loads. ΔW itself is tested against PEFT's merge in tests/test_spectrum.py and tests/test_variants.py."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from ftlab.checkpoint import save_checkpoint
from ftlab.config import RunConfig, TinyModelConfig
from ftlab.errors import ConfigError
from ftlab.methods import apply_method, count_params, lora_layers, param_groups, target_modules
from ftlab.model import build_tiny, load_trained, resolve_device, save_pretrained
from ftlab.train import build_data, prepare, train_step

TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=64)


def tiny_model():
    model, tok = build_tiny(TINY)
    return model.eval(), tok


def lora_cfg(rank=4, **method) -> RunConfig:
    cfg = RunConfig()
    cfg.method.name, cfg.method.rank, cfg.method.dropout = "lora", rank, 0.0
    for k, v in method.items():
        setattr(cfg.method, k, v)
    return cfg


def randomize_lora(model, seed=1):
    """Give every LoRA B a nonzero value, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


IDS = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


ATTN, MLP = {"q_proj", "k_proj", "v_proj", "o_proj"}, {"gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("method,peft_expects", [
    ({}, {"r": 4, "lora_alpha": 8, "target_modules": ATTN | MLP, "use_rslora": False, "use_dora": False,
          "init_lora_weights": True}),
    ({"alpha": 3.0, "rslora": True, "targets": "attn"},
     {"lora_alpha": 3.0, "target_modules": ATTN, "use_rslora": True}),
    ({"dora": True, "targets": "mlp"}, {"target_modules": MLP, "use_dora": True}),
    ({"init": "gaussian"}, {"init_lora_weights": "gaussian"}),
    ({"init": "pissa", "rank": 2}, {"r": 2, "lora_alpha": 4, "init_lora_weights": "pissa"}),
], ids=["default", "rslora-attn", "dora-mlp", "gaussian", "pissa"])
def test_lora_is_built_from_the_method_config_and_starts_at_the_base_model(method, peft_expects):
    """method.* becomes PEFT's LoraConfig (alpha defaults to 2r, the paper's; targets from the architecture table),
    only the adapters train, and every initialisation starts the run at the base model's outputs."""
    model, _ = tiny_model()
    before = logits(model)
    cfg = lora_cfg(**{"rank": 4, **method})
    peft_model = apply_method(model, cfg).eval()
    lora = peft_model.peft_config["default"]
    found = {key: getattr(lora, key) for key in peft_expects}
    if "target_modules" in found:
        found["target_modules"] = set(found["target_modules"])
    assert found == peft_expects
    assert lora.lora_dropout == 0.0 and not lora.fan_in_fan_out  # Llama's layers are nn.Linear
    adapted = dict(lora_layers(peft_model))
    assert len(adapted) == TINY.layers * len(lora.target_modules)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == set(lora.target_modules)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(adapted) * (3 if cfg.method.dora else 2)  # A, B (DoRA: and the magnitude)
    assert all(".lora_" in n for n in trainable)
    # B = 0 (PiSSA: the residual plus the principal part is W): a run's step 0 is the base model
    torch.testing.assert_close(logits(peft_model), before, atol=1e-5 if cfg.method.init == "pissa" else 1e-6,
                               rtol=0)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_saved_checkpoint_loads_in_plain_transformers_or_peft_and_in_ftlab_with_the_live_logits(tmp_path, method):
    """ftlab's save_checkpoint writes what other tools load (an adapter directory naming its base, or a full model
    directory), the tokenizer and ftlab.json; ftlab's load_trained reads it back to the same model."""
    model, tok = tiny_model()
    save_pretrained(model, tok, tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    if method == "lora":
        model = apply_method(model, lora_cfg(rslora=True))
        randomize_lora(model)
    else:
        full = RunConfig()
        full.method.name = "full"
        model = apply_method(model, full)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    expected = logits(model.eval())
    info = {"step": 7, "tokens": 448, "method": method, "base": str(tmp_path / "base")}
    save_checkpoint(model, tok, tmp_path / "final", info)

    final = tmp_path / "final"
    saved = json.loads((final / "ftlab.json").read_text())
    files = saved.pop("files")  # every other file's size and sha256, checked whenever the checkpoint is loaded
    assert saved == info
    assert sorted(files) == sorted(p.name for p in final.iterdir() if p.name != "ftlab.json")
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert files[weights]["size"] == (final / weights).stat().st_size
    assert not (tmp_path / "final.tmp").exists() and not list(final.glob("*.bin"))  # atomic, safetensors only
    if method == "lora":
        assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
            tmp_path / "base")
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), final)
    else:
        plain = AutoModelForCausalLM.from_pretrained(final)
    assert torch.equal(logits(plain.eval()), expected)
    again, tokenizer = load_trained(final)
    assert torch.equal(logits(again), expected)
    assert tokenizer.get_vocab() == tok.get_vocab()


def test_targets_and_counts():
    model, _ = tiny_model()
    assert target_modules(model, "attn") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert target_modules(model, "mlp") == ["gate_proj", "up_proj", "down_proj"]
    with pytest.raises(ConfigError, match="method.targets"):
        target_modules(model, ["q_proj", "qkv"])
    total = count_params(model).trainable
    peft_model = apply_method(model, lora_cfg(rank=2, targets="attn"))
    counts = count_params(peft_model)
    # q: 2*(32+32), k,v: 2*(32+16), o: 2*(32+32) per layer
    assert counts.trainable == TINY.layers * (128 + 96 + 96 + 128)
    assert counts.frozen == total


def test_full_freeze_embeddings():
    model, _ = tiny_model()
    cfg = RunConfig()
    cfg.method.name, cfg.method.freeze_embeddings = "full", True
    model = apply_method(model, cfg)
    assert not model.get_input_embeddings().weight.requires_grad
    assert model.model.layers[0].mlp.up_proj.weight.requires_grad
    assert count_params(model).frozen == model.get_input_embeddings().weight.numel()  # tied with lm_head


def test_rank_larger_than_layer_is_rejected():
    model, _ = tiny_model()
    with pytest.raises(ConfigError, match="method.rank: 20 is larger than .*k_proj"):
        apply_method(model, lora_cfg(rank=20))  # k_proj is 32 -> 16 with 2 KV heads


def test_loraplus_gives_b_its_own_learning_rate():
    model, _ = tiny_model()
    cfg = lora_cfg(loraplus_ratio=16.0)
    cfg.train.lr = 1e-4
    peft_model = apply_method(model, cfg)
    groups = param_groups(peft_model, cfg)
    assert [g["lr"] for g in groups] == [1e-4, 1.6e-3]
    names = {id(p): n for n, p in peft_model.named_parameters()}
    a, b = ([names[id(p)] for p in g["params"]] for g in groups)
    assert len(a) == len(b) == TINY.layers * 7
    assert all(".lora_A." in n for n in a) and all(".lora_B." in n for n in b)
    assert param_groups(peft_model, lora_cfg())[0]["params"] == [p for p in peft_model.parameters() if p.requires_grad]


@pytest.mark.parametrize("ratio", [None, 16.0])
def test_loraplus_moves_b_at_ratio_times_the_lr_in_a_real_step(pairs, tmp_path, ratio):
    """One step of ftlab's loop (prepare + train_step, AdamW) from B = 0: A gets no gradient and stays; Adam's first
    step moves each element of B by lr·g/(|g| + eps), so the largest move is the lr of B's group: lr, or ratio·lr."""
    cfg = tiny_config(pairs, tmp_path / "run", "method.name=lora", "method.rank=4", "method.dropout=0",
                      "train.lr=1e-3", f"method.loraplus_ratio={'null' if ratio is None else ratio}")
    model, tokenizer = build_tiny(cfg.model.tiny)
    model = apply_method(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model, params, optimizer, autocast, chunked = prepare(model, cfg, resolve_device("cpu"))
    steps, _ = build_data(cfg, tokenizer)
    train_step(model, steps.next_step(), optimizer, params, cfg.train.grad_clip, autocast, chunked)
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if p.requires_grad}
    assert all(moved[n] == 0 for n in moved if ".lora_A." in n)
    b_moves = [v for n, v in moved.items() if ".lora_B." in n]
    assert len(b_moves) == TINY.layers * 7
    assert max(b_moves) == pytest.approx(1e-3 * (ratio or 1), rel=1e-3)


def test_other_architectures_map_all_to_every_linear_layer():
    """An OPT-style model (q,k,v,out_proj, fc1, fc2): targets=all goes through PEFT's all-linear."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                     num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16))
    assert target_modules(model, "all") == "all-linear"
    peft_model = apply_method(model, lora_cfg(rank=2))
    adapted = dict(lora_layers(peft_model))
    per_layer = ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"]
    assert sorted(adapted) == sorted(f"model.decoder.layers.{i}.{m}" for i in range(2) for m in per_layer)
    assert all(layer.r["default"] == 2 for layer in adapted.values())  # never lm_head
