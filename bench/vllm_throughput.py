"""Sampling throughput: vLLM against ftlab's own sampler, on the same random Llama, rows and device.

P problems x n samples x new tokens (the shape of a pass@k evaluation), nucleus sampling at --temperature / --top-p;
the random Llama and prompts of bench/sample_throughput.py. vLLM gets each problem as one request of n samples, as
`ftlab eval --engine vllm` sends them (ftlab.evaluate.vllm_engine: the same engine arguments; no tokenizer here,
since the random model has none and nothing is detokenized). ftlab's sampler runs batch rows at a time, after a
warm-up of every batch shape (its compiles, on CUDA). Printed: vLLM's engine start, each side's seconds per 1,000
samples and new tokens per second after a warm-up, and the greedy completions of the first --check-problems
problems compared token for token (identical in fp32; in bf16 kernels can flip a near-tie argmax).

    .venv-vllm/bin/python bench/vllm_throughput.py                       # CPU (make vllm-env), tiny model
    python bench/vllm_throughput.py --shape 1.1b --problems 4 --n 50 --new-tokens 256 --batch 200   # one GPU

Where vLLM is not installed, it says so and measures nothing (exit status 0: a GPU check's other rows go on).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sample_throughput import PAD, build, prompts, timed, warmup_batches  # noqa: E402
from train_throughput import SHAPES  # noqa: E402

from ftlab.evaluate.sampler import Decoding, Sampler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=SHAPES)
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prompt-len", type=int, default=96, help="mean prompt length in tokens")
    parser.add_argument("--batch", type=int, default=64, help="ftlab's rows per batch")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--check-problems", type=int, default=2, help="problems decoded greedily by both sides")
    parser.add_argument("--memory", type=float, default=0.5, help="vLLM's share of the GPU's memory")
    args = parser.parse_args()
    if importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed here: nothing measured (GPUs: pip install 'ftlab[vllm]'; the CPU: make vllm-env "
              "and run this with .venv-vllm/bin/python)")
        return

    import vllm
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from ftlab.evaluate.vllm_engine import _seed, engine_args

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(args.shape, device, dtype)
    problems = prompts(args.shape, args.problems, args.prompt_len)
    rows = [p for p in problems for _ in range(args.n)]
    sampled = Decoding(args.new_tokens, args.temperature, args.top_p, seed=0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"shape {args.shape} {str(dtype).removeprefix('torch.')}, {args.problems} problems x {args.n} samples x "
          f"{args.new_tokens} new tokens, prompts ~{args.prompt_len} tokens, T {args.temperature} top_p {args.top_p}, "
          f"device {name}, torch {torch.__version__}, vllm {vllm.__version__}")

    sampler = Sampler(model, None, device, PAD)
    warm = warmup_batches(rows, args.batch, args.new_tokens)
    timed(lambda: [sampler.sample(chunk, sampled, args.batch) for chunk in warm], device)
    ours_s, ours = timed(lambda: sampler.sample(rows, sampled, args.batch), device)
    check = problems[:args.check_problems]
    ours_greedy = sampler.sample(check, Decoding(args.new_tokens), args.batch)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model, sampler
        if device.type == "cuda":
            torch.cuda.empty_cache()
        start_s, llm = timed(lambda: vllm.LLM(model=tmp, skip_tokenizer_init=True,
                                              **engine_args(device, args.memory)), device)

        def run(decoding: Decoding, samples: int, items: list[list[int]]) -> list[list[int]]:
            params = [SamplingParams(n=samples, temperature=decoding.temperature, top_p=decoding.top_p,
                                     max_tokens=decoding.max_new_tokens, detokenize=False,
                                     seed=_seed(decoding.seed, i) if decoding.temperature else None)
                      for i in range(len(items))]
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in items], params, use_tqdm=False)
            return [list(o.token_ids) for out in outs for o in out.outputs]

        timed(lambda: run(sampled, 2, problems[:1]), device)  # warm-up: the first request's allocations
        theirs_s, theirs = timed(lambda: run(sampled, args.n, problems), device)
        theirs_greedy = run(Decoding(args.new_tokens), 1, check)
    per_k = 1000 / len(rows)
    print(f"vLLM engine start: {start_s:.1f} s")
    print(f"{'':<16} {'s / 1k samples':>15} {'new tok/s':>10}")
    for label, seconds, out in (("vLLM", theirs_s, theirs), ("ftlab sampler", ours_s, ours)):
        print(f"{label:<16} {seconds * per_k:>15.2f} {sum(map(len, out)) / seconds:>10,.0f}")
    print(f"speedup (ftlab time / vLLM time): {ours_s / theirs_s:.2f}x")
    same = sum(a == b for a, b in zip(theirs_greedy, ours_greedy))
    print(f"greedy identical to ftlab's sampler: {'yes' if same == len(check) else 'no'} ({same}/{len(check)} "
          "problems)")


if __name__ == "__main__":
    main()
