"""Shared fixtures: tiny data files and tiny run configs (a few seconds of CPU each)."""

import json
import os
import random

import pytest

from ftlab.config import load_config

# Tests never reach the Hugging Face hub, nor do the processes they start. Where bitsandbytes is installed, importing
# PEFT imports it, and on a CPU with AVX512-BF16 its import asks the hub for an optional kernel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "grass", "candle", "orbit"]


def write_pairs(path, n=96, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = rng.choice(WORDS)
            f.write(json.dumps({"prompt": f"Reverse: {word}\n", "completion": word[::-1]}) + "\n")
    return path


def write_text(path, n_docs=40, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))}) + "\n")
    return path


TINY_MODEL = ["model.tiny.hidden_size=32", "model.tiny.layers=2", "model.tiny.heads=4", "model.tiny.kv_heads=2",
              "model.tiny.intermediate_size=64", "model.tiny.max_position=64"]


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl")


@pytest.fixture
def text(tmp_path):
    return write_text(tmp_path / "text.jsonl")


def tiny_overrides(data_path, *overrides) -> list[str]:
    """The dotted settings of a run on the tiny model: IFT on `data_path` unless overridden; 2 epochs of batch 16."""
    return TINY_MODEL + [f"data.path={data_path}", "data.seq_len=32", "data.eval_fraction=0.1",
                         "train.global_batch=16", "train.micro_batch=8", "train.epochs=2", "train.lr=3e-3",
                         "train.warmup=2", "output.resume_every=3", *overrides]


def tiny_config(data_path, out, *overrides):
    """tiny_overrides as a RunConfig writing to `out`."""
    return load_config(None, tiny_overrides(data_path, *overrides), out=str(out))


# The numerical tests: values compared with a reference (PEFT, lm-eval, SVD, recorded losses) under a tolerance.
# CI runs them again under other CPU kernel paths (`make test-kernels`: ATEN_CPU_CAPABILITY=default and avx2
# beside the machine's own), so a tolerance that only holds on one instruction set shows up on any machine.
NUMERICAL = {
    "test_spectrum.py": None,  # None: every test of the file
    "test_statistics.py": None,
    "test_methods.py": None,
    "test_kl.py": None,
    "test_zoo_evaluators.py": None,
    "test_bounded_records.py": ["test_long_documents_tokenize", "test_a_long_ift_record"],
    "test_loss.py": ["test_chunked_loss_and_gradients_equal_the_full_path", "test_a_run_with_the_chunked_loss"],
    "test_lora_fused.py": ["test_outputs_and_gradients_equal_peft", "test_bf16_autocast_stays_close_to_peft",
                           "test_a_run_with_fused_lora_ends_at_peft_weights"],
    "test_train.py": ["test_golden_losses_of_short_tiny_runs"],
    "test_choice.py": ["test_parity_with_lm_eval[0]"],
    "test_gsm8k.py": ["test_parity_with_lm_eval"],
    "test_qlora.py": ["test_the_4bit_base", "test_qlora_gradients", "test_a_qlora_run", "test_ftlab_eval_of_a_qlora",
                      "test_the_spectrum_of_a_qlora"],
    # not test_merge_check.py: its bf16 merge multiplies in bf16, which torch 2.13 refuses under a forced
    # ATEN_CPU_CAPABILITY below an AVX-512 CPU's ("pack_vnni2 is only supported when avx512 is supported")
    "test_steering.py": ["test_interpolated_lora_weights", "test_intruder_scaling"],
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = NUMERICAL.get(item.path.name, ())
        if names is None or any(item.name.startswith(n) for n in names):
            item.add_marker(pytest.mark.numerical)
