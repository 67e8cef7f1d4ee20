"""Load a causal LM and its tokenizer (a local directory or a hub id; safetensors only), or build a tiny one.

The tiny model is a Llama-architecture network built from `TinyModelConfig` with a byte-level tokenizer
(256 byte tokens + 3 specials): no download, no training, identical on every machine. It is saved as an
ordinary Hugging Face model directory, so everything downstream treats it like any other model.

QLoRA's base (`four_bit=True`) is loaded through bitsandbytes: every linear layer of the blocks in 4-bit NF4 with
double quantization (blocks of NF4_BLOCK weights share an absmax, itself stored in 8 bits), the embeddings, norms
and head in the compute dtype; the NF4 rounding is recomputed from the same file on every load (the same codes
every time), and `dequantized_nf4` gives the weights that base computes with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast

from ftlab.builtin import BUILTIN_PREFIX, builtin_model_dir
from ftlab.config import ModelConfig, TinyModelConfig
from ftlab.errors import ConfigError, FtlabError
from ftlab.hub import offline_mode
from ftlab.io import fresh_dir, publish_dir, read_json, write_json
from ftlab.rundir import ADAPTER_CONFIG, INFO, RunLayout, base_of, is_adapter, read_info
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


def load_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, name: str | None = None,
               four_bit: bool = False):
    """(model, tokenizer) from a local directory or hub id, safetensors only, on `device`; attention is
    transformers' default: SDPA where the architecture has it, else eager (Gemma2: soft-capped scores).

    device "meta": the model's structure without reading its weights (the processes of a sharded run other
    than rank 0 build it so; rank 0's weights reach them when the model is sharded).
    four_bit: the block linear layers in NF4 (QLoRA's base; `nf4_config`), computing in `dtype`."""
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
        if four_bit:  # quantized as it is placed on the device; a 4-bit model cannot be moved afterwards
            extra.update(quantization_config=nf4_config(dtype), device_map={"": torch.device(device)})
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            dtype=dtype,
            **extra,
        )
        if four_bit:
            _same_nf4_on_every_cpu(model)
        else:
            model = model.to(device)
        if not verified:
            check_finite(model, Path(name))  # flipped bits in a file without checksums (a downloaded base)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked out of the loss
    return model, tokenizer


NF4_BLOCK = 64  # weights per absmax block (bitsandbytes' default, the QLoRA paper's)
NF4_STATS_BLOCK = 256  # absmax values per block of the double quantization (8-bit absmax, one fp32 scale each)


def require_bitsandbytes():
    """bitsandbytes (QLoRA's 4-bit layers), imported once without reaching the network; a ConfigError naming
    method.name when it is not installed here. On a CPU with AVX512-BF16 its import asks the Hugging Face hub for an
    optional kernel (one that _same_nf4_on_every_cpu keeps unused); offline, that fails at once, quietly."""
    import importlib
    import importlib.util
    import logging

    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method.name: qlora needs bitsandbytes for its 4-bit base (pip install 'ftlab[qlora]'; "
                          "it runs on CUDA and on the CPU)")
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "kernels")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with offline_mode():
            return importlib.import_module("bitsandbytes")
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def nf4_config(compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for QLoRA's base: NF4, double quantization, computing in compute_dtype
    (bf16 on GPUs, fp32 on the CPU: resolve_dtype)."""
    from transformers import BitsAndBytesConfig

    require_bitsandbytes()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


BASE_4BIT = "base_4bit"  # the ftlab.json key of a QLoRA checkpoint: how its base was loaded (nf4_record)


def nf4_record(compute_dtype: torch.dtype) -> dict:
    """How a QLoRA run loaded its base, as its checkpoints' ftlab.json records it (BASE_4BIT): evaluation and the
    spectrum load or dequantize the base the same way."""
    return {"quant_type": "nf4", "double_quant": True, "blocksize": NF4_BLOCK,
            "dtype": str(compute_dtype).removeprefix("torch.")}


def nf4_dtype(checkpoint: str | Path) -> torch.dtype | None:
    """The dtype a QLoRA checkpoint's base was quantized from and computes in (its ftlab.json's BASE_4BIT); None for
    every other checkpoint (full FT, LoRA, an adapter ftlab did not train)."""
    record = read_info(checkpoint).get(BASE_4BIT)
    if record is None:
        return None
    if record.get("quant_type") != "nf4" or record.get("blocksize") != NF4_BLOCK or not record.get("double_quant") \
            or record.get("dtype") not in ("float32", "bfloat16"):
        raise FtlabError(f"{Path(checkpoint) / INFO}: {BASE_4BIT} {record} is not a 4-bit base ftlab loads (NF4, double "
                         f"quantization, blocks of {NF4_BLOCK}, float32 or bfloat16)")
    return getattr(torch, record["dtype"])


def _same_nf4_on_every_cpu(model) -> None:
    """Keep bitsandbytes' 4-bit layers in their one layout. On a CPU with AVX512-BF16, a Linear4bit called in eval
    mode without gradients repacks its weight for a faster kernel, for good: its absmax rounded to bf16 (numbers then
    depend on the CPU) and a kernel with no backward (the training after a held-out evaluation would get no
    gradient through the frozen weights, silently)."""
    linear4bit = require_bitsandbytes().nn.Linear4bit
    for module in model.modules():
        if isinstance(module, linear4bit):
            module.support_avx512bf16_for_cpu = False


def dequantized_nf4(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight a QLoRA base computes with: `weight` (out, in) cast to the dtype it was loaded in, NF4-quantized
    with double quantization as `nf4_config` loads it, and dequantized; fp32, on weight's device."""
    bnbf = require_bitsandbytes().functional
    packed, state = bnbf.quantize_4bit(weight.to(dtype).contiguous(), blocksize=NF4_BLOCK, compress_statistics=True,
                                       quant_type="nf4")
    return bnbf.dequantize_4bit(packed, state).to(torch.float32)


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
    (rundir.base_of); a QLoRA adapter's base in 4 bits, computing in the dtype it trained with (nf4_dtype)."""
    directory = Path(directory)
    if not is_adapter(directory):
        return load_model(ModelConfig(name=str(directory)), torch.device(device), dtype)
    base = base_of(directory)
    if base is None:
        raise FtlabError(f"{directory}: an adapter that names no base model (adapter_config.json's "
                         "base_model_name_or_path, or ftlab.json's base)")
    four_bit = nf4_dtype(directory)
    model, tokenizer = load_model(ModelConfig(name=base), torch.device(device), four_bit or dtype,
                                  four_bit=four_bit is not None)
    return load_adapter(model, directory).eval(), tokenizer


def load_adapter(model, directory: str | Path, **kwargs):
    """PEFT's PeftModel.from_pretrained(model, directory, **kwargs), once the adapter's files are checked
    (weights.check_adapter: checksums, headers, finite tensors)."""
    from peft import PeftModel

    check_adapter(directory)
    return PeftModel.from_pretrained(model, directory, **kwargs)
