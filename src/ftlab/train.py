"""The one training loop, for every method: set LR, accumulate micro-batches, clip, step, log, checkpoint.

    ftlab train configs/examples/tiny-lora.yaml --out runs/tiny-lora train.lr=1e-3

Full FT and LoRA differ only in which parameters `apply_method` leaves trainable. A run killed at any moment
and started again with the same command resumes from its last saved state and ends with the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from time import monotonic

import torch
import torch.nn.functional as F

from ftlab import distributed, domains, lora_fused, state
from ftlab.architectures import decoder_blocks
from ftlab.batches import CPTSteps, IFTSteps, checkpoint_due, count_inputs, make_plan, stack
from ftlab.builtin import BUILTIN_PREFIX
from ftlab.checkpoint import save_checkpoint
from ftlab.config import OutputConfig, RunConfig
from ftlab.data import (IGNORE, PackedText, collate, load_cpt_eval, load_ift, load_text_sample, model_inputs,
                        pack_examples, replay_examples)
from ftlab.distributed import SINGLE, World
from ftlab.errors import ConfigError, FtlabError, TrainingError
from ftlab.io import fresh_dir, publish_dir
from ftlab.loss import chunked_loss_sum, target_index, with_targets
from ftlab.loss import supports as supports_chunked_loss
from ftlab.methods import apply_method, count_params, describe, param_groups
from ftlab.model import (BASE_4BIT, load_model, nf4_record, prepare_base, resolve_device, resolve_dtype,
                         resolve_precision)
from ftlab.optim import lr_factor, make_optimizer, set_lr
from ftlab.plan.fit import fit_run
from ftlab.preflight import preflight_run
from ftlab.progress import CostMeter, Progress
from ftlab.rundir import INFO, RunDir
from ftlab.weights import check_files


@dataclass
class StepResult:
    loss: float  # mean loss per target token over the whole global batch
    grad_norm: float


def autocast_for(cfg: RunConfig, device: torch.device):
    if resolve_precision(cfg.train.precision, device) == "bf16-autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_chunked_loss(cfg: RunConfig, model, device: torch.device) -> bool:
    """train.loss: chunked (ftlab.loss: no full-vocabulary logits), full, or auto (chunked on CUDA where exact)."""
    if cfg.train.loss == "full":
        return False
    if not supports_chunked_loss(model):
        if cfg.train.loss == "chunked":
            raise FtlabError("train.loss: chunked needs logits = lm_head(last hidden state) (no soft-capping or "
                             "logit scale); this model's head is different: use train.loss=full")
        return False
    return cfg.train.loss == "chunked" or device.type == "cuda"


SIDE_EFFECTS = "skip_fwd_side_effects_in_bwd_under_checkpoint"  # torch._dynamo's setting (see speed_options)


def speed_options(model, cfg: RunConfig) -> None:
    """Fused LoRA layers, Liger kernels, activation checkpointing and torch.compile of the decoder blocks, in
    place; the numerics are unchanged.

    With train.compile, torch's compiled code of earlier runs in this process is dropped first (torch.compiler.reset):
    every block of every model shares one function, whose 8 compiled versions (torch's recompile limit) the first
    three runs of a study filled, so later runs trained uncompiled. Under activation checkpointing, dynamo is set
    (process-wide) to trace a block's forward whose side effects are not replayed by the backward's recompute:
    transformers' output-capturing hooks set a context variable there, which otherwise broke every block's graph."""
    if cfg.method.adapter and cfg.train.fused_lora:  # a no-op on QLoRA's 4-bit layers (PEFT's own forward)
        lora_fused.enable(model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if cfg.train.liger:
        _apply_liger(inner)
    if cfg.train.activation_checkpointing is True:  # auto is resolved by ftlab.plan.fit before a run trains
        if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.2x names it so
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.compile:
        blocks = decoder_blocks(inner)
        if blocks is None:  # preflight refuses this before a run starts
            raise FtlabError("train.compile: no list of decoder blocks found in this model; set train.compile=false")
        torch.compiler.reset()
        if cfg.train.activation_checkpointing and hasattr(torch._dynamo.config, SIDE_EFFECTS):
            setattr(torch._dynamo.config, SIDE_EFFECTS, True)
        for block in blocks:
            block.compile()


def compiled_frames() -> int:
    """Frames torch.compile has compiled in this process so far (after a reset: since it)."""
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


def check_compiled(cfg: RunConfig, frames_before: int) -> None:
    """After a run's first step with train.compile: say so when nothing was compiled (a graph break in every block,
    an unsupported model), so a run does not train uncompiled without a word."""
    from torch._dynamo.utils import counters

    if not cfg.train.compile or compiled_frames() > frames_before:
        return
    reasons = [r.splitlines()[0] for r in counters["graph_break"]]
    print(f"ftlab: train.compile: torch.compile compiled no decoder block in the first step"
          f"{' (graph break: ' + reasons[0] + ')' if reasons else ''}; the run trains uncompiled", file=sys.stderr,
          flush=True)


def check_liger(cfg: RunConfig, device: torch.device) -> None:
    """train.liger needs the liger-kernel package and CUDA where the run trains: checked when training starts
    (not when the config is read, which may happen on a CPU-only Ray head or a machine without the package)."""
    import importlib.util

    if not cfg.train.liger:
        return
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("train.liger: Liger kernels are not installed where this run trains: pip install "
                          "liger-kernel (CUDA only), or set train.liger=false")
    if device.type != "cuda":
        raise ConfigError(f"train.liger: Liger's kernels run on CUDA only and this run trains on {device}; set "
                          "train.liger=false")


def _apply_liger(model) -> None:
    """Liger's exact Triton kernels for RMSNorm, RoPE and SwiGLU on this model instance (its cross-entropy stays
    ftlab's: train.loss); the LoRA layers inside the MLP are still called by Liger's SwiGLU."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance  # checked by check_liger

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


def prepare(model, cfg: RunConfig, device: torch.device, world: World = SINGLE):
    """(model, trainable params, optimizer, autocast, chunked loss?) as a run trains: the speed options applied,
    sharded under torchrun, the optimizer over the (sharded) parameters. The benchmarks time exactly this."""
    chunked = use_chunked_loss(cfg, model, device)
    speed_options(model, cfg)
    if world.distributed:
        bf16 = resolve_precision(cfg.train.precision, device) == "bf16-autocast"
        model = distributed.shard(model, device, world, torch.bfloat16 if bf16 else None)
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    return model, params, make_optimizer(groups, cfg.train), autocast_for(cfg, device), chunked


def token_loss_sum(model, batch: dict[str, torch.Tensor], autocast, chunked: bool = False) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions of one micro-batch, and their count."""
    if chunked:
        return chunked_loss_sum(model, batch, autocast)
    with autocast:
        # no KV cache: training never decodes, and a cache would make every compiled block recompile
        logits = model(**model_inputs(batch), use_cache=False).logits  # (B, T, V)
    # position t predicts token t+1: shift the labels, not the logits, so the (B, T, V) logits are never copied
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (B, T)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, target_index(batch).numel()


def train_step(model, micro: list[dict[str, torch.Tensor]], optimizer, params, grad_clip: float, autocast,
               chunked: bool = False, world: World = SINGLE) -> StepResult:
    """One optimizer step over the micro-batches of a global batch; the loss is normalised over all of it.

    With several processes each runs its share of the micro-batches (distributed.my_share); FSDP averages the
    gradients over processes, so each scales its loss by their number to get the single-process sum, and
    reduce-scatters them after every micro-batch (each process holds only its shard of the gradients).
    The loss and the gradient norm stay on the device until one read after the backward passes, before the
    update (micro-batches made by `with_targets` carry their labelled positions, so nothing else is read)."""
    n_targets = max(1, sum(target_index(b).numel() for b in micro))
    share = distributed.my_share(micro, world)
    device = share[0][0]["input_ids"].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for batch, weight in share:
        loss, _ = token_loss_sum(model, batch, autocast, chunked)
        (loss * (weight * world.size / n_targets)).backward()
        total += loss.detach().double() * weight
    total = distributed.all_sum_(total, world)
    norm = distributed.full(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf")))
    loss_sum, norm = torch.stack([total, norm.double().to(device)]).tolist()  # the step's one device sync
    if not (math.isfinite(loss_sum) and math.isfinite(norm)):
        raise TrainingError(f"non-finite loss or gradient (loss {loss_sum / n_targets}, grad norm {norm}); "
                            "the weights were not updated. Try a lower train.lr or more warmup.")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum / n_targets, norm)


@torch.no_grad()
def check_packing_isolates(model, autocast, device: torch.device) -> None:
    """data.packing relies on the model building a block-diagonal causal mask from restarting position_ids. Check it
    on two short examples before training: the second example's logits, packed behind the first, must equal its
    logits alone far more closely than they equal its logits when it attends to the first; else refuse."""
    was_training = model.training
    model.eval()
    first, second = [3, 4, 5, 6, 7], [8, 9, 10]
    ids = torch.tensor([first + second], device=device)  # (1, 8)
    restart = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)  # (1, 8)
    with autocast:
        packed = model(input_ids=ids, position_ids=restart, use_cache=False).logits[0, len(first):].float()
        crossed = model(input_ids=ids, use_cache=False).logits[0, len(first):].float()  # attends to the first
        alone = model(input_ids=ids[:, len(first):], use_cache=False).logits[0].float()
    model.train(was_training)
    isolated, leaked = float((packed - alone).abs().max()), float((crossed - alone).abs().max())
    if leaked > 0 and isolated > 0.1 * leaked:
        raise ConfigError(f"data.packing: this model ({type(model).__name__}) lets packed examples attend to each "
                          f"other (logit difference {isolated:.3g} packed vs alone, {leaked:.3g} unpacked); train it "
                          "with data.packing=false")


@torch.no_grad()
def eval_loss(model, batches: list[dict[str, torch.Tensor]], autocast) -> float:
    """Mean next-token loss per labelled token on held-out batches (dropout off); one device read at the end."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss, n = token_loss_sum(model, batch, autocast)
        total, count = loss.double() + total, count + n
    model.train(was_training)
    return float(total) / max(count, 1)


@dataclass
class HeldOut:
    """What a run measures on held-out data as it trains, as micro-batches on the device: the learning data's loss
    (eval_loss) and, with data.source_eval, the source text's (source_loss: the forgetting measure)."""

    learning: list[dict[str, torch.Tensor]]
    source: list[dict[str, torch.Tensor]]

    def measure(self, model, autocast) -> dict:
        losses = {"eval_loss": round(eval_loss(model, self.learning, autocast), 6) if self.learning else None}
        if self.source:
            losses["source_loss"] = round(eval_loss(model, self.source, autocast), 6)
        return losses


def source_batches(cfg: RunConfig, tokenizer) -> list[dict[str, torch.Tensor]]:
    """The fixed sample of source text whose loss measures forgetting (data.source_eval), in micro-batches; [] when
    unset."""
    if cfg.data.source_eval is None:
        return []
    seqs = load_text_sample(cfg.data.source_eval, cfg.data, tokenizer, cfg.train.seed)
    if not seqs:
        raise ConfigError(f"data.source_eval: {cfg.data.source_eval} holds no text")
    return [stack(seqs[i:i + cfg.train.micro_batch]) for i in range(0, len(seqs), cfg.train.micro_batch)]


def crossed_budget(budget: float | None, base: float | None, losses: dict) -> str | None:
    """Why the run stops here, when its source loss has risen more than train.stop_at_forgetting over the base's;
    else None."""
    now = losses.get("source_loss")
    if budget is None or base is None or now is None or now - base <= budget:
        return None
    return f"source loss rose {now - base:.4f} nats/token over the base's ({base:.4f}), past the budget {budget}"


def build_data(cfg: RunConfig, tokenizer):
    """(step source, held-out micro-batches) for the regime."""
    pad = tokenizer.pad_token_id
    mb = cfg.train.micro_batch
    if cfg.data.regime == "ift":
        train, held_out = load_ift(cfg.data, tokenizer, cfg.train.seed)
        replayed = replay_examples(cfg.data, tokenizer, cfg.train.seed, len(train))
        if replayed:
            print(f"ftlab: replay: {len(replayed)} sequences of {cfg.data.replay.source} mixed into {len(train)} "
                  f"examples ({len(replayed) / (len(train) + len(replayed)):.1%})", flush=True)
            train = train + replayed
        if cfg.data.packing:  # held-out examples stay one per sequence: their loss per token is the same either way
            n = len(train)
            train = pack_examples(train, cfg.data.seq_len, cfg.train.seed)
            print(f"ftlab: packed {n} examples into {len(train)} sequences of at most {cfg.data.seq_len} tokens "
                  f"({n / len(train):.2f} per sequence)", flush=True)
        eval_batches = [collate(held_out[i:i + mb], pad) for i in range(0, len(held_out), mb)]
        return IFTSteps(train, cfg, pad), eval_batches
    packed = PackedText(cfg.data, tokenizer, "train", cfg.train.seed)
    replay = None
    if cfg.data.replay.fraction > 0:
        source = replace(cfg.data, path=cfg.data.replay.source, eval_path=None, eval_fraction=0.0, text_field="text")
        replay = PackedText(source, tokenizer, "train", cfg.train.seed)
    seqs = load_cpt_eval(cfg.data, tokenizer, cfg.train.seed)  # may be empty: eval_fraction 0 or tiny data
    eval_batches = [stack(seqs[i:i + mb]) for i in range(0, len(seqs), mb)]
    return CPTSteps(packed, cfg, replay), eval_batches


def to_device(micro: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Micro-batches (on the host) moved to the device, each with its labelled positions found first, on the host
    (loss.with_targets)."""
    return [{k: v.to(device, non_blocking=True) for k, v in with_targets(b).items()} for b in micro]


@dataclass
class Step:
    """One optimizer step's micro-batches, made ahead of time."""

    micro: list[dict[str, torch.Tensor]]  # on the training device, with their labelled positions
    tokens: int  # input tokens (non-padding), counted on the host
    loader: dict  # the step source's position after this step: what a state saved after it records


class Prefetch:
    """The step source read one step ahead in a background thread, so reading and tokenizing (CPT tokenizes as it
    reads) and the copy to the device overlap the step before instead of stalling the device between steps.

    It reads exactly `count` steps (no read past the run's end) and keeps the source's position after each, so a
    state saved after step k resumes at step k + 1 as without it. An error while reading is raised by `next` for
    the step it concerns."""

    def __init__(self, steps, count: int, device: torch.device):
        self.steps, self.left, self.device = steps, count, device
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftlab-prefetch")
        self.pending = self._submit()

    def _submit(self):
        if self.left == 0:
            return None
        self.left -= 1
        return self.pool.submit(self._read)

    def _read(self) -> Step:
        micro = self.steps.next_step()
        loader = copy.deepcopy(self.steps.state())
        if self.device.type == "cuda":
            micro = [{k: v.pin_memory() for k, v in b.items()} for b in micro]  # so the copy is asynchronous
        return Step(to_device(micro, self.device), count_inputs(micro), loader)

    def next(self) -> Step:
        step = self.pending.result()
        self.pending = self._submit()
        return step

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class StateSaver:
    """When a resumable state is due, and saving it: every output.resume_every steps, or (resume_every null, the
    default) once output.resume_minutes of training have passed since the last save, by rank 0's clock for every
    process.

    Saving a 1.1B full finetuning's state (13 GB) takes about as long as 150 of its steps, so a step count fit for
    one model wastes most of the time on another; an interval in time bounds both the loss on a kill and the share
    of time spent saving."""

    def __init__(self, output: OutputConfig, world: World, device: torch.device):
        self.every, self.seconds = output.resume_every, output.resume_minutes * 60
        self.world, self.device = world, device
        self.last = monotonic()

    def due(self, step: int) -> bool:
        if self.every is not None:
            return step % self.every == 0
        return distributed.agree(monotonic() - self.last >= self.seconds, self.world, self.device)

    def save(self, run: RunDir, step: int, model, optimizer, progress: dict, keep: bool) -> None:
        """The state after `step` (all ranks call it), on disk before any rank goes on; with `keep`, also copied to
        <run>/kept/ (a state other runs restart from: a CPT duration's own cooldown)."""
        state.save_state(run.state, step, model, optimizer, progress, self.world, self.device)
        distributed.barrier(self.world)
        if keep and self.world.main:
            state.keep_state(run.state, run.kept)
        self.last = monotonic()


def train(cfg: RunConfig) -> Path:
    """Train one run to the end (resuming if the directory holds a state); returns the run directory.

    Started by torchrun with several processes, the run is sharded over them with FSDP (ftlab.distributed)."""
    preflight_run(cfg, sharded=distributed.launched())  # before anything is written: a fixed config may reuse --out
    if not distributed.launched():
        device = resolve_device(cfg.train.device)
        check_liger(cfg, device)
        fitted = fit_run(cfg, device)  # the plan's choices (activation checkpointing, micro-batch), or exit 3
        with RunDir(cfg) as run:  # the config saved is the one given: `auto` is chosen again on a resume
            _train(fitted, run, SINGLE, device)
        return run.path
    world, device = distributed.init(cfg.train.device, cfg.train.collective_timeout_min)
    try:
        distributed.check_supported(cfg)  # before the run directory is written
        check_liger(cfg, device)
        fitted = fit_run(cfg, device, world.size, sharded=True)
        with RunDir(cfg, main=world.main) as run:
            distributed.barrier(world)  # rank 0 has checked and written the run directory
            _train(fitted, run, world, device)
    finally:
        distributed.close()
    return run.path


def _train(cfg: RunConfig, run: RunDir, world: World, device: torch.device) -> None:
    torch.manual_seed(cfg.train.seed)
    with distributed.main_first(world):  # rank 0 writes the tiny base and the built-in data; the others read them
        base_name = prepare_base(cfg.model, run.path)
        cfg = _materialize_builtin_data(cfg, run)
    # several processes: rank 0 reads the weights on the CPU, the others build the structure on the meta device;
    # sharding then gives each device 1/N of rank 0's weights (distributed.shard)
    load_on = device if not world.distributed else torch.device("cpu" if world.main else "meta")
    dtype = resolve_dtype(cfg.model, device, cfg.method.name == "full", cfg.train.precision)
    model, tokenizer = load_model(cfg.model, load_on, dtype, base_name, four_bit=cfg.method.name == "qlora")
    model = apply_method(model, cfg)
    pissa_init = _save_pissa_init(model, run) if cfg.method.adapter and cfg.method.init == "pissa" else None
    params_count = count_params(model)
    print(f"ftlab: {describe(cfg)} | {params_count}" +
          (f" | FSDP over {world.size} processes" if world.distributed else ""), flush=True)

    steps, eval_batches = build_data(cfg, tokenizer)
    plan = make_plan(cfg, steps)
    cost = CostMeter(run.cost, device, params_count.trainable, params_count.trainable + params_count.frozen) \
        if world.main else None
    model, params, optimizer, autocast, chunked = prepare(model, cfg, device, world)
    if world.distributed:  # the weights are rank 0's; from here each process draws its own dropout masks
        torch.manual_seed(cfg.train.seed * 1_000_003 + world.rank)
    if cfg.data.packing:
        check_packing_isolates(model, autocast, device)

    step, tokens, source_base, stopped = 0, 0, None, None
    saved = state.resumable_state(run.state, world, device)  # a damaged latest state: the one before it
    if saved is not None:
        progress = state.load_state(saved, model, optimizer, world, device, cfg.train.seed)
        step, tokens = progress["step"], progress["tokens"]
        source_base, stopped = progress.get("source_base"), progress.get("stopped")
        steps.load_state(progress["loader"])
        done = "already complete" if step >= plan.total_steps or progress.get("stopped") else "resuming"
        print(f"ftlab: {done}: {run.path} at step {step}/{plan.total_steps} ({tokens:,} tokens)", flush=True)
    run.truncate_log(step if saved is not None else -1)  # a fresh start clears a log left by a killed run
    held = HeldOut(to_device(eval_batches, device), to_device(source_batches(cfg, tokenizer), device))

    def save(directory: Path, step: int) -> None:
        info = {"step": step, "tokens": tokens, "epoch": step / plan.steps_per_epoch if plan.steps_per_epoch else None,
                "method": cfg.method.name, "base": base_name}
        if cfg.method.name == "qlora":  # how the base was loaded: evaluation and the spectrum do the same
            info[BASE_4BIT] = nf4_record(dtype)
        save_checkpoint(model, tokenizer, directory, info, pissa_init, world)

    run.write_plan(plan.total_steps, plan.tokens_per_step)
    print(f"ftlab: {plan.total_steps} steps of {cfg.train.global_batch} sequences "
          f"(~{plan.tokens_per_step:,.0f} tokens each), {len(held.learning)} held-out batches"
          + (f", {len(held.source)} of source text" if held.source else ""), flush=True)
    if step == 0 and (held.learning or held.source):  # the base model's held-out losses, for comparison
        base = held.measure(model, autocast)
        source_base = base.get("source_loss")
        run.log({"step": 0, "tokens": 0, **base})
    model.train()
    bar = Progress(plan.total_steps, initial=step) if world.main else None
    source = Prefetch(steps, plan.total_steps - step, device)
    states = StateSaver(cfg.output, world, device)
    frames, first = compiled_frames(), step
    if cost is not None:
        cost.training()
    window_tokens, window_start = 0, time.perf_counter()
    try:
        while step < plan.total_steps and not stopped:
            lr = set_lr(optimizer, lr_factor(step, plan.total_steps, cfg.train))
            batch = source.next()
            result = train_step(model, batch.micro, optimizer, params, cfg.train.grad_clip, autocast, chunked, world)
            if step == first:
                check_compiled(cfg, frames)
            tokens_before, tokens, step = tokens, tokens + batch.tokens, step + 1
            window_tokens += batch.tokens
            if cost is not None:
                cost.trained(batch.tokens)
            tok_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            record = {"step": step, "tokens": tokens, "loss": round(result.loss, 6), "lr": lr,
                      "grad_norm": round(result.grad_norm, 6), "tokens_per_s": round(tok_per_s, 1)}
            due = checkpoint_due(cfg, plan, step, tokens_before, tokens)
            if due or step == plan.total_steps or (cfg.train.eval_every and step % cfg.train.eval_every == 0):
                record.update(held.measure(model, autocast))
                if stopped := crossed_budget(cfg.train.stop_at_forgetting, source_base, record):
                    record["stopped"] = stopped
                    print(f"ftlab: stopping at step {step}: {stopped}", flush=True)
            last = step == plan.total_steps or stopped is not None
            if step % cfg.train.log_every == 0 or "eval_loss" in record:
                run.log(record)
            if bar is not None:
                bar.update(loss=f"{result.loss:.4f}", tok_s=f"{tok_per_s:,.0f}")
            saving = time.perf_counter()
            for value in due:
                save(run.checkpoint(cfg.train.unit, value), step)
            if last and cfg.output.save_final:
                save(run.final, step)
            keep = step in cfg.train.keep_states
            if last or due or keep or states.due(step):
                states.save(run, step, model, optimizer, {"tokens": tokens, "loader": batch.loader,
                                                          "source_base": source_base, "stopped": stopped}, keep)
                if cost is not None:
                    cost.saved(time.perf_counter() - saving)
                    cost.write()
                window_tokens, window_start = 0, time.perf_counter()  # saving time is not training time
    finally:
        source.close()
    if bar is not None:
        bar.close()
    if (step >= plan.total_steps or stopped) and cfg.output.save_final:
        damage = final_damage(run.final) if world.main else None
        if distributed.agree(damage is not None, world, device):  # every rank takes part in gathering it
            if damage:
                print(f"ftlab: {run.final} is damaged ({damage}); writing it again from the last state", flush=True)
            save(run.final, step)


def final_damage(final: Path) -> str | None:
    """What is wrong with a run's final/, checked as a load checks it (weights.check_files: every safetensors
    header, every file against the checksums its ftlab.json records); None when it is whole."""
    if not final.is_dir():
        return "missing"
    if not (final / INFO).exists():
        return f"{INFO} is missing"
    try:
        check_files(final)
    except FtlabError as e:
        return str(e)
    return None


def _materialize_builtin_data(cfg: RunConfig, run: RunDir) -> RunConfig:
    """Built-in data named in the config -> JSONL files of that domain in <run>/data: data.path builtin:<kind> (train
    and held-out), data.source_eval (held-out: the documents the source_loss task scores) and data.replay.source
    (train)."""
    data = cfg.data

    def written(name: str, split: str) -> str:
        kind = name.removeprefix(BUILTIN_PREFIX)
        path = run.builtin_data(kind, split)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            domains.write_jsonl(kind, split, path)
        return str(path)

    if data.path.startswith(BUILTIN_PREFIX):
        data = replace(data, path=written(data.path, "train"), eval_path=data.eval_path or written(data.path, "heldout"))
    if data.source_eval is not None and data.source_eval.startswith(BUILTIN_PREFIX):
        data = replace(data, source_eval=written(data.source_eval, "heldout"))
    if data.replay.fraction > 0 and data.replay.source.startswith(BUILTIN_PREFIX):
        data = replace(data, replay=replace(data.replay, source=written(data.replay.source, "train")))
    return replace(cfg, data=data)


def _save_pissa_init(model, run: RunDir) -> Path:
    """PiSSA's starting adapter, needed to convert later checkpoints to adapters of the original base."""
    directory = run.pissa_init
    if not (directory / "adapter_model.safetensors").exists():
        config = model.peft_config["default"]
        original = config.init_lora_weights
        config.init_lora_weights = True  # saved as a plain LoRA start, as PEFT's conversion expects
        tmp = fresh_dir(directory)
        model.save_pretrained(tmp)
        config.init_lora_weights = original
        publish_dir(tmp, directory)
    return directory
