"""The tokenizer zoo: one tokenizer of each family ftlab's users run, built from code (nothing is downloaded).

    tokenizer = build("llama2")                       # a fresh PreTrainedTokenizerFast
    model, tokenizer = tiny_model("llama2")           # and a tiny random Llama whose vocabulary matches it

Each is the real family's tokenizer.json pipeline around a tiny BPE vocabulary (about 500 tokens) trained by
`train_merges` on the fixed CORPUS below; training is plain Python, so the vocabulary is the same on every machine.

- llama2 (Llama-2, Mistral): Metaspace "▁" pre-tokenizer (prepend "first", no split), BPE with byte fallback
  <0x..> tokens, decoder Replace/ByteFallback/Fuse/Strip(left=1); BOS <s> added by the post-processor, EOS </s>,
  no pad; Mistral's [INST] chat template, which renders BOS.
- gpt2 (GPT-2, GPT-NeoX): byte-level BPE with GPT-2's regex, its post-processor trimming spaces off offsets
  (trim_offsets, which some byte-level files set); <|endoftext|> is BOS and EOS, never added; no pad; no chat
  template.
- qwen2 (Qwen2-Instruct): Qwen2's split regex + byte-level BPE; no BOS; EOS <|im_end|>, pad <|endoftext|>;
  ChatML template with a default system turn.
- llama3 (Llama-3 base): Llama-3's split regex + byte-level BPE; BOS <|begin_of_text|> added by the
  post-processor, EOS <|end_of_text|>, pad = EOS; Llama-3's header template, which renders BOS.

As in the real families, newline is not in the llama2 vocabulary (it is the byte token <0x0A>), runs of spaces
have their own tokens ("▁▁▁▁") and a word carries the space before it ("▁the", "Ġreturn").
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

FAMILIES = ("llama2", "gpt2", "qwen2", "llama3")
MERGES = 250  # vocabulary = specials + 256 bytes (+ llama2's characters) + merges

# Qwen2's and Llama-3's pre-tokenizer patterns (their tokenizer.json "Split" regexes).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (  # Qwen2-Instruct's
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

CORPUS = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    """
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2:
                distance = abs(elem - elem2)
                if distance < threshold:
                    return True

    return False


def add(a, b):
    """Return the sum of a and b."""
    return a + b


def count_words(text: str) -> int:
    result = 0
    for word in text.split():
        if word:
            result += 1
    return result


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()


Question: Janet has 3 apples and buys 5 more. How many apples does she have?
Answer: She has 3 + 5 = 8 apples.
#### 8

Question: A train travels 60 miles in 2 hours. What is its speed?
Answer: The speed is 60 / 2 = 30 miles per hour.
#### 30

Question: Tom reads 12 pages a day for 7 days. How many pages does he read?
Answer: He reads 12 * 7 = 84 pages.
#### 84

The cat sat on the mat and purred. The river runs past the stone bridge to the sea.
A man opens the door and walks into the kitchen. He makes a cup of tea for his mother.
Once upon a time there was a tiger who lived near a lemon tree by the grass.
The quick brown fox jumps over the lazy dog. The model learns what the data holds.
'''


def train_merges(words: list[str], n_merges: int) -> list[tuple[str, str]]:
    """BPE merges learned on pre-tokenized words: each step merges the most frequent adjacent pair (ties: the
    smallest pair), counting every occurrence of a word. A symbol None (a character outside the vocabulary)
    never merges."""
    counts = Counter(words)
    seqs = {w: list(w) for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, n in counts.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                if a is not None and b is not None:
                    pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w in seqs:
            seqs[w] = _merge(seqs[w], best)
    return merges


def _merge(symbols: list, pair: tuple[str, str]) -> list:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _vocab(base: list[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in base + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    return vocab


# ----------------------------------------------------------------------------- the families


@lru_cache(maxsize=None)
def _sentencepiece_model() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama-2's vocabulary layout: <unk>, <s>, </s>, the 256 byte tokens, characters, merges. Training words:
    each line with a dummy "▁" prefix, spaces as "▁", cut into whitespace runs and "▁word" pieces the way
    SentencePiece (allow_whitespace_only_pieces) cuts them; newlines are left to byte fallback."""
    words = []
    for line in CORPUS.splitlines():
        if line:
            words += re.findall(r"▁+(?=▁)|▁?[^▁]+|▁+", "▁" + line.replace(" ", "▁"))
    chars = sorted({c for w in words for c in w})
    base = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars
    merges = train_merges(words, MERGES)
    return _vocab(base, merges), merges


@lru_cache(maxsize=None)
def _byte_level_model(family: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import pre_tokenizers

    words = [w for w, _ in _byte_level_pre_tokenizer(family).pre_tokenize_str(CORPUS)]
    merges = train_merges(words, MERGES)
    return _vocab(sorted(pre_tokenizers.ByteLevel.alphabet()), merges), merges


def _byte_level_pre_tokenizer(family: str):
    from tokenizers import Regex, pre_tokenizers

    if family == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pattern = QWEN2_PATTERN if family == "qwen2" else LLAMA3_PATTERN
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _llama2():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _sentencepiece_model()
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(content=" ", left=1, right=0)])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                        special_tokens=[("<s>", vocab["<s>"])])
    core.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = MISTRAL_TEMPLATE
    return tok


def _byte_level(family: str):
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _byte_level_model(family)
    specials = {"gpt2": ["<|endoftext|>"], "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"]}[family]
    vocab = {**vocab, **{s: len(vocab) + i for i, s in enumerate(specials)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = _byte_level_pre_tokenizer(family)
    core.decoder = decoders.ByteLevel()
    byte_level = processors.ByteLevel(trim_offsets=family == "gpt2")  # the one family whose offsets are trimmed
    if family == "llama3":
        bos = "<|begin_of_text|>"
        core.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])])
    else:
        core.post_processor = byte_level
    core.add_special_tokens(specials)
    if family == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>")
    if family == "qwen2":
        tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = CHATML_TEMPLATE
        return tok
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                  pad_token="<|end_of_text|>")
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def build(family: str):
    """A new tokenizer of the family (a fresh object: lm-eval's HFLM sets a missing pad token on the one it gets)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; the zoo has {', '.join(FAMILIES)}")
    return _llama2() if family == "llama2" else _byte_level(family)


def tiny_model(family: str, seed: int = 0, sharp: bool = False):
    """(model, tokenizer): a tiny random Llama (width 32, 2 layers, 512 positions) over the family's vocabulary.
    sharp: weights scaled up 8x, so greedy text depends on its context for longer before it repeats itself."""
    import torch

    from ftlab.config import TinyModelConfig
    from ftlab.model import build_tiny

    tokenizer = build(family)
    model, tokenizer = build_tiny(TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2,
                                                  intermediate_size=64, max_position=512, seed=seed), tokenizer)
    if sharp:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.mul_(8)
    return model.eval(), tokenizer
