"""LoRA and full FT invariants on a tiny Llama: B=0 is the base, merged == unmerged, rank(ΔW) <= r, PEFT parity."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ftlab.config import RunConfig, TinyModelConfig
from ftlab.errors import ConfigError
from ftlab.methods import apply_method, base_reader, count_params, delta_weights, param_groups, target_modules
from ftlab.model import build_tiny, save_pretrained

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


def test_lora_with_b_zero_reproduces_base_outputs():
    model, _ = tiny_model()
    before = logits(model)
    peft_model = apply_method(model, lora_cfg()).eval()
    assert torch.equal(logits(peft_model), before)


def test_merged_equals_unmerged():
    model, _ = tiny_model()
    peft_model = apply_method(model, lora_cfg()).eval()
    randomize_lora(peft_model)
    unmerged = logits(peft_model)
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(logits(merged), unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_rank_of_lora_delta_is_at_most_r(rank):
    model, _ = tiny_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = apply_method(model, lora_cfg(rank=rank))
    randomize_lora(peft_model)
    deltas = dict(delta_weights(peft_model, base.__getitem__))
    assert len(deltas) == TINY.layers * 7  # all seven modules of every block
    for name, delta in deltas.items():
        assert delta.dtype == torch.float32
        assert int(torch.linalg.matrix_rank(delta)) == rank, name  # exactly r: random A and B


def test_delta_weights_full_and_lora_share_names_and_values():
    """Same code path: full FT's ΔW equals W_ft - W_base; LoRA's equals PEFT's merged weight minus the base."""
    model, _ = tiny_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    full = dict(delta_weights(model, base.__getitem__))
    torch.testing.assert_close(full["model.layers.0.mlp.up_proj.weight"], torch.ones(64, 32))
    assert all(d.abs().max() == 0 for n, d in full.items() if n != "model.layers.0.mlp.up_proj.weight")

    model, _ = tiny_model()
    peft_model = apply_method(model, lora_cfg())
    randomize_lora(peft_model)
    lora = dict(delta_weights(peft_model, base.__getitem__))
    assert lora.keys() == full.keys()
    merged = peft_model.merge_and_unload().state_dict()
    for name, delta in lora.items():
        torch.testing.assert_close(delta, merged[name] - base[name], atol=1e-6, rtol=0)


def test_dora_delta_matches_merge():
    model, _ = tiny_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = apply_method(model, lora_cfg(dora=True))
    randomize_lora(peft_model)
    deltas = dict(delta_weights(peft_model, base.__getitem__))
    merged = peft_model.merge_and_unload().state_dict()
    for name, delta in deltas.items():
        torch.testing.assert_close(delta, merged[name] - base[name], atol=1e-5, rtol=0)


def test_ftlab_adapter_loads_in_peft_with_identical_logits(tmp_path):
    model, tok = tiny_model()
    save_pretrained(model, tok, tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    peft_model = apply_method(model, lora_cfg(rslora=True)).eval()
    randomize_lora(peft_model)
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")

    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    assert torch.equal(logits(loaded), expected)


def test_base_reader_streams_safetensors(tmp_path):
    model, tok = tiny_model()
    save_pretrained(model, tok, tmp_path / "base")
    read = base_reader(str(tmp_path / "base"))
    assert torch.equal(read("model.layers.1.self_attn.o_proj.weight"), model.model.layers[1].self_attn.o_proj.weight)
    with pytest.raises(KeyError, match="not in the base model"):
        read("model.layers.9.self_attn.o_proj.weight")


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
    a_shapes = {tuple(p.shape) for p in groups[0]["params"]}
    b_shapes = {tuple(p.shape) for p in groups[1]["params"]}
    assert (4, 32) in a_shapes and (32, 4) in b_shapes and (16, 4) in b_shapes
    assert len(groups[0]["params"]) == len(groups[1]["params"]) == TINY.layers * 7


def test_other_architectures_map_all_to_every_linear_layer():
    """An OPT-style model (q,k,v,out_proj, fc1, fc2): targets=all goes through PEFT's all-linear."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                     num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    assert target_modules(model, "all") == "all-linear"
    peft_model = apply_method(model, lora_cfg(rank=2))
    randomize_lora(peft_model)
    deltas = dict(delta_weights(peft_model, base.__getitem__))
    assert len(deltas) == 2 * 6  # q, k, v, out_proj, fc1, fc2 per layer; never lm_head
    assert all(int(torch.linalg.matrix_rank(d)) == 2 for d in deltas.values())
