"""KL(base || finetuned) on target prompts: zero for the same model, a direct kl_div reference, batching-free."""

import json

import pytest
import torch
import torch.nn.functional as F

from ftlab.analysis.kl import kl_divergence, kl_for_checkpoint, target_prompts
from ftlab.config import TinyModelConfig
from ftlab.errors import FtlabError
from ftlab.model import build_tiny, save_pretrained

TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=128)
TEXTS = ["Question: 2+2?\nAnswer:", "a", "A somewhat longer prompt, so that padding matters in a batch.", "xyz 12"]


def perturbed(scale=1.0, seed=1):
    model, _ = build_tiny(TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.model.layers[0].mlp.down_proj.weight
        w += scale * torch.randn(w.shape, generator=gen)
    return model


def reference_kl(base, tuned, tokenizer, text):
    """KL(p_base || p_tuned) per position of one unpadded text, with torch's own kl_div."""
    ids = torch.tensor([tokenizer.encode(text)])  # (1, T)
    with torch.no_grad():
        logp = F.log_softmax(base(ids).logits.float(), -1)[0]  # (T, V)
        logq = F.log_softmax(tuned(ids).logits.float(), -1)[0]
    return F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)  # (T,)


def test_identical_models_give_zero():
    base, tokenizer = build_tiny(TINY)
    twin, _ = build_tiny(TINY)
    out = kl_divergence(base, twin, tokenizer, TEXTS, batch_size=2)
    assert out["kl"] == pytest.approx(0.0, abs=1e-7) and out["tokens"] == sum(len(t.encode()) for t in TEXTS)
    assert out["per_text_tokens"] == [len(t.encode()) for t in TEXTS]


def test_matches_a_direct_kl_div_and_grows_with_the_perturbation():
    base, tokenizer = build_tiny(TINY)
    tuned = perturbed()
    out = kl_divergence(base, tuned, tokenizer, TEXTS, batch_size=3)
    per_position = [reference_kl(base, tuned, tokenizer, t) for t in TEXTS]
    for got, ref in zip(out["per_text"], per_position):
        assert got == pytest.approx(float(ref.mean()), rel=1e-4, abs=1e-8)
    all_positions = torch.cat(per_position)
    assert out["kl"] == pytest.approx(float(all_positions.mean()), rel=1e-4) and out["kl"] > 1e-3
    assert kl_divergence(base, perturbed(scale=3.0), tokenizer, TEXTS)["kl"] > out["kl"]


def test_batch_size_and_padding_do_not_change_the_result():
    base, tokenizer = build_tiny(TINY)
    tuned = perturbed()
    runs = [kl_divergence(base, tuned, tokenizer, TEXTS, batch_size=b) for b in (1, 2, len(TEXTS))]
    for out in runs[1:]:
        assert out["kl"] == pytest.approx(runs[0]["kl"], rel=1e-5)  # fp32 noise of padded attention: ~1e-6
        assert out["per_text"] == pytest.approx(runs[0]["per_text"], rel=1e-4, abs=1e-8)
    with pytest.raises(FtlabError, match="batch_size"):
        kl_divergence(base, tuned, tokenizer, TEXTS, batch_size=0)


def lora(model, init_b_zero):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=init_b_zero)
    return get_peft_model(model, cfg)


def test_adapter_with_its_base_disabled_and_from_checkpoint_directories(tmp_path):
    base, tokenizer = build_tiny(TINY)
    assert kl_divergence(None, lora(build_tiny(TINY)[0], True), tokenizer, TEXTS)["kl"] == 0.0  # B = 0: the base
    tuned = lora(build_tiny(TINY)[0], False)  # random B: a real perturbation
    in_memory = kl_divergence(None, tuned, tokenizer, TEXTS, batch_size=2)
    two_models = kl_divergence(base, tuned, tokenizer, TEXTS, batch_size=2)
    assert in_memory["kl"] > 1e-6 and in_memory["kl"] == pytest.approx(two_models["kl"], rel=1e-5)

    save_pretrained(base, tokenizer, tmp_path / "base")
    tuned.save_pretrained(tmp_path / "adapter")
    from_disk = kl_for_checkpoint(tmp_path / "base", tmp_path / "adapter", TEXTS, device="cpu")
    assert from_disk["kl"] == pytest.approx(in_memory["kl"], rel=1e-5)

    full = perturbed()
    save_pretrained(full, tokenizer, tmp_path / "full")
    (tmp_path / "full" / "ftlab.json").write_text(json.dumps({"step": 1, "base": str(tmp_path / "base")}))
    expected = kl_divergence(base, full, tokenizer, TEXTS)["kl"]
    assert kl_for_checkpoint(None, tmp_path / "full", TEXTS, device="cpu")["kl"] == pytest.approx(expected, rel=1e-5)


def test_target_prompts():
    math = target_prompts("math", 5)
    assert len(math) == 5 and all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in math)
    code = target_prompts("code", 3)
    assert len(code) == 3 and all(p.lstrip().startswith(("def ", "@", "async def ")) for p in code)
    with pytest.raises(FtlabError, match="kind must be"):
        target_prompts("poetry", 1)
    with pytest.raises(FtlabError, match="n must be in 1.."):
        target_prompts("math", 0)
