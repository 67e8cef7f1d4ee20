"""Huge records in bounded memory: a JSONL line past the record limit is skipped with a message after reading a
bounded piece of it at a time; a text file past it is read in pieces; long texts are tokenized window by window
(CPT) or from a prefix (IFT), to exactly the ids one encode of the whole text gives, on every tokenizer family."""

import json
import random
import subprocess
import sys
import textwrap

import pytest

from conftest import WORDS
from ftlab import records, text_tokens
from ftlab.config import DataConfig
from ftlab.data import tokenize_example
from ftlab.model import byte_tokenizer
from ftlab.records import Position, read_records, records_from
from tokenizer_zoo import FAMILIES, build


def long_text(n_words: int, seed: int = 0) -> str:
    """Words, numbers, runs of spaces, newlines and non-ASCII: what tokenizers treat differently at a cut."""
    rng = random.Random(seed)
    pieces = []
    for _ in range(n_words):
        pieces.append(rng.choice(WORDS + ["12345", "été", "  ", "\n", "\n\n    ", "x=1;", "über", "δ"]))
        pieces.append(rng.choice([" ", " ", " ", "", "\t"]))
    return "".join(pieces)


@pytest.mark.parametrize("family", ["byte", *FAMILIES])
def test_long_documents_tokenize_window_by_window_to_the_same_ids(family, monkeypatch):
    tokenizer = byte_tokenizer() if family == "byte" else build(family)
    text = long_text(3000)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(text_tokens, "WINDOW", 1000)  # 16 windows of this text
    monkeypatch.setattr(text_tokens, "OVERLAP", 64)
    assert text_tokens.encode_document(tokenizer, text) == whole


@pytest.mark.parametrize("family", ["byte", *FAMILIES])
def test_a_long_ift_record_is_tokenized_from_a_prefix_to_the_same_example(family, monkeypatch):
    """The first seq_len tokens and their labels, as from the whole text; the encoder is handed a bounded
    prefix only."""
    tokenizer = byte_tokenizer() if family == "byte" else build(family)
    record = {"prompt": "Say it: ", "completion": long_text(20000, seed=1)}  # ~100k characters
    full = tokenize_example(record, "prompt_completion", tokenizer, 10**6, "x:1")
    seen = []
    encode = text_tokens.encoder(tokenizer, "x").encode
    monkeypatch.setattr(text_tokens, "encoder", lambda *_: type("E", (), {
        "encode": staticmethod(lambda t, **k: seen.append(len(t)) or encode(t, **k))}))
    cut = tokenize_example(record, "prompt_completion", tokenizer, 48, "x:1")
    assert cut.input_ids == full.input_ids[:48] and cut.labels == full.labels[:48]
    assert max(seen) <= text_tokens.WINDOW < len(record["completion"])


def test_a_record_over_the_limit_is_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 1000)
    path = tmp_path / "data.jsonl"
    lines = [{"text": "short one"}, {"text": "x" * 5000}, {"text": "after it"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    got = [(line, r["text"]) for _, line, r in read_records(str(path), DataConfig(path=str(path), regime="cpt"))]
    assert got == [(1, "short one"), (3, "after it")]
    assert f"{path}:2: a record of" in capsys.readouterr().err


def test_a_text_file_over_the_limit_is_read_in_pieces_that_resume(tmp_path, monkeypatch):
    """Pieces end at line ends (or, in a line longer than a piece, between characters), hold the whole file between
    them, and reading from the position after any piece gives the rest."""
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 64)
    path = tmp_path / "book.txt"
    text = "".join(f"line {i} é\n" for i in range(40)) + "δ" * 100 + "\nend"
    path.write_text(text, encoding="utf-8")
    cfg = DataConfig(path=str(path), regime="cpt")
    pieces = list(records_from([str(path)], cfg, Position()))
    assert "".join(r["text"] for _, _, r, _ in pieces) == text
    assert all(len(r["text"].encode()) <= 64 for _, _, r, _ in pieces) and len(pieces) > 10
    assert [line for _, line, _, _ in pieces] == list(range(1, len(pieces) + 1))
    for k in (1, 5, len(pieces) - 1):
        rest = list(records_from([str(path)], cfg, pieces[k - 1][3]))
        assert [r["text"] for _, _, r, _ in rest] == [r["text"] for _, _, r, _ in pieces[k:]]


def test_packing_a_huge_document_stays_in_bounded_memory(tmp_path):
    """A 1.5 MB one-line document packed for CPT: the process grows by far less than one encode of it takes
    (about 400 bytes per character: 600 MB)."""
    doc = tmp_path / "big.jsonl"
    doc.write_text(json.dumps({"text": long_text(250_000)}) + "\n")
    code = textwrap.dedent(f"""
        import resource
        from ftlab.config import DataConfig
        from ftlab.model import byte_tokenizer
        from ftlab.packing import PackedText
        tok = byte_tokenizer()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cfg = DataConfig(path={str(doc)!r}, regime="cpt", seq_len=2048, eval_fraction=0.0)
        n = sum(1 for _ in PackedText(cfg, tok, "train", 0))
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(n, grown)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    sequences, grown_mib = int(out[0]), float(out[1])
    assert sequences > 300
    print(f"packing grew the process by {grown_mib:.0f} MiB")
    assert grown_mib < 200, f"packing grew the process by {grown_mib:.0f} MiB"
