"""The fused LoRA layer (ftlab.lora_fused) computes what PEFT's LoRA forward computes, and trains to its weights."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from conftest import tiny_config
from ftlab import lora_fused


class Block(nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.proj = nn.Linear(24, 40, bias=bias)
        self.out = nn.Linear(40, 24, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.proj(x)))


def peft_pair(dropout: float, bias: bool, rank: int = 4):
    """(PEFT model, the same model with fused LoRA layers); B is random so every gradient is non-zero."""
    torch.manual_seed(0)
    model = get_peft_model(Block(bias), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout,
                                                   target_modules=["proj", "out"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    fused = copy.deepcopy(model)
    assert lora_fused.enable(fused) == 2
    return model, fused


def run(model, x, seed: int = 1):
    torch.manual_seed(seed)  # the same dropout masks on both sides
    x = x.clone().requires_grad_(True)
    y = model(x)
    (y.square().sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [False, True])
def test_outputs_and_gradients_equal_peft(dropout, bias):
    model, fused = peft_pair(dropout, bias)
    model.train(), fused.train()
    x = torch.randn(3, 5, 24)  # (B, T, in)
    y_ref, gx_ref, g_ref = run(model, x)
    y, gx, g = run(fused, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    assert g.keys() == g_ref.keys() and all("lora_" in n for n in g)  # the frozen weights get no gradient
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_stays_close_to_peft():
    model, fused = peft_pair(0.0, True)
    x = torch.randn(4, 8, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, _, g_ref = run(model, x)
        y, _, g = run(fused, x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    for name in g_ref:
        assert g[name].dtype == torch.float32  # fp32 master adapters get fp32 gradients
        torch.testing.assert_close(g[name], g_ref[name], rtol=5e-2, atol=5e-2 * float(g_ref[name].abs().max()))


def test_disabled_merged_and_saved_adapters_behave_as_peft(tmp_path):
    model, fused = peft_pair(0.0, False)
    x = torch.randn(2, 24)
    with torch.no_grad():
        with fused.disable_adapter(), model.disable_adapter():
            torch.testing.assert_close(fused(x), model(x))
            plain = fused(x)
        assert not torch.allclose(fused(x), plain)  # enabled again: the adapters count
        fused.save_pretrained(tmp_path / "fused")
        model.save_pretrained(tmp_path / "peft")
        from safetensors.torch import load_file

        a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("fused", "peft"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        expected = model(x)
        merged = fused.merge_and_unload()
        torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-6)


def test_a_run_with_fused_lora_ends_at_peft_weights(tmp_path, pairs):
    from safetensors.torch import load_file

    from ftlab.train import train

    finals = {}
    for name, fused in (("peft", "false"), ("fused", "true")):
        cfg = tiny_config(pairs, tmp_path / name, "method.name=lora", "method.rank=4", "method.dropout=0.05",
                          "train.epochs=1", "model.tiny.layers=1", f"train.fused_lora={fused}")
        finals[name] = load_file(str(train(cfg) / "final" / "adapter_model.safetensors"))
    assert finals["peft"].keys() == finals["fused"].keys()
    for key, weight in finals["peft"].items():  # Adam amplifies summation-order differences a little
        torch.testing.assert_close(finals["fused"][key], weight, rtol=0, atol=1e-4 * float(weight.abs().max()))


def test_liger_is_refused_before_any_work_where_it_cannot_run(tmp_path, pairs):
    """train.liger needs the liger-kernel package and CUDA; without them the config is refused, naming the key."""
    import subprocess
    import sys

    out, config = tmp_path / "run", tmp_path / "run.yaml"
    config.write_text("model: {name: tiny}\n")
    proc = subprocess.run([sys.executable, "-m", "ftlab", "train", str(config), "--out", str(out),
                           f"data.path={pairs}", "train.liger=true"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "train.liger" in proc.stderr and "liger" in proc.stderr.lower()
    assert not out.exists()  # nothing written
