"""Text to token ids in bounded memory, with each token's character span.

    ids, held = encode_spans(tokenizer, text, spans, where, max_tokens=seq_len)   # IFT: the first max_tokens
    ids = encode_document(tokenizer, text)                                          # CPT: all of it, in windows

A fast tokenizer holds about 400 bytes per character of the text it encodes at once (offsets, word ids, token
strings): a 6 MB document took 1 GB. Both functions encode at most a window of characters at a time and give the
same ids as one encode of the whole text (tested on the byte-level and SentencePiece families):
- encode_spans reads a prefix long enough for max_tokens tokens plus a margin, growing it only while it is not;
  the tokens past the margin's reach are the whole text's, as tokenizers are local.
- encode_document encodes overlapping windows and keeps, from each, the tokens that start in its own stretch; the
  overlap on either side gives each token the context it has in the whole text.
"""

from __future__ import annotations

import weakref

from ftlab.errors import DataError

WINDOW = 65_536  # characters encoded at once
OVERLAP = 1_024  # characters of context on each side of a window's own stretch
MARGIN = 64  # tokens past max_tokens that a prefix must reach before its first max_tokens are trusted

_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its backend, offsets untrimmed


def encoder(tokenizer, where: str):
    """The tokenizer's Rust backend without its post-processor (a private copy, made once per tokenizer).

    Without special tokens a post-processor only moves offsets: the ByteLevel one of GPT-NeoX-style files
    (trim_offsets) cuts leading and trailing spaces off them, so a token "ĠĠĠ" would seem to hold no character.
    The copy gives the same ids with offsets that cover every character of the text."""
    if tokenizer not in _ENCODERS:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise DataError(f"{where}: tokenizing by character spans needs a fast tokenizer (one with a "
                            f"tokenizer.json backend), got {type(tokenizer).__name__}")
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.post_processor = None
        copy.no_truncation()  # a tokenizer.json may carry its own; callers cut where they need
        copy.no_padding()
        _ENCODERS[tokenizer] = copy
    return _ENCODERS[tokenizer]


def encode_spans(tokenizer, text: str, spans: list[tuple[int, int]], where: str,
                 max_tokens: int | None = None) -> tuple[list[int], list[bool]]:
    """The token ids the tokenizer makes of the text (no special tokens added), the first max_tokens of them when
    given, and for each whether it holds at least one character of one of the [start, end) character spans.

    With max_tokens, a text far longer than that many tokens is encoded from a prefix only: 16 characters per
    token to start with, four times more while the prefix yields fewer than max_tokens + MARGIN tokens."""
    backend = encoder(tokenizer, where)
    limit = len(text) if max_tokens is None else max(16 * (max_tokens + MARGIN), WINDOW)
    while True:
        prefix = text[:limit]
        encoding = backend.encode(prefix, add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
        if len(prefix) == len(text) or len(ids) >= max_tokens + MARGIN:
            break
        limit *= 4
    if max_tokens is not None:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    held = [any(start < span_end and end > span_start for span_start, span_end in spans) for start, end in offsets]
    return list(ids), held


def encode_document(tokenizer, text: str) -> list[int]:
    """Every token id of the text (no special tokens), as one encode of the whole text gives them; a text longer
    than WINDOW characters is encoded window by window (bounded memory), each window's own stretch with OVERLAP
    characters of context before and after it."""
    if len(text) <= WINDOW:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    backend = encoder(tokenizer, "document")
    ids: list[int] = []
    for start in range(0, len(text), WINDOW):
        end = min(start + WINDOW, len(text))
        left = max(0, start - OVERLAP)
        encoding = backend.encode(text[left:min(end + OVERLAP, len(text))], add_special_tokens=False)
        # a token is this window's when it starts in [start, end): what a normalizer adds at the start of the
        # encoded text (SentencePiece's "▁") falls before `start` in every window but the first
        ids += [token for token, (first, _) in zip(encoding.ids, encoding.offsets) if start <= left + first < end]
    return ids
