"""Train the embedded default's tokenizer: byte-level BPE with every digit its own token (arithmetic needs it).

    save_bpe(data_cfg, vocab_size=2048, directory="runs/base-tiny/tokenizer")

Deterministic: the same texts in the same order give the same vocabulary and merges on every machine. The
`tokenizers` library counts merges on a Rayon thread pool, and parallel counting can break ties differently run to
run, so training runs in a child process with RAYON_NUM_THREADS=1: the pool is built once per process, and this
process's own pool (used by every later encode) keeps its threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Iterator

from transformers import PreTrainedTokenizerFast

from ftlab import domains
from ftlab.builtin import BUILTIN_PREFIX
from ftlab.config import DataConfig, from_dict, to_dict
from ftlab.errors import FtlabError
from ftlab.model import TINY_CHAT_TEMPLATE
from ftlab.records import read_records

SPECIALS = ["<pad>", "<s>", "</s>"]


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` in this process (deterministic only on one Rayon thread)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def corpus(cfg: DataConfig) -> Iterator[str]:
    """The training texts a data config names (a built-in domain's train split, or its files), in order."""
    if cfg.path.startswith(BUILTIN_PREFIX):
        for record in domains.records(cfg.path.removeprefix(BUILTIN_PREFIX), "train"):
            yield record["text"]
        return
    for source, line, record in read_records(cfg.path, cfg):
        text = record.get(cfg.text_field)
        if not isinstance(text, str):
            raise FtlabError(f"{source}:{line}: expected a string field {cfg.text_field!r} (data.text_field)")
        yield text


def save_bpe(cfg: DataConfig, vocab_size: int, directory: Path) -> None:
    """Train on `corpus(cfg)` in a single-threaded child process and save the tokenizer to `directory`."""
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "ftlab.tokenizer", json.dumps(to_dict(cfg)), str(vocab_size), str(directory)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise FtlabError(f"training the tokenizer failed: {done.stderr.strip().splitlines()[-1:]}")


if __name__ == "__main__":  # the child of save_bpe: DATA_CONFIG_JSON VOCAB_SIZE DIRECTORY
    data = from_dict(DataConfig, json.loads(sys.argv[1]))
    train_bpe(corpus(data), int(sys.argv[2])).save_pretrained(sys.argv[3])
