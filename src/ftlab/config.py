"""Typed run configuration: dataclasses <-> YAML, dotted command-line overrides, loud validation.

    cfg = load_config("cfg.yaml", ["method.rank=64", "train.lr=2e-4"], out="runs/x")

Loading is four steps: YAML + overrides -> `from_dict` (unknown keys fail with a did-you-mean, wrong types naming
the dotted key) -> `resolve_paths` (file paths made absolute: from the working directory, else beside the config
file) -> `validate` (impossible values, one function per section), all before any model is loaded.
`to_dict(cfg)` round-trips through `from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ftlab.builtin import BUILTIN_PREFIX, DATA_KINDS, builtin_model_dir
from ftlab.errors import ConfigError

HUB_PREFIX = "hub:"  # data.path "hub:owner/name" reads a hub dataset through `datasets`


@dataclass
class TinyModelConfig:
    """A Llama-architecture model built from scratch (tests, examples, the embedded default)."""

    hidden_size: int = 64  # width d
    layers: int = 2  # decoder blocks
    heads: int = 4  # attention heads
    kv_heads: int = 4  # key/value heads (GQA when < heads)
    intermediate_size: int = 176  # MLP width (about 8/3 d)
    max_position: int = 512  # longest sequence
    tie_embeddings: bool = True  # share input embeddings and lm_head
    seed: int = 0  # initialisation seed
    tokenizer: str | None = None  # tokenizer directory; None: the byte-level tokenizer (256 bytes + 3 specials)


@dataclass
class ModelConfig:
    """Which causal LM to finetune and how to load it."""

    name: str = "tiny"  # local model directory, hub id, or "tiny" (built from `tiny`)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # used when name == "tiny"
    revision: str | None = None  # hub revision (branch, tag or commit)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: fp32; a LoRA's frozen base bf16 under bf16 precision
    trust_remote_code: bool = False  # run model code from the hub; only when you trust it
    attention_dropout: float = 0.0  # dropout on attention probabilities (a regularizer in the paper)


@dataclass
class ReplayConfig:
    """Source-domain documents mixed into training (replay), against forgetting."""

    source: str = "builtin:source-cpt"  # raw text (text/JSONL {"text"} file or directory, or builtin:source-cpt)
    fraction: float = 0.0  # share of training sequences (CPT) or examples (IFT) drawn from it; 0: no replay


@dataclass
class DataConfig:
    """Training data: instruction pairs (IFT) or raw text (CPT)."""

    regime: Literal["ift", "cpt"] = "ift"  # ift: prompt/response pairs, loss on responses; cpt: packed raw text
    path: str = ""  # JSONL/text file, directory of them, or "hub:owner/name" (needs `datasets` and network)
    format: Literal[
        "auto", "prompt_completion", "messages", "alpaca", "metamath", "magicoder", "question_answer", "text"
    ] = "auto"  # record shape; auto detects it from the first record's keys
    hub_split: str = "train"  # split of a hub dataset
    hub_config: str | None = None  # configuration name of a hub dataset
    hub_data_dir: str | None = None  # subfolder of a hub dataset's files (bigcode/starcoderdata: "python")
    seq_len: int = 512  # tokens per sequence (IFT examples are truncated; CPT text is packed to it)
    eval_path: str | None = None  # held-out data; if unset, eval_fraction of the training data is held out
    eval_fraction: float = 0.05  # share held out when eval_path is unset
    eval_max_examples: int = 256  # cap on held-out examples (IFT) or sequences (CPT) scored per evaluation
    text_field: str = "text"  # JSONL key holding raw text (CPT)
    packing: bool = False  # IFT: several examples per sequence, attention within each example, loss on responses
    # source-domain text whose held-out loss measures forgetting during training (its first eval_max_examples
    # sequences, at the held-out evaluations): builtin:source-cpt (the shipped base's domain), a text/JSONL file
    # or a directory; null: not measured
    source_eval: str | None = None
    replay: ReplayConfig = field(default_factory=ReplayConfig)


@dataclass
class MethodConfig:
    """Full finetuning, LoRA, or QLoRA (LoRA on a 4-bit NF4 base): which parameters train."""

    name: Literal["full", "lora", "qlora"] = "lora"
    rank: int = 16  # LoRA rank r
    alpha: float | None = None  # LoRA alpha; None means 2 * rank (the paper's setting)
    dropout: float = 0.05  # LoRA dropout on the adapter input
    targets: str | list[str] = "all"  # all | attn | mlp | list of module names
    rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r
    dora: bool = False  # weight-decomposed LoRA
    init: Literal["default", "gaussian", "pissa"] = "default"  # LoRA initialisation of A (B starts at 0)
    loraplus_ratio: float | None = None  # LoRA+: lr of B = ratio * lr (e.g. 16)
    freeze_embeddings: bool = False  # full FT: keep input embeddings and lm_head frozen

    @property
    def adapter(self) -> bool:
        """LoRA or QLoRA: a PEFT LoRA adapter trains (every LoRA key applies), the base stays frozen."""
        return self.name in ("lora", "qlora")


@dataclass
class TrainConfig:
    """The one training loop: optimizer, schedule, batch, duration, checkpoints."""

    optimizer: Literal["adamw", "lionw"] = "adamw"  # lionw: decoupled-weight-decay Lion (the paper's)
    lr: float = 1e-4  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # (beta1, beta2)
    weight_decay: float = 0.0  # decoupled weight decay
    eps: float = 1e-8  # AdamW epsilon
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"  # wsd: warmup, stable, cooldown
    warmup: float = 0.1  # warmup as a fraction of all steps (< 1) or a number of steps (>= 1)
    min_lr_ratio: float = 0.01  # cosine and wsd decay to this fraction of the peak
    cooldown: float = 0.2  # wsd: cooldown as a fraction of all steps
    global_batch: int = 16  # sequences per optimizer step
    micro_batch: int = 4  # sequences per forward pass; global_batch / micro_batch = accumulation steps
    epochs: float | None = 1.0  # duration in passes over the data (set tokens to null)
    tokens: int | None = None  # duration in training tokens (set epochs to null)
    checkpoints: list[float] = field(default_factory=list)  # extra checkpoints, in the duration's unit
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    seed: int = 0  # makes data order, initialisation and dropout reproducible
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16-autocast"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    log_every: int = 1  # steps between metrics.jsonl lines
    eval_every: int = 0  # steps between held-out loss evaluations (0: at checkpoints and the end)
    # stop the run once the source loss (data.source_eval) rises more than this over the base's (nats/token), read
    # every eval_every steps; the step that crosses it is the run's last (final/ is its model); null: never
    stop_at_forgetting: float | None = None
    keep_states: list[int] = field(default_factory=list)  # steps whose resumable state is kept in <run>/kept/
    loss: Literal["auto", "chunked", "full"] = "auto"  # chunked: no full-vocabulary logits (auto: on CUDA)
    # recompute each block's activations in backward: less memory, ~1/3 more compute; auto: on when the run's
    # predicted peak memory would not fit its GPU otherwise, then micro_batch lowered until it fits (ftlab.plan.fit)
    activation_checkpointing: Literal["auto"] | bool = "auto"
    compile: bool = False  # torch.compile the model (CUDA; the first steps are slower while it compiles)
    fused_lora: bool = True  # LoRA layers as one autograd function in the compute dtype (ftlab.lora_fused)
    liger: bool = False  # Liger's Triton RMSNorm, RoPE and SwiGLU kernels (CUDA; pip install liger-kernel)
    collective_timeout_min: float = 60.0  # several processes: minutes a collective waits for the others (rank 0 saving)

    @property
    def unit(self) -> Literal["epochs", "tokens"]:
        """The unit of the run's duration, of train.checkpoints and of its checkpoints' names (epochs-2)."""
        return "epochs" if self.epochs is not None else "tokens"

    @property
    def duration(self) -> float:
        """How long the run trains, in `unit`."""
        return self.epochs if self.epochs is not None else self.tokens


@dataclass
class OutputConfig:
    """Where the run writes and how often it saves resumable state."""

    dir: str = ""  # run directory (set by --out)
    resume_every: int | None = None  # optimizer steps between resumable-state saves; null: by time (resume_minutes)
    resume_minutes: float = 10.0  # minutes of training between resumable-state saves when resume_every is null
    save_final: bool = True  # write the final model or adapter


@dataclass
class RunConfig:
    """One training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def lora_alpha(self) -> float:
        return self.method.alpha if self.method.alpha is not None else 2.0 * self.method.rank


# ----------------------------------------------------------------------------- what a config means, without torch
# A method's label and the schedule's step counts are pure functions of the config: the study's planner and
# `ftlab status` compute them without importing torch; training (methods.py, optim.py, batches.py) asks here too.


def lora_variant(m: MethodConfig) -> list[str]:
    """The LoRA options besides rank, alpha and targets, one word each: rsLoRA, DoRA, init=pissa, LoRA+ x16 ([] for
    plain LoRA and for full FT). What describe prints, the report's rows show and a study's method labels carry."""
    if not m.adapter:
        return []
    options = (("rsLoRA", m.rslora), ("DoRA", m.dora), (f"init={m.init}", m.init != "default"),
               (f"LoRA+ x{m.loraplus_ratio or 0:g}", m.loraplus_ratio is not None))
    return [word for word, on in options if on]


def method_label(m: MethodConfig) -> str:
    """A method's short name, as a study names its runs' folders: full; lora-r16 (qlora-r16), then -attn (targets), -a32 (an
    alpha given), and each LoRA variant word in lower case without spaces or '=' (lora-r16-rslora-initpissa)."""
    if m.name == "full":
        return "full"
    parts = [f"{m.name}-r{m.rank}"]
    if m.targets != "all":
        parts.append(m.targets if isinstance(m.targets, str) else "+".join(m.targets))
    if m.alpha is not None:
        parts.append(f"a{m.alpha:g}")
    parts += [word.lower().replace(" ", "").replace("=", "") for word in lora_variant(m)]
    return "-".join(parts)


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    """The warmup's length in steps: train.warmup as steps (>= 1) or as a fraction of `total`."""
    return int(cfg.warmup) if cfg.warmup >= 1 else round(cfg.warmup * total)


def cooldown_steps(cfg: TrainConfig, total: int) -> int:
    """wsd: the cooldown's length in steps (at least one). The one place this is computed: a CPT budget's branch
    point (ftlab.experiment.spec) is `total - cooldown_steps(cfg, total)`; the schedule (ftlab.optim.lr_factor)."""
    return max(1, round(cfg.cooldown * total))


def budget_steps(tokens: float, global_batch: int, seq_len: int) -> int:
    """Optimizer steps of a CPT token budget: packed sequences make every step exactly global_batch x seq_len tokens.
    The one place this is computed (the run's plan and a study's CPT branch points both ask it)."""
    return max(1, math.ceil(tokens / (global_batch * seq_len)))


# ----------------------------------------------------------------------------- dict <-> dataclass


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking every key and type; `where` is the dotted prefix."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]  # internal: set by code
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}'{_did_you_mean(str(key), names, where)}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _did_you_mean(key: str, names: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{where + '.' if where else ''}{close[0]}'?)"
    return f"; valid keys{' under ' + where if where else ''}: {', '.join(names)}"


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, dotted)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{dotted}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, dotted)
            except ConfigError as e:
                errors.append(str(e).split(": ", 1)[-1].rsplit(", got ", 1)[0])  # one "got" for them all
        raise ConfigError(f"{dotted}: {' or '.join(errors)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{dotted}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{dotted}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:  # free-form sections (an experiment's run-config fragments)
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)  # 1e6 in YAML
            if isinstance(value, str):
                try:
                    as_float = float(value)
                    if as_float.is_integer():
                        return int(as_float)
                except ValueError:
                    pass
            raise ConfigError(f"{dotted}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{dotted}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{dotted}: expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{dotted}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp} for {dotted} is not supported")  # a bug in this file, not user input


# ----------------------------------------------------------------------------- loading


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict; the value is parsed as YAML (`[16, 64]`, `null`, `2e-4`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=2e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[:depth + 1])}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def parse_mapping(text: str, where: str | Path) -> dict:
    """A YAML document that must be a mapping (empty: {}); errors name `where`."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return data


def read_mapping(path: Path, kind: str, fix: str | None = None) -> dict:
    """The YAML mapping in a `kind` file ("config", "experiment"), or a ConfigError naming the file (and saying what
    to do, `fix`, when it is a file ftlab wrote)."""
    if not path.is_file():
        raise ConfigError(f"{kind} file {path} does not exist")
    try:
        return parse_mapping(path.read_text(encoding="utf-8"), path)
    except UnicodeDecodeError as e:
        error = ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
    except ConfigError as e:
        error = e
    raise ConfigError(f"{error}; {fix}" if fix else str(error)) from None


def load_config(path: str | Path | None, overrides: list[str] = (), out: str | None = None) -> RunConfig:
    """Read YAML (or start from defaults), apply overrides and --out, resolve paths, validate, and return the config."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_mapping(path, "config")
    data = apply_overrides(data, list(overrides))
    if out is not None:
        data.setdefault("output", {})["dir"] = out
    cfg = from_dict(RunConfig, data)
    resolve_paths(cfg, path.parent if path is not None else Path("."))
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- paths


def resolve_path(value: str, base_dir: Path) -> str:
    """A path in a config file, absolute: from the working directory, else from the config file's folder
    (base_dir). Hub and built-in names, and a path found in neither place, are left as they are (validation
    names the missing one)."""
    if value.startswith((HUB_PREFIX, BUILTIN_PREFIX)):
        return value
    for candidate in (Path(value), Path(base_dir) / value):
        if candidate.exists():
            return os.path.abspath(candidate)  # normalised (no "..") but symbolic links kept, as the user named them
    return value


def resolve_paths(cfg: RunConfig, base_dir: Path) -> None:
    """Resolve, in place, the config's file paths to absolute ones (resolve_path): data.path, data.eval_path,
    model.tiny.tokenizer, and model.name when it is a local directory. A run's saved config then means the same
    whatever the working directory it is resumed from."""
    cfg.data.path = resolve_path(cfg.data.path, base_dir) if cfg.data.path else cfg.data.path
    if cfg.data.eval_path is not None:
        cfg.data.eval_path = resolve_path(cfg.data.eval_path, base_dir)
    if cfg.data.source_eval is not None:
        cfg.data.source_eval = resolve_path(cfg.data.source_eval, base_dir)
    cfg.data.replay.source = resolve_path(cfg.data.replay.source, base_dir)
    if cfg.model.tiny.tokenizer is not None:
        cfg.model.tiny.tokenizer = resolve_path(cfg.model.tiny.tokenizer, base_dir)
    if cfg.model.name != "tiny" and any((p / cfg.model.name).is_dir() for p in (Path("."), Path(base_dir))):
        cfg.model.name = resolve_path(cfg.model.name, base_dir)  # a local directory; a hub id stays one


# ----------------------------------------------------------------------------- validation


def _need(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: RunConfig) -> None:
    """Impossible values fail here, before any work, naming the key (paths are resolved first: resolve_paths)."""
    validate_train(cfg)
    validate_method(cfg)
    validate_model(cfg)
    validate_data(cfg)
    validate_output(cfg)


def validate_model(cfg: RunConfig) -> None:
    m, tiny = cfg.model, cfg.model.tiny
    _need(tiny.hidden_size >= 1 and tiny.layers >= 1 and tiny.heads >= 1, "model.tiny", "sizes must be >= 1")
    _need(tiny.hidden_size % tiny.heads == 0, "model.tiny.heads", "must divide model.tiny.hidden_size")
    _need(tiny.heads % tiny.kv_heads == 0, "model.tiny.kv_heads", "must divide model.tiny.heads")
    _need(0 <= m.attention_dropout < 1, "model.attention_dropout", "must be in [0, 1)")
    if tiny.tokenizer is not None:
        _need(Path(tiny.tokenizer).is_dir(), "model.tiny.tokenizer", f"{tiny.tokenizer} is not a tokenizer directory")
    if m.name.startswith(BUILTIN_PREFIX):
        builtin_model_dir(m.name)  # raises ConfigError naming model.name if unknown
    elif m.name != "tiny" and not Path(m.name).exists():
        looks_like_hub_id = m.name.count("/") == 1 and not m.name.startswith((".", "/"))
        _need(looks_like_hub_id, "model.name", f"{m.name!r} is neither a local directory nor a hub id (owner/name)")


def validate_data(cfg: RunConfig) -> None:
    d = cfg.data
    _need(d.seq_len >= 8, "data.seq_len", f"must be >= 8, got {d.seq_len}")
    _need(0 <= d.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
    _need(d.eval_max_examples >= 1, "data.eval_max_examples", "must be >= 1")
    _need(bool(d.path), "data.path", "is required (a JSONL or text file, a directory, or hub:owner/name)")
    if d.path.startswith(BUILTIN_PREFIX):
        kind = d.path.removeprefix(BUILTIN_PREFIX)
        _need(kind in DATA_KINDS, "data.path",
              f"unknown built-in data {kind!r}; expected one of {', '.join(DATA_KINDS)}")
    else:
        _need(d.path.startswith(HUB_PREFIX) or Path(d.path).exists(), "data.path", f"{d.path} does not exist")
    if d.eval_path is not None:
        _need(d.eval_path.startswith(HUB_PREFIX) or Path(d.eval_path).exists(), "data.eval_path",
              f"{d.eval_path} does not exist")
    if d.source_eval is not None:
        _need_text(d.source_eval, "data.source_eval")
    _need(0 <= d.replay.fraction < 1, "data.replay.fraction", f"must be in [0, 1), got {d.replay.fraction}")
    if d.replay.fraction > 0:
        _need_text(d.replay.source, "data.replay.source")
    if d.regime == "cpt":
        _need(d.format in ("auto", "text"), "data.format", f"CPT reads raw text; got format {d.format!r}")
        _need(not d.packing, "data.packing", "is for IFT examples; CPT text is always packed")
    else:
        _need(d.format != "text", "data.format", "text is for data.regime=cpt; IFT needs prompt/response pairs")


def _need_text(path: str, key: str) -> None:
    """A raw-text source: builtin:<a cpt kind>, or a file or directory that exists."""
    if path.startswith(BUILTIN_PREFIX):
        kind = path.removeprefix(BUILTIN_PREFIX)
        texts = [k for k in DATA_KINDS if k.endswith("-cpt")]
        _need(kind in texts, key, f"unknown built-in text {kind!r}; expected one of builtin:{', builtin:'.join(texts)}")
    else:
        _need(Path(path).exists(), key, f"{path} does not exist")


def validate_method(cfg: RunConfig) -> None:
    m = cfg.method
    _need(m.rank >= 1, "method.rank", f"must be >= 1, got {m.rank}")
    _need(m.alpha is None or m.alpha > 0, "method.alpha", "must be > 0")
    _need(0 <= m.dropout < 1, "method.dropout", "must be in [0, 1)")
    _need(m.loraplus_ratio is None or m.loraplus_ratio > 0, "method.loraplus_ratio", "must be > 0")
    if isinstance(m.targets, str):
        _need(m.targets in ("all", "attn", "mlp"), "method.targets",
              f"expected all, attn, mlp or a list of module names, got {m.targets!r}")
    else:
        _need(len(m.targets) > 0, "method.targets", "the list of module names is empty")
    if m.name == "qlora":
        _need(m.init != "pissa", "method.init", "pissa rewrites the base weights, which QLoRA holds in 4 bits; use "
              "default or gaussian")
        _need(cfg.model.dtype == "auto", "model.dtype", "QLoRA computes in bf16 on GPUs and fp32 on the CPU; leave "
              "model.dtype auto")
    if m.adapter and cfg.model.name == "tiny":
        tiny = cfg.model.tiny
        smallest = min(tiny.hidden_size, tiny.hidden_size // tiny.heads * tiny.kv_heads, tiny.intermediate_size)
        _need(m.rank <= smallest, "method.rank",
              f"{m.rank} is larger than the smallest target layer allows ({smallest})")


def validate_train(cfg: RunConfig) -> None:
    t = cfg.train
    _need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _need(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas",
          f"expected two numbers in [0, 1), got {t.betas}")
    _need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _need(t.global_batch >= 1, "train.global_batch", "must be >= 1")
    _need(t.micro_batch >= 1, "train.micro_batch", "must be >= 1")
    _need(t.global_batch % t.micro_batch == 0, "train.global_batch",
          f"must be a multiple of train.micro_batch ({t.micro_batch}), got {t.global_batch}")
    _need((t.epochs is None) != (t.tokens is None), "train.epochs",
          "set exactly one of train.epochs and train.tokens (the other to null)")
    _need(t.epochs is None or t.epochs > 0, "train.epochs", f"must be > 0, got {t.epochs}")
    _need(t.tokens is None or t.tokens > 0, "train.tokens", f"must be > 0, got {t.tokens}")
    for i, c in enumerate(t.checkpoints):
        _need(0 < c <= t.duration, f"train.checkpoints[{i}]",
              f"must be in (0, {t.duration}] (the run's duration), got {c}")
    _need(t.warmup >= 0, "train.warmup", "must be >= 0")
    _need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
    _need(0 < t.cooldown <= 1, "train.cooldown", "must be in (0, 1]")
    _need(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
    _need(t.log_every >= 1, "train.log_every", "must be >= 1")
    _need(t.eval_every >= 0, "train.eval_every", "must be >= 0")
    if t.stop_at_forgetting is not None:
        _need(t.stop_at_forgetting > 0, "train.stop_at_forgetting", f"must be > 0 (nats/token), got {t.stop_at_forgetting}")
        _need(cfg.data.source_eval is not None, "train.stop_at_forgetting",
              "needs data.source_eval (the source text whose loss it watches), e.g. data.source_eval=builtin:source-cpt")
        _need(t.eval_every >= 1, "train.stop_at_forgetting", "needs train.eval_every >= 1 (how often it is read)")
    _need(all(k >= 1 for k in t.keep_states), "train.keep_states", f"steps must be >= 1, got {t.keep_states}")
    _need(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device",
          f"expected auto, cpu, cuda or cuda:N, got {t.device!r}")
    _need(not (t.liger and t.device == "cpu"), "train.liger", "Liger's kernels run on CUDA only; train.device is cpu")
    _need(t.collective_timeout_min > 0, "train.collective_timeout_min", f"must be > 0, got {t.collective_timeout_min}")
    # the liger-kernel package and CUDA are checked where the run trains (ftlab.train.check_liger), not here


def validate_output(cfg: RunConfig) -> None:
    o = cfg.output
    _need(bool(o.dir), "output.dir", "is required (pass --out DIR)")
    _need(o.resume_every is None or o.resume_every >= 1, "output.resume_every", "must be >= 1 (or null: by time)")
    _need(o.resume_minutes > 0, "output.resume_minutes", f"must be > 0, got {o.resume_minutes}")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
