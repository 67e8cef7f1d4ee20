"""The chunked loss (no full-vocabulary logits) is the same loss, with the same gradients, as the full path."""

import contextlib

import pytest
import torch

from conftest import tiny_config

from ftlab.config import TinyModelConfig
from ftlab.loss import chunked_loss_sum, supports
from ftlab.model import build_tiny
from ftlab.train import token_loss_sum

TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=64)
NO_AUTOCAST = contextlib.nullcontext()


def batch(masked: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 12:] = 0  # right padding
    labels = ids.clone()
    labels[mask == 0] = -100
    if masked:
        labels[:, :9] = -100  # an IFT prompt
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_loss_and_gradients_equal_the_full_path(method, masked):
    model, _ = build_tiny(TINY)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights="gaussian"))
    model.train()
    data = batch(masked)
    full, n_full = token_loss_sum(model, data, NO_AUTOCAST)
    full.backward()
    reference = grads(model)
    model.zero_grad(set_to_none=True)
    chunked, n_chunked = chunked_loss_sum(model, data, NO_AUTOCAST, chunk=7)  # several chunks, a ragged last one
    chunked.backward()
    assert supports(model) and n_chunked == n_full
    assert float(chunked.detach()) == pytest.approx(float(full.detach()), rel=1e-6)
    got = grads(model)
    assert got.keys() == reference.keys() and got
    for name in reference:  # equal up to fp32 summation order: within 1e-5 of each gradient's scale
        scale = float(reference[name].abs().max())
        torch.testing.assert_close(got[name], reference[name], rtol=0, atol=1e-5 * scale + 1e-12)


def test_nothing_labelled_gives_zero_loss_and_a_valid_backward():
    model, _ = build_tiny(TINY)
    data = batch(False)
    data["labels"][:] = -100
    loss, n = chunked_loss_sum(model, data, NO_AUTOCAST)
    loss.backward()
    assert n == 0 and float(loss.detach()) == 0.0


def test_heads_that_are_not_a_plain_linear_use_the_full_path():
    model, _ = build_tiny(TINY)
    model.config.final_logit_softcapping = 30.0
    assert not supports(model)
    from ftlab.errors import FtlabError
    from ftlab.train import use_chunked_loss

    with pytest.raises(FtlabError, match="train.loss: chunked"):
        use_chunked_loss(_cfg_with_loss("chunked"), model, torch.device("cpu"))
    assert use_chunked_loss(_cfg_with_loss("auto"), model, torch.device("cpu")) is False


def _cfg_with_loss(value: str):
    from ftlab.config import RunConfig

    cfg = RunConfig()
    cfg.train.loss = value
    return cfg


def test_auto_is_chunked_on_cuda_only():
    from ftlab.train import use_chunked_loss

    model, _ = build_tiny(TINY)
    assert use_chunked_loss(_cfg_with_loss("auto"), model, torch.device("cuda")) is True
    assert use_chunked_loss(_cfg_with_loss("auto"), model, torch.device("cpu")) is False
    assert use_chunked_loss(_cfg_with_loss("chunked"), model, torch.device("cpu")) is True
    assert use_chunked_loss(_cfg_with_loss("full"), model, torch.device("cuda")) is False


def test_a_run_with_the_chunked_loss_ends_at_the_weights_of_the_full_path(tmp_path, pairs):
    from safetensors.torch import load_file

    from ftlab.train import train

    finals = {}
    for mode in ("full", "chunked"):
        cfg = tiny_config(pairs, tmp_path / mode, "method.name=full", "train.epochs=1", f"train.loss={mode}")
        finals[mode] = load_file(str(train(cfg) / "final" / "model.safetensors"))
    for name, weight in finals["full"].items():  # Adam amplifies summation-order differences a little
        torch.testing.assert_close(finals["chunked"][name], weight, rtol=0, atol=1e-4 * float(weight.abs().max()))


@pytest.mark.parametrize("option", ["train.activation_checkpointing=true", "train.compile=true"])
def test_speed_options_keep_the_numerics(tmp_path, pairs, option):
    """Activation checkpointing recomputes the same activations; torch.compile fuses the same math."""
    import shutil

    from safetensors.torch import load_file

    from ftlab.train import train

    if option.startswith("train.compile") and shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler")
    finals = {}
    for name, extra in (("plain", []), ("option", [option])):
        # LoRA dropout 0: compiled code draws dropout masks from another RNG stream, which is not a numerics change
        cfg = tiny_config(pairs, tmp_path / name, "method.name=lora", "method.rank=4", "method.dropout=0",
                          "train.epochs=1", "model.tiny.layers=1", *extra)
        finals[name] = load_file(str(train(cfg) / "final" / "adapter_model.safetensors"))
    assert finals["plain"].keys() == finals["option"].keys()
    for key, weight in finals["plain"].items():
        torch.testing.assert_close(finals["option"][key], weight, rtol=0, atol=1e-4 * float(weight.abs().max()))
