"""Load a causal LM and its tokenizer (a local directory or a hub id; safetensors only), or build a tiny one.

The tiny model is a Llama-architecture network built from `TinyModelConfig` with a byte-level tokenizer
(256 byte tokens + 3 specials): no download, no training, identical on every machine. It is saved as an
ordinary Hugging Face model directory, so everything downstream treats it like any other model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast

from ftlab.builtin import BUILTIN_PREFIX, builtin_model_dir
from ftlab.config import ModelConfig, TinyModelConfig
from ftlab.errors import ConfigError, FtlabError
from ftlab.io import fresh_dir, publish_dir, read_json, write_json
from ftlab.rundir import ADAPTER_CONFIG, INFO, RunLayout, base_of, is_adapter
from ftlab.weights import check_adapter, check_files, check_finite, check_headers, manifest

# A plain-text chat template for the byte tokenizer: "<|user|>\n...\n<|assistant|>\n...</s>\n".
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available here")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision with auto resolved: bf16-autocast on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16-autocast" if device.type == "cuda" else "fp32"
    return precision


def resolve_dtype(cfg: ModelConfig, device: torch.device, trains_base: bool, precision: str = "auto") -> torch.dtype:
    """The dtype the weights are loaded in (model.dtype, unless it is auto).

    auto: fp32 when the base trains (full FT: fp32 master weights, autocast computes in bf16) or when the run
    computes in fp32 (train.precision fp32, or auto on the CPU); bf16 for a frozen base (LoRA) that is computed in
    bf16 (train.precision bf16-autocast, or auto on CUDA): half the memory, and autocast would cast its matrices to
    bf16 for every matmul anyway."""
    if cfg.dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    if not trains_base and resolve_precision(precision, device) == "bf16-autocast":
        return torch.bfloat16
    return torch.float32


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: every UTF-8 byte is one token, so any text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 printable stand-ins for bytes
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast | None = None,
               attention_dropout: float = 0.0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised Llama of the given shape; the same seed gives the same weights everywhere."""
    tokenizer = tokenizer or byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_position,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=attention_dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def save_pretrained(model, tokenizer, directory: Path) -> None:
    """Write a Hugging Face model directory (safetensors) atomically: a temporary name, then a rename; its
    ftlab.json records its files' checksums (weights.manifest), checked whenever it is loaded."""
    tmp = fresh_dir(directory)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / INFO, {"files": manifest(tmp)})
    publish_dir(tmp, directory)


def load_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, name: str | None = None):
    """(model, tokenizer) from a local directory or hub id, safetensors only, on `device`; attention is
    transformers' default: SDPA where the architecture has it, else eager (Gemma2: soft-capped scores).

    device "meta": the model's structure without reading its weights (the processes of a sharded run other
    than rank 0 build it so; rank 0's weights reach them when the model is sharded)."""
    name = name or cfg.name
    if name == "tiny":
        raise ValueError("build the tiny model with build_tiny() and save it first; load_model reads directories")
    local = Path(name).is_dir()
    meta = torch.device(device).type == "meta"
    verified = False  # whether recorded checksums vouch for the weights (then they need no finite check)
    if local and meta:
        check_headers(name)  # safetensors only; their weights are not read here
    elif local:
        verified = check_files(name)  # safetensors only, each header readable, the checksums an ftlab.json records
    hf_config = model_config(name, cfg)
    extra = {}
    if cfg.attention_dropout:
        if not hasattr(hf_config, "attention_dropout"):
            raise ConfigError(f"model.attention_dropout: {type(hf_config).__name__} has no attention_dropout setting")
        extra["attention_dropout"] = cfg.attention_dropout
    if meta:
        for key, value in extra.items():
            setattr(hf_config, key, value)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            dtype=dtype,
            **extra,
        ).to(device)
        if not verified:
            check_finite(model, Path(name))  # flipped bits in a file without checksums (a downloaded base)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked out of the loss
    return model, tokenizer


def prepare_base(cfg: ModelConfig, run_dir: Path) -> str:
    """Where the base model lives: its own name, or for `tiny` a directory in the run built once and reused."""
    if cfg.name.startswith(BUILTIN_PREFIX):
        return str(builtin_model_dir(cfg.name))
    if cfg.name != "tiny":
        return cfg.name
    base = RunLayout(run_dir).base
    if not (base / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(cfg.tiny.tokenizer) if cfg.tiny.tokenizer else None
        model, tokenizer = build_tiny(cfg.tiny, tokenizer)
        save_pretrained(model, tokenizer, base)
    return str(base.resolve())


def model_config(name: str, cfg: ModelConfig):
    """The transformers config of the model `name` (a directory or hub id); a ConfigError naming model.name when
    there is none, and saying so when `name` is a PEFT adapter rather than a model."""
    if is_adapter(name):
        base = read_json(Path(name) / ADAPTER_CONFIG, "adapter config").get("base_model_name_or_path")
        raise ConfigError(f"model.name: {name} is a PEFT adapter (it holds {ADAPTER_CONFIG}), not a model; train from "
                          f"its base model{f' ({base})' if base else ''}: model.name=<the base>. To measure the "
                          f"adapter: ftlab eval {name}")
    try:
        return AutoConfig.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: cannot load a model config from {name!r}: {e}") from None


def load_trained(directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a checkpoint: a full model directory, or a PEFT adapter on the base it names
    (rundir.base_of)."""
    directory = Path(directory)
    if not is_adapter(directory):
        return load_model(ModelConfig(name=str(directory)), torch.device(device), dtype)
    base = base_of(directory)
    if base is None:
        raise FtlabError(f"{directory}: an adapter that names no base model (adapter_config.json's "
                         "base_model_name_or_path, or ftlab.json's base)")
    model, tokenizer = load_model(ModelConfig(name=base), torch.device(device), dtype)
    return load_adapter(model, directory).eval(), tokenizer


def load_adapter(model, directory: str | Path, **kwargs):
    """PEFT's PeftModel.from_pretrained(model, directory, **kwargs), once the adapter's files are checked
    (weights.check_adapter: checksums, headers, finite tensors)."""
    from peft import PeftModel

    check_adapter(directory)
    return PeftModel.from_pretrained(model, directory, **kwargs)
