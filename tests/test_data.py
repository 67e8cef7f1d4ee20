"""Data: shape detection, loud errors, response-only labels, truncation, packing, splits, resume, collate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ftlab import records as data_records
from ftlab.config import DataConfig
from ftlab.data import (
    IGNORE, Example, PackedText, collate, detect_format, load_cpt_eval, load_ift, prompt_response, read_records,
    tokenize_example,
)
from ftlab.errors import DataError
from ftlab.model import byte_tokenizer

GSM8K = Path(__file__).parent / "data" / "benchmarks" / "gsm8k" / "test.jsonl"  # GSM8K's first 50 test records


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def labelled_text(tok, ex: Example) -> str:
    return tok.decode([label for label in ex.labels if label != IGNORE])


# ----------------------------------------------------------------------------- reading and shapes

SHAPES = {
    "messages": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    "prompt_completion": {"prompt": "p", "completion": "c"},
    "alpaca": {"instruction": "i", "input": "", "output": "o", "text": "ignored"},
    "metamath": {"query": "q", "response": "r", "type": "GSM_Rephrased"},
    "magicoder": {"instruction": "i", "response": "r"},
    "question_answer": {"question": "q", "answer": "a"},
    "text": {"text": "raw"},
}


@pytest.mark.parametrize("fmt", SHAPES)
def test_each_shape_is_detected(fmt):
    assert detect_format(SHAPES[fmt], "f.jsonl:1") == fmt


def test_text_shape_uses_the_configured_field():
    assert detect_format({"body": "raw"}, "f.jsonl:1", text_field="body") == "text"


def test_unknown_shape_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}, {"foo": 1}])
    with pytest.raises(DataError, match=re.escape(f"{path}:2") + ".*unknown record shape.*prompt_completion"):
        load_ift(DataConfig(path=str(path)), byte_tokenizer(), seed=0)


def test_malformed_json_names_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", \n')
    with pytest.raises(DataError, match=re.escape(f"{path}:3: not valid JSON")):
        list(read_records(str(path), DataConfig()))


def test_non_object_line_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n[1, 2]\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: expected a JSON object") + ".*list"):
        list(read_records(str(path), DataConfig()))


def test_missing_key_is_named():
    with pytest.raises(DataError, match=r"f\.jsonl:7: alpaca record needs a string field 'output'; it is missing"):
        prompt_response({"instruction": "x"}, "alpaca", "f.jsonl:7")
    with pytest.raises(DataError, match=r"'completion'; got int"):
        prompt_response({"prompt": "x", "completion": 3}, "prompt_completion", "f.jsonl:1")


def test_mixed_shapes_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [SHAPES["prompt_completion"], SHAPES["question_answer"]])
    with pytest.raises(DataError, match=re.escape(f"{path}:2") + ".*question_answer.*prompt_completion"):
        load_ift(DataConfig(path=str(path)), byte_tokenizer(), seed=0)


def test_directory_reads_sorted_recursively_and_text_files_whole(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b1"}, {"text": "b2"}])
    (tmp_path / "a.txt").write_text("whole\nfile")
    (tmp_path / "sub" / "c.md").write_text("# c")
    (tmp_path / "ignored.csv").write_text("x")
    got = [(Path(s).name, line, r["text"]) for s, line, r in read_records(str(tmp_path), DataConfig())]
    assert got == [("a.txt", 1, "whole\nfile"), ("b.jsonl", 1, "b1"), ("b.jsonl", 2, "b2"), ("c.md", 1, "# c")]


def test_hub_without_datasets_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=re.escape("pip install 'ftlab[hub]'")):
        list(read_records("hub:owner/name", DataConfig()))


# ----------------------------------------------------------------------------- tokenization and labels


def test_prompt_tokens_are_masked_exactly(tok):
    record = {"prompt": "Reverse: abc\n", "completion": "cba"}
    ex = tokenize_example(record, "prompt_completion", tok, 64, "f:1")
    n_prompt = len(tok("Reverse: abc\n", add_special_tokens=False)["input_ids"])  # the byte tokenizer adds no bos
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert ex.input_ids[-1] == tok.eos_token_id
    assert labelled_text(tok, ex) == "cba" + tok.eos_token


def test_bos_is_added_and_masked_when_the_tokenizer_adds_it(tok):
    from tokenizers import processors

    bos_tok = byte_tokenizer()  # the byte tokenizer, but adding bos by default like Llama's
    bos_tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert bos_tok("ab")["input_ids"][0] == tok.bos_token_id
    ex = tokenize_example({"prompt": "ab", "completion": "c"}, "prompt_completion", bos_tok, 64, "f:1")
    assert ex.input_ids == [tok.bos_token_id] + tok("abc")["input_ids"] + [tok.eos_token_id]
    assert ex.labels == [IGNORE] * 3 + tok("c")["input_ids"] + [tok.eos_token_id]


def test_templates(tok):
    prompt, response = prompt_response({"instruction": "Add.", "input": "1 2", "output": "3"}, "alpaca", "f:1")
    assert prompt.endswith("### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n") and response == "3"
    prompt, _ = prompt_response({"query": "Why?", "response": "r"}, "metamath", "f:1")
    assert prompt.startswith("Below is an instruction that describes a task. Write a response")
    assert prompt.endswith("### Instruction:\nWhy?\n\n### Response:\n")
    assert prompt_response({"instruction": "Code.", "response": "x"}, "magicoder", "f:1") == (
        "@@ Instruction\nCode.\n\n@@ Response\n", "x")
    assert prompt_response({"question": "1+1?", "answer": "2"}, "question_answer", "f:1") == (
        "Question: 1+1?\nAnswer: ", "2")


def test_every_assistant_turn_is_labelled_and_nothing_else(tok):
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "USER1"},
        {"role": "assistant", "content": "ANSWER1"},
        {"role": "user", "content": "USER2"},
        {"role": "assistant", "content": "ANSWER2"},
    ]
    ex = tokenize_example({"messages": messages}, "messages", tok, 512, "f:1")
    full = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ex.input_ids) == full
    runs, current = [], []  # contiguous labelled spans, decoded
    for label in ex.labels + [IGNORE]:
        if label != IGNORE:
            current.append(label)
        elif current:
            runs.append(tok.decode(current))
            current = []
    # the tiny template ends an assistant turn with "</s>\n"
    assert runs == [f"ANSWER1{tok.eos_token}\n", f"ANSWER2{tok.eos_token}\n"]


def test_chat_template_that_is_not_prefix_consistent_errors():
    odd = byte_tokenizer()
    odd.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(DataError, match="f:4: chat template is not prefix-consistent"):
        tokenize_example({"messages": messages}, "messages", odd, 64, "f:4")
    odd.chat_template = None
    with pytest.raises(DataError, match="f:4: .*no chat template|f:4: .*chat template.*none"):
        tokenize_example({"messages": messages}, "messages", odd, 64, "f:4")


def test_truncation(tok):
    ex = tokenize_example({"prompt": "ab", "completion": "x" * 50}, "prompt_completion", tok, 16, "f:1")
    assert len(ex.input_ids) == len(ex.labels) == 16
    assert ex.labels[:2] == [IGNORE, IGNORE] and tok.decode(ex.labels[2:]) == "x" * 14
    assert tokenize_example({"prompt": "p" * 20, "completion": "c"}, "prompt_completion", tok, 16, "f:1") is None


# ----------------------------------------------------------------------------- load_ift and collate


def test_ift_split_is_disjoint_complete_and_seeded(tmp_path, tok, capsys):
    records = [{"prompt": f"p{i}:", "completion": f"c{i}"} for i in range(40)]
    records.append({"prompt": "p" * 99, "completion": "c"})  # dropped: no response token within seq_len
    cfg = DataConfig(path=str(write_jsonl(tmp_path / "d.jsonl", records)), seq_len=32, eval_fraction=0.25)
    train, held = load_ift(cfg, tok, seed=1)
    assert "40 examples (prompt_completion), 1 dropped" in capsys.readouterr().out
    assert len(held) == 10 and len(train) == 30
    def key(e: Example) -> tuple[int, ...]:
        return tuple(e.input_ids)

    assert {key(e) for e in train}.isdisjoint(key(e) for e in held)
    every = [tokenize_example(r, "prompt_completion", tok, 32, "") for r in records[:40]]
    assert sorted(map(key, train + held)) == sorted(map(key, every))
    again, held_again = load_ift(cfg, tok, seed=1)
    assert list(map(key, held_again)) == list(map(key, held))
    assert list(map(key, load_ift(cfg, tok, seed=2)[1])) != list(map(key, held))
    cfg.eval_max_examples = 3
    train, held = load_ift(cfg, tok, seed=1)
    assert len(held) == 3 and len(train) == 37


@pytest.mark.parametrize("n, fraction, held_out", [(3, 0.05, 1), (2, 0.9, 1), (1, 0.5, 0), (3, 0.0, 0)])
def test_ift_holds_out_at_least_one_and_trains_on_at_least_one(tmp_path, tok, n, fraction, held_out):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": f"c{i}"} for i in range(n)])
    train, held = load_ift(DataConfig(path=str(path), eval_fraction=fraction), tok, seed=0)
    assert (len(train), len(held)) == (n - held_out, held_out)


def test_ift_eval_path_and_empty_data(tmp_path, tok):
    train_path = write_jsonl(tmp_path / "t.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(5)])
    eval_path = write_jsonl(tmp_path / "e.jsonl", [{"question": f"e{i}", "answer": "a"} for i in range(4)])
    train, held = load_ift(DataConfig(path=str(train_path), eval_path=str(eval_path), eval_max_examples=3), tok, 0)
    assert len(train) == 5 and [tok.decode(e.input_ids[10:12]) for e in held] == ["e0", "e1", "e2"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=re.escape(str(empty))):
        load_ift(DataConfig(path=str(empty)), tok, 0)


def test_collate_pads_right():
    batch = collate([Example([5, 6, 7], [IGNORE, 6, 7]), Example([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_gsm8k_labels_end_with_the_answer(tok):
    with open(GSM8K) as f:
        lines = [json.loads(next(f)) for _ in range(50)]
    for i, record in enumerate(lines, start=1):
        assert detect_format(record, f"{GSM8K}:{i}") == "question_answer"
        ex = tokenize_example(record, "question_answer", tok, 4096, f"{GSM8K}:{i}")
        number = record["answer"].rsplit("#### ", 1)[1]
        assert re.fullmatch(r"-?[\d,.]+", number)
        assert labelled_text(tok, ex).endswith(f"#### {number}{tok.eos_token}")
        assert tok.decode(ex.input_ids).startswith(f"Question: {record['question']}\nAnswer: ")


# ----------------------------------------------------------------------------- CPT packing


def make_corpus(tmp_path: Path, n: int = 30) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_jsonl(docs / "a.jsonl", [{"text": f"doc {i} " + "xyz" * (i % 7)} for i in range(n)])
    (docs / "b.txt").write_text("a whole text file, one document")
    return docs


def doc_tokens(tok, cfg: DataConfig, split: str, seed: int) -> list[list[int]]:
    """Every document of the split, tokenized + eos, recomputed independently of PackedText."""
    out = []
    for source, line, record in read_records(cfg.path, cfg):
        if PackedText(cfg, tok, split, seed)._in_split(source, line):
            out.append(tok(record["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    return out


def test_packing_keeps_every_token(tmp_path, tok):
    cfg = DataConfig(regime="cpt", path=str(make_corpus(tmp_path)), seq_len=16, eval_fraction=0.2)
    seqs = list(PackedText(cfg, tok, "train", seed=0))
    assert all(s["input_ids"].shape == (16,) for s in seqs)
    assert all(bool(s["attention_mask"].all()) for s in seqs[:-1])
    got = [t for s in seqs for t in s["input_ids"][s["attention_mask"].bool()].tolist()]
    assert got == [t for doc in doc_tokens(tok, cfg, "train", 0) for t in doc]
    last = seqs[-1]
    assert (last["labels"][last["attention_mask"] == 0] == IGNORE).all()
    for s in seqs:
        real = s["attention_mask"].bool()
        assert torch.equal(s["labels"][real], s["input_ids"][real])
    assert PackedText(cfg, tok, "train", seed=0).count_sequences() == len(seqs)


def test_cpt_split_is_disjoint_complete_and_seeded(tmp_path, tok):
    cfg = DataConfig(regime="cpt", path=str(make_corpus(tmp_path)), seq_len=16, eval_fraction=0.3)
    train, held = doc_tokens(tok, cfg, "train", 0), doc_tokens(tok, cfg, "eval", 0)
    assert len(held) > 0 and len(train) > 0 and len(train) + len(held) == 31
    everything = doc_tokens(tok, DataConfig(regime="cpt", path=cfg.path, eval_fraction=0.0), "train", 0)
    assert sorted(map(tuple, train + held)) == sorted(map(tuple, everything))
    assert doc_tokens(tok, cfg, "eval", 0) == held and doc_tokens(tok, cfg, "eval", 1) != held
    seqs = load_cpt_eval(cfg, tok, seed=0)
    assert [t for s in seqs for t in s["input_ids"][s["attention_mask"].bool()].tolist()] == [t for d in held for t in d]
    cfg.eval_max_examples = 1
    assert len(load_cpt_eval(cfg, tok, seed=0)) == 1


def test_cpt_eval_path_reads_it_all(tmp_path, tok):
    eval_path = write_jsonl(tmp_path / "e.jsonl", [{"text": "held out"}])
    cfg = DataConfig(regime="cpt", path=str(make_corpus(tmp_path)), eval_path=str(eval_path), seq_len=16)
    assert len(doc_tokens(tok, cfg, "train", 0)) == 31
    (seq,) = load_cpt_eval(cfg, tok, seed=0)
    assert tok.decode(seq["input_ids"][seq["attention_mask"].bool()]) == "held out" + tok.eos_token


@pytest.mark.parametrize("k", [0, 3, 9])
def test_resume_yields_the_same_sequences(tmp_path, tok, monkeypatch, k):
    cfg = DataConfig(regime="cpt", path=str(make_corpus(tmp_path)), seq_len=16, eval_fraction=0.2)
    expected = [s["input_ids"].tolist() for s in PackedText(cfg, tok, "train", seed=0)]
    first = PackedText(cfg, tok, "train", seed=0)
    it = iter(first)
    head = [next(it)["input_ids"].tolist() for _ in range(k)]
    state = json.loads(json.dumps(first.state()))

    seeks = []
    real_rows = data_records._jsonl_rows
    monkeypatch.setattr(data_records, "_jsonl_rows",
                        lambda src, off, line: seeks.append((off, line)) or real_rows(src, off, line))
    resumed = PackedText(cfg, tok, "train", seed=0)
    resumed.load_state(state)
    tail = [s["input_ids"].tolist() for s in resumed]
    assert head + tail == expected
    if k > 0:
        assert state["offset"] > 0 and seeks[0] == (state["offset"], state["line"])  # seeked past read lines
    resumed.restart()
    assert [s["input_ids"].tolist() for s in resumed] == expected


def test_load_state_rejects_another_split(tmp_path, tok):
    cfg = DataConfig(regime="cpt", path=str(make_corpus(tmp_path)), seq_len=16)
    with pytest.raises(DataError, match="resume"):
        PackedText(cfg, tok, "eval", 0).load_state(PackedText(cfg, tok, "train", 0).state())


def test_hub_rows_resume_by_row_count(monkeypatch, tok):
    import sys
    import types

    rows = [{"text": f"row {i} " * (i % 4)} for i in range(12)]
    calls = []

    class Stream:  # the slice of datasets.IterableDataset that the reader uses
        def __init__(self, start: int = 0):
            self.start = start

        def skip(self, n: int) -> "Stream":
            return Stream(self.start + n)

        def __iter__(self):
            return iter(rows[self.start:])

    def load_dataset(name, config, split, streaming, data_dir=None):
        calls.append((name, config, data_dir, split, streaming))
        return Stream()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cfg = DataConfig(regime="cpt", path="hub:owner/name", hub_config="main", hub_data_dir="python",
                     hub_split="train", seq_len=8, eval_fraction=0.0)
    assert [line for _, line, _ in read_records(cfg.path, cfg)] == list(range(1, 13))
    assert calls[0] == ("owner/name", "main", "python", "train", True)  # a subset by data_dir (StarCoder's python)
    expected = [s["input_ids"].tolist() for s in PackedText(cfg, tok, "train", 0)]
    first = PackedText(cfg, tok, "train", 0)
    it = iter(first)
    head = [next(it)["input_ids"].tolist() for _ in range(4)]
    state = json.loads(json.dumps(first.state()))
    assert state["offset"] > 0
    resumed = PackedText(cfg, tok, "train", 0)
    resumed.load_state(state)
    assert head + [s["input_ids"].tolist() for s in resumed] == expected
