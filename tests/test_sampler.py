"""The sampler: greedy completions identical to `model.generate`, one prefill per prompt, seeded nucleus sampling."""

import pytest
import torch
from transformers import TopPLogitsWarper

from ftlab.config import ModelConfig, TinyModelConfig
from ftlab.evaluate import sampler as sampler_module
from ftlab.evaluate.lm import LM
from ftlab.evaluate.sampler import Decoding, Sampler, nucleus
from ftlab.model import build_tiny, load_model

TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=512)
PROMPTS = ["Question: 1+1?\nAnswer:", "Once upon a time", "x", "The quick brown fox jumps over the lazy dog.",
           "def add(a, b):\n    return"]


def sharp_tiny():
    """A tiny random Llama with its weights scaled up: its greedy text depends on the context for longer before
    settling into a repeat, so a wrong position, mask or cache row changes the output."""
    model, tokenizer = build_tiny(TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8)
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny():
    return sharp_tiny()


def both(model, tokenizer, prompts, batch_size, **kwargs):
    hf = LM(model, tokenizer, batch_size=batch_size, sampler="hf").generate(prompts, **kwargs)
    ours = LM(model, tokenizer, batch_size=batch_size).generate(prompts, **kwargs)
    return hf, ours


@pytest.mark.parametrize("n,batch_size", [(1, 2), (3, 4), (2, 10), (4, 3)])
def test_greedy_equals_model_generate(tiny, n, batch_size):
    hf, ours = both(*tiny, PROMPTS, batch_size, max_new_tokens=16, n=n)
    assert ours == hf
    assert len({row[0] for row in ours}) == len(PROMPTS)  # distinct prompts give distinct completions


def test_greedy_equals_model_generate_token_for_token(tiny):
    """Below the text: the sampler's tokens are model.generate's, for left-padded prompts of random bytes."""
    model, tokenizer = tiny
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 259, (length,), generator=gen).tolist() for length in (5, 17, 9, 1)]
    rows = [r for r in rows for _ in range(2)]  # 2 samples per prompt
    ours = Sampler(model, tokenizer, "cpu", tokenizer.pad_token_id).sample(rows, Decoding(12), batch_size=8)
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # (B, P)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (B, P)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert ours == ref[:, width:].tolist()


def test_stop_strings_end_rows_as_model_generate_does(tiny):
    model, tokenizer = tiny
    free = LM(model, tokenizer).generate(PROMPTS, max_new_tokens=24)
    stops = [free[0][0][4:7], free[3][0][2:4], "\n"]  # strings some greedy completions contain, across tokens
    hf, ours = both(model, tokenizer, PROMPTS, 4, max_new_tokens=24, stop=stops, n=2)
    assert ours == hf
    assert ours[0][0] == free[0][0][:free[0][0].index(stops[0])] and len(ours[3][0]) < len(free[3][0])
    rows = [tokenizer.encode(p) for p in PROMPTS]
    ended = 0
    for ids in Sampler(model, tokenizer, "cpu", 0).sample(rows, Decoding(24, stop=tuple(stops)), batch_size=5):
        if any(s in tokenizer.decode(ids) for s in stops):  # the row ends with the token that completed a stop
            ended += 1
            assert not any(s in tokenizer.decode(ids[:-1]) for s in stops)
    assert ended >= 2


def test_stopped_rows_end_the_batch_early(tiny):
    """A batch whose rows all hit a stop string stops decoding (within CHECK_EVERY steps), not at max_new_tokens,
    even for a stop string longer than the tokens read between two checks."""
    model, tokenizer = tiny
    free = LM(model, tokenizer).generate(["x"], max_new_tokens=40)[0][0]
    stop = next(c * 6 for c in free if c * 6 in free)  # the greedy text settles into a repeat
    steps = len(tokenizer.encode(free[:free.index(stop) + 6]))  # tokens up to the end of the stop string
    assert steps + sampler_module.CHECK_EVERY < 40
    calls = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    try:
        assert LM(model, tokenizer).generate(["x"], max_new_tokens=40, stop=[stop]) == [[free[:free.index(stop)]]]
    finally:
        hook.remove()
    assert len(calls) <= steps + sampler_module.CHECK_EVERY  # 1 prefill + a decode step per token after the first


def test_eos_ends_rows_as_model_generate_does():
    model, tokenizer = sharp_tiny()
    free = Sampler(model, tokenizer, "cpu", 0).sample([tokenizer.encode(PROMPTS[4])], Decoding(16), 1)[0]
    end = free.index(free[6]) + 1
    assert end > 2  # a token greedy decoding first reaches a few steps in
    model.generation_config.eos_token_id = free[6]  # a byte token, so the EOS itself shows in the text
    hf, ours = both(model, tokenizer, PROMPTS, 3, max_new_tokens=16, n=2)
    assert ours == hf
    assert ours[4] == [tokenizer.decode(free[:end])] * 2 and len(ours[4][0]) < len(tokenizer.decode(free))
    calls = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        Sampler(model, tokenizer, "cpu", 0).sample([tokenizer.encode(PROMPTS[4])], Decoding(16), 1)
    finally:
        hook.remove()
    assert len(calls) <= end + sampler_module.CHECK_EVERY  # the batch ended soon after its one row did


def test_one_prefill_per_prompt_per_batch(tiny):
    model, tokenizer = tiny
    shapes = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        LM(model, tokenizer, batch_size=8).generate(["Once upon a time", "x"], max_new_tokens=5, n=4)
        prefills, decodes = shapes[:1], shapes[1:]
        assert prefills == [(2, len("Once upon a time"))] and set(decodes) == {(8, 1)} and len(decodes) == 4
        shapes.clear()  # 5 samples, batches of 2: the prompt is prefilled once in each of the 3 batches
        LM(model, tokenizer, batch_size=2).generate(["Once upon a time"], max_new_tokens=3, n=5)
        assert [s for s in shapes if s[1] > 1] == [(1, len("Once upon a time"))] * 3
        assert [s[0] for s in shapes if s[1] == 1] == [2, 2, 2, 2, 1, 1]
    finally:
        hook.remove()


def test_static_cache_equals_dynamic(tiny):
    kwargs = dict(max_new_tokens=20, stop=["e", "\n"], n=3)
    dynamic = LM(*tiny, batch_size=4, cache="dynamic").generate(PROMPTS, **kwargs)
    static = LM(*tiny, batch_size=4, cache="static")
    assert static.sampler.cache == "static" and not static.sampler.compile
    assert static.generate(PROMPTS, **kwargs) == dynamic
    assert static.generate(PROMPTS, **kwargs) == dynamic  # again, reusing its cache


def test_compiled_static_step_traces_without_graph_breaks(tiny, monkeypatch):
    """torch.compile of the decode step over a StaticCache, with dynamo's eager backend (inductor takes ~10 s on
    CPU; CUDA graphs need a GPU): same completions, and dynamo captures whole steps."""
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    monkeypatch.setattr(sampler_module.torch, "compile", lambda fn, mode=None: compile_(fn, backend="eager"))
    monkeypatch.setattr(sampler_module, "_COMPILED", {})
    counters.clear()
    compiled = LM(*tiny, batch_size=3, cache="static", compile=True)
    kwargs = dict(max_new_tokens=12, n=2, stop=["e"])
    assert compiled.generate(PROMPTS[:3], **kwargs) == LM(*tiny, batch_size=3).generate(PROMPTS[:3], **kwargs)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    other = build_tiny(TINY)  # another model of the same shape (a second checkpoint) through the same compiled step
    again = LM(*other, batch_size=3, cache="static", compile=True).generate(PROMPTS[:3], **kwargs)
    assert again == LM(*other, batch_size=3).generate(PROMPTS[:3], **kwargs) != compiled.generate(PROMPTS[:3], **kwargs)


def test_sampling_is_seeded_and_follows_top_p(tiny):
    lm = LM(*tiny, batch_size=4)
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, n=3)
    a, b = lm.generate(PROMPTS, seed=1, **kwargs), lm.generate(PROMPTS, seed=1, **kwargs)
    assert a == b and a != lm.generate(PROMPTS, seed=2, **kwargs)
    assert any(len(set(row)) > 1 for row in a)  # a prompt's samples differ from each other
    assert LM(*tiny, batch_size=4, cache="static").generate(PROMPTS, seed=1, **kwargs) == a
    greedy = lm.generate(PROMPTS, max_new_tokens=10, n=2)
    assert lm.generate(PROMPTS, max_new_tokens=10, temperature=1.0, top_p=1e-6, n=2, seed=3) == greedy


def test_nucleus_keeps_what_transformers_keeps():
    scores = torch.randn(16, 50, generator=torch.Generator().manual_seed(0)) * 2  # (B, V)
    for top_p in (0.05, 0.5, 0.9, 0.99):
        probs, order = nucleus(scores, top_p)
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, probs > 0)  # (B, V)
        reference = TopPLogitsWarper(top_p)(None, scores.clone()) > float("-inf")
        assert torch.equal(kept, reference)
    probs, _ = nucleus(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 0.75)
    assert torch.allclose(probs, torch.tensor([[0.5, 0.3, 0.0, 0.0]]))


def test_a_peft_model_samples_like_its_generate():
    from peft import LoraConfig, get_peft_model

    model, tokenizer = sharp_tiny()
    base = LM(model, tokenizer).generate(PROMPTS, max_new_tokens=12)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # random B: the adapter acts
    hf, ours = both(peft_model, tokenizer, PROMPTS, 3, max_new_tokens=12, n=2)
    assert ours == hf and [row[0] for row in ours] != [row[0] for row in base]
    assert LM(peft_model, tokenizer, cache="static").generate(PROMPTS, max_new_tokens=12, n=2) == ours


def test_a_failing_compiled_step_falls_back_to_eager_decoding(tiny, capsys):
    """torch.compile / CUDA graphs failing on some model or version must not lose the evaluation."""
    model, tokenizer = tiny
    expected = LM(model, tokenizer, batch_size=4, cache="static", compile=False).generate(PROMPTS, max_new_tokens=12)
    lm = LM(model, tokenizer, batch_size=4, cache="static", compile=True)

    def broken(*args):
        raise RuntimeError("compiled step: unsupported")

    lm.sampler._step = broken
    assert lm.generate(PROMPTS, max_new_tokens=12) == expected
    assert "decoding without torch.compile" in capsys.readouterr().err
    assert lm.sampler.compile is False


class CountingBackend:
    """A torch.compile backend that runs dynamo's graphs as traced and counts them: one per (re)compile."""

    def __init__(self):
        self.compiles = 0

    def __call__(self, graph, example_inputs):
        self.compiles += 1
        return graph.forward


@pytest.fixture
def counted_compile(monkeypatch):
    """The sampler's torch.compile with a CountingBackend (dynamo's guards and recompile limit as with inductor),
    from a clean dynamo state, so the count is this test's alone."""
    backend = CountingBackend()
    compile_ = torch.compile
    monkeypatch.setattr(sampler_module.torch, "compile", lambda fn, mode=None: compile_(fn, backend=backend))
    monkeypatch.setattr(sampler_module, "_COMPILED", {})
    torch._dynamo.reset()
    yield backend
    torch._dynamo.reset()


def save_adapter(base_dir, out, seed: int, rank: int = 4):
    """A random LoRA adapter on the model in base_dir (B ~ N(0, 1): large enough to change the greedy text)."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(ModelConfig(name=str(base_dir)), torch.device("cpu"), torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    peft_model.save_pretrained(out)
    return out


def base_and_adapters(tmp_path, ranks: list[int]):
    """A tiny base model directory and one random adapter directory on it per rank given."""
    from ftlab.model import save_pretrained

    model, tokenizer = build_tiny(TinyModelConfig(hidden_size=32, layers=1, heads=4, kv_heads=2,
                                                  intermediate_size=64, max_position=512))
    save_pretrained(model, tokenizer, tmp_path / "base")
    base = tmp_path / "base"
    return base, [save_adapter(base, tmp_path / f"ckpt-{i}", seed=i, rank=r) for i, r in enumerate(ranks)]


def alone(base_dir, ckpt):
    """The checkpoint loaded on its own: a fresh base and PeftModel.from_pretrained."""
    from peft import PeftModel

    model, _ = load_model(ModelConfig(name=str(base_dir)), torch.device("cpu"), torch.float32)
    return PeftModel.from_pretrained(model, ckpt).eval()


def test_every_checkpoint_of_a_run_shares_one_compiled_step(tmp_path, counted_compile):
    """`ftlab eval` of a run swaps its LoRA checkpoints (9 here) onto one base and decodes each, in batches of 4
    and 2 or of 3 rows, with the compiled step: two compiles in all (the first shapes, then rows made dynamic),
    not one per checkpoint until torch's limit of 8 and then none. A later run's fresh evaluator (`ftlab run` frees
    it while a run trains) compiles nothing new; an adapter of another rank compiles once more. Every checkpoint
    decodes compiled and gives the completions model.generate gives on that checkpoint loaded on its own."""
    from ftlab.evaluate.targets import Evaluator

    base_dir, ckpts = base_and_adapters(tmp_path, [4] * 10 + [2])
    prompts, texts = PROMPTS + ["Hello"], set()

    def decode(evaluator, ckpt, batch_size):
        lm = LM(evaluator.load(ckpt), evaluator.tokenizer, batch_size=batch_size, cache="static", compile=True)
        ours = lm.generate(prompts, max_new_tokens=6)
        assert ours == LM(alone(base_dir, ckpt), evaluator.tokenizer, sampler="hf").generate(prompts, max_new_tokens=6)
        assert lm.sampler.compile, ckpt.name  # no fallback to eager decoding
        texts.add(tuple(row[0] for row in ours))

    evaluator = Evaluator(str(base_dir), "cpu")
    for i, ckpt in enumerate(ckpts[:9]):
        decode(evaluator, ckpt, (4, 3)[i % 2])
    assert counted_compile.compiles == 2 and len(texts) == 9  # each checkpoint decodes its own text
    later = Evaluator(str(base_dir), "cpu")  # the next run's
    decode(later, ckpts[9], 4)
    assert counted_compile.compiles == 2
    decode(later, ckpts[10], 4)  # rank 2
    assert counted_compile.compiles == 3 and len(texts) == 11


def test_checkpoints_are_swapped_in_place_and_another_rank_is_loaded_anew(tmp_path):
    """Adapters of one structure go into the same tensors (same adapter name, same addresses); an adapter of
    another rank replaces them under the same name; each gives the logits of the checkpoint loaded on its own."""
    from ftlab.evaluate.targets import Evaluator

    base_dir, ckpts = base_and_adapters(tmp_path, [4, 4, 2, 2])
    evaluator = Evaluator(str(base_dir), "cpu")
    ids = torch.tensor([[5, 9, 30, 41, 7]])  # (1, T)
    seen = []
    for ckpt in ckpts:
        model = evaluator.load(ckpt)
        lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A[model.active_adapter].weight
        seen.append((model.active_adapter, lora_a.data_ptr(), lora_a.shape[0]))
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, alone(base_dir, ckpt)(ids).logits, rtol=0, atol=0)
    assert seen[0] == seen[1] and seen[2] == seen[3] and seen[1][1:] != seen[2][1:]
    assert {name for name, _, _ in seen} == {"checkpoint"} and [rank for _, _, rank in seen] == [4, 4, 2, 2]
    with evaluator.plain_base() as base, torch.no_grad():  # the base as loaded, under the swapped adapters
        plain = load_model(ModelConfig(name=str(base_dir)), torch.device("cpu"), torch.float32)[0]
        torch.testing.assert_close(base(ids).logits, plain(ids).logits, rtol=0, atol=0)


def test_reaching_the_recompile_limit_is_reported_and_decoding_goes_on(tiny, counted_compile, capsys):
    """Past torch's recompile limit dynamo would run the step uncompiled without a word; the sampler says so."""
    expected = LM(*tiny, batch_size=3).generate(PROMPTS, max_new_tokens=8)
    lm = LM(*tiny, batch_size=3, cache="static", compile=True)
    with torch._dynamo.config.patch(recompile_limit=1):  # batches of 3 rows, then 2: a second compile
        assert lm.generate(PROMPTS, max_new_tokens=8) == expected
    assert "decoding without torch.compile" in capsys.readouterr().err
    assert lm.sampler.compile is False and counted_compile.compiles == 1


def test_a_step_failing_part_way_is_retried_from_the_cache_before_it(tiny):
    """A compiled step that fails after some layers wrote their keys and values (and advanced their write
    position) is redone eagerly from the cache as it was: the same completions as never compiling."""
    model, tokenizer = tiny
    expected = LM(model, tokenizer, batch_size=4, cache="static").generate(PROMPTS, max_new_tokens=12)
    lm = LM(model, tokenizer, batch_size=4, cache="static", compile=True)
    failures = []

    def fail_in_the_second_layer(*args):
        def boom(module, inputs):
            failures.append(module)
            raise RuntimeError("compiled step: failed in layer 1")

        hook = model.model.layers[1].register_forward_pre_hook(boom)
        try:
            return sampler_module._next_logits(*args)  # layer 0 has written this token when layer 1 fails
        finally:
            hook.remove()

    lm.sampler._step = fail_in_the_second_layer
    assert lm.generate(PROMPTS, max_new_tokens=12) == expected
    assert len(failures) == 1 and lm.sampler.compile is False
