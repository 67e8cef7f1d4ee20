"""Sampling n completions per prompt from one shared prefill: the decoding loop behind `LM.generate`.

    sampler = Sampler(model, tokenizer, device, tokenizer.pad_token_id)   # cache "auto": static + compiled on CUDA
    new = sampler.sample(rows, Decoding(max_new_tokens=256, temperature=0.8, top_p=0.95, stop=("\\ndef",)),
                         batch_size=200)                                    # generated token ids, one list per row

Why not `model.generate` with the prompt repeated n times: every repeat prefills the same prompt again, a
stop-string check decodes every row every step, and its dynamic cache grows by concatenation every step. Here:
- Rows run in batches of batch_size in the order given (the order `model.generate` batches them in). A batch
  prefills each distinct prompt in it once (left-padded, position_ids = cumsum(mask) - 1 as transformers does),
  then repeats the prompt's KV cache along the batch for its rows: n samples share one prefill. A prompt whose
  samples fall into two batches is prefilled once in each.
- Decoding is our own loop: greedy (argmax) at temperature 0, else nucleus sampling (no top-k) from a
  torch.Generator seeded once per call, so a seed gives the same samples (for a given batch_size).
- A row ends at EOS or at a stop string. Every CHECK_EVERY steps the host reads the new tokens and decodes a
  short tail of each unfinished row only; the batch ends when none is left.
- cache "static": a transformers StaticCache of the batch's prompt + max_new_tokens slots (rounded up to
  STATIC_ROUND so few shapes occur), filled from the prefill, with the one-token decode step optionally under
  torch.compile ("reduce-overhead": CUDA graphs on CUDA). "auto" is static + compile on CUDA, dynamic elsewhere.
  One compiled step serves every Sampler of the process (evaluate/targets.py keeps one adapter name, so the
  checkpoints of a study reuse it); a step that fails, or reaches torch's recompile limit, is said so on stderr
  and decoding goes on eagerly.

Contract with the `model.generate` path (tests/test_sampler.py): at temperature 0 each row's tokens are the ones
`model.generate` produces for that row, cut where it would stop: at the first EOS (kept), or at the first step
whose decoded text (special tokens included, as lm.py's stopping criterion decodes it) holds a stop string.
Exact in fp32; in bf16 a different prefill batch shape (or a compiled kernel) can move a logit by a rounding
step and, rarely, flip an argmax tie.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import DynamicCache, StaticCache

from ftlab.errors import FtlabError
from ftlab.evaluate.continuation import continuations

CacheKind = Literal["auto", "dynamic", "static"]
CHECK_EVERY = 4  # decode steps between host syncs (EOS / stop-string bookkeeping, all-done test)
STATIC_ROUND = 128  # static cache slots round up to a multiple of this: fewer shapes to compile and capture


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen and when a row ends."""

    max_new_tokens: int  # tokens generated at most per row
    temperature: float = 0.0  # 0: greedy argmax; > 0: sample from softmax(logits / temperature)
    top_p: float = 1.0  # nucleus: sample among the fewest most likely tokens whose probability reaches top_p
    stop: tuple[str, ...] = ()  # a row ends once its generated text contains one of these
    seed: int = 0  # seeds the sampling generator once per call

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise FtlabError(f"Decoding: need max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1; got "
                             f"{self.max_new_tokens}, {self.temperature}, {self.top_p}")


class Sampler:
    """Batched decoding for one causal LM (already in eval mode, on `device`); holds its compiled step and cache."""

    def __init__(self, model, tokenizer, device: str | torch.device, pad_token_id: int,
                 cache: CacheKind = "auto", compile: bool | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        self.pad_token_id = pad_token_id
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
        eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)  # what model.generate stops at
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        params = inspect.signature(base.forward).parameters
        # the forward argument is past_key_values in transformers 5.17, cache in 5.24; use whichever this one takes
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_last = "logits_to_keep" in params  # logits of the last position only, as model.generate asks
        if cache not in ("auto", "dynamic", "static"):
            raise FtlabError(f"Sampler: cache must be 'auto', 'dynamic' or 'static', got {cache!r}")
        sliding = any(DynamicCache(config=model.config).is_sliding)
        if cache == "static" and sliding:
            raise FtlabError("Sampler: cache 'static' fills a StaticCache from a full prefill, which this model's "
                             "sliding-window layers do not keep; use cache 'dynamic'")
        if cache == "auto":
            cache = "static" if self.device.type == "cuda" and not sliding else "dynamic"
        self.cache: Literal["dynamic", "static"] = cache
        self.compile = (cache == "static" and self.device.type == "cuda") if compile is None else compile
        if self.compile and cache != "static":
            raise FtlabError("Sampler: compile needs cache 'static' (a dynamic cache changes shape every step)")
        self._step = _compiled_next_logits(self.device) if self.compile else _next_logits
        self._static: tuple[tuple[int, int], StaticCache] | None = None  # ((rows, slots), cache) of the last batch

    @torch.inference_mode()
    def sample(self, rows: list[list[int]], decoding: Decoding, batch_size: int) -> list[list[int]]:
        """The generated token ids of each row (prompt token ids), in order; rows run batch_size at a time."""
        if batch_size < 1 or any(not r for r in rows):
            raise FtlabError(f"Sampler.sample: need batch_size >= 1 and no empty prompt; got batch_size {batch_size}")
        if decoding.stop and self.tokenizer is None:
            raise FtlabError("Sampler.sample: stop strings need a tokenizer to decode with")
        generator = torch.Generator(device=self.device).manual_seed(decoding.seed)
        out: list[list[int]] = []
        with _recompile_limit_raises() if self.compile else contextlib.nullcontext():
            for start in range(0, len(rows), batch_size):
                out += self._batch(rows[start:start + batch_size], decoding, generator)
        return out

    # ------------------------------------------------------------------------- one batch

    def _batch(self, rows: list[list[int]], d: Decoding, generator: torch.Generator) -> list[list[int]]:
        B, T = len(rows), d.max_new_tokens
        logits, cache, step_mask, lengths = self._prefill(rows, T)  # (B, V), cache of B rows, (B, P + T), (B,)
        width = max(map(len, rows))  # P: the cache slots the prefill filled
        eos = torch.tensor(self.eos_token_ids, device=self.device)  # (E,)
        tokens = torch.full((B, T), self.pad_token_id, dtype=torch.long, device=self.device)  # (B, T)
        unfinished = torch.ones(B, dtype=torch.bool, device=self.device)  # (B,)
        track = _Rows(self.tokenizer, d.stop, rows)
        for t in range(T):
            nxt = _pick(logits, d.temperature, d.top_p, generator)  # (B,)
            nxt = torch.where(unfinished, nxt, self.pad_token_id)  # ended rows idle on padding, as model.generate
            tokens[:, t] = nxt
            if len(self.eos_token_ids):
                unfinished &= ~torch.isin(nxt, eos)
            if t + 1 == T or ((t + 1) % CHECK_EVERY == 0 and not track.sync(tokens, t + 1, unfinished)):
                break
            mask_t = step_mask  # static: one shape for every step
            if self.cache == "dynamic" and step_mask is not None:
                mask_t = step_mask[:, :step_mask.shape[1] - T + t + 1]  # (B, P + t + 1): prompt and tokens so far
            if self.compile and self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's output buffers may be reused
            logits = self._decode_step(nxt[:, None], mask_t, (lengths + t)[:, None], cache, width + t)  # (B, V)
        track.sync(tokens, t + 1, unfinished)
        return track.result(self.eos_token_ids)

    def _decode_step(self, ids: torch.Tensor, mask, positions: torch.Tensor, cache, filled: int) -> torch.Tensor:
        """One decode step (B, 1) -> logits (B, V) after `filled` cache slots; compiled where set up. A compiled step
        that fails (an unsupported model or torch version, torch's recompile limit reached) is reported once and
        decoding goes on without compiling, from the cache as it was before the failed step."""
        args = (self.model, ids, mask, positions, cache, self._cache_arg, self._keep_last)
        if not self.compile:  # the constructor allows compile with the static cache only
            return _next_logits(*args)
        try:
            return self._step(*args)
        except Exception as e:  # noqa: BLE001 - torch.compile / CUDA-graph failures have many types
            import sys

            print(f"ftlab: the compiled decode step failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "decoding without torch.compile", file=sys.stderr, flush=True)
            self.compile, self._step = False, _next_logits
            _rewind(cache, filled)  # the failed step may have advanced some layers' write position
            return _next_logits(*args)

    def _prefill(self, rows: list[list[int]], new_tokens: int
                 ) -> tuple[torch.Tensor, DynamicCache | StaticCache, torch.Tensor | None, torch.Tensor]:
        """Prefill each distinct prompt of the batch once; return the first next-token logits of every row (B, V),
        a cache holding every row's prompt, the attention mask for decoding ((B, P + new_tokens), or the static
        cache's (B, slots); None for a dynamic cache without padding) and each row's prompt length (B,)."""
        prompts, slot = _distinct(rows)  # k prompts; row r samples from prompt slot[r]
        ids = _left_pad(prompts, self.pad_token_id, self.device)  # (k, P)
        mask = _left_pad([[1] * len(p) for p in prompts], 0, self.device)  # (k, P)
        P = ids.shape[1]
        padded = any(len(p) < P for p in prompts)  # model.generate drops an all-ones mask; so do we (same kernels)
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (k, P), as model.generate
        expand = torch.tensor(slot, device=self.device)  # (B,)
        prefill = DynamicCache(config=self.model.config)
        logits = _next_logits(self.model, ids, mask if padded else None, position_ids, prefill, self._cache_arg,
                              self._keep_last)[expand]  # (B, V)
        lengths, row_mask = mask.sum(-1)[expand], mask[expand]  # (B,), (B, P)
        B = len(rows)
        if self.cache == "dynamic":
            prefill.batch_select_indices(expand)  # (k, ...) -> (B, ...): each row gets its prompt's cache
            step_mask = torch.cat([row_mask, row_mask.new_ones(B, new_tokens)], -1) if padded else None
            return logits, prefill, step_mask, lengths
        slots = static_slots(P, new_tokens)
        cache = self._static_cache(B, slots)
        for i, layer in enumerate(prefill.layers):  # slots 0..P-1 of every row: its prompt's keys and values
            cache.update(layer.keys[expand], layer.values[expand], i)
        step_mask = torch.ones(B, slots, dtype=torch.long, device=self.device)  # (B, slots)
        step_mask[:, :P] = row_mask  # slots past the current token are hidden by causality
        return logits, cache, step_mask, lengths

    def _static_cache(self, rows: int, slots: int) -> StaticCache:
        """A StaticCache for (rows, slots), reused (reset) while batches keep that shape: compiled steps and CUDA
        graphs are tied to its tensors' addresses."""
        if self._static is not None and self._static[0] == (rows, slots):
            self._static[1].reset()
            return self._static[1]
        self._static = None  # free the previous shape's memory first
        cache = StaticCache(config=self.model.config, max_cache_len=slots)
        self._static = ((rows, slots), cache)
        return cache


def static_slots(prompt_len: int, new_tokens: int) -> int:
    """Slots of a batch's StaticCache: its (padded) prompt length plus the new tokens, rounded up to STATIC_ROUND;
    with the batch's row count, the shape the compiled decode step sees."""
    return STATIC_ROUND * math.ceil((prompt_len + new_tokens) / STATIC_ROUND)


def _next_logits(model, input_ids: torch.Tensor, mask: torch.Tensor | None, position_ids: torch.Tensor, cache,
                 cache_arg: str, keep_last: bool) -> torch.Tensor:
    """Next-token logits (B, V) in fp32 after input_ids (B, T); appends their keys and values to the cache."""
    extra = {"logits_to_keep": 1} if keep_last else {}
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                **{cache_arg: cache}, **extra)
    return out.logits[:, -1].to(dtype=torch.float32, copy=True)


def _rewind(cache, filled: int) -> None:
    """Every layer of a static cache back to `filled` written slots. A layer that keeps its own write position (a
    cumulative_length tensor, as transformers 5.2x's StaticLayer does) advances it when the step reaches that
    layer, so a step that failed part-way leaves the layers before the failure one slot ahead of the others, and
    an eager retry would write the token twice there; layers told where to write (cache_position) need nothing."""
    for layer in getattr(cache, "layers", ()):
        position = getattr(layer, "cumulative_length", None)
        if isinstance(position, torch.Tensor):
            position.fill_(filled)


def _recompile_limit_raises():
    """While this lasts, a compiled function that reaches torch's recompile limit raises (and _decode_step falls
    back, saying so) instead of running uncompiled without a word while Sampler.compile still says True."""
    return torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, suppress_errors=False)


_COMPILED: dict[str, object] = {}  # device type -> compiled _next_logits, shared by every Sampler of the process


def _compiled_next_logits(device: torch.device):
    """_next_logits under torch.compile; on CUDA "reduce-overhead", which replays the step as one CUDA graph.
    One compiled function per process, the model an argument: a new Sampler (the next checkpoint) shares it."""
    if device.type not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[device.type] = torch.compile(_next_logits, mode=mode)
    return _COMPILED[device.type]


class _Rows:
    """Host-side view of a batch's rows: tokens read so far, and where stop strings ended them.

    A row's text is the text its tokens add to its prompt (`continuations`, special tokens included as lm.py's
    stopping criterion and lm-eval's decode them): a stop string is found where LM.generate's final text has it,
    also on tokenizers whose first new token decodes differently alone (SentencePiece drops its leading space)."""

    CONTEXT = 4  # tokens decoded before a window, so its first token decodes as it does in the whole text

    def __init__(self, tokenizer, stop: tuple[str, ...], prompts: list[list[int]]):
        self.tokenizer, self.stop, self.prompts = tokenizer, [s for s in stop if s], prompts
        # A stop string completed by the newest tokens spans at most len(bytes) tokens (each holds at least one of
        # its bytes), so it lies within the newest fresh + len(bytes) tokens; two more for margin.
        self.span = max((len(s.encode()) for s in self.stop), default=0) + 2
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.stop_end: dict[int, int] = {}  # row -> tokens up to and including the step its stop string appeared
        self.read = 0  # steps copied to the host

    def sync(self, tokens: torch.Tensor, steps: int, unfinished: torch.Tensor) -> bool:
        """Read steps [read, steps) to the host, end rows whose text now holds a stop string; any row left?"""
        fresh = steps - self.read
        if fresh == 0:
            return bool(unfinished.any())
        block, live = tokens[:, self.read:steps].tolist(), unfinished.tolist()  # one device sync
        for row, new in zip(self.tokens, block):
            row.extend(new)
        self.read = steps
        if self.stop:
            candidates = [r for r, alive in enumerate(live) if alive]
            tails = self._windows(candidates, fresh + self.span)
            ended = []
            for r, tail in zip(candidates, tails):
                if any(s in tail for s in self.stop):
                    end = self._first_stop(r)  # confirmed on the whole text
                    if end is not None:
                        self.stop_end[r], live[r] = end, False
                        ended.append(r)
            if ended:
                unfinished[torch.tensor(ended, device=unfinished.device)] = False
        return any(live)

    def _windows(self, rows: list[int], width: int) -> list[str]:
        """The text of each row's newest `width` tokens, decoded after the CONTEXT tokens before them."""
        contexts, windows = [], []
        for r in rows:
            ids = self.tokens[r]
            start = max(len(ids) - width, 0)
            before = ids[max(start - self.CONTEXT, 0):start]
            missing = self.CONTEXT - len(before)  # taken from the prompt's end
            contexts.append((self.prompts[r][-missing:] if missing else []) + before)
            windows.append(ids[start:])
        return continuations(self.tokenizer, contexts, windows, skip_special_tokens=False)

    def _first_stop(self, r: int) -> int | None:
        """The fewest leading tokens of row r whose text holds a stop string (None: not even all of them): the
        step at which lm.py's stopping criterion, checking every step, would have ended the row."""
        ids = self.tokens[r]

        def holds(m: int) -> bool:
            text = continuations(self.tokenizer, [self.prompts[r]], [ids[:m]], skip_special_tokens=False)[0]
            return any(s in text for s in self.stop)

        if not holds(len(ids)):
            return None
        lo, hi = 1, len(ids)  # holds(hi); text only grows with more tokens, so bisect
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds(mid) else (mid + 1, hi)
        return hi

    def result(self, eos_token_ids: list[int]) -> list[list[int]]:
        """Each row's tokens up to and including its first EOS or its stop step, whichever is first."""
        out = []
        for r, ids in enumerate(self.tokens):
            end = self.stop_end.get(r, len(ids))
            first_eos = next((i for i, tok in enumerate(ids[:end]) if tok in eos_token_ids), None)
            out.append(ids[:end if first_eos is None else first_eos + 1])
        return out


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Next token per row (B,) from fp32 logits (B, V): argmax at temperature 0, else a draw from the nucleus."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits / temperature  # (B, V)
    if top_p >= 1:
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    probs, order = nucleus(scores, top_p)  # (B, V) each, most likely first
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1), an index into the sorted order
    return order.gather(-1, choice).squeeze(-1)


def nucleus(scores: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities sorted high to low with those outside the nucleus zeroed, their token ids), both (B, V).

    As transformers' TopPLogitsWarper: a token is dropped once the tokens ranked above it already reach top_p,
    so the nucleus is the fewest top tokens whose mass reaches top_p; the top token always stays.
    """
    sorted_scores, order = scores.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_scores.softmax(dim=-1)
    above = probs.cumsum(dim=-1) - probs  # (B, V): mass of the tokens ranked above each one
    return probs.masked_fill(above >= top_p, 0.0), order


def _distinct(rows: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts of a batch in first-seen order, and for each row the index of its prompt."""
    index: dict[tuple[int, ...], int] = {}
    slot = [index.setdefault(tuple(r), len(index)) for r in rows]
    return [list(p) for p in index], slot


def _left_pad(seqs: list[list[int]], value: int, device: torch.device) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([[value] * (width - len(s)) + s for s in seqs], dtype=torch.long, device=device)  # (k, width)
