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
from ftlab.io import copy_dir, fresh_dir, publish_dir
from ftlab.rundir import INFO, RunLayout
from ftlab.tokenizer import save_bpe
from ftlab.train import train

TOKENIZER_VOCAB = 2048


def pretrain(config: str, overrides: list[str], out: str, vocab_size: int = TOKENIZER_VOCAB) -> Path:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = out_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        data = load_config(config, overrides, out=str(out_dir / "run")).data  # validated before any work
        print(f"ftlab pretrain: training a {vocab_size}-token BPE tokenizer on {data.path}", flush=True)
        tmp = fresh_dir(tok_dir)
        save_bpe(data, vocab_size, tmp)
        publish_dir(tmp, tok_dir)
    cfg = load_config(config, [*overrides, f"model.tiny.tokenizer={tok_dir.resolve()}"], out=str(out_dir / "run"))
    run = train(cfg)
    model_dir = out_dir / "model"
    copy_dir(RunLayout(run).final, model_dir, ignore=shutil.ignore_patterns(INFO))
    print(f"ftlab pretrain: base model in {model_dir}", flush=True)
    return model_dir
