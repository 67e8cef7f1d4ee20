"""`ftlab pretrain`: the recipe that makes the embedded default's base model, reproducibly.

    ftlab pretrain configs/base-tiny.yaml --out runs/base-tiny

1. Train a byte-level BPE tokenizer (digits one per token) on the config's training text (data.path; for the
   shipped base, the built-in source domain), in a single-threaded child process (ftlab.tokenizer).
2. Pretrain a tiny Llama from random initialisation on that text (the ordinary training loop, CPT regime).
3. Export the final model with its tokenizer to <out>/model, a plain Hugging Face directory.

Every step is deterministic on a CPU, so rerunning the recipe reproduces the shipped base bit for bit
(src/ftlab/assets/base-tiny is a copy of <out>/model; tests/test_pretrain.py reruns the recipe on a small corpus).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ftlab.config import load_config
from ftlab.train import train

TOKENIZER_VOCAB = 2048


def pretrain(config: str, overrides: list[str], out: str, vocab_size: int = TOKENIZER_VOCAB) -> Path:
    from ftlab.tokenizer import save_bpe

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = out_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        data = load_config(config, overrides, out=str(out_dir / "run")).data  # validated before any work
        print(f"ftlab pretrain: training a {vocab_size}-token BPE tokenizer on {data.path}", flush=True)
        tmp = tok_dir.with_name("tokenizer.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_bpe(data, vocab_size, tmp)
        shutil.rmtree(tok_dir, ignore_errors=True)
        tmp.replace(tok_dir)
    cfg = load_config(config, [*overrides, f"model.tiny.tokenizer={tok_dir.resolve()}"], out=str(out_dir / "run"))
    run = train(cfg)
    model_dir = out_dir / "model"
    tmp = out_dir / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "final", tmp, ignore=shutil.ignore_patterns("ftlab.json"))
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.replace(model_dir)
    print(f"ftlab pretrain: base model in {model_dir}", flush=True)
    return model_dir
