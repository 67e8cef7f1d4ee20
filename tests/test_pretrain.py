"""The shipped base's pretraining recipe (configs/base-tiny.yaml) reproduces bit for bit, run twice in fresh
processes, on a small corpus: the tokenizer's merges and every weight."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from ftlab import domains

ROOT = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_base_recipe_reproduces_bit_for_bit(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for doc in domains.source_texts("train")[:60]:
            f.write(json.dumps({"text": doc.text}) + "\n")
    outs = []
    for name in ("a", "b"):  # separate interpreters: nothing carried over (a thread pool, a cache, an RNG)
        out = tmp_path / name
        command = [sys.executable, "-m", "ftlab", "pretrain", str(ROOT / "configs" / "base-tiny.yaml"),
                   f"data.path={corpus}", "train.tokens=12288", "output.resume_every=2", "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": str(len(name) + ord(name))})
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(out / "model")
    a, b = outs
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256(a / name) == sha256(b / name), name
    vocab = json.loads((a / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(str(d) in vocab for d in range(10)) and "12" not in vocab  # every digit its own token, no merges


def test_the_shipped_tokenizer_is_what_the_recipe_trains(tmp_path):
    from ftlab.config import load_config
    from ftlab.pretrain import TOKENIZER_VOCAB
    from ftlab.tokenizer import save_bpe

    data = load_config(ROOT / "configs" / "base-tiny.yaml", out=str(tmp_path / "run")).data  # builtin:source-cpt
    save_bpe(data, TOKENIZER_VOCAB, tmp_path / "tokenizer")
    shipped = ROOT / "src" / "ftlab" / "assets" / "base-tiny" / "tokenizer.json"
    assert sha256(tmp_path / "tokenizer" / "tokenizer.json") == sha256(shipped)
