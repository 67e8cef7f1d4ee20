"""The architecture zoo: a tiny random model of every architecture ftlab is tested on, built from its config.

Each is 2 blocks of width 32 (4 heads of 8; 2 key/value heads where the architecture has GQA), a 64-wide MLP,
512 positions (the built-in source tasks need long contexts) and the byte tokenizer's 259-token vocabulary,
saved as an ordinary Hugging Face directory (safetensors + tokenizer). Nothing is downloaded.

    directory = build(tmp_path / "gpt2", "gpt2")      # then model.name = str(directory)
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          MistralConfig, Olmo2Config, Phi3Config, Qwen2Config, Qwen3Config)

from ftlab.model import byte_tokenizer, save_pretrained

HIDDEN, LAYERS, HEADS, KV_HEADS, MLP, POSITIONS = 32, 2, 4, 2, 64, 512
# The shapes of the Llama-like families: attention heads of HIDDEN / HEADS, grouped key/value heads.
LLAMA_LIKE = dict(hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS, max_position_embeddings=POSITIONS)


def configs() -> dict:
    """model_type -> (config class, its settings): one entry per architecture of the zoo."""
    return {
        "llama": (LlamaConfig, LLAMA_LIKE),
        "mistral": (MistralConfig, {**LLAMA_LIKE, "sliding_window": 16}),  # shorter than the eval prompts
        "qwen2": (Qwen2Config, LLAMA_LIKE),  # q, k, v carry biases
        "qwen3": (Qwen3Config, LLAMA_LIKE),  # q/k norms
        "gemma": (GemmaConfig, LLAMA_LIKE),  # tied head, embeddings scaled by sqrt(d)
        "gemma2": (Gemma2Config, {**LLAMA_LIKE, "sliding_window": 8}),  # logit soft-capping, sliding layers
        "phi3": (Phi3Config, {k: v for k, v in LLAMA_LIKE.items() if k != "head_dim"}),  # fused qkv, gate_up
        "gpt_neox": (GPTNeoXConfig, dict(hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                                         num_attention_heads=HEADS, max_position_embeddings=POSITIONS)),
        "gpt2": (GPT2Config, dict(n_embd=HIDDEN, n_inner=MLP, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),  # no dropout, as the others
        "olmo2": (Olmo2Config, {k: v for k, v in LLAMA_LIKE.items() if k != "head_dim"}),
    }


ARCHITECTURES = list(configs())


def build_model(model_type: str, seed: int = 0):
    """(model, tokenizer): a randomly initialised model of this architecture; the same seed, the same weights."""
    tokenizer = byte_tokenizer()
    cls, settings = configs()[model_type]
    config = cls(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, **settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    assert model.config.model_type == model_type
    return model.eval(), tokenizer


def build(directory: Path, model_type: str, seed: int = 0) -> Path:
    """Save the zoo's model of this architecture as a Hugging Face directory; returns the directory."""
    model, tokenizer = build_model(model_type, seed)
    save_pretrained(model, tokenizer, Path(directory))
    return Path(directory)
