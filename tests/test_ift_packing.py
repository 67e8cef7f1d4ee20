"""IFT packing (data.packing): several examples per sequence, loss on responses, no attention across examples."""

import json

import pytest
import torch

from conftest import tiny_config, write_pairs
from ftlab.data import IGNORE, Example, collate, load_ift, model_inputs, pack_examples
from ftlab.errors import ConfigError
from ftlab.model import build_tiny
from ftlab.config import TinyModelConfig
from ftlab.train import check_packing_isolates, token_loss_sum, train

TINY = TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_position=64)


def examples(n: int, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(3, 200, (length,), generator=g).tolist()
        prompt = length // 2
        out.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def test_packing_keeps_every_example_once_within_seq_len():
    items = examples(40)
    packed = pack_examples(items, seq_len=32, seed=3)
    assert len(packed) < len(items)
    assert all(len(p.input_ids) <= 32 and len(p.labels) == len(p.position_ids) == len(p.input_ids) for p in packed)
    pieces = []  # cut every packed sequence where its positions restart: the original examples come back
    for p in packed:
        starts = [i for i, pos in enumerate(p.position_ids) if pos == 0] + [len(p.input_ids)]
        pieces += [(tuple(p.input_ids[a:b]), tuple(p.labels[a:b])) for a, b in zip(starts, starts[1:])]
    assert sorted(pieces) == sorted((tuple(e.input_ids), tuple(e.labels)) for e in items)
    assert pack_examples(items, 32, 3) == packed  # seeded
    assert pack_examples(items, 32, 4) != packed


def test_packed_logits_and_loss_equal_each_example_alone():
    model = build_tiny(TINY)[0].eval()
    items = examples(6, seed=1)
    packed = pack_examples(items, seq_len=40, seed=0)
    batch = collate(packed, pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "position_ids"}
    with torch.no_grad():
        logits = model(**model_inputs(batch), use_cache=False).logits  # (B, T, V)
        for row, p in enumerate(packed):
            starts = [i for i, pos in enumerate(p.position_ids) if pos == 0] + [len(p.input_ids)]
            for a, b in zip(starts, starts[1:]):
                alone = model(input_ids=torch.tensor([p.input_ids[a:b]]), use_cache=False).logits[0]
                torch.testing.assert_close(logits[row, a:b], alone, atol=2e-5, rtol=1e-4)
        packed_loss, packed_n = token_loss_sum(model, batch, torch.autocast("cpu", enabled=False))
        separate = [token_loss_sum(model, collate([e], 0), torch.autocast("cpu", enabled=False)) for e in items]
    assert packed_n == sum(n for _, n in separate)  # the same labelled tokens: none predicts across examples
    torch.testing.assert_close(packed_loss, sum(loss for loss, _ in separate), atol=1e-4, rtol=1e-5)


def test_a_model_that_ignores_restarting_positions_is_refused():
    model = build_tiny(TINY)[0]
    check_packing_isolates(model, torch.autocast("cpu", enabled=False), torch.device("cpu"))  # Llama: isolated

    class Leaky(torch.nn.Module):  # attends across examples: drops the positions it is given
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    with pytest.raises(ConfigError, match="data.packing"):
        check_packing_isolates(Leaky(model), torch.autocast("cpu", enabled=False), torch.device("cpu"))


def test_packed_run_trains_fewer_fuller_steps(tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", n=96)
    plain = tiny_config(data, tmp_path / "plain", "data.eval_fraction=0", "data.seq_len=64")
    packed = tiny_config(data, tmp_path / "packed", "data.eval_fraction=0", "data.seq_len=64", "data.packing=true")
    train(plain)
    train(packed)
    steps = {name: json.loads((tmp_path / name / "plan.json").read_text())["total_steps"]
             for name in ("plain", "packed")}
    assert steps["packed"] < steps["plain"]  # 2 epochs of 96 examples of ~21 tokens: ~3 per 64-token sequence
    losses = [json.loads(line)["loss"] for line in (tmp_path / "packed" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0]
    train_examples, _ = load_ift(packed.data, build_tiny(TINY)[1], seed=0)
    assert steps["packed"] == 2 * -(-len(pack_examples(train_examples, 64, 0)) // 16)


def test_packing_is_for_ift_only(tmp_path):
    from conftest import write_text

    with pytest.raises(ConfigError, match="data.packing"):
        tiny_config(write_text(tmp_path / "t.jsonl"), tmp_path / "run", "data.regime=cpt", "data.packing=true")
