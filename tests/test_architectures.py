"""Every architecture of the zoo (tests/arch_zoo.py) end to end: full FT and LoRA train through `ftlab train`'s entry,
targets select the table's layers by name, the spectrum's ΔW is PEFT's merge (GPT-2's Conv1D included), evaluation
and the sampler work, checkpoints reload in plain transformers/PEFT, and what an architecture cannot do is refused
before a run directory is written."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM

import arch_zoo
from arch_zoo import ARCHITECTURES
from conftest import write_pairs
from ftlab import loss
from ftlab.analysis.spectrum import k_values, spectrum_of, spectrum_target
from ftlab.analysis.spectrum_sources import open_checkpoint
from ftlab.architectures import (TARGETS, block_names, decoder_blocks, is_conv1d, linear_layers, preflight,
                                 target_modules)
from ftlab.config import RunConfig, load_config
from ftlab.errors import ConfigError
from ftlab.evaluate.targets import evaluate_target
from ftlab.evaluate.lm import LM
from ftlab.evaluate.sampler import Decoding, Sampler
from ftlab.methods import apply_method, lora_layers
from ftlab.model import byte_tokenizer, save_pretrained
from ftlab.train import build_data, eval_loss, speed_options, token_loss_sum, train

NO_AUTOCAST = torch.autocast("cpu", enabled=False)

# What each architecture's targets must adapt, as block-relative module names, written out independently of the
# table in src/ftlab/architectures.py; and where its decoder blocks live.
_LLAMA = {"attn": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
          "mlp": {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}}
EXPECTED = {
    **{arch: _LLAMA for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo2")},
    "phi3": {"attn": {"self_attn.qkv_proj", "self_attn.o_proj"}, "mlp": {"mlp.gate_up_proj", "mlp.down_proj"}},
    "gpt_neox": {"attn": {"attention.query_key_value", "attention.dense"},
                 "mlp": {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}},
    "gpt2": {"attn": {"attn.c_attn", "attn.c_proj"}, "mlp": {"mlp.c_fc", "mlp.c_proj"}},
}
BLOCKS = {arch: "model.layers" for arch in ARCHITECTURES} | {"gpt_neox": "gpt_neox.layers", "gpt2": "transformer.h"}


def lora_cfg(targets="all", rank=4) -> RunConfig:
    cfg = RunConfig()
    cfg.method.name, cfg.method.rank, cfg.method.dropout, cfg.method.targets = "lora", rank, 0.0, targets
    return cfg


def test_every_table_entry_is_in_the_zoo():
    assert set(TARGETS) == set(ARCHITECTURES) == set(EXPECTED)


# ----------------------------------------------------------------------------- targets and decoder blocks


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_targets_adapt_the_named_layers_of_every_block(arch):
    model, _ = arch_zoo.build_model(arch)
    assert block_names(linear_layers(model)) == sorted(EXPECTED[arch]["attn"] | EXPECTED[arch]["mlp"])
    for targets in ("attn", "mlp", "all"):
        wanted = EXPECTED[arch]["attn"] | EXPECTED[arch]["mlp"] if targets == "all" else EXPECTED[arch][targets]
        peft_model = apply_method(arch_zoo.build_model(arch)[0], lora_cfg(targets))
        adapted = {name for name, _ in lora_layers(peft_model)}
        assert adapted == {f"{BLOCKS[arch]}.{i}.{n}" for i in range(arch_zoo.LAYERS) for n in wanted}, targets
    assert target_modules(model, "all") == target_modules(model, "attn") + target_modules(model, "mlp")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_decoder_blocks_are_found_under_peft_too(arch):
    model, _ = arch_zoo.build_model(arch)
    blocks = model.get_submodule(BLOCKS[arch])
    assert decoder_blocks(model) is blocks and len(blocks) == arch_zoo.LAYERS
    assert decoder_blocks(apply_method(model, lora_cfg())) is blocks


def opt_model():
    """An architecture outside the table (q, k, v, out_proj; fc1, fc2)."""
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=259, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                    num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2))


def test_attn_and_mlp_on_an_architecture_outside_the_table_are_refused_naming_its_layers():
    model = opt_model()
    for targets in ("attn", "mlp"):
        with pytest.raises(ConfigError, match=r"method.targets: '.*' is defined per architecture, and opt is not .*"
                                              r"'fc1', 'fc2', .*'self_attn.out_proj'"):
            target_modules(model, targets)
    assert target_modules(model, "all") == "all-linear"
    assert target_modules(model, ["self_attn.out_proj", "fc1"]) == ["self_attn.out_proj", "fc1"]


def test_a_listed_name_must_match_a_layer_as_peft_matches_it():
    model, _ = arch_zoo.build_model("gpt2")
    assert target_modules(model, ["attn.c_proj"]) == ["attn.c_proj"]
    with pytest.raises(ConfigError, match=r"\['q_proj'\] match no linear layer.*'attn.c_attn', 'attn.c_proj'"):
        target_modules(model, ["attn.c_proj", "q_proj"])
    peft_model = apply_method(model, lora_cfg(["attn.c_proj"]))
    adapted = {name for name, _ in lora_layers(peft_model)}
    assert adapted == {"transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"}  # not mlp.c_proj


def test_a_table_name_missing_from_a_model_is_a_config_error(monkeypatch):
    """A checkpoint whose layers differ from its architecture's usual names stops before PEFT's own ValueError."""
    from ftlab import architectures

    monkeypatch.setitem(architectures.TARGETS, "gpt2", architectures.Targets(("attn.c_attn", "q_proj"), ("mlp.c_fc",)))
    model, _ = arch_zoo.build_model("gpt2")
    assert target_modules(model, "mlp") == ["mlp.c_fc"]
    with pytest.raises(ConfigError, match=r"method.targets: \['q_proj'\] match no linear layer"):
        target_modules(model, "all")


# ----------------------------------------------------------------------------- train, reload, spectrum, evaluate


def run_config(base, data, out, method: str):
    overrides = [f"model.name={base}", f"data.path={data}", "data.seq_len=32", "data.eval_fraction=0.2",
                 "train.global_batch=8", "train.micro_batch=8", "train.epochs=1", "train.warmup=0", "train.device=cpu",
                 f"method.name={method}", "method.rank=4", "method.dropout=0",
                 "train.lr=" + ("1e-2" if method == "full" else "3e-2")]
    return load_config(None, overrides, out=str(out))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request, tmp_path_factory):
    """(architecture, base directory, {method: (config, run directory)}): 4 steps of full FT and of LoRA."""
    arch = request.param
    tmp = tmp_path_factory.mktemp(arch)
    base = arch_zoo.build(tmp / "base", arch)
    data = write_pairs(tmp / "pairs.jsonl", n=40)
    runs = {}
    for method in ("full", "lora"):
        cfg = run_config(base, data, tmp / method, method)
        runs[method] = (cfg, train(cfg))
    return arch, base, runs


def logged_evals(run) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["eval_loss"] for r in records if "eval_loss" in r]


def test_full_and_lora_train_and_reload_in_plain_transformers_and_peft(trained):
    arch, base, runs = trained
    for method, (cfg, run) in runs.items():
        evals = logged_evals(run)
        assert evals[-1] < evals[0] - 0.05, (method, evals)  # 4 steps lower the held-out loss
        final = run / "final"
        if method == "full":
            model = AutoModelForCausalLM.from_pretrained(final)
        else:
            assert json.loads((final / "adapter_config.json").read_text())["fan_in_fan_out"] == (arch == "gpt2")
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final)
        assert model.config.model_type == arch
        _, held_out = build_data(cfg, byte_tokenizer())
        # the model as loaded gives the held-out loss ftlab logged for the model it had just trained
        assert eval_loss(model, held_out, NO_AUTOCAST) == pytest.approx(evals[-1], abs=1e-5), method


def reference_deltas(base, final) -> dict:
    """weight name -> ΔW as (out, in): PEFT's merge_and_unload (an adapter) or the saved model, minus the base."""
    base_model = AutoModelForCausalLM.from_pretrained(base)
    if (final / "adapter_config.json").exists():
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final).merge_and_unload()
    else:
        tuned = AutoModelForCausalLM.from_pretrained(final)
    tuned_layers = linear_layers(tuned)
    out = {}
    for name, layer in linear_layers(base_model).items():
        delta = (tuned_layers[name].weight - layer.weight).detach()  # the stored layout
        out[f"{name}.weight"] = delta.T if is_conv1d(layer) else delta
    return out


def test_spectrum_delta_is_the_merged_weight_change_and_k_values_are_svdvals(trained):
    arch, base, runs = trained
    for method, (_, run) in runs.items():
        reference = reference_deltas(base, run / "final")
        ckpt = open_checkpoint(base, run / "final")
        assert ckpt.names == list(reference)  # every block linear layer: targets=all for LoRA
        for name in ckpt.names:
            torch.testing.assert_close(ckpt.load(name)[2], reference[name], atol=1e-6, rtol=0)
        doc = spectrum_target(run, top_k=2)
        modules = set(TARGETS[arch].attn + TARGETS[arch].mlp)
        for m in doc["checkpoints"][0]["matrices"]:
            delta = reference[m["name"]]
            assert m["shape"] == list(delta.shape) and m["module"] in modules, m["name"]
            expected = k_values(torch.linalg.svdvals(delta))
            assert {k: m["delta"][k] for k in expected} == expected, m["name"]
            assert m["delta"]["k90"] > 0


def test_evaluation_runs_on_the_base_and_the_swapped_adapter(trained):
    """`ftlab eval` on the LoRA run: choice, perplexity and teacher-forced tasks on every architecture; GSM8K-style
    generation (160 new tokens after a 3-shot prompt: the slow one) on GPT-2 (the sampler's tokens are checked
    against model.generate on every architecture below, Gemma2's sliding-window cache included)."""
    arch, _, runs = trained
    run = runs["lora"][1]
    tasks = ["source_cloze", "source_loss", "math_solution"] + (["math"] if arch == "gpt2" else [])
    written = evaluate_target(str(run), tasks, device="cpu", batch_size=4, limit=2)
    assert written == [run / "base_eval", run / "final"]
    scores = {d.name: json.loads((d / "eval.json").read_text())["scores"] for d in written}
    for found in scores.values():
        assert {s["task"] for s in found} == set(tasks) and all(s["n"] > 0 for s in found)
    loss_of = {name: next(s["value"] for s in found if s["task"] == "source_loss" and s["metric"] == "loss")
               for name, found in scores.items()}
    assert loss_of["final"] != loss_of["base_eval"]  # the adapter is on


# ----------------------------------------------------------------------------- GPT-2's Conv1D in the spectrum


def conv1d_adapter(base, out, seed=1, std=0.25, **lora):
    """A LoRA (or DoRA) adapter on every GPT-2 block layer, with random A and B as training would leave them."""
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(r=4, lora_alpha=8, target_modules=target_modules(
                                    arch_zoo.build_model("gpt2")[0], "all"), fan_in_fan_out=True, **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    peft_model.save_pretrained(out)
    return peft_model.eval()


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory):
    return arch_zoo.build(tmp_path_factory.mktemp("gpt2") / "base", "gpt2")


def test_gpt2_dora_delta_is_peft_merge(gpt2_base, tmp_path):
    conv1d_adapter(gpt2_base, tmp_path / "dora", use_dora=True)
    reference = reference_deltas(gpt2_base, tmp_path / "dora")
    ckpt = open_checkpoint(gpt2_base, tmp_path / "dora")
    assert ckpt.kind == "dora" and ckpt.names == list(reference)
    for name in ckpt.names:
        w_base, w_ft, delta = ckpt.load(name)
        torch.testing.assert_close(delta, reference[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(w_ft, w_base + delta, atol=1e-6, rtol=0)


def intruders(w_base: torch.Tensor, w_ft: torch.Tensor, top_k: int, epsilon: float) -> int:
    """Top-k left singular vectors of W_ft whose best |cos| with a left singular vector of W_base is below ε."""
    u_base = torch.linalg.svd(w_base, full_matrices=False).U
    u_ft = torch.linalg.svd(w_ft, full_matrices=False).U[:, :top_k]
    return int(((u_ft.T @ u_base).abs().max(dim=1).values < epsilon).sum())


def test_gpt2_intruders_are_counted_among_output_directions(gpt2_base, tmp_path):
    merged = conv1d_adapter(gpt2_base, tmp_path / "adapter").merge_and_unload()
    base_layers = linear_layers(AutoModelForCausalLM.from_pretrained(gpt2_base))
    stored = {}  # weight name -> (W_base, W_ft) as GPT-2 stores them, (in, out)
    for name, layer in linear_layers(merged).items():
        stored[f"{name}.weight"] = (base_layers[name].weight.detach(), layer.weight.detach())
    entry = spectrum_of(gpt2_base, tmp_path / "adapter", top_k=6, epsilon=0.5)
    ours = {m["name"]: m["intruders"] for m in entry["matrices"]}
    expected = {name: intruders(w.T, ft.T, 6, 0.5) for name, (w, ft) in stored.items()}  # (out, in)
    wrong_side = {name: intruders(w, ft, 6, 0.5) for name, (w, ft) in stored.items()}  # (in, out): input space
    assert ours == expected and len(set(expected.values())) > 1
    assert wrong_side != expected  # the test tells the two orientations apart


# ----------------------------------------------------------------------------- evaluation and the sampler


def sharp(arch):
    """The zoo model with its weights scaled up, so greedy text depends on the context (tests/test_sampler.py)."""
    model, tokenizer = arch_zoo.build_model(arch)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # matrices and embeddings; norms and biases stay
                p.mul_(8)
    return model, tokenizer


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sampler_gives_model_generate_greedy_tokens(arch):
    model, tokenizer = sharp(arch)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 259, (n,), generator=gen).tolist() for n in (5, 20, 9, 1)]  # 20: past the windows
    rows = [r for r in rows for _ in range(2)]  # 2 samples per prompt
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # (B, P), left-padded
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (B, P)
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    eos = tokenizer.eos_token_id
    expected = [r[:r.index(eos) + 1] if eos in r else r for r in generated[:, width:].tolist()]  # ends at EOS
    assert len({tuple(r) for r in expected}) == 4  # distinct prompts, distinct tokens: the test can fail
    caches = ["dynamic"] if arch in ("mistral", "gemma2") else ["dynamic", "static"]  # sliding windows: dynamic
    assert Sampler(model, tokenizer, "cpu", 0).cache == "dynamic"  # what "auto" picks on the CPU; on CUDA:
    assert Sampler(model, tokenizer, "cuda", 0).cache == caches[-1]  # static unless a layer has a sliding window
    for cache in caches:
        ours = Sampler(model, tokenizer, "cpu", tokenizer.pad_token_id, cache=cache).sample(rows, Decoding(12), 8)
        assert ours == expected, cache


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loglikelihood_and_token_scores_are_the_models_log_probabilities(arch):
    model, tokenizer = sharp(arch)
    lm = LM(model, tokenizer, batch_size=2)
    requests = [("Question: 1+1?\nAnswer:", " 2"), ("The quick brown", " fox jumps"), ("x", "yz")]
    for (context, continuation), (logp, _) in zip(requests, lm.loglikelihood(requests)):
        ids = torch.tensor([tokenizer.encode(context + continuation)])  # (1, T): bytes, no specials
        n = len(tokenizer.encode(continuation))
        with torch.no_grad():
            logprobs = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]  # (T, V)
        expected = float(logprobs[-n - 1:-1].gather(-1, ids[0, -n:, None]).sum())
        assert logp == pytest.approx(expected, abs=1e-4), (context, continuation)
        nll, count, _ = lm.token_scores([continuation], [context])
        assert count == n and -nll == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_loss_equals_the_full_loss_or_is_refused_with_the_reason(arch):
    model, _ = arch_zoo.build_model(arch)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (2, 12), generator=gen)
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if arch == "gemma2":
        assert loss.unsupported(model) == "gemma2 soft-caps its logits (final_logit_softcapping=30.0)"
        return
    assert loss.supports(model)
    full, n = token_loss_sum(model, batch, NO_AUTOCAST)
    chunked, m = loss.chunked_loss_sum(model, batch, NO_AUTOCAST, chunk=5)
    assert n == m == 16 and float(chunked.detach()) == pytest.approx(float(full.detach()), rel=1e-5)


# ----------------------------------------------------------------------------- refused before any work


@pytest.fixture
def bases(tmp_path):
    return {arch: arch_zoo.build(tmp_path / arch, arch) for arch in ("gemma2", "gpt2")}


def refused(tmp_path, base, *overrides, match: str):
    """Train on `base` with the overrides: a ConfigError matching `match`, and no run directory written."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={base}", f"data.path={data}", "data.seq_len=32", *overrides], out=str(out))
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not out.exists()


def test_chunked_loss_on_soft_capped_logits_is_refused_before_the_run(bases, tmp_path):
    refused(tmp_path, bases["gemma2"], "train.loss=chunked",
            match=r"train.loss: chunked needs .* but gemma2 soft-caps its logits \(final_logit_softcapping=30.0\)")


def test_impossible_rank_and_missing_targets_are_refused_before_the_run(bases, tmp_path):
    refused(tmp_path, bases["gpt2"], "method.name=lora", "method.rank=40",
            match=r"method.rank: 40 is larger than transformer.h.0.attn.c_attn allows \(min\(in, out\) = 32\)")
    refused(tmp_path, bases["gpt2"], "method.name=lora", "method.targets=[q_proj]",
            match=r"method.targets: \['q_proj'\] match no linear layer")


def test_attn_on_an_architecture_outside_the_table_is_refused_before_the_run(tmp_path):
    base = tmp_path / "opt"
    save_pretrained(opt_model(), byte_tokenizer(), base)
    refused(tmp_path, base, "method.name=lora", "method.targets=attn", match=r"method.targets: 'attn' .* opt is not")


def test_compile_and_fsdp_without_decoder_blocks_are_refused(tmp_path, monkeypatch):
    from transformers.models.opt.modeling_opt import OPTPreTrainedModel

    base = tmp_path / "opt"
    save_pretrained(opt_model(), byte_tokenizer(), base)
    monkeypatch.setattr(OPTPreTrainedModel, "_no_split_modules", None)  # an architecture that does not name them
    refused(tmp_path, base, "train.compile=true", match=r"train.compile: ftlab compiles each decoder block, but no")
    cfg = load_config(None, [f"model.name={base}", "data.seq_len=32", f"data.path={write_pairs(tmp_path / 'p.jsonl', n=8)}"],
                      out=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"--nproc: FSDP shards each decoder block"):
        preflight(cfg, sharded=True)
    preflight(cfg, sharded=False)  # one process without compile needs no blocks


def test_gpt2_compiles_block_by_block(bases, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    cfg = load_config(None, [f"model.name={bases['gpt2']}", f"data.path={data}", "train.compile=true"],
                      out=str(tmp_path / "run"))
    preflight(cfg, sharded=True)  # GPT-2's blocks are transformer.h: compile and FSDP have what they need
    model = AutoModelForCausalLM.from_pretrained(bases["gpt2"])
    speed_options(model, cfg)  # compiles lazily: nothing runs until a forward pass
    assert all(block._compiled_call_impl is not None for block in model.transformer.h)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_gpt2_trains_sharded_over_two_processes_as_on_one(bases, tmp_path):
    """FSDP shards GPT-2's blocks (transformer.h, found by decoder_blocks) and trains what one process trains."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=48)
    args = [f"model.name={bases['gpt2']}", f"data.path={data}", "data.seq_len=32", "data.eval_fraction=0.1",
            "train.global_batch=12", "train.micro_batch=4", "train.lr=3e-3", "method.name=full"]
    one = train(load_config(None, args, out=str(tmp_path / "one")))
    (tmp_path / "config.yaml").write_text("{}\n")
    proc = subprocess.run([sys.executable, "-m", "ftlab", "train", str(tmp_path / "config.yaml"), *args,
                           "--out", str(tmp_path / "two"), "--nproc", "2"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [[r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for run in (one, tmp_path / "two")]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    weights = [load_file(run / "final" / "model.safetensors") for run in (one, tmp_path / "two")]
    assert weights[0].keys() == weights[1].keys()
    for key, weight in weights[0].items():
        torch.testing.assert_close(weights[1][key], weight, rtol=0, atol=1e-4)  # summation order differs

