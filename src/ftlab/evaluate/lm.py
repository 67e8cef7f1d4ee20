"""The model interface every evaluator uses: log-likelihoods, generations and token losses, always batched.

    lm = LM(model, tokenizer, batch_size=32)
    lm.loglikelihood([("Question: 2+2?\nAnswer:", " 4")])   # [(log p(" 4" | context), is_greedy)]
    lm.generate(["Question: 2+2?\nAnswer:"], max_new_tokens=32, stop=["Question:"])   # [[completion]]
    lm.token_loss(["some held-out text"])                   # (summed NLL in nats, tokens scored)
    lm.text_scores(["some held-out text"])                  # [(summed NLL, tokens scored, greedy hits)] per text
    lm.sequence_scores([(ids, scored)])                     # the same over token ids, at the positions scored

Semantics follow lm-evaluation-harness's HFLM (lm_eval/models/huggingface.py, v0.4.x) so scores match it:
- Encoding: the tokenizer's own default for special tokens (a BOS for Llama-style tokenizers, nothing for the
  byte tokenizer), and none when the text already starts with the prefix token's string.
- A (context, continuation) pair: trailing whitespace of the context moves to the continuation; the whole string
  is encoded once and the continuation is what follows the encoded context. An empty context is replaced by the
  prefix token (BOS, else EOS).
- Sequences longer than max_length + 1 lose tokens on the left; requests run longest first, right-padded.
- Generation: prompts longest first, left-padded, greedy at temperature 0, cut at the first stop string.
  A completion is the text its tokens add to the prompt: decode(prompt + new) minus decode(prompt)
  (continuation.py), as the bigcode harness decodes; lm-eval decodes the new tokens alone, which on a
  SentencePiece tokenizer (Llama-2, Mistral) loses the first token's leading space. Stop strings are looked
  for in that same text. The default sampler (sampler.py) prefills each prompt once for its n samples;
  sampler="hf" runs `model.generate` on the expanded rows instead, and gives the same greedy completions; an
  engine's sampler (vllm_engine.VLLMSampler) produces the token ids on vLLM, everything around them unchanged.

Scoring makes logits only for the positions it scores, a chunk of positions at a time in fp32 (the model's forward
runs its head on one position; ftlab.loss reads the last hidden state): the full (B, T, V) fp32 log-softmax took 12
bytes per logit, 47 GiB at 32 x 4096 x 32k. Models whose head is not a plain linear (soft-capped logits) make the
full logits in their own dtype and score them a chunk of positions at a time. A LoRA adapter on a base held below
fp32 (bf16 on CUDA) runs fused in the base's dtype (ftlab.lora_fused), as a full finetuning's weights are evaluated,
instead of PEFT's fp32 adapter path.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria

from ftlab import lora_fused
from ftlab.errors import FtlabError
from ftlab.evaluate.continuation import continuations
from ftlab.evaluate.sampler import CacheKind, Decoding, Sampler
from ftlab.loss import CHUNK, hidden_states, output_head
from ftlab.loss import supports as head_is_linear

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither the model config nor the tokenizer gives one


class LM:
    """A causal LM and its tokenizer, with batched scoring and generation. Puts the model in eval mode.

    sampler: "ftlab" (sampler.py: one prefill per prompt, own decoding loop; cache and compile are its options),
    "hf" (`model.generate` on every row, the reference it is tested against), or an object whose
    sample(rows, decoding, batch_size) returns the new token ids of each row as Sampler.sample does (an engine's:
    vllm_engine.VLLMSampler).
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", batch_size: int = 32,
                 max_length: int | None = None, sampler: Literal["ftlab", "hf"] | object = "ftlab",
                 cache: CacheKind = "auto", compile: bool | None = None):
        if batch_size < 1:
            raise FtlabError(f"LM: batch_size must be >= 1, got {batch_size}")
        if isinstance(sampler, str) and sampler not in ("ftlab", "hf"):
            raise FtlabError(f"LM: sampler must be 'ftlab', 'hf' or an engine's sampler, got {sampler!r}")
        self.model = model.eval()  # dropout off; the model must already be on `device`
        if next(model.parameters()).dtype != torch.float32:
            lora_fused.enable(model)  # its adapters in the base's dtype (a no-op without LoRA layers)
        self._hidden = head_is_linear(model)  # score from the last hidden state, projecting scored positions only
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length or _model_max_length(model, tokenizer)
        self.prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode([self.prefix_token_id])
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.sampler = sampler if not isinstance(sampler, str) else \
            Sampler(model, tokenizer, self.device, self.pad_token_id, cache, compile) if sampler == "ftlab" else None

    # ------------------------------------------------------------------------- encoding

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids as HFLM.tok_encode: the tokenizer's default specials unless the text starts with the prefix."""
        if add_special_tokens is None:
            add_special_tokens = not text.startswith(self._prefix_text)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) exactly as lm-eval's loglikelihood + _encode_pair split them."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # "Answer: " + "4" scores " 4": word-boundary tokenizers put the space in the next token
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids):]

    # ------------------------------------------------------------------------- scoring

    @torch.inference_mode()
    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), continuation is the greedy argmax at every position), in order."""
        encoded = []
        for i, (context, continuation) in enumerate(requests):
            context_ids, cont_ids = self.encode_pair(context, continuation)
            if not context_ids or not cont_ids:
                raise FtlabError(f"loglikelihood request {i}: context {context!r} and continuation "
                                 f"{continuation!r} must both encode to at least one token")
            if len(cont_ids) > self.max_length:
                raise FtlabError(f"loglikelihood request {i}: continuation is {len(cont_ids)} tokens, longer than "
                                 f"max_length {self.max_length}")
            encoded.append((context_ids, cont_ids))
        # Longest first (ties by the tokens themselves), as lm-eval orders them: equal batches, equal padding.
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i][0] + encoded[i][1]),
                                                           tuple(encoded[i][0] + encoded[i][1])))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            # The last token is only a target; the window keeps at most max_length inputs, cut on the left.
            windows = [(encoded[i][0] + encoded[i][1])[-(self.max_length + 1):][:-1] for i in chunk]
            rows, cols, targets = [], [], []  # position (row, col) predicts token col + 1 of its window
            for row, i in enumerate(chunk):
                cont, end = encoded[i][1], len(windows[row])
                rows += [row] * len(cont)
                cols += range(end - len(cont), end)
                targets += cont
            logp, hits, count = self._score(self._pad(windows, side="right"), rows, cols, targets)
            for row, i in enumerate(chunk):
                results[i] = (logp[row], hits[row] == count[row])
        return results

    @torch.inference_mode()
    def token_loss(self, texts: list[str]) -> tuple[float, int]:
        """Summed next-token NLL (nats) over every token of every text after its first, and how many were scored."""
        total, count, _ = self.token_scores(texts)
        return total, count

    @torch.inference_mode()
    def token_scores(self, texts: list[str], contexts: list[str] | None = None) -> tuple[float, int, int]:
        """(summed NLL in nats, tokens scored, tokens that are the greedy argmax) over the texts (`text_scores`)."""
        per_text = self.text_scores(texts, contexts)
        return (sum(t for t, _, _ in per_text), sum(n for _, n, _ in per_text), sum(c for _, _, c in per_text))

    @torch.inference_mode()
    def text_scores(self, texts: list[str], contexts: list[str] | None = None) -> list[tuple[float, int, int]]:
        """For each text, in order: (summed NLL in nats, tokens scored, tokens that are the greedy argmax).

        Every token of a text after its first is scored (a BOS the tokenizer adds counts as the first, so then
        every token of the text is). With contexts, text i is scored as the continuation of contexts[i] (the
        context's tokens are inputs only). Sequences longer than max_length are cut into windows that overlap by
        one token, so each token is predicted exactly once (with at most max_length - 1 tokens of context).
        """
        sequences = []
        for i, text in enumerate(texts):
            if contexts is not None and contexts[i]:
                context_ids, cont_ids = self.encode_pair(contexts[i], text)
                ids, first = context_ids + cont_ids, len(context_ids)
            else:
                ids, first = self.encode(text), 1
            sequences.append((ids, [t >= first for t in range(len(ids))]))
        return self.sequence_scores(sequences)

    @torch.inference_mode()
    def sequence_scores(self, sequences: list[tuple[list[int], list[bool]]]) -> list[tuple[float, int, int]]:
        """For each (token ids, scored) pair, in order: (summed NLL in nats, tokens scored, tokens that are the greedy
        argmax) over the tokens t >= 1 with scored[t], each predicted from the tokens before it (an instruction
        example's response tokens: its labels). Sequences longer than max_length are cut into windows that overlap
        by one token, so each token is predicted exactly once (with at most max_length - 1 tokens of context)."""
        windows = []  # (sequence index, token ids, positions of the window that are scored)
        step = self.max_length - 1
        for i, (ids, scored) in enumerate(sequences):
            for s in range(0, max(len(ids) - 1, 0), step):
                window = ids[s:s + self.max_length]
                positions = [j for j in range(1, len(window)) if scored[s + j]]
                if positions:
                    windows.append((i, window, positions))
        windows.sort(key=lambda w: len(w[1]), reverse=True)
        n = len(sequences)
        totals, counts, corrects = [0.0] * n, [0] * n, [0] * n
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start:start + self.batch_size]
            rows, cols, targets = [], [], []  # position j - 1 of a window predicts its token j
            for row, (_, window, positions) in enumerate(chunk):
                rows += [row] * len(positions)
                cols += [j - 1 for j in positions]
                targets += [window[j] for j in positions]
            logp, hits, count = self._score(self._pad([w for _, w, _ in chunk], side="right"), rows, cols, targets)
            for row, (i, _, _) in enumerate(chunk):
                totals[i] -= logp[row]
                counts[i] += count[row]
                corrects[i] += hits[row]
        return list(zip(totals, counts, corrects))

    def _score(self, inputs: torch.Tensor, rows: list[int], cols: list[int], targets: list[int]
               ) -> tuple[list[float], list[int], list[int]]:
        """At the N positions (rows[k], cols[k]) of a right-padded batch (B, T), each predicting targets[k]: per row
        of the batch, (sum of log p(target), targets that are the argmax, positions scored). Logits are made for
        those positions only (or, for a head that is not a plain linear, taken from the model's full logits), CHUNK
        positions at a time in fp32; one host read per batch. No attention mask: padding sits after every real
        token, so causal attention never sees it."""
        B = inputs.shape[0]
        if self._hidden:
            hidden, _ = hidden_states(self.model, {"input_ids": inputs}, contextlib.nullcontext())  # (B, T, H)
            head = output_head(self.model)
        else:
            hidden, head = self.model(input_ids=inputs, use_cache=False).logits, None  # (B, T, V)
        row_t = torch.tensor(rows, dtype=torch.long, device=self.device)  # (N,)
        col_t = torch.tensor(cols, dtype=torch.long, device=self.device)  # (N,)
        target_t = torch.tensor(targets, dtype=torch.long, device=self.device)  # (N,)
        logp = torch.zeros(B, dtype=torch.float64, device=self.device)  # (B,)
        hits = torch.zeros(B, dtype=torch.long, device=self.device)  # (B,)
        for s in range(0, len(rows), CHUNK):
            r, y = row_t[s:s + CHUNK], target_t[s:s + CHUNK]  # (n,)
            picked = hidden[r, col_t[s:s + CHUNK]]  # (n, H) or (n, V)
            logits = (F.linear(picked, head.weight) if head is not None else picked).float()  # (n, V)
            chosen = logits.log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)  # (n,)
            logp.index_add_(0, r, chosen.double())
            hits.index_add_(0, r, (logits.argmax(-1) == y).long())
        count = [0] * B
        for r in rows:
            count[r] += 1
        logp_rows, hit_rows = torch.stack([logp, hits.double()]).tolist()  # one host read per batch
        return logp_rows, [int(h) for h in hit_rows], count

    # ------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int, stop: list[str] | tuple[str, ...] = (),
                 temperature: float = 0.0, top_p: float = 1.0, n: int = 1, seed: int = 0) -> list[list[str]]:
        """n completions per prompt (the text the new tokens add to the prompt, special tokens skipped), each cut
        before its first stop string; temperature 0 is greedy.

        Rows run in batches of batch_size, longest prompt first, left-padded; a row ends at EOS or a stop
        string, a batch when all its rows have ended. Prompts are left-truncated to max_length - max_new_tokens
        tokens. Deterministic for a seed (and batch_size); both samplers give the same greedy completions.
        """
        if max_new_tokens >= self.max_length:
            raise FtlabError(f"generate: max_new_tokens {max_new_tokens} leaves no room for the prompt within "
                             f"max_length {self.max_length}")
        if temperature < 0 or not 0 < top_p <= 1 or n < 1:
            raise FtlabError(f"generate: need temperature >= 0, 0 < top_p <= 1, n >= 1; got {temperature}, "
                             f"{top_p}, {n}")
        rows = [p for p in prompts for _ in range(n)]  # row r is sample r % n of prompt r // n
        encoded = [self.encode(p) for p in rows]
        if any(not ids for ids in encoded):
            raise FtlabError("generate: a prompt encodes to no tokens; give it some text (or a tokenizer with a BOS)")
        order = sorted(range(len(rows)), key=lambda r: (-len(encoded[r]), rows[r]))  # lm-eval's order, before the cut
        inputs = [encoded[r][-(self.max_length - max_new_tokens):] for r in order]  # a prompt's n rows adjacent
        if self.sampler is not None:
            new = self.sampler.sample(inputs, Decoding(max_new_tokens, temperature, top_p, tuple(stop), seed),
                                      self.batch_size)
        else:
            new = self._generate_hf(inputs, max_new_tokens, list(stop), temperature, top_p, seed)
        outputs = [""] * len(rows)
        for r, text in zip(order, continuations(self.tokenizer, inputs, new)):
            outputs[r] = _cut(text, stop)
        return [outputs[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_hf(self, inputs: list[list[int]], max_new_tokens: int, stop: list[str], temperature: float,
                     top_p: float, seed: int) -> list[list[int]]:
        """New token ids per row (ended rows padded) from `model.generate`, batch_size rows at a time."""
        sampling = {"do_sample": False}
        if temperature:  # top_k 0: nucleus sampling only, without transformers' default top-50 on top of it
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        new: list[list[int]] = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(inputs), self.batch_size):
                chunk = inputs[start:start + self.batch_size]
                ids = self._pad(chunk, side="left")  # (B, P)
                mask = self._pad([[1] * len(r) for r in chunk], side="left", value=0)  # (B, P)
                stopping = [_StopStrings(self.tokenizer, stop, chunk)] if stop else None
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          pad_token_id=self.pad_token_id, stopping_criteria=stopping,
                                          **sampling)  # (B, P + new); ended rows are padded
                new += out[:, ids.shape[1]:].tolist()
        return new

    # ------------------------------------------------------------------------- helpers

    def _pad(self, seqs: list[list[int]], side: str, value: int | None = None) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        pad = [[self.pad_token_id if value is None else value] * (width - len(s)) for s in seqs]
        rows = [s + p if side == "right" else p + s for s, p in zip(seqs, pad)]
        return torch.tensor(rows, dtype=torch.long, device=self.device)  # (B, width)


class _StopStrings(StoppingCriteria):
    """Marks a row done once the text its tokens add to its prompt (special tokens included) contains a stop
    string; model.generate then pads that row."""

    def __init__(self, tokenizer, stop: list[str], prompts: list[list[int]]):
        self.tokenizer, self.stop, self.prompts = tokenizer, stop, prompts
        self.width = max(len(p) for p in prompts)  # the left-padded prompt columns

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = continuations(self.tokenizer, self.prompts, input_ids[:, self.width:].tolist(),
                              skip_special_tokens=False)  # B strings
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)  # (B,)


def _cut(text: str, stop) -> str:
    """The text before the first occurrence of any stop string."""
    for s in stop:
        if s:
            text = text.split(s)[0]
    return text


def _model_max_length(model, tokenizer) -> int:
    """lm-eval's rule: the config's n_positions / max_position_embeddings / n_ctx, else the tokenizer's limit."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, attr, None) is not None:
            return int(getattr(config, attr))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < 1e29 else DEFAULT_MAX_LENGTH
