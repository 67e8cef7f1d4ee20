"""The code paths a run takes on CUDA, run on the CPU through the same functions: torch.compile of every decoder
block, the bf16 frozen base with fp32 adapters, fused LoRA and the chunked loss under bf16 autocast, the sampler's
static-cache step compiled by Inductor, the fused AdamW kernel, FSDP's bf16 mixed precision (on gloo), and the
settings that choose them; and what `ftlab run` and train.liger ask of the machine that trains."""

import json
import os
import socket

import pytest
import torch

from conftest import tiny_config
from ftlab.config import ModelConfig, TrainConfig
from ftlab.errors import ConfigError
from ftlab.methods import apply_method
from ftlab.model import build_tiny, load_model, prepare_base, resolve_dtype
from ftlab.optim import make_optimizer
from ftlab.train import build_data, check_liger, eval_loss, prepare, train_step

CUDA = torch.device("cuda")  # constructing a device object needs no GPU
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine's cores are shared: OpenMP threads would wait on each other
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ train.compile: every block, compiled once


class CountingBackend:
    """A torch.compile backend that runs dynamo's graphs as traced, counting compiles and calls of compiled code
    (dynamo's guards and recompile limit are the same as with Inductor, at none of its compile time)."""

    def __init__(self):
        self.compiles = self.calls = 0

    def __call__(self, graph, example_inputs):
        self.compiles += 1

        def run(*args):
            self.calls += 1
            return graph.forward(*args)

        return run


@pytest.mark.parametrize("method,loss,graphs", [("full", "full", 1), ("lora", "full", 2), ("lora", "chunked", 2)])
def test_train_compile_compiles_every_block_of_a_12_layer_model(text, tmp_path, monkeypatch, method, loss, graphs):
    """Each forward calls compiled code once per block (12), from one graph all blocks share (LoRA: a second for
    block 0, whose input needs no gradient), and one more for held-out evaluation (no grad). A KV cache built by
    the training forward (use_cache from the model's config) made each block's guard check its own cache layer:
    8 compiles, torch's recompile limit, and blocks 9-12 ran uncompiled."""
    backend = CountingBackend()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: compile_(fn, *a, **{**k, "backend": backend}))
    torch._dynamo.reset()
    cfg = tiny_config(text, tmp_path / "run", "data.regime=cpt", f"method.name={method}", "method.rank=4",
                      "model.tiny.layers=12", "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32",
                      "train.compile=true", f"train.loss={loss}")  # CPT: all sequences seq_len long, one shape
    model, tokenizer = build_tiny(cfg.model.tiny)
    model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, CPU)
    steps, held_out = build_data(cfg, tokenizer)
    try:
        result = train_step(model, steps.next_step(), optimizer, params, 1.0, autocast, chunked)
        assert torch.isfinite(torch.tensor(result.loss))
        assert (backend.compiles, backend.calls) == (graphs, 12 * 2)  # 2 micro-batches, every block compiled
        eval_loss(model, held_out[:1], autocast)
        assert (backend.compiles, backend.calls) == (graphs + 1, 12 * 3)
    finally:
        torch._dynamo.reset()


def test_compile_with_activation_checkpointing_compiles_every_block(text, tmp_path, monkeypatch):
    """train.compile with train.activation_checkpointing: transformers' output-capturing hooks set a context variable
    inside each checkpointed block, a side effect dynamo refused to trace there, so no graph was compiled and every
    block ran eagerly. Now one graph serves every block, full FT and LoRA, and the losses are the eager ones."""
    from torch._dynamo.utils import counters

    backend = CountingBackend()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: compile_(fn, *a, **{**k, "backend": backend}))
    monkeypatch.setattr(torch._dynamo.config, "skip_fwd_side_effects_in_bwd_under_checkpoint", False)
    try:
        for method in ("full", "lora"):
            losses = {}
            for compiled in (False, True):
                backend.compiles = backend.calls = 0
                cfg = tiny_config(text, tmp_path / f"{method}-{compiled}", "data.regime=cpt", f"method.name={method}",
                                  "method.rank=4", "method.dropout=0", "model.tiny.layers=4",
                                  "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32",
                                  "train.activation_checkpointing=true", f"train.compile={str(compiled).lower()}")
                model, tokenizer = build_tiny(cfg.model.tiny)
                torch.manual_seed(0)  # LoRA's A: the same start both ways
                model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, CPU)
                steps, _ = build_data(cfg, tokenizer)
                losses[compiled] = [train_step(model, steps.next_step(), optimizer, params, 1.0, autocast).loss
                                    for _ in range(2)]
            assert (backend.compiles, backend.calls) == (1, 4 * 2 * 2), method  # 4 blocks, 2 micro-batches, 2 steps
            assert not counters["graph_break"]
            assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    finally:
        torch._dynamo.reset()


def test_every_run_of_a_study_process_trains_compiled(text, tmp_path, monkeypatch):
    """`ftlab run` trains its runs one after another in one process, and every decoder block of every run is the
    same function to torch.compile: full FT then LoRA r=2, 4 and 8 filled torch's 8 compiled versions of it, and
    the fourth run trained uncompiled. Each run now starts from a clean compile cache: every block call compiled."""
    backend = CountingBackend()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: compile_(fn, *a, **{**k, "backend": backend}))
    try:
        for i, (method, rank) in enumerate([("full", 4), ("lora", 2), ("lora", 4), ("lora", 8)]):
            backend.calls = 0
            cfg = tiny_config(text, tmp_path / str(i), "data.regime=cpt", f"method.name={method}",
                              f"method.rank={rank}", "model.tiny.layers=4", "model.tiny.hidden_size=16",
                              "model.tiny.intermediate_size=32", "train.compile=true")
            model, tokenizer = build_tiny(cfg.model.tiny)
            model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, CPU)
            steps, held_out = build_data(cfg, tokenizer)
            train_step(model, steps.next_step(), optimizer, params, 1.0, autocast, chunked)
            eval_loss(model, held_out[:1], autocast)
            assert backend.calls == 4 * 3, (method, rank)  # 4 blocks: 2 micro-batches and one held-out batch
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_fused_lora_compiles_to_one_graph_with_and_without_dropout(dropout):
    """Without dropout the fused LoRA function got the same tensor as its input and as the dropped-out input, which
    dynamo cannot trace: a graph break at every adapted layer (31 for 3 layers). Now one graph either way."""
    from torch._dynamo.utils import counters

    from ftlab import lora_fused
    from ftlab.config import TinyModelConfig

    from peft import LoraConfig, get_peft_model

    model, _ = build_tiny(TinyModelConfig(hidden_size=32, layers=3, heads=4, kv_heads=2, intermediate_size=64))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
    assert lora_fused.enable(model) == 3 * 7
    backend = CountingBackend()
    torch._dynamo.reset()
    counters.clear()
    try:
        ids = torch.randint(3, 200, (2, 8), generator=torch.Generator().manual_seed(0))
        torch.compile(model, backend=backend)(input_ids=ids, use_cache=False).logits.sum().backward()
        assert backend.compiles == 1 and not counters["graph_break"], dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------ precision: the weights' dtype


def test_the_frozen_base_is_bf16_only_where_the_run_computes_in_bf16():
    """model.dtype auto: a LoRA's frozen base is bf16 under bf16 autocast (auto on CUDA, or asked for), fp32 under
    train.precision fp32, on CUDA too (it was bf16 there whatever the precision); trained weights stay fp32."""
    auto = ModelConfig()
    assert resolve_dtype(auto, CUDA, trains_base=False) == torch.bfloat16  # precision auto
    assert resolve_dtype(auto, CUDA, trains_base=False, precision="fp32") == torch.float32
    assert resolve_dtype(auto, CUDA, trains_base=False, precision="bf16-autocast") == torch.bfloat16
    assert resolve_dtype(auto, CPU, trains_base=False) == torch.float32
    assert resolve_dtype(auto, CPU, trains_base=False, precision="bf16-autocast") == torch.bfloat16
    for device in (CPU, CUDA):
        for precision in ("auto", "fp32", "bf16-autocast"):
            assert resolve_dtype(auto, device, trains_base=True, precision=precision) == torch.float32
    assert resolve_dtype(ModelConfig(dtype="bfloat16"), CUDA, False, "fp32") == torch.bfloat16  # asked for


def test_precision_reaches_the_base_dtype_through_the_run_config(pairs, tmp_path, monkeypatch):
    """What _train loads the model with, for the config a user writes, on a (pretended) CUDA device."""
    import ftlab.train as train_module

    loaded = []
    monkeypatch.setattr(train_module, "resolve_device", lambda name: CUDA)
    monkeypatch.setattr(train_module, "load_model", lambda cfg, device, dtype, name, **_: loaded.append(dtype) or
                        (_ for _ in ()).throw(RuntimeError("stop after loading")))
    for precision, expected in (("fp32", torch.float32), ("auto", torch.bfloat16), ("bf16-autocast", torch.bfloat16)):
        cfg = tiny_config(pairs, tmp_path / precision, "method.name=lora", "method.rank=4",
                          f"train.precision={precision}")
        with pytest.raises(RuntimeError, match="stop after loading"):
            train_module.train(cfg)
        assert loaded.pop() == expected, precision


# ------------------------------------------------------------------ bf16 frozen base, fused LoRA, chunked loss


def lora_steps(pairs, tmp_path, name, *overrides, steps=3):
    """A LoRA run's first steps as _train sets them up (its base loaded in the resolved dtype): the losses and the
    model after them."""
    cfg = tiny_config(pairs, tmp_path / name, "method.name=lora", "method.rank=4", "method.dropout=0",
                      "train.lr=1e-2", *overrides)
    base = prepare_base(cfg.model, tmp_path / name)
    dtype = resolve_dtype(cfg.model, CPU, False, cfg.train.precision)
    model, tokenizer = load_model(cfg.model, CPU, dtype, base)
    model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, CPU)
    source, _ = build_data(cfg, tokenizer)
    losses = [train_step(model, source.next_step(), optimizer, params, 1.0, autocast, chunked).loss
              for _ in range(steps)]
    return losses, model, optimizer


@pytest.mark.parametrize("loss", ["full", "chunked"])
def test_lora_on_a_bf16_base_under_bf16_autocast_trains_like_fp32(pairs, tmp_path, loss):
    """The CUDA default for LoRA (bf16 frozen base, fp32 adapters, fused LoRA layers, the chunked loss, fused
    AdamW) on the CPU: adapters and their optimizer state stay fp32, the base bf16, and the losses follow the
    all-fp32 run's to bf16's precision."""
    reference, _, _ = lora_steps(pairs, tmp_path, "fp32", "train.precision=fp32", "train.loss=full")
    losses, model, optimizer = lora_steps(pairs, tmp_path, f"bf16-{loss}", "train.precision=bf16-autocast",
                                          f"train.loss={loss}")
    assert optimizer.defaults["fused"] is True
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if n not in trained)
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimizer.state.values())
    fused = type(model.base_model.model.model.layers[0].self_attn.q_proj).__name__
    assert fused.startswith("Fused")  # train.fused_lora: the layer ftlab runs on CUDA
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses == pytest.approx(reference, rel=2e-2)
    assert losses[-1] < losses[0]  # it learns


def test_the_chunked_loss_under_bf16_autocast_equals_the_full_loss():
    """train.loss auto is the chunked loss on CUDA: the same loss and gradients as the full path, under bf16."""
    from ftlab.config import TinyModelConfig
    from ftlab.train import token_loss_sum

    model, _ = build_tiny(TinyModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=2, intermediate_size=64))
    model.to(torch.bfloat16)
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    results = {}
    for chunked in (False, True):
        model.zero_grad()
        loss, n = token_loss_sum(model, batch, autocast, chunked)
        loss.backward()
        results[chunked] = (float(loss), n, model.lm_head.weight.grad.float().clone())
    assert results[True][1] == results[False][1] == 2 * 8
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-3)
    torch.testing.assert_close(results[True][2], results[False][2], rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ the sampler's compiled step, with Inductor


def test_the_static_cache_decode_step_compiled_by_inductor_decodes_as_model_generate(monkeypatch):
    """What `ftlab eval` runs on CUDA (a StaticCache, the decode step under torch.compile; there "reduce-overhead"
    adds CUDA graphs), with Inductor's CPU backend: every step runs compiled, and the greedy completions are
    model.generate's. About 10-20 s: Inductor compiles the step twice (first shapes, then dynamic rows)."""
    from ftlab.config import TinyModelConfig
    from ftlab.evaluate import sampler as sampler_module
    from ftlab.evaluate.lm import LM

    monkeypatch.setattr(sampler_module, "_COMPILED", {})  # a compiled step of this test's own, with Inductor
    model, tokenizer = build_tiny(TinyModelConfig(hidden_size=32, layers=1, heads=4, kv_heads=2,
                                                  intermediate_size=64, max_position=512))
    prompts = ["Question: 1+1?\nAnswer:", "Once upon a time", "x", "def add(a, b):\n    return", "The"]
    lm = LM(model, tokenizer, batch_size=3, cache="static", compile=True)  # batches of 3 rows, then 2
    ours = lm.generate(prompts, max_new_tokens=8)
    assert lm.sampler.compile and lm.sampler._step is sampler_module._COMPILED["cpu"]  # no fallback
    assert ours == LM(model, tokenizer, batch_size=3, sampler="hf").generate(prompts, max_new_tokens=8)


# ------------------------------------------------------------------ fused AdamW on the CPU


def test_adamw_is_fused_on_the_cpu_and_follows_the_foreach_update():
    """make_optimizer uses torch's fused AdamW kernel wherever torch has it (CUDA, and the CPU since 2.4); on the
    CPU it takes the foreach implementation's steps to float rounding."""
    torch.manual_seed(0)
    start = [torch.randn(37, 19), torch.randn(64)]
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    runs = {}
    for name in ("ftlab", "foreach"):
        params = [p.clone().requires_grad_(True) for p in start]
        if name == "ftlab":
            optimizer = make_optimizer([{"params": params, "lr": cfg.lr}], cfg)
            assert optimizer.defaults["fused"] is True
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                          weight_decay=cfg.weight_decay, foreach=True)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            optimizer.step()
        runs[name] = params
    for fused, reference in zip(runs["ftlab"], runs["foreach"]):
        torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ FSDP's bf16 mixed precision, on gloo


def _fsdp_worker(rank: int, port: int, pairs: str, out: str) -> None:
    """One of two processes: shard a LoRA model with ftlab's bf16 policy, record the dtype a block's adapter
    weight has while the block runs (FSDP has gathered it by then), train 3 steps; write what it saw to
    out/rank<r>.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ftlab import distributed

    world, device = distributed.init("cpu")
    try:
        cfg = tiny_config(pairs, f"{out}/run", *FSDP_SETTINGS)
        model, tokenizer = build_tiny(cfg.model.tiny)
        model.to(resolve_dtype(cfg.model, device, False, cfg.train.precision))
        model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, device, world)
        seen = []
        block = model.base_model.model.model.layers[0]
        adapter = block.self_attn.q_proj.lora_A["default"]  # an fp32 parameter: what it computes in is the policy's
        block.register_forward_pre_hook(lambda m, args: seen.append(str(adapter.weight.dtype)))
        source, _ = build_data(cfg, tokenizer)
        losses = [train_step(model, source.next_step(), optimizer, params, 1.0, autocast, chunked, world).loss
                  for _ in range(3)]
        kept = sorted({str(p.dtype) for p in params} | {str(s["exp_avg"].dtype) for s in optimizer.state.values()})
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"losses": losses, "compute": sorted(set(seen)), "state": kept}, f)
    finally:
        distributed.close()


FSDP_SETTINGS = ["method.name=lora", "method.rank=4", "method.dropout=0", "train.precision=bf16-autocast",
                 "train.global_batch=8", "train.micro_batch=4", "train.lr=1e-2", "train.loss=chunked"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_fsdp_bf16_mixed_precision_on_gloo_trains_like_one_process(pairs, tmp_path):
    """train.precision bf16-autocast under FSDP, with the chunked loss (both the CUDA defaults): the blocks compute
    with bf16 weights (the fp32 adapters too, all-gathered in bf16), the adapters' shards and optimizer state stay
    fp32, and the losses follow one process's bf16-autocast run."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(port, str(pairs), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    one, _, _ = lora_steps(pairs, tmp_path, "one", *FSDP_SETTINGS)
    for seen in ranks:
        assert seen["compute"] == ["torch.bfloat16"]  # the policy's param_dtype, not the fp32 the CPU used to get
        assert seen["state"] == ["torch.float32"]
        assert seen["losses"] == pytest.approx(one, rel=2e-2)


# ------------------------------------------------------------------ train.liger: checked where the run trains


def test_liger_is_checked_where_the_run_trains_not_where_the_config_is_read(pairs, tmp_path, monkeypatch):
    """A CPU-only Ray head accepts train.liger=true (a GPU worker trains it); the run refuses it at its start on a
    machine without CUDA or without the package, naming the key."""
    import importlib.util

    cfg = tiny_config(pairs, tmp_path / "run", "train.liger=true")  # validated here, a machine without CUDA
    with pytest.raises(ConfigError, match="train.liger"):
        tiny_config(pairs, tmp_path / "run", "train.liger=true", "train.device=cpu")  # a contradiction anywhere
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else
                        find_spec(name, *a))
    with pytest.raises(ConfigError, match="train.liger: Liger kernels are not installed"):
        check_liger(cfg, CUDA)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else
                        find_spec(name, *a))
    with pytest.raises(ConfigError, match="train.liger: .* CUDA only"):
        check_liger(cfg, CPU)
    check_liger(cfg, CUDA)  # package and CUDA: the run goes on


# ------------------------------------------------------------------ ftlab run: evaluation and training take turns

STUDY = """
name: turns
model: {name: tiny, tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 64}}
defaults:
  train: {global_batch: 8, micro_batch: 8, warmup: 1, lr: 1.0e-3}
  data: {regime: ift, seq_len: 32}
settings:
  - {name: first, data: {path: pairs.jsonl}, durations: [0.1]}
  - {name: second, data: {path: pairs.jsonl}, durations: [0.2]}
methods: [{name: full}]
forgetting: [source_cloze]
eval: {limit: 2}
analyses: {spectrum: false, kl: false, diversity: []}
"""


def test_the_evaluators_model_is_freed_before_a_later_run_trains(pairs, tmp_path, monkeypatch):
    """`ftlab run` evaluates each run after it trains; the evaluator's base model (bf16 on the GPU) must not stay
    resident while the next run trains. Every evaluator model made is checked when training starts."""
    import gc
    import weakref

    import ftlab.train as train_module
    from ftlab.evaluate import targets
    from ftlab.experiment.study import run_experiment

    made = []
    init = targets.Evaluator.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self.model))

    resident = []
    train = train_module.train

    def checking_train(cfg):
        gc.collect()
        resident.append(sum(ref() is not None for ref in made))
        return train(cfg)

    monkeypatch.setattr(targets.Evaluator, "__init__", recording_init)
    monkeypatch.setattr(train_module, "train", checking_train)
    (tmp_path / "turns.yaml").write_text(STUDY)  # beside the pairs fixture's pairs.jsonl
    run_experiment(tmp_path / "turns.yaml", tmp_path / "study", report=False)
    assert len(made) == 2  # the first run's evaluation made one, freed; the second run's evaluation another
    assert resident == [0, 0]


# ------------------------------------------------------------------ FSDP: sharded gradients, the chunked loss


def _gradient_bytes(model) -> int:
    """Bytes of gradient this process holds for the sharded model: its shards' gradients and whatever FSDP keeps
    unsharded between backward passes (an unsharded or accumulated gradient per parameter)."""
    total = 0
    for module in model.modules():
        group = getattr(module, "_get_fsdp_state", lambda: None)()
        group = getattr(group, "_fsdp_param_group", None)
        for param in group.fsdp_params if group is not None else []:
            unsharded = getattr(param, "_unsharded_param", None)
            held = [param.unsharded_accumulated_grad, unsharded.grad if unsharded is not None else None,
                    param.sharded_param.grad.to_local() if param.sharded_param.grad is not None else None]
            total += sum(t.numel() * t.element_size() for t in held if t is not None)
    return total


def _chunked_fsdp_worker(rank: int, port: int, pairs: str, out: str) -> None:
    """One of two processes: full FT in fp32 with the chunked loss, two micro-batches per process and step; writes
    the losses and, between a step's micro-batches, the gradient bytes held against the bytes of its weight shards."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import ftlab.train as train_module
    from ftlab import distributed

    world, device = distributed.init("cpu")
    try:
        cfg = tiny_config(pairs, f"{out}/run", *CHUNKED_FSDP)
        model, tokenizer = build_tiny(cfg.model.tiny)
        model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, device, world)
        shards = sum(p.to_local().numel() * p.element_size() for p in params)
        held, loss_sum = [], train_module.token_loss_sum

        def measured(*args, **kwargs):  # called before each micro-batch's forward
            held.append(_gradient_bytes(model))
            return loss_sum(*args, **kwargs)

        train_module.token_loss_sum = measured
        source, _ = build_data(cfg, tokenizer)
        losses = [train_step(model, train_module.to_device(source.next_step(), device), optimizer, params, 1.0,
                             autocast, chunked, world).loss for _ in range(3)]
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"losses": losses, "chunked": chunked, "held": held, "shards": shards}, f)
    finally:
        distributed.close()


CHUNKED_FSDP = ["method.name=full", "train.precision=fp32", "train.loss=chunked", "train.global_batch=16",
                "train.micro_batch=4", "train.lr=1e-3"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_fsdp_holds_only_gradient_shards_and_trains_with_the_chunked_loss(pairs, tmp_path):
    """Two processes, two micro-batches each per step: after a micro-batch's backward a process holds no more
    gradient than its shards of the weights (its gradients were reduce-scattered; accumulating them unsharded held
    the whole model's, twice the shards' bytes here and +25 GiB per GPU at 7B), and the chunked loss, refused under
    FSDP before, trains as on one process."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_chunked_fsdp_worker, args=(port, str(pairs), str(tmp_path)), nprocs=2, join=True)
    one, _, _ = lora_steps(pairs, tmp_path, "one", *CHUNKED_FSDP)
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["chunked"] is True
        assert seen["losses"] == pytest.approx(one, rel=1e-5)
        between = seen["held"][1::2]  # before each step's second micro-batch: the first one's gradients are held
        assert len(between) == 3 and all(0 < b <= seen["shards"] for b in between), (between, seen["shards"])


# ------------------------------------------------------------------ resumable states on a time interval


@pytest.mark.parametrize("every,expected", [([], [3, 6, 9, 12]), (["output.resume_every=4"], [4, 8, 12])])
def test_resumable_states_are_saved_on_a_time_interval_by_default(pairs, tmp_path, monkeypatch, every, expected):
    """output.resume_every null (the default): a state once output.resume_minutes of training have passed since the
    last one (here a clock that moves 25 s each time it is read, and 1 minute: every third step), and at the end;
    output.resume_every N: every N steps. run.json gives tokens/s with and without the time spent saving."""
    import itertools

    import ftlab.state
    import ftlab.train as train_module

    clock = itertools.count(25, 25)
    monkeypatch.setattr(train_module, "monotonic", lambda: next(clock))
    saved, save_state = [], ftlab.state.save_state
    monkeypatch.setattr(ftlab.state, "save_state", lambda root, step, *a, **k: saved.append(step) or
                        save_state(root, step, *a, **k))
    cfg = tiny_config(pairs, tmp_path / "run", "output.resume_every=null", "output.resume_minutes=1", *every)
    run = train_module.train(cfg)
    assert saved == expected
    cost = json.loads((run / "run.json").read_text())
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert cost["tokens"] == logged[-1]["tokens"] > 0
    assert 0 < cost["save_s"] < cost["train_s"] <= cost["wall_s"]
    # train_s is written rounded to the millisecond: on a sub-second loop that alone moves tokens/train_s by ~0.2%
    low, high = (cost["tokens"] / (cost["train_s"] + d) for d in (5e-4, -5e-4))
    assert low - 0.1 <= cost["tokens_per_s_with_saves"] <= high + 0.1
    assert cost["tokens_per_s_without_saves"] > cost["tokens_per_s_with_saves"]


# ------------------------------------------------------------------ evaluation: scored positions only, in chunks

SCORED = [("Question: what is 2+2?\nAnswer:", " 4"), ("The cat sat on the", " mat and purred."), ("A", " b"),
          ("Another context, somewhat longer than the others", " and its continuation, longer still")]


def _full_logit_scores(model, lm, requests):
    """Per request, the unchunked way (one sequence at a time, fp32 log-softmax over every position and the whole
    vocabulary): (log-likelihood, greedy) of the continuation and (summed NLL, tokens, greedy hits) of the text."""
    pairs, texts = [], []
    with torch.no_grad():
        for context, continuation in requests:
            ctx, cont = lm.encode_pair(context, continuation)
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)  # (T, V)
            rows = logp[len(ctx) - 1:len(ctx) + len(cont) - 1]  # (C, V): position t predicts token t+1
            pairs.append((float(rows.gather(-1, torch.tensor(cont)[:, None]).sum()),
                          bool((rows.argmax(-1) == torch.tensor(cont)).all())))
            ids = lm.encode(context + continuation)
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)[:-1]  # (T-1, V)
            target = torch.tensor(ids[1:])
            texts.append((-float(logp.gather(-1, target[:, None]).sum()), len(ids) - 1,
                          int((logp.argmax(-1) == target).sum())))
    return pairs, texts


class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """The most elements of any tensor an operation makes while it lasts."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("head", ["linear", "soft-capped"])
def test_chunked_evaluation_gives_the_unchunked_numbers(monkeypatch, head):
    """LM scores only the positions it needs, a few at a time (here chunks of 5 positions, batches of 3 padded
    sequences): the same log-likelihoods, greedy flags, losses and hits as the full fp32 log-softmax over every
    position, and no tensor of (batch, seq, vocab) is made. A head that is not a plain linear takes the model's own
    logits, scored a chunk at a time."""
    from ftlab.config import TinyModelConfig
    from ftlab.evaluate import lm as lm_module
    from ftlab.evaluate.lm import LM

    model, tokenizer = build_tiny(TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2,
                                                  intermediate_size=64, max_position=512))
    if head == "soft-capped":
        model.config.final_logit_softcapping = 30.0  # Llama ignores it; the chunked path must not
    monkeypatch.setattr(lm_module, "CHUNK", 5)
    lm = LM(model, tokenizer, batch_size=3)
    assert lm._hidden == (head == "linear")
    pairs, texts = _full_logit_scores(model, lm, SCORED)
    largest = LargestTensor()
    with largest:
        got_pairs = lm.loglikelihood(SCORED)
    got_texts = lm.text_scores([c + x for c, x in SCORED])
    for (ll, greedy), (want_ll, want_greedy) in zip(got_pairs, pairs):
        assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy
    for (nll, n, hits), (want_nll, want_n, want_hits) in zip(got_texts, texts):
        assert nll == pytest.approx(want_nll, abs=1e-4) and (n, hits) == (want_n, want_hits)
    longest = max(len(sum(lm.encode_pair(c, x), [])) for c, x in SCORED)
    full_logits = 3 * (longest - 1) * len(tokenizer)
    assert (largest.numel < full_logits) == (head == "linear")


def test_lora_on_a_bf16_base_is_evaluated_in_bf16():
    """The evaluator holds the base in bf16 on CUDA; PEFT computed its fp32 adapters in fp32 there (activations cast
    up and back per layer). LM runs them fused in the base's dtype: the same scores to bf16's precision."""
    import copy

    from peft import LoraConfig, get_peft_model

    from ftlab.config import TinyModelConfig
    from ftlab.evaluate.lm import LM

    model, tokenizer = build_tiny(TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2,
                                                  intermediate_size=64, max_position=512))
    torch.manual_seed(0)
    peft_model = get_peft_model(model.to(torch.bfloat16), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                     init_lora_weights="gaussian"))
    assert {p.dtype for n, p in peft_model.named_parameters() if "lora_" in n} == {torch.float32}
    reference = LM(copy.deepcopy(peft_model).float(), tokenizer).loglikelihood(SCORED)
    lm = LM(peft_model, tokenizer)
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__.startswith("Fused")
    for (ll, _), (want, _) in zip(lm.loglikelihood(SCORED), reference):
        assert ll == pytest.approx(want, rel=2e-2)


# ------------------------------------------------------------------ host syncs: one read per step


class SyncingOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The operations that make the host wait for the device on a GPU: a tensor read as a Python number (item(),
    float(), bool(): _local_scalar_dense) and indexing whose result size depends on the data (nonzero, a boolean
    mask). The step's one deliberate read (tolist of the loss and the norm) is not an operation. Those made by
    transformers' mask construction (once per forward: it reads the mask, or the position ids, to choose its
    causal path) are counted apart."""

    def __init__(self):
        super().__init__()
        self.seen, self.transformers = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import traceback

        masked = func is torch.ops.aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default) or masked:
            if any(frame.filename.endswith("masking_utils.py") for frame in traceback.extract_stack()):
                self.transformers += 1
            else:
                self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("loss", ["full", "chunked"])
def test_a_training_step_reads_nothing_back_from_the_device_but_its_loss_and_norm(pairs, tmp_path, loss):
    """A loss read per micro-batch, a boolean-mask index in the chunked loss, counts of targets and tokens and a
    norm check each stalled the host until the device caught up, so it could not queue the next kernels. The
    micro-batches carry their labelled positions (found on the host) and the loss and gradient norm are read once,
    together, after the backward passes. What remains is transformers' own look at the mask, once per forward."""
    cfg = tiny_config(pairs, tmp_path / "run", "method.name=lora", "method.rank=4", f"train.loss={loss}")
    model, tokenizer = build_tiny(cfg.model.tiny)
    model, params, optimizer, autocast, chunked = prepare(apply_method(model, cfg), cfg, CPU)
    source, _ = build_data(cfg, tokenizer)
    from ftlab.train import to_device

    micro = to_device(source.next_step(), CPU)
    assert len(micro) == 2 and chunked == (loss == "chunked")
    with SyncingOps() as syncs:
        result = train_step(model, micro, optimizer, params, 1.0, autocast, chunked)
    assert syncs.seen == [] and result.loss > 0
    assert 0 < syncs.transformers <= 2 * len(micro)


def test_the_next_steps_batches_are_read_while_a_step_trains(pairs, tmp_path, monkeypatch):
    """The step source is read one step ahead in a background thread (CPT tokenizes as it reads), never past the
    run's end, and a run so trained ends where one reading in the loop ends: its states resume exactly (the fault
    tests kill runs at every stage)."""
    import threading

    import ftlab.batches
    import ftlab.train as train_module

    readers, next_step = [], ftlab.batches.IFTSteps.next_step
    monkeypatch.setattr(ftlab.batches.IFTSteps, "next_step",
                        lambda self: readers.append(threading.current_thread().name) or next_step(self))
    run = train_module.train(tiny_config(pairs, tmp_path / "run"))
    steps = json.loads((run / "plan.json").read_text())["total_steps"]
    assert len(readers) == steps > 1 and all(name.startswith("ftlab-prefetch") for name in readers)
