"""How many floating-point operations training takes per token: the numerator of MFU (model FLOPs utilisation).

    flops = train_flops_per_token(AutoConfig.from_pretrained(name), cfg.method, cfg.data.seq_len)
    mfu = tokens_per_s * flops / peak_flops_per_s

The standard count (PaLM, appendix B; nanoGPT's estimate_mfu), forward + backward of one token of a sequence of s:
    full FT   6·N + 12·L·h·s
    LoRA      4·N + 6·N_adapter + 12·L·h·s
N: the weights of every matrix multiply a token goes through (each block's linear layers and the output head; the
input embedding is a lookup and is not counted, the head is, tied or not). 2·N is the forward; the backward takes
2·N for the gradients of the activations and 2·N for those of the weights, which frozen weights (LoRA's base, and
the head and embeddings under method.freeze_embeddings) do not need. N_adapter: LoRA's A and B, r·(in + out) per
adapted layer, forward and backward in full. 12·L·h·s: attention's scores and weighted sum (2·2·s·h per token and
layer forward, twice that backward; h = heads x head size), counted over the whole sequence as the convention is
(a causal kernel skips about half; sliding windows are not modelled). DoRA's norms and LoRA dropout are not
counted.
"""

from __future__ import annotations

from ftlab.architectures import in_out, linear_layers, target_modules, targeted_layers
from ftlab.config import MethodConfig


def train_flops_per_token(config, method: MethodConfig, seq_len: int) -> float:
    """FLOPs of training on one token (forward + backward; the formulas in the module docstring) of a model with
    this Hugging Face config (AutoConfig), finetuned by `method` (full or LoRA: its rank and targets), in sequences
    of seq_len tokens. Reads the model's structure only (built on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = sum(_numel(m) for m in linear_layers(model).values())
    head = _numel(model.get_output_embeddings())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    if method.name == "full":
        return 6 * blocks + (4 if method.freeze_embeddings else 6) * head + attention
    adapted = targeted_layers(model, target_modules(model, method.targets))
    adapter = sum(method.rank * sum(in_out(m)) for m in adapted.values())
    return 4 * (blocks + head) + 6 * adapter + attention


def _numel(linear) -> int:
    fan_in, fan_out = in_out(linear)
    return fan_in * fan_out
