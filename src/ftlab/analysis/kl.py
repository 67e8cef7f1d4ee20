"""KL(base || finetuned) of next-token distributions on target-domain prompts: a cheap forgetting predictor
("RL's Razor", 2025: the more a finetune moves the base's distribution on its own task, the more it forgets).

    result = kl_for_checkpoint(None, "runs/lora/final", target_prompts("math", 64))
    result["kl"], result["tokens"], result["per_text"]
    kl_into(evaluator, "runs/lora/final", "math", 64)     # a study's analyse stage: <ckpt>/kl.json {kl, tokens, texts}

At every position t of every text, with p = the base's and q = the finetuned model's distribution of token t+1,
KL(p || q) = sum_v p(v) (log p(v) - log q(v)) in nats; "kl" is the mean over all positions of all texts (each
text's last position included: it is the distribution generation starts from). Logits are log-softmaxed in fp32,
one batch of texts at a time, so at most one batch of logits per model is held.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ftlab import domains
from ftlab.builtin import PROMPT_DOMAINS
from ftlab.config import ModelConfig
from ftlab.errors import FtlabError
from ftlab.evaluate.targets import Evaluator
from ftlab.io import write_json
from ftlab.model import load_adapter, load_model, resolve_device
from ftlab.rundir import ADAPTER_CONFIG, INFO, CheckpointFiles, base_of, is_adapter


@torch.inference_mode()
def kl_divergence(base_model, tuned_model, tokenizer, texts: list[str], batch_size: int = 8,
                  device: str | torch.device | None = None, max_length: int | None = None) -> dict:
    """Mean per-token KL(p_base || p_tuned) over texts: {"kl", "tokens", "per_text", "per_text_tokens"}.

    base_model None: tuned_model is a PEFT model and the base is it with its adapters disabled (one model in
    memory). Both models must already be on `device` (default: the tuned model's); both are put in eval mode.
    Texts are encoded with the tokenizer's default special tokens and cut on the left to max_length tokens (default:
    the model's max_position_embeddings); batches run longest first, right-padded with the padding masked, so the
    result does not depend on batch_size. per_text[i] is text i's mean over its own positions.
    """
    if batch_size < 1:
        raise FtlabError(f"kl_divergence: batch_size must be >= 1, got {batch_size}")
    if not texts:
        raise FtlabError("kl_divergence: no texts")
    device = torch.device(device) if device is not None else next(tuned_model.parameters()).device
    max_length = max_length or getattr(tuned_model.config, "max_position_embeddings", None)
    tuned_model.eval()
    if base_model is not None:
        base_model.eval()
    encoded = [tokenizer.encode(t) for t in texts]
    encoded = [ids[-max_length:] if max_length else ids for ids in encoded]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise FtlabError(f"kl_divergence: text {empty[0]} encodes to no tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    sums, counts = [0.0] * len(texts), [len(ids) for ids in encoded]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(counts[i] for i in chunk)
        ids = torch.tensor([encoded[i] + [pad] * (width - counts[i]) for i in chunk], device=device)  # (B, T)
        mask = torch.tensor([[1] * counts[i] + [0] * (width - counts[i]) for i in chunk], device=device)  # (B, T)
        logq = F.log_softmax(tuned_model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), dim=-1)  # (B, T, V)
        if base_model is None:
            with tuned_model.disable_adapter():
                base_logits = tuned_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        else:
            base_logits = base_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logp = F.log_softmax(base_logits.float(), dim=-1)  # (B, T, V)
        kl = (logp.exp() * (logp - logq)).sum(dim=-1)  # (B, T): KL(p || q) at each position
        kl = torch.where(mask.bool(), kl, 0.0)  # padding positions count for nothing
        for row, i in enumerate(chunk):
            sums[i] = float(kl[row].sum())
        del logq, logp, base_logits, kl  # free this batch's logits before the next is computed
    tokens = sum(counts)
    return {"kl": sum(sums) / tokens, "tokens": tokens, "texts": len(texts),
            "per_text": [s / c for s, c in zip(sums, counts)], "per_text_tokens": counts}


def kl_into(evaluator: Evaluator, ckpt_dir: str | Path, domain: str, prompts: int) -> None:
    """Write <ckpt_dir>/kl.json {kl, tokens, texts}: kl_divergence of the checkpoint from the evaluator's base on the
    first `prompts` held-out prompts of a target domain (target_prompts), unless it is there. An adapter is swapped
    onto the evaluator's base, whose logits come from it with the adapter disabled; a full model is compared with
    the plain base (an adapter swapped on earlier disabled)."""
    files = CheckpointFiles(ckpt_dir)
    if files.kl.exists():
        return
    model = evaluator.load(files.path)
    texts = target_prompts(domain, prompts)
    if is_adapter(files.path):
        value = kl_divergence(None, model, evaluator.tokenizer, texts, device=evaluator.device)
    else:
        with evaluator.plain_base() as base:
            value = kl_divergence(base, model, evaluator.tokenizer, texts, device=evaluator.device)
    write_json(files.kl, {k: value[k] for k in ("kl", "tokens", "texts")})


def kl_for_checkpoint(base_dir: str | Path | None, ckpt_dir: str | Path, texts: list[str], batch_size: int = 8,
                      device: str = "auto") -> dict:
    """kl_divergence of a checkpoint (full model or PEFT adapter directory) from its base, on texts.

    base_dir None: the base the checkpoint names (rundir.base_of: adapter_config.json's base_model_name_or_path,
    else the run's ftlab.json "base"). An adapter is loaded onto the one base model and the base's logits come from
    it with the adapter disabled; a full checkpoint is a second model. fp32 weights on CPU, bf16 on CUDA (as
    `ftlab eval`).
    """
    ckpt = Path(ckpt_dir)
    if base_dir is None:
        base_dir = base_of(ckpt)
        if base_dir is None:
            raise FtlabError(f"{ckpt}: neither {ADAPTER_CONFIG} nor {INFO} names its base; pass base_dir")
    dev = resolve_device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    base, tokenizer = load_model(ModelConfig(name=str(base_dir)), dev, dtype)
    if is_adapter(ckpt):
        tuned = load_adapter(base, ckpt)
        return kl_divergence(None, tuned, tokenizer, texts, batch_size=batch_size, device=dev)
    tuned, _ = load_model(ModelConfig(name=str(ckpt)), dev, dtype)
    return kl_divergence(base, tuned, tokenizer, texts, batch_size=batch_size, device=dev)


def target_prompts(kind: str, n: int) -> list[str]:
    """The first n prompts of a built-in domain's held-out problems: "math" (the `math` task's questions,
    "Question: ...\\nAnswer:") or "code" (held-out functions' signature + docstring, HumanEval's prompt shape): the
    builtin.PROMPT_DOMAINS."""
    if kind == "math":
        prompts = [d.prompt for d in domains.math_eval()]
    elif kind == "code":
        prompts = [p["prompt"] for p in domains.code_pairs("heldout")]
    else:
        raise FtlabError(f"target_prompts: kind must be one of {', '.join(PROMPT_DOMAINS)}, got {kind!r}")
    if not 0 < n <= len(prompts):
        raise FtlabError(f"target_prompts: n must be in 1..{len(prompts)} for {kind}, got {n}")
    return prompts[:n]
