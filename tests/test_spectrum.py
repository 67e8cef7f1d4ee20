"""`ftlab spectrum`: k values on known spectra, gram == svd in k, LoRA rank, ΔW against PEFT's merge
(tests/delta_oracle.py) and PEFT's forward, intruders against PEFT's count, sharded safetensors, the CLI."""

import json
import math
import os
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.intruders import reduce_intruder_dimension
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from delta_oracle import assert_spectrum_delta_is, base_weights, delta, merged_weights, saved_delta
from ftlab.analysis.spectrum import k_values, matrix_stats, singular_values, spectrum_of, spectrum_target
from ftlab.analysis.spectrum_math import gaussian_stats
from ftlab.analysis.spectrum_sources import open_checkpoint
from ftlab.cli import main
from ftlab.config import TinyModelConfig
from ftlab.errors import FtlabError
from ftlab.model import build_tiny, save_pretrained

TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=64)
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STATS = {"k50", "k90", "k99", "k90_frac", "stable_rank", "effective_rank", "fro"}


def orthonormal(rows, cols, seed):
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))
    return q  # (rows, cols), orthonormal columns


def with_spectrum(sigma, m, n, seed=0):
    """U diag(σ) Vᵀ, (m, n), with exactly the singular values σ."""
    s = torch.tensor(sigma)
    return orthonormal(m, len(s), seed) @ torch.diag(s) @ orthonormal(n, len(s), seed + 1).T


# ----------------------------------------------------------------------------- the numbers of one matrix


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_known_spectrum_gives_exact_k_values_and_ranks(method):
    shares = [40, 30, 15, 10, 4.5, 0.3, 0.2]  # % of σ²; cumulative 40, 70, 85, 95, 99.5, 99.8, 100
    sigma = [math.sqrt(s) for s in shares]
    stats = matrix_stats(singular_values(with_spectrum(sigma, 20, 30), method))
    assert (stats["k50"], stats["k90"], stats["k99"]) == (2, 4, 5)
    assert stats["k90_frac"] == 4 / 20  # k90 / min(m, n)
    assert stats["stable_rank"] == pytest.approx(100 / 40, rel=1e-5)
    p = torch.tensor(sigma, dtype=torch.float64) / sum(sigma)
    assert stats["effective_rank"] == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-4)
    assert stats["fro"] == pytest.approx(10.0, rel=1e-5)


def test_k_values_edge_cases():
    assert k_values(torch.tensor([1.0, 0.0, 0.0])) == {"k50": 1, "k90": 1, "k99": 1}
    assert k_values(torch.ones(10)) == {"k50": 5, "k90": 9, "k99": 10}
    assert k_values(torch.zeros(4)) == {"k50": 0, "k90": 0, "k99": 0}  # ΔW = 0: nothing to explain
    assert matrix_stats(torch.zeros(4))["effective_rank"] == 0.0


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_rank_k_matrix_has_k90_at_most_k(method):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 5, generator=g) @ torch.randn(5, 48, generator=g)  # rank 5
    stats = matrix_stats(singular_values(w, method))
    assert stats["k90"] <= stats["k99"] <= 5
    assert stats["k99"] >= 3  # not degenerate: several directions carry the energy


def test_square_gaussian_explains_90_percent_with_about_half_its_directions():
    stats = gaussian_stats((384, 384), "gram")
    assert stats["k90_frac"] == pytest.approx(0.51, abs=0.015)  # PAPER.md: ≈0.51·d
    assert gaussian_stats((384, 384), "gram") == stats  # cached: same seed, same numbers


def varied_matrices():
    g = torch.Generator().manual_seed(7)
    geometric = torch.tensor([10 ** (-i / 5) for i in range(40)])  # 1 down to 1e-8
    yield "gaussian wide", torch.randn(40, 130, generator=g)
    yield "gaussian tall", torch.randn(150, 60, generator=g)
    yield "square", torch.randn(96, 96, generator=g) * 0.02
    yield "geometric 1..1e-8", with_spectrum(geometric.tolist(), 60, 90, seed=11)
    yield "rank 3 + 1e-6 noise", (torch.randn(50, 3, generator=g) @ torch.randn(3, 80, generator=g)
                                  + 1e-6 * torch.randn(50, 80, generator=g))
    yield "exactly rank 3", torch.randn(70, 3, generator=g) @ torch.randn(3, 45, generator=g)
    yield "rank 1", torch.ones(33, 17)
    yield "tiny scale", torch.randn(30, 50, generator=g) * 1e-12
    yield "heavy tail", with_spectrum([1 / (i + 1) for i in range(48)], 48, 100, seed=5)


@pytest.mark.parametrize("label,w", list(varied_matrices()))
def test_gram_gives_the_same_k_values_as_svdvals(label, w):
    reference = torch.linalg.svdvals(w)
    gram = singular_values(w, "gram")
    assert len(gram) == len(reference) == min(w.shape)
    assert k_values(gram) == k_values(reference), label
    # singular values below ~1e-6 of the largest are rounding noise in fp32 (svdvals) and in the Gram route alike:
    # their values depend on the CPU's kernels (AVX2 vs AVX-512), so they are compared down to that floor only
    floor = 1e-5 * float(reference[0])
    torch.testing.assert_close(gram[:3].float(), reference[:3], rtol=1e-4, atol=floor)


# ----------------------------------------------------------------------------- tiny models and adapters


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    model, tok = build_tiny(TINY)
    directory = tmp_path_factory.mktemp("spectrum") / "base"
    save_pretrained(model, tok, directory)
    return directory


def random_lora(model, seed=1, std=0.1):
    """Every LoRA A and B random and nonzero, as training would leave them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # get_peft_model leaves only the adapter trainable
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def make_adapter(base_dir, out, std=0.1, seed=1, **lora):
    model = AutoModelForCausalLM.from_pretrained(base_dir)  # name_or_path = base_dir, recorded by the adapter
    peft_model = get_peft_model(model, LoraConfig(**{"r": 3, "lora_alpha": 6, "target_modules": ALL, **lora}))
    random_lora(peft_model, seed=seed, std=std)
    peft_model.save_pretrained(out)
    return peft_model.eval()


def make_full(base_dir, out, seed=2, scale=0.01, **shape):
    """A 'finetuned' full model: the base with every weight moved a little (or a model of another shape)."""
    if shape:
        model, tok = build_tiny(TinyModelConfig(**{**TINY.__dict__, **shape}))
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        _, tok = build_tiny(TINY)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    save_pretrained(model, tok, out)
    return out


def test_lora_delta_has_rank_at_most_r(base_dir, tmp_path):
    make_adapter(base_dir, tmp_path / "adapter", r=3)
    entry = spectrum_of(base_dir, tmp_path / "adapter", singular_values=["*"], top_k=0)
    assert entry["kind"] == "lora" and len(entry["matrices"]) == TINY.layers * 7
    for m in entry["matrices"]:
        assert m["lora_rank"] == 3 and m["delta"]["k99"] <= 3, m["name"]
        sigma = m["singular_values"]["delta"]
        assert len(sigma) == min(m["shape"]) and max(sigma[3:]) < 1e-5 * sigma[0], m["name"]


@pytest.mark.parametrize("lora", [
    {},
    {"use_rslora": True},
    {"rank_pattern": {"up_proj": 2}, "alpha_pattern": {"q_proj": 16}},
    {"use_dora": True},
    {"use_dora": True, "use_rslora": True, "rank_pattern": {"down_proj": 5}},
], ids=["lora", "rslora", "patterns", "dora", "dora-rslora-pattern"])
def test_adapter_delta_is_peft_merge(base_dir, tmp_path, lora):
    """ftlab's ΔW of a saved adapter is PEFT's merged weight minus the base, layer by layer (scaling, rsLoRA,
    rank_pattern/alpha_pattern and DoRA's magnitude resolved as PEFT resolves them)."""
    peft_model = make_adapter(base_dir, tmp_path / "adapter", **lora)
    reference = delta(base_weights(base_dir), merged_weights(peft_model))
    ckpt = assert_spectrum_delta_is(base_dir, tmp_path / "adapter", reference)
    assert ckpt.kind == ("dora" if "use_dora" in lora else "lora") and len(ckpt.names) == TINY.layers * 7
    ranks = {name.split(".")[-2]: mod.rank for name, mod in ckpt.lora.items()}
    assert ranks == {m: (lora.get("rank_pattern") or {}).get(m, 3) for m in ALL}


@pytest.mark.parametrize("lora", [{}, {"use_dora": True}], ids=["lora", "dora"])
def test_w_ft_in_the_base_model_gives_the_adapters_own_outputs(base_dir, tmp_path, lora):
    """An oracle that does not use PEFT's merge: the base model with ftlab's W_ft put in every analysed layer
    computes what the unmerged PEFT model computes."""
    peft_model = make_adapter(base_dir, tmp_path / "adapter", std=0.05, **lora)
    ckpt = open_checkpoint(base_dir, tmp_path / "adapter")
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        for name in ckpt.names:
            model.get_submodule(name.removesuffix(".weight")).weight.copy_(ckpt.load(name)[1])  # (out, in)
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, found = peft_model(input_ids=ids).logits, model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits
    assert (expected - base).abs().max() > 0.01  # the adapter changes the outputs: the test can fail
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)


def test_sharded_base_and_checkpoint_are_read_through_their_index(base_dir, tmp_path):
    """A model saved in several safetensors files (model.safetensors.index.json) reads as the single file does."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    _, tok = build_tiny(TINY)
    model.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    tok.save_pretrained(tmp_path / "base")
    make_full(base_dir, tmp_path / "full")
    AutoModelForCausalLM.from_pretrained(tmp_path / "full").save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    for directory in ("base", "sharded"):
        assert len(list((tmp_path / directory).glob("*.safetensors"))) > 3
        assert (tmp_path / directory / "model.safetensors.index.json").exists()
    reference = saved_delta(base_dir, tmp_path / "full")
    ckpt = assert_spectrum_delta_is(tmp_path / "base", tmp_path / "sharded", reference)
    assert ckpt.kind == "full" and ckpt.names == list(reference)


def peft_intruders(peft_model) -> dict[str, int]:
    """PEFT's own count per layer, read from reduce_intruder_dimension's log."""
    lines = []
    reduce_intruder_dimension(peft_model, logging_sink=lines.append)
    counts = {}
    for line in lines:
        found = re.match(r"base_model\.model\.(\S+): (?:Intruders: (\d+)|No intruders)$", line)
        if found:
            counts[f"{found.group(1)}.weight"] = int(found.group(2) or 0)
    return counts


def test_intruder_counts_equal_peft_for_adapter_and_merged_model(base_dir, tmp_path):
    peft_model = make_adapter(base_dir, tmp_path / "adapter", r=4, lora_alpha=8, std=0.25)
    merged = make_adapter(base_dir, tmp_path / "again", r=4, lora_alpha=8, std=0.25).merge_and_unload()
    _, tok = build_tiny(TINY)
    save_pretrained(merged, tok, tmp_path / "merged")
    expected = peft_intruders(peft_model)
    assert len(expected) == TINY.layers * 7 and len(set(expected.values())) > 1  # a mix: the test can fail
    for finetuned in ("adapter", "merged"):
        entry = spectrum_of(base_dir, tmp_path / finetuned)
        assert {m["name"]: m["intruders"] for m in entry["matrices"]} == expected, finetuned
        assert entry["summary"]["intruders_total"] == sum(expected.values())


def test_base_factors_are_computed_once_per_matrix_for_every_checkpoint(base_dir, tmp_path, monkeypatch):
    """A study analyses each checkpoint against the same base: with intruders on, the base's SVD was computed again
    for every checkpoint (two full SVDs per matrix each time: 10-30 min per 7B checkpoint). With one BaseFactors
    for all checkpoints it is computed once per matrix, and every number is the one computed without it."""
    from ftlab.analysis import spectrum as spectrum_module
    from ftlab.analysis.spectrum import BaseFactors, spectrum_into

    make_full(base_dir, tmp_path / "full")
    make_adapter(base_dir, tmp_path / "lora-a", seed=3)
    make_adapter(base_dir, tmp_path / "lora-b", seed=4)
    checkpoints = [tmp_path / "full", tmp_path / "lora-a", tmp_path / "lora-b"]
    alone = [spectrum_of(base_dir, c) for c in checkpoints]  # each with its own factors: the reference
    factored = []
    left_factors = spectrum_module.left_factors
    monkeypatch.setattr(spectrum_module, "left_factors", lambda w: factored.append(tuple(w.shape)) or left_factors(w))
    factors = BaseFactors()
    shared = [spectrum_into(base_dir, c, factors=factors) for c in checkpoints]
    matrices = TINY.layers * 7
    assert factors.computed == matrices  # the base: once per matrix, not once per checkpoint
    assert len(factored) == matrices * (1 + len(checkpoints))  # and W_ft's SVD for each checkpoint
    assert shared == alone
    assert {m["intruders"] for entry in shared for m in entry["matrices"]} != {0}  # intruders were counted


# ----------------------------------------------------------------------------- the command


def check_schema(doc, n_checkpoints):
    assert doc["version"] == 1 and os.path.isdir(doc["base"])
    assert {"top_k", "epsilon", "method"} <= doc["settings"].keys() and doc["settings"]["method"] in ("svd", "gram")
    assert len(doc["checkpoints"]) == n_checkpoints
    for ckpt in doc["checkpoints"]:
        assert {"path", "name", "step", "tokens", "matrices", "summary"} <= ckpt.keys()
        assert set(ckpt["summary"]) >= {"k90_mean", "k90_frac_mean", "rel_change_mean", "intruders_total"}
        for m in ckpt["matrices"]:
            assert {"name", "layer", "module", "shape", "delta", "base", "finetuned", "gaussian", "rel_change",
                    "intruders"} <= m.keys()
            assert all(set(m[k]) == STATS for k in ("delta", "base", "finetuned", "gaussian"))
            assert m["name"].startswith(f"model.layers.{m['layer']}.") and m["name"].split(".")[-2] == m["module"]
    return doc


def test_cli_full_model_and_adapter_end_to_end(base_dir, tmp_path):
    make_full(base_dir, tmp_path / "full")
    make_adapter(base_dir, tmp_path / "adapter")
    q0 = "model.layers.0.self_attn.q_proj.weight"
    assert main(["spectrum", str(base_dir), str(tmp_path / "full"), "--out", str(tmp_path / "full.json"),
                 "--singular-values", q0]) == 0
    full = check_schema(json.loads((tmp_path / "full.json").read_text()), 1)["checkpoints"][0]
    assert full["kind"] == "full" and len(full["matrices"]) == TINY.layers * 7
    assert [m["name"] for m in full["matrices"] if "singular_values" in m] == [q0]
    assert full["matrices"][0]["shape"] == [32, 32] and full["matrices"][0]["module"] == "q_proj"
    assert full["summary"]["k90_frac_mean"] > 0.3  # dense random noise: a high-rank ΔW
    assert main(["spectrum", str(tmp_path / "adapter"), "--out", str(tmp_path / "lora.json")]) == 0  # base: its own
    lora = check_schema(json.loads((tmp_path / "lora.json").read_text()), 1)["checkpoints"][0]
    assert lora["kind"] == "lora" and lora["summary"]["k90_mean"] <= 3


def make_run(base_dir, run, steps=(2, 4)):
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method:\n  name: lora\n")
    for i, step in enumerate(steps):
        ckpt = run / ("final" if i == len(steps) - 1 else f"checkpoints/step-{step}")
        make_adapter(base_dir, ckpt, seed=step)
        (ckpt / "ftlab.json").write_text(json.dumps({"step": step, "tokens": 32 * step, "base": str(base_dir)}))
    return run


def test_cli_run_writes_each_checkpoint_and_resumes(base_dir, tmp_path):
    run = make_run(base_dir, tmp_path / "run")
    out = tmp_path / "spectrum.json"
    assert main(["spectrum", str(run), "--out", str(out), "--top-k", "0"]) == 0
    doc = check_schema(json.loads(out.read_text()), 2)
    assert [(c["name"], c["step"], c["tokens"]) for c in doc["checkpoints"]] == [("step-2", 2, 64), ("final", 4, 128)]
    assert doc["checkpoints"][0]["summary"]["intruders_total"] is None  # --top-k 0 skips them
    own = run / "final" / "spectrum.json"
    assert json.loads(own.read_text())["checkpoints"] == doc["checkpoints"][1:]
    stamp = own.stat().st_mtime_ns
    assert main(["spectrum", str(run), "--out", str(out), "--top-k", "0"]) == 0  # same settings: reused
    assert own.stat().st_mtime_ns == stamp and json.loads(out.read_text()) == doc
    assert main(["spectrum", str(run), "--out", str(out), "--top-k", "2"]) == 0  # other settings: recomputed
    assert json.loads(own.read_text())["settings"]["top_k"] == 2


# ----------------------------------------------------------------------------- bad input


def test_other_architecture_is_refused_naming_both_paths_and_the_tensor(base_dir, tmp_path):
    make_full(base_dir, tmp_path / "wide", intermediate_size=48)
    with pytest.raises(FtlabError, match=rf"{tmp_path / 'wide'} does not match the base {base_dir}: "
                                         r"model\.layers\.0\.mlp\.gate_proj\.weight: shape \[48, 32\]"):
        spectrum_of(base_dir, tmp_path / "wide")
    make_full(base_dir, tmp_path / "deep", layers=3)
    with pytest.raises(FtlabError, match=r"deep does not match the base .*base: model\.layers\.2\.self_attn\.q_proj"):
        spectrum_of(base_dir, tmp_path / "deep")


def test_missing_matrix_is_refused(base_dir, tmp_path):
    from safetensors.torch import load_file

    broken = make_full(base_dir, tmp_path / "broken")
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    (broken / "ftlab.json").unlink()  # a file edited by hand no longer matches the checksums recorded there
    with pytest.raises(FtlabError, match=rf"{broken} does not match the base {base_dir}: "
                                         r"model\.layers\.1\.mlp\.down_proj\.weight: missing .*broken"):
        spectrum_of(base_dir, broken)


def test_adapter_on_the_wrong_base_fails_in_cli_with_exit_2_and_no_output(base_dir, tmp_path, capsys):
    make_adapter(base_dir, tmp_path / "adapter")
    other = make_full(base_dir, tmp_path / "other", intermediate_size=48)
    out = tmp_path / "out.json"
    assert main(["spectrum", str(other), str(tmp_path / "adapter"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'adapter'} does not match the base {other}" in err
    assert "model.layers.0.mlp.gate_proj.weight" in err and not out.exists()


def test_a_bad_checkpoint_in_a_run_stops_before_anything_is_written(base_dir, tmp_path):
    run = make_run(base_dir, tmp_path / "run")
    weights = run / "final" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(weights)
    tensors = {k: (v[:, :16].contiguous() if k.endswith("layers.1.self_attn.o_proj.lora_A.weight") else v)
               for k, v in tensors.items()}
    save_file(tensors, weights)
    out = tmp_path / "out.json"
    assert main(["spectrum", str(run), "--out", str(out)]) == 2
    assert not out.exists() and not (run / "checkpoints" / "step-2" / "spectrum.json").exists()


def test_full_model_without_base_is_refused(base_dir, tmp_path):
    make_full(base_dir, tmp_path / "full")
    with pytest.raises(FtlabError, match="needs its base"):
        spectrum_target(tmp_path / "full")
    assert main(["spectrum", str(tmp_path / "full"), "--out", str(tmp_path / "x.json")]) == 2
