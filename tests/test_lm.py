"""LM: lm-eval's encoding rules, batching that does not change results, generation, token loss."""

import random

import pytest
import torch

from ftlab.config import TinyModelConfig
from ftlab.evaluate.lm import LM
from ftlab.model import build_tiny

TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=512)
REQUESTS = [
    ("Question: what is 2+2?\nAnswer:", " 4"),
    ("Question: what is 2+2?\nAnswer: ", "5"),  # trailing space moves to the continuation
    ("The cat sat on the", " mat and purred."),
    ("", "Hello world"),  # empty context: the prefix token stands in
    ("A", " much longer continuation that spans several dozen byte tokens, to make padding matter."),
    ("Short", " x"),
    ("Another context, somewhat longer than the others, about tiny models", " and their quirks"),
    ("Question: what is 2+2?\nAnswer:", " 5"),
    ("héllo wörld", " ünïcode"),
]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(TINY)


def test_encode_pair_follows_lm_eval(tiny):
    lm = LM(*tiny)
    ctx, cont = lm.encode_pair("Answer: ", "4")
    assert lm.tokenizer.decode(ctx) == "Answer:" and lm.tokenizer.decode(cont) == " 4"
    ctx, cont = lm.encode_pair("", "hi")
    assert ctx == [lm.tokenizer.bos_token_id] and lm.tokenizer.decode(cont) == "hi"
    assert lm.encode("hi") == lm.tokenizer.encode("hi")  # the byte tokenizer adds no BOS, and neither does lm-eval


def test_loglikelihood_is_a_sum_of_next_token_logprobs(tiny):
    model, tokenizer = tiny
    lm = LM(model, tokenizer)
    ids = tokenizer.encode("The cat sat on the mat")
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)  # (T, V)
    n_ctx = len(tokenizer.encode("The cat sat on the"))
    expected = sum(float(logprobs[t - 1, ids[t]]) for t in range(n_ctx, len(ids)))
    greedy = all(int(logprobs[t - 1].argmax()) == ids[t] for t in range(n_ctx, len(ids)))
    assert lm.loglikelihood([("The cat sat on the", " mat")]) == [pytest.approx((expected, greedy), abs=1e-5)]


def test_loglikelihood_does_not_depend_on_batching_or_order(tiny):
    reference = LM(*tiny, batch_size=1).loglikelihood(REQUESTS)
    batched = LM(*tiny, batch_size=7).loglikelihood(REQUESTS)
    perm = list(range(len(REQUESTS)))
    random.Random(0).shuffle(perm)
    shuffled = LM(*tiny, batch_size=4).loglikelihood([REQUESTS[i] for i in perm])
    for i, (ll, greedy) in enumerate(reference):
        assert batched[i][0] == pytest.approx(ll, abs=1e-5) and batched[i][1] == greedy
        assert shuffled[perm.index(i)][0] == pytest.approx(ll, abs=1e-5)
    assert reference[1] == reference[7]  # "Answer: " + "5" is scored as "Answer:" + " 5"
    assert len({round(ll, 3) for ll, _ in reference}) == len(reference) - 1  # other requests differ


def test_loglikelihood_truncates_on_the_left(tiny):
    context, continuation = "x" * 40 + "the quick brown fox jumps", " over"
    short = LM(*tiny, max_length=16).loglikelihood([(context, continuation)])[0][0]
    window = 16 + 1 - len(continuation)  # tokens of context that fit with the continuation (bytes = tokens here)
    full = LM(*tiny).loglikelihood([(context[-window:], continuation)])[0][0]
    assert short == pytest.approx(full, abs=1e-5)
    assert short != pytest.approx(LM(*tiny).loglikelihood([(context, continuation)])[0][0], abs=1e-3)


def test_token_loss_matches_the_model_loss_and_windows(tiny):
    model, tokenizer = tiny
    text = "held-out text for a perplexity check"
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        mean_loss = float(model(ids, labels=ids).loss)
    total, count = LM(model, tokenizer).token_loss([text, "ab"])
    assert count == ids.shape[1] - 1 + 1
    one_total, one_count = LM(model, tokenizer).token_loss([text])
    assert one_total / one_count == pytest.approx(mean_loss, abs=1e-5)
    assert LM(model, tokenizer, max_length=8).token_loss([text])[1] == ids.shape[1] - 1  # each token scored once


def test_token_scores_with_context_equal_loglikelihood_of_the_continuation(tiny):
    lm = LM(*tiny, batch_size=3)
    pairs = [(c, k) for c, k in REQUESTS if c]
    total, count, correct = lm.token_scores([k for _, k in pairs], [c for c, _ in pairs])
    reference = lm.loglikelihood(pairs)
    assert total == pytest.approx(-sum(ll for ll, _ in reference), abs=1e-3)
    assert count == sum(len(lm.encode_pair(c, k)[1]) for c, k in pairs)
    # greedy argmax counted per token: a continuation that is greedy everywhere counts all its tokens
    assert correct >= sum(len(lm.encode_pair(c, k)[1]) for (c, k), (_, g) in zip(pairs, reference) if g)
    assert 0 <= correct <= count
    windowed = LM(*tiny, max_length=8).token_scores([k for _, k in pairs], [c for c, _ in pairs])
    assert windowed[1] == count  # each continuation token scored once, whatever the window


def test_generate_batched_equals_one_at_a_time(tiny):
    prompts = ["Question: 1+1?\nAnswer:", "Once upon a time", "x", "The quick brown fox jumps over the lazy dog."]
    batched = LM(*tiny, batch_size=4).generate(prompts, max_new_tokens=12)
    single = [LM(*tiny, batch_size=1).generate([p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert all(len(row) == 1 and row[0] for row in batched)


def test_generate_stops_and_truncates_at_stop_strings(tiny):
    lm = LM(*tiny, batch_size=2)
    free = lm.generate(["Once upon a time", "x"], max_new_tokens=20)
    stop = free[0][0][3:5]  # a string the greedy completion is known to contain
    cut = lm.generate(["Once upon a time", "x"], max_new_tokens=20, stop=[stop])
    assert cut[0][0] == free[0][0][:free[0][0].index(stop)]
    assert cut[1][0] == free[1][0].split(stop)[0]


def test_sampling_is_deterministic_for_a_seed(tiny):
    lm = LM(*tiny, batch_size=3)
    a = lm.generate(["Once", "x"], max_new_tokens=10, temperature=1.0, top_p=0.95, n=3, seed=1)
    b = lm.generate(["Once", "x"], max_new_tokens=10, temperature=1.0, top_p=0.95, n=3, seed=1)
    c = lm.generate(["Once", "x"], max_new_tokens=10, temperature=1.0, top_p=0.95, n=3, seed=2)
    assert a == b and a != c
    assert [len(row) for row in a] == [3, 3] and len(set(a[0])) > 1
