"""What checking weight files and resumable states costs: loading a model with and without ftlab.weights' checks
(recorded sha256 checksums, safetensors headers, every floating tensor finite), and saving and checking a
resumable state (its manifest: every file synced and read back to hash it).

A random Llama of about --params parameters (fp32 on disk) in a temporary directory; timings are the best of
--repeat, with the files in the page cache (a first read from a cold disk costs what the disk takes to read them,
with or without the checks).

    python bench/integrity.py                      # ~120M parameters (0.5 GB), CPU
    python bench/integrity.py --hidden 2048 --layers 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ftlab import state
from ftlab.io import damaged_files, read_json
from ftlab.model import byte_tokenizer, save_pretrained
from ftlab.progress import quiet_libraries
from ftlab.weights import check_files, check_finite


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()

    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3),
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 64), tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "model"
        save_pretrained(model, byte_tokenizer(), directory)  # with its checksums in ftlab.json
        size = sum(f.stat().st_size for f in directory.iterdir())

        def load():
            return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, use_safetensors=True).to(device)

        loaded = load()
        t_load = best(load, args.repeat)
        t_files = best(lambda: check_files(directory), args.repeat)
        t_finite = best(lambda: (check_finite(loaded, directory), torch.cuda.synchronize() if device.type == "cuda"
                                 else None), args.repeat)

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model(input_ids=torch.randint(0, args.vocab, (1, 8))).logits.sum().backward()
        optimizer.step()
        root = Path(tmp) / "state"
        progress = {"tokens": 0, "loader": {}}
        t_save = best(lambda: state.save_state(root, 1, model, optimizer, progress), args.repeat)
        saved = root / "step-00000001"
        manifest = read_json(saved / state.MANIFEST)["files"]
        state_size = sum(m["size"] for m in manifest.values())
        t_hash = best(lambda: damaged_files(saved, manifest), args.repeat)
        # the same save without its manifest: what the manifest adds to a save
        original = state._digests
        state._digests = lambda tmp, world: {}
        t_save_bare = best(lambda: state.save_state(Path(tmp) / "bare", 1, model, optimizer, progress), args.repeat)
        state._digests = original

    print(json.dumps({
        "params_M": round(params / 1e6, 1), "model_GB": round(size / 1e9, 3), "device": str(device),
        "load_s": round(t_load, 3),
        "check_files_s (sha256 + headers)": round(t_files, 3),
        "check_finite_s": round(t_finite, 3),
        "sha256_GB_per_s": round(size / 1e9 / t_files, 2),
        "state_GB": round(state_size / 1e9, 3),
        "save_state_s": round(t_save, 3), "save_state_without_manifest_s": round(t_save_bare, 3),
        "verify_state_s": round(t_hash, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
