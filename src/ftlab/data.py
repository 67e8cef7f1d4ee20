"""Instruction data (IFT): read records, detect their shape, tokenize with the loss on responses only.

    train, held_out = load_ift(cfg.data, tokenizer, seed)     # list[Example] each
    batch = collate(train[:4], tokenizer.pad_token_id)        # input_ids, attention_mask, labels: (B, T)

Records come from JSONL files, whole .txt/.md files, directories of them, or a hub dataset (read in `records.py`).
Raw-text packing for continued pretraining (CPT) lives in `packing.py`; it is re-exported here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch

from ftlab.config import DataConfig
from ftlab.errors import DataError
from ftlab.packing import IGNORE, PackedText, load_cpt_eval, load_text_sample
from ftlab.records import read_records
from ftlab.text_tokens import encode_spans

__all__ = [
    "IGNORE", "Example", "PackedText", "collate", "detect_format", "load_cpt_eval", "load_ift", "load_text_sample",
    "model_inputs", "pack_examples", "prompt_response", "read_records", "replay_examples", "tokenize_example",
]

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
MAGICODER_PROMPT = "@@ Instruction\n{instruction}\n\n@@ Response\n"
QUESTION_ANSWER_PROMPT = "Question: {question}\nAnswer: "

# Record shapes, tried in this order: the first whose keys are all present wins (alpaca rows often carry
# a "text" column too, so "text" comes last). "text" is matched against DataConfig.text_field.
SHAPES: list[tuple[str, tuple[str, ...]]] = [
    ("messages", ("messages",)),
    ("prompt_completion", ("prompt", "completion")),
    ("alpaca", ("instruction", "output")),
    ("metamath", ("query", "response")),
    ("magicoder", ("instruction", "response")),
    ("question_answer", ("question", "answer")),
    ("text", ("text",)),
]


@dataclass
class Example:
    """One tokenized instruction example."""

    input_ids: list[int]  # [bos] + the tokens of the whole text (+ eos), truncated to seq_len (tokenize_example)
    labels: list[int]  # same length; the token id on tokens that hold response text (and eos), IGNORE elsewhere
    position_ids: list[int] | None = None  # packed (pack_examples): restart at 0 with each example; None: 0..T-1


def detect_format(record: dict, where: str, text_field: str = "text") -> str:
    """The shape of one record, from its keys; `where` (FILE:LINE) names it in the error."""
    for fmt, keys in SHAPES:
        keys = (text_field,) if fmt == "text" else keys
        if all(k in record for k in keys):
            return fmt
    expected = "; ".join(
        f"{fmt}: {{{', '.join(repr(k) for k in ((text_field,) if fmt == 'text' else keys))}}}" for fmt, keys in SHAPES
    )
    raise DataError(f"{where}: unknown record shape with keys {sorted(record)}; expected one of  {expected}")


def _field(record: dict, key: str, fmt: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        got = "it is missing" if key not in record else f"got {type(value).__name__}"
        raise DataError(f"{where}: {fmt} record needs a string field {key!r}; {got}")
    return value


def prompt_response(record: dict, fmt: str, where: str) -> tuple[str, str]:
    """(prompt, response) text of a non-chat record, using the format's plain-text template."""
    if fmt == "prompt_completion":
        return _field(record, "prompt", fmt, where), _field(record, "completion", fmt, where)
    if fmt == "alpaca":
        instruction, output = _field(record, "instruction", fmt, where), _field(record, "output", fmt, where)
        extra = _field(record, "input", fmt, where) if record.get("input") is not None else ""
        if extra:
            return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=extra), output
        return ALPACA_PROMPT.format(instruction=instruction), output
    if fmt == "metamath":
        prompt = ALPACA_PROMPT.format(instruction=_field(record, "query", fmt, where))
        return prompt, _field(record, "response", fmt, where)
    if fmt == "magicoder":
        prompt = MAGICODER_PROMPT.format(instruction=_field(record, "instruction", fmt, where))
        return prompt, _field(record, "response", fmt, where)
    if fmt == "question_answer":
        prompt = QUESTION_ANSWER_PROMPT.format(question=_field(record, "question", fmt, where))
        return prompt, _field(record, "answer", fmt, where)
    if fmt == "text":
        raise DataError(f"{where}: a raw-text record has no prompt/response; train it with data.regime=cpt")
    raise DataError(f"{where}: format {fmt!r} has no plain-text template (messages use the chat template)")


def _adds_bos(tokenizer) -> bool:
    """True when the tokenizer puts bos in front of text by default (Llama 2/3 do; the byte tokenizer does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_specials, without = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_specials[:1] == [bos] and without[:1] != [bos]


def _chat_pieces(record: dict, tokenizer, where: str) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces, ending with the last assistant turn."""
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: messages[{i}] must be an object with string 'role' and 'content', got {m!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: messages records need a tokenizer with a chat template, and this one has none")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise DataError(f"{where}: the conversation has no assistant message to train on")

    def render(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)

    pieces, done = [], ""  # done: the rendered text covered by pieces so far
    for i in turns:
        for text, is_assistant in ((render(i, True), False), (render(i + 1, False), True)):
            if not text.startswith(done):
                raise DataError(
                    f"{where}: chat template is not prefix-consistent: rendering messages[:{i + 1}] does not "
                    f"extend the rendering before it, so assistant tokens cannot be located exactly"
                )
            pieces.append((text[len(done):], is_assistant))
            done = text
    return pieces


def tokenize_example(record: dict, fmt: str, tokenizer, seq_len: int, where: str) -> Example | None:
    """Token ids and labels, truncated to seq_len; None if no labelled token is left.

    The whole text is encoded once, as the tokenizer makes it: the plain-text template's prompt + response, or the
    conversation rendered by the chat template up to its last assistant turn. Labelled are exactly the tokens that
    hold at least one character of a response (the record's response; each assistant turn as the template renders
    it, its end-of-turn text included), by the tokenizer's character offsets. A token that straddles the boundary
    is labelled: after the prompt "Answer: " the response "4" is the token " 4" (the prompt's space with the
    answer's digit), and that token carries loss. Plain records end with eos, labelled.

    BOS: put in front when the tokenizer adds one by default (Llama, not GPT-2) and the text does not already
    begin with it, as a chat template that renders bos_token does (one BOS, never two). Encoding the prompt and
    the response separately would differ from this: a SentencePiece tokenizer gives a response encoded alone a
    leading "▁", a space that is not in the text, and no tokenizer merges across a cut it does not see.
    """
    if fmt == "messages":
        text, spans = "", []
        for piece, is_assistant in _chat_pieces(record, tokenizer, where):  # the template renders turn ends
            if is_assistant:
                spans.append((len(text), len(text) + len(piece)))
            text += piece
        ids, held = encode_spans(tokenizer, text, spans, where, max_tokens=seq_len)
    else:
        prompt, response = prompt_response(record, fmt, where)
        if tokenizer.eos_token_id is None:
            raise DataError(f"{where}: the tokenizer has no eos token to end the response with")
        ids, held = encode_spans(tokenizer, prompt + response, [(len(prompt), len(prompt) + len(response))], where,
                                 max_tokens=seq_len)
        ids, held = ids + [tokenizer.eos_token_id], held + [True]
    if _adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids, held = [tokenizer.bos_token_id] + ids, [False] + held
    ids, held = ids[:seq_len], held[:seq_len]
    if not any(held):
        return None
    return Example(input_ids=ids, labels=[t if h else IGNORE for t, h in zip(ids, held)])


def _read_examples(path: str, cfg: DataConfig, tokenizer) -> tuple[list[Example], int, str]:
    """(examples, how many were dropped by truncation, format) of every record under `path`."""
    examples, dropped, fmt = [], 0, cfg.format
    for source, line, record in read_records(path, cfg):
        where = f"{source}:{line}"
        if cfg.format == "auto":
            shape = detect_format(record, where, cfg.text_field)
            if fmt == "auto":
                fmt = shape
            elif shape != fmt:
                raise DataError(f"{where}: record has the {shape} shape, but earlier records have the {fmt} shape")
        if fmt == "text":
            raise DataError(f"{where}: raw-text records need data.regime=cpt; IFT needs prompt/response pairs")
        example = tokenize_example(record, fmt, tokenizer, cfg.seq_len, where)
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    if not examples:
        why = f" ({dropped} records had no response token within data.seq_len={cfg.seq_len})" if dropped else ""
        raise DataError(f"{path}: no training examples{why}")
    return examples, dropped, fmt


def load_ift(cfg: DataConfig, tokenizer, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held_out): held_out is cfg.eval_path or a seeded random share of cfg.path, at most eval_max_examples."""
    examples, dropped, fmt = _read_examples(cfg.path, cfg, tokenizer)
    if cfg.eval_path:
        train, held_out = examples, _read_examples(cfg.eval_path, cfg, tokenizer)[0][: cfg.eval_max_examples]
    else:
        n = len(examples)
        k = round(cfg.eval_fraction * n)
        if cfg.eval_fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)  # at least one held out, at least one to train on
        k = min(k, cfg.eval_max_examples)  # examples past the cap train rather than go unused
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        held = set(order[:k])
        train = [e for i, e in enumerate(examples) if i not in held]
        held_out = [examples[i] for i in sorted(held)]
    print(
        f"ftlab: data {cfg.path}: {len(examples)} examples ({fmt}), {dropped} dropped (no response token within "
        f"seq_len={cfg.seq_len}); {len(train)} train, {len(held_out)} held out",
        flush=True,
    )
    return train, held_out


def replay_examples(cfg: DataConfig, tokenizer, seed: int, n_train: int) -> list[Example]:
    """data.replay for IFT: round(fraction / (1 - fraction) · n_train) sequences of the replay source's raw text
    (data.seq_len tokens each, packed as CPT packs text, the source read again from its start when it runs out),
    loss on every token; mixed into the n_train training examples they are `fraction` of them. [] without replay."""
    fraction = cfg.replay.fraction
    if fraction == 0:
        return []
    n = round(fraction / (1 - fraction) * n_train)
    source = replace(cfg, path=cfg.replay.source, eval_path=None, eval_fraction=0.0, text_field="text")
    out = []
    for seq in itertools.islice(itertools.cycle(PackedText(source, tokenizer, "train", seed)), n):
        length = int(seq["attention_mask"].sum())
        ids = seq["input_ids"][:length].tolist()
        out.append(Example(ids, [IGNORE] + ids[1:]))  # packed behind another example, its first token is not a
        # target of that example's last (pack_examples)
    if len(out) < n:
        raise DataError(f"data.replay.source: {cfg.replay.source} holds no text")
    return out


def pack_examples(examples: list[Example], seq_len: int, seed: int) -> list[Example]:
    """Several examples per sequence (data.packing): in a seeded random order, each example goes into the current
    sequence while it fits in seq_len tokens, else starts the next one. Labels stay on responses; position_ids
    restart at 0 with each example, which is what keeps attention within an example (transformers builds a
    block-diagonal causal mask from restarting positions when no attention mask is given: `model_inputs`). Every
    example's first token is a prompt token (unlabelled), so no position predicts across two examples.
    """
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    packed: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for i in order:
        e = examples[i]
        if ids and len(ids) + len(e.input_ids) > seq_len:
            packed.append(Example(ids, labels, positions))
            ids, labels, positions = [], [], []
        ids, labels = ids + e.input_ids, labels + e.labels
        positions = positions + list(range(len(e.input_ids)))
    if ids:
        packed.append(Example(ids, labels, positions))
    return packed


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels (B, T); padding is IGNORE in labels.

    Packed examples add position_ids (B, T); each row's padding gets positions 0, 1, ... of its own, a segment no
    real token attends to (the attention mask then only counts real tokens; `model_inputs` leaves it out)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    T = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), T), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)  # (B, T)
    packed = any(e.position_ids is not None for e in examples)
    position_ids = torch.zeros((len(examples), T), dtype=torch.long)  # (B, T)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[b, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[b, :n] = 1
        labels[b, :n] = torch.tensor(e.labels, dtype=torch.long)
        if packed:
            own = e.position_ids if e.position_ids is not None else list(range(n))
            position_ids[b] = torch.tensor(own + list(range(T - n)), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {**batch, "position_ids": position_ids} if packed else batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a training forward takes from a batch: input_ids with the attention mask, or for packed examples with
    their position_ids and no mask (so transformers makes the packed, block-diagonal causal mask)."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
