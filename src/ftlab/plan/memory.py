"""The memory a training run needs, predicted from the model's shapes before anything is loaded.

    arch = architecture(structure(cfg.model))            # shapes, counted on the meta device: no weights read
    mem = predict(arch, Setup(...))                      # bytes: weights, gradients, optimizer, activations, ...

Weights, gradients and optimizer state follow from the parameter counts and dtypes: full finetuning keeps fp32
weights (its master copy under bf16 autocast), fp32 gradients and one (LionW) or two (AdamW) fp32 states per weight;
LoRA keeps its frozen base in the base's dtype (bf16 under bf16 precision) and gradients and states for the adapters
only; QLoRA's base holds its block linear layers in 4-bit NF4 (ftlab.methods.qlora_base_bytes) and the rest in the
compute dtype, and its adapters compute in fp32 (PEFT's own forward). Under FSDP (several processes) each process keeps 1/N of each, plus the blocks gathered while they compute.

Activations are what autograd keeps for the backward pass, counted tensor by tensor per token per decoder block
from the block's shapes (hidden width d, q and k/v widths, MLP width, heads) and the dtypes of the run: the
residual stream in the weights' dtype, linear layers and attention in the compute dtype (bf16 under autocast), norm
statistics in fp32. Which tensors a block keeps is transformers' implementation of it; _BLOCKS below lists them per
family, and tests/test_plan_memory.py checks the count against the bytes the saved-tensor hooks see, and the peak
against the live bytes of real training steps, on the CPU. With activation checkpointing a block keeps only its
input, and the one block being recomputed holds its full set during its backward.

The loss: the full path keeps (tokens, vocab) fp32 log-probabilities and, at the start of the backward, two more
tensors of that size; the chunked loss (ftlab.loss) keeps the labelled hidden states and one chunk's logits.
Evaluation of the held-out loss runs without gradients on one micro-batch, with full logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ftlab.architectures import TARGETS, decoder_blocks, in_out, is_conv1d, matches

F32 = 4  # bytes of an fp32 number: norm statistics, gradients, optimizer states, log-probabilities
GIB = 2**30


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder block: its name in the block (self_attn.q_proj) and its widths."""

    name: str
    inputs: int
    outputs: int


@dataclass(frozen=True)
class Group:
    """Linear layers of a block that read the same tensor: attn_in (q, k, v), attn_out (o), mlp_in (gate, up),
    mlp_out (down), or other (a layer of an architecture outside ftlab's table, on its own)."""

    kind: str
    linears: tuple[Linear, ...]

    @property
    def width(self) -> int:
        return self.linears[0].inputs


@dataclass(frozen=True)
class Architecture:
    """What the memory and FLOPs models read of a model: counted on its structure (the meta device will do)."""

    model_type: str
    layers: int
    hidden: int  # d: the residual stream's width
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # the MLP's width
    vocab: int
    params: int  # every parameter, tied ones once
    block_params: int  # one decoder block's parameters
    input_embedding_params: int  # the input embedding table (and position table): looked up, not multiplied
    head_params: int  # the output head; 0 when it is tied to the input embeddings
    groups: tuple[Group, ...]  # one block's linear layers, by the tensor they read

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def linears(self) -> list[Linear]:
        return [linear for g in self.groups for linear in g.linears]

    @property
    def block_linear_params(self) -> int:
        """One block's linear weights (what autocast casts to bf16 for each micro-batch)."""
        return sum(linear.inputs * linear.outputs for linear in self.linears)

    def targeted(self, targets: list[str] | str) -> list[Linear]:
        """The block's linear layers a LoRA with PEFT's target_modules `targets` adapts ("all-linear": every one)."""
        return [lin for lin in self.linears
                if targets == "all-linear" or any(matches(lin.name, t) for t in targets)]

    def lora_params(self, targets: list[str] | str, rank: int, dora: bool = False) -> int:
        """Trainable parameters of a LoRA: A (r x in) and B (out x r) per adapted layer, DoRA's magnitude (out)."""
        per_block = sum(rank * (lin.inputs + lin.outputs) + (lin.outputs if dora else 0)
                        for lin in self.targeted(targets))
        return per_block * self.layers


def architecture(model: nn.Module) -> Architecture:
    """The shapes of a causal LM (built on the meta device, or loaded): its config, its first decoder block's linear
    layers, and its parameter counts (the model's own `parameters()`, so tied weights count once)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    blocks = decoder_blocks(inner)
    if blocks is None:
        raise ValueError(f"{type(inner).__name__}: no list of decoder blocks found")  # preflight refuses it first
    hidden = _first(config, "hidden_size", "n_embd")
    heads = _first(config, "num_attention_heads", "n_head")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    head = inner.get_output_embeddings()
    embedding_ids = {id(p) for m in inner.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    unique = {id(p): p for p in inner.parameters()}  # parameters() yields a tied weight once
    return Architecture(
        model_type=getattr(config, "model_type", ""), layers=len(blocks), hidden=hidden, heads=heads,
        kv_heads=kv_heads, head_dim=head_dim, intermediate=intermediate, vocab=config.vocab_size,
        params=sum(p.numel() for p in unique.values()),
        block_params=sum(p.numel() for p in blocks[0].parameters()),
        input_embedding_params=sum(unique[i].numel() for i in embedding_ids - head_ids if i in unique),
        head_params=sum(unique[i].numel() for i in head_ids - embedding_ids if i in unique),
        groups=_groups(getattr(config, "model_type", ""), blocks[0]))


def _first(config, *keys: str) -> int:
    for key in keys:
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"{type(config).__name__} has none of {keys}")


def _groups(model_type: str, block: nn.Module) -> tuple[Group, ...]:
    """The block's linear layers grouped by the tensor they read, from ftlab's targets table: the attention's
    inputs are every attn layer but its last (o_proj), the MLP's every mlp layer but its last (down_proj)."""
    linears = [Linear(name, *in_out(m)) for name, m in block.named_modules()
               if isinstance(m, nn.Linear) or is_conv1d(m)]
    table = TARGETS.get(model_type)
    if table is None:
        return tuple(Group("other", (lin,)) for lin in linears)
    kinds = {"attn_in": table.attn[:-1], "attn_out": table.attn[-1:], "mlp_in": table.mlp[:-1],
             "mlp_out": table.mlp[-1:]}
    groups = []
    for kind, names in kinds.items():
        members = tuple(lin for lin in linears if any(matches(lin.name, n) for n in names))
        if members:
            groups.append(Group(kind, members))
    rest = [lin for lin in linears if not any(lin in g.linears for g in groups)]
    return tuple(groups) + tuple(Group("other", (lin,)) for lin in rest)


# ----------------------------------------------------------------------------- how a run trains


@dataclass(frozen=True)
class Setup:
    """How a run trains, as far as its memory goes (ftlab.plan.fit.setup reads it off a run config)."""

    method: str  # full | lora | qlora
    trainable: int  # trainable parameters
    weight_bytes: int  # the weights' dtype (a LoRA's frozen base), and the residual stream's: 4 fp32, 2 bf16
    master_bytes: int  # the trainable weights' dtype, their gradients' and optimizer states' (LoRA: fp32 adapters)
    compute_bytes: int  # linear layers and attention: 2 under bf16 autocast, else the weights' dtype
    optimizer: str  # adamw (two states per weight) | lionw (one)
    micro_batch: int
    seq_len: int
    checkpointing: bool
    chunked: bool  # the chunked loss (no full-vocabulary logits)
    processes: int = 1  # FSDP shards weights, gradients and optimizer state over them (1: not sharded)
    sharded: bool = False  # under FSDP (even on one process)
    lora_targets: frozenset[str] = frozenset()  # names of the block's linear layers with an adapter
    rank: int = 0
    dropout: float = 0.0
    fused_lora: bool = True  # ftlab.lora_fused: the adapter computes in the compute dtype; else PEFT's, in fp32
    embeddings_train: bool = True  # the input embeddings get gradients (full FT without freeze_embeddings)
    head_trains: bool = True
    mask_bytes: int = 1  # a dropout mask's element: 1 (bool) on CUDA, the compute dtype's size on the CPU
    attention_mask: bool = False  # a (B, 1, T, T) boolean mask per micro-batch (IFT: padding or packing)
    base_bytes: int | None = None  # QLoRA: its 4-bit base's bytes (methods.qlora_base_bytes); else frozen weights
    # take weight_bytes each

    @property
    def full(self) -> bool:
        return self.method == "full"

    @property
    def optimizer_states(self) -> int:
        return 1 if self.optimizer == "lionw" else 2

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch: every position counts (padding is computed too)."""
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class Memory:
    """Predicted bytes on one device. The peak is the largest of three moments: the start of the backward pass
    (everything at once: the activations, the loss's tensors, the gradients of the micro-batches before), the
    optimizer's step, and the held-out evaluation (no gradients, full logits of one micro-batch)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float  # kept by the forward pass for the backward pass (under checkpointing: the blocks' inputs)
    backward: float  # what the backward pass adds while they are held: a block recomputed, gradient buffers
    logits: float  # the loss's extra tensors at the start of the backward pass
    evaluation: float  # the held-out evaluation's logits and one block's work, no gradients
    step: float  # the optimizer step's temporaries

    @property
    def training(self) -> float:
        """At the start of the backward pass, or at the last block's (the loss's tensors are freed by then)."""
        return self.weights + self.gradients + self.optimizer + self.activations + max(self.backward, self.logits)

    @property
    def peak(self) -> float:
        return max(self.training, self.weights + self.optimizer + self.evaluation,
                   self.weights + self.gradients + self.optimizer + self.step)


def predict(arch: Architecture, s: Setup) -> Memory:
    """The bytes a run of `arch` trained as `s` needs on one device."""
    n = s.processes if s.sharded else 1
    residual, compute = s.weight_bytes, s.compute_bytes
    if s.sharded and compute < residual:  # FSDP's mixed precision: bf16 weights compute, so the stream is bf16
        residual = compute
    frozen = arch.params - (s.trainable if s.full else 0)  # a LoRA's adapters are parameters beyond the base's
    base = frozen * s.weight_bytes if s.base_bytes is None else s.base_bytes
    weights = (s.trainable * s.master_bytes + base) / n
    gradients = s.trainable * s.master_bytes / n
    optimizer = s.trainable * s.master_bytes * s.optimizer_states / n
    if s.sharded:  # gathered in the compute dtype: the root (embeddings, final norm, head), two blocks (the one
        # computing, the next prefetched), and one block's gradients before they are reduce-scattered
        root = arch.params - arch.layers * arch.block_params
        weights += (root + 2 * arch.block_params) * compute
        gradients += arch.block_params * compute if s.full else 0
    ctx = _Context(arch, s, residual)
    tokens = s.tokens
    block = ctx.block(first=False)
    top = _model_level(ctx) * tokens + _per_micro_batch(arch, s, residual) + ctx.head_copy()
    copies = ctx.weight_copies()  # bytes per block, per micro-batch
    work = _backward_work(ctx) * tokens
    if s.checkpointing:  # each block keeps its input; the one recomputed keeps its full set while it runs backward
        activations = arch.layers * residual * arch.hidden * tokens + top
        backward = block * tokens + copies + work
    else:
        first = ctx.block(first=True)
        activations = (first + (arch.layers - 1) * block) * tokens + top + arch.layers * copies
        backward = work
    step = s.trainable * s.master_bytes / n if s.optimizer == "lionw" else 0.0  # LionW's update, one per weight
    return Memory(weights, gradients, optimizer, activations, backward, _loss_transient(ctx) * tokens,
                  _evaluation(ctx) * tokens, step)


# ----------------------------------------------------------------------------- what a block keeps, per token


class _Context:
    """The dtypes and trainability one block's bytes depend on."""

    def __init__(self, arch: Architecture, s: Setup, residual: int):
        self.arch, self.s = arch, s
        self.R = residual  # the residual stream (and a norm's output)
        self.A = s.compute_bytes  # linear layers, attention, activation functions
        # PEFT's own LoRA forward (GPT-2's Conv1D layers, DoRA, fused_lora off) computes the adapter in fp32
        self.adapter = self.A if s.fused_lora and arch.model_type != "gpt2" else F32

    def block(self, first: bool) -> float:
        """Bytes per token one decoder block keeps for backward; `first`: the block reading the embeddings, which
        need no gradient unless they train."""
        family = _BLOCKS.get(self.arch.model_type, _llama)
        return family(self, first)

    def norm(self, width: int, rows: int, in_bytes: int, input_grad: bool, layer_norm: bool = False) -> float:
        """An RMSNorm (LayerNorm) over `width` numbers in `rows` groups per token: its fp32 input (the input
        itself, or a copy of a bf16 one) and its fp32 statistics when the input needs a gradient (LayerNorm: mean
        and rstd); the normalised input, for the weight's gradient, when the weights train."""
        stats = 2 * rows if layer_norm else rows
        kept = (F32 * width + F32 * stats) if input_grad else 0
        if self.s.full and not layer_norm:  # LayerNorm's weight gradient reuses its saved input and statistics
            kept += in_bytes * width
        return kept

    def linear_input(self, group: Group, x_bytes: int, kept: bool, input_grad: bool = True) -> float:
        """Bytes per token the linear layers of `group` keep of the tensor x they read (dtype x_bytes); `kept`: x
        is kept anyway by another op. A trained weight's gradient needs x in the compute dtype (autocast casts an
        fp32 x once per layer); a LoRA adapter keeps dropout(x), the dropout's mask when x needs a gradient, and
        u = dropout(x)·Aᵀ; a frozen layer without an adapter keeps nothing (its input's gradient needs only W)."""
        s, w, A = self.s, group.width, self.A
        if s.full:
            if x_bytes == A:
                return 0.0 if kept else A * w
            return len(group.linears) * A * w
        adapted = [lin for lin in group.linears if lin.name in s.lora_targets]
        if not adapted:
            return 0.0
        a = self.adapter
        total = len(adapted) * a * s.rank  # u
        if s.dropout > 0:
            mask = s.mask_bytes if a == A else F32
            return total + len(adapted) * (a * w + (mask * w if input_grad else 0))
        if x_bytes == a:
            return total + (0.0 if kept else a * w)
        return total + len(adapted) * a * w  # each layer casts x to the adapter's dtype

    def weight_copies(self) -> float:
        """Bytes per block, per micro-batch: autocast's bf16 copies of fp32 weights, kept for the backward pass
        (full FT without FSDP; LoRA: its fp32 adapters, which the fused layer casts once per call)."""
        if self.A >= F32 or self.s.sharded:
            return 0.0
        if self.s.full:
            return self.A * self.arch.block_linear_params
        adapted = [lin for lin in self.arch.linears if lin.name in self.s.lora_targets]
        return self.A * self.s.rank * sum(lin.inputs + lin.outputs for lin in adapted)

    def head_copy(self) -> float:
        """Bytes per micro-batch: autocast's bf16 copy of an fp32 output head that trains."""
        if self.A >= F32 or self.s.sharded or not (self.s.full and self.s.head_trains):
            return 0.0
        return self.A * self.arch.vocab * self.arch.hidden

    def group(self, kind: str) -> Group | None:
        return next((g for g in self.arch.groups if g.kind == kind), None)

    def linears(self, kind: str, x_bytes: int, kept: bool, input_grad: bool = True) -> float:
        group = self.group(kind)
        return self.linear_input(group, x_bytes, kept, input_grad) if group is not None else 0.0

    def others(self) -> float:
        """Linear layers outside the table (an unknown architecture): each keeps its input once."""
        return sum(self.linear_input(g, self.R, False) for g in self.arch.groups if g.kind == "other")


def _llama(c: _Context, first: bool, qk_norm: int = 0, fused: bool = False, o_copy: bool = False) -> float:
    """Llama, Mistral, Qwen2 (and Qwen3, OLMo-2, Gemma, Phi-3 below): RMSNorm, RoPE, SDPA, a gated MLP.
    qk_norm: RMSNorms over q and k (Qwen3 per head: `heads + kv_heads` statistics; OLMo-2 over the whole width: 2);
    fused: one projection for q, k and v whose output v still views (Phi-3); o_copy: o_proj reads a copy of the
    attention's output, not the output itself."""
    a, A, R = c.arch, c.A, c.R
    d, q, kv, ffn = a.hidden, a.q_width, a.kv_width, a.intermediate
    grad_in = not first or c.s.embeddings_train
    kept = c.norm(d, 1, R, grad_in)
    kept += c.linears("attn_in", R, False, grad_in)
    if qk_norm:
        kept += c.norm(q + kv, qk_norm, A, True)
    kept += A * (q + 2 * kv) + (A * (q + 2 * kv) if fused else 0)  # q and k after RoPE, v (and the fused output)
    kept += A * q + F32 * a.heads  # the attention's output and its log-sum-exp
    kept += c.linears("attn_out", A, not o_copy)
    kept += c.norm(d, 1, R, True)
    kept += c.linears("mlp_in", R, False)
    kept += 3 * A * ffn  # gate (the activation's input), the activation's output, up
    kept += c.linears("mlp_out", A, False)
    return kept + c.others()


def _gpt_neox(c: _Context, first: bool) -> float:
    """GPT-NeoX: LayerNorms, fused q/k/v with partial RoPE, attention and MLP in parallel on the block's input."""
    a, A, R = c.arch, c.A, c.R
    d, q, kv, ffn = a.hidden, a.q_width, a.kv_width, a.intermediate
    grad_in = not first or c.s.embeddings_train
    kept = c.norm(d, 1, R, grad_in, layer_norm=True) + (2 * F32 if grad_in else 0)  # both norms read x
    kept += c.linears("attn_in", R, False, grad_in)
    kept += A * (q + 2 * kv) + A * (q + kv)  # the fused projection (v views it), q and k after RoPE
    kept += A * q + F32 * a.heads
    kept += c.linears("attn_out", A, False)  # dense reads a copy of the attention's output
    kept += c.linears("mlp_in", R, False, grad_in)
    kept += A * ffn  # GELU's input
    kept += c.linears("mlp_out", A, False)
    return kept + c.others()


def _gpt2(c: _Context, first: bool) -> float:
    """GPT-2: LayerNorms, fused c_attn (q, k, v view its output), no RoPE, the tanh GELU written out in Python
    (its input, x³'s input, tanh's output and two products kept)."""
    a, A, R = c.arch, c.A, c.R
    d, q, kv, ffn = a.hidden, a.q_width, a.kv_width, a.intermediate
    grad_in = not first or c.s.embeddings_train
    kept = c.norm(d, 1, R, grad_in, layer_norm=True)
    kept += c.linears("attn_in", R, False, grad_in)
    kept += A * (q + 2 * kv) + A * q + F32 * a.heads  # the fused projection, the attention's output, log-sum-exp
    kept += c.linears("attn_out", A, True)
    kept += c.norm(d, 1, R, True, layer_norm=True)
    kept += c.linears("mlp_in", R, False)
    kept += 4 * A * ffn
    kept += c.linears("mlp_out", A, False)
    return kept + c.others()


_BLOCKS = {
    "llama": _llama, "mistral": _llama, "qwen2": _llama, "gemma": _llama,
    "qwen3": lambda c, first: _llama(c, first, qk_norm=c.arch.heads + c.arch.kv_heads),
    "olmo2": lambda c, first: _llama(c, first, qk_norm=2),
    "phi3": lambda c, first: _llama(c, first, fused=True, o_copy=True),
    "gpt_neox": _gpt_neox,
    "gpt2": _gpt2,
}
KNOWN_BLOCKS = tuple(_BLOCKS)  # others are counted as a Llama block (an estimate the plan says it is)


def _model_level(c: _Context) -> float:
    """Bytes per token kept outside the blocks: the final norm, the head's input (when it trains), the loss's
    fp32 log-probabilities (full path) or the labelled hidden states (chunked), the targets and token ids."""
    a, s = c.arch, c.s
    kept = c.norm(a.hidden, 1, c.R, True, layer_norm=a.model_type in ("gpt2", "gpt_neox"))
    if s.head_trains:
        kept += c.A * a.hidden
    kept += c.R * a.hidden if s.chunked else F32 * a.vocab
    kept += 8 + (8 if s.embeddings_train else 0)  # int64 targets, token ids
    return kept


def _per_micro_batch(arch: Architecture, s: Setup, residual: int) -> float:
    """Bytes per micro-batch shared by every block: RoPE's cos and sin per position, the attention mask."""
    rope = 2 * s.seq_len * arch.head_dim * residual
    return rope + (s.micro_batch * s.seq_len * s.seq_len if s.attention_mask else 0)


def _loss_transient(c: _Context) -> float:
    """Bytes per token the loss adds at the start of the backward pass: the gradient of the log-probabilities and
    of the logits, fp32 (full path); the chunked loss: one chunk's recomputed logits, spread over the micro-batch."""
    from ftlab.loss import CHUNK

    if not c.s.chunked:
        return 2 * F32 * c.arch.vocab
    chunk = min(CHUNK, c.s.tokens)
    return (2 * c.A + 4 * F32) * c.arch.vocab * chunk / c.s.tokens


def _backward_work(c: _Context) -> float:
    """Bytes per token a block's backward pass allocates while its saved tensors are still held: the gradient of
    the residual stream coming in and the one going out."""
    return 2 * c.R * c.arch.hidden


def _evaluation(c: _Context) -> float:
    """Bytes per token of the held-out evaluation (no gradients): the logits, their fp32 copy and the
    log-probabilities of one micro-batch, and the block computing."""
    a = c.arch
    logits = (c.A + 2 * F32 if c.A < F32 else 2 * F32) * a.vocab  # an fp32 run's .float() is no copy
    return logits + 2 * c.R * a.hidden + 2 * c.A * a.intermediate
