"""Train the embedded default's tokenizer: byte-level BPE with every digit its own token (arithmetic needs it).

Deterministic: the same texts in the same order give the same vocabulary and merges on every machine
(training runs single-threaded for that reason).
"""

from __future__ import annotations

import os
from typing import Iterable

from transformers import PreTrainedTokenizerFast

from ftlab.model import TINY_CHAT_TEMPLATE

SPECIALS = ["<pad>", "<s>", "</s>"]


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.environ["RAYON_NUM_THREADS"] = "1"  # parallel merge counting can break ties differently run to run
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
