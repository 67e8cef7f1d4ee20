"""The resumable state across machines and process counts: CUDA generators of the device a process trains on only,
and a sharded (FSDP) state saved without gathering, that one process reads back exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ftlab import state as run_state
from ftlab.config import TinyModelConfig
from ftlab.errors import FtlabError
from ftlab.model import build_tiny

TESTS = Path(__file__).parent


class FakeCuda:
    """torch.cuda's generator functions on a machine with `count` visible devices, as torch behaves there: each
    device has its own state, and an index past the visible devices is an IndexError (torch.cuda.random indexes
    torch.cuda.default_generators, one per visible device; set_rng_state_all sets state i on device i)."""

    def __init__(self, count: int):
        self.count = count
        self.states = {i: torch.full((16,), 100 + i, dtype=torch.uint8) for i in range(count)}

    def _index(self, device) -> int:
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        index = 0 if device.index is None else device.index  # "cuda": the current device, 0 here
        if index >= self.count:
            raise IndexError(f"list index out of range (device {index}, {self.count} visible)")
        return index

    def get_rng_state(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()

    def get_rng_state_all(self):
        return [self.get_rng_state(i) for i in range(self.count)]

    def set_rng_state_all(self, states):
        for i, state in enumerate(states):
            self.set_rng_state(state, i)

    def install(self, monkeypatch) -> "FakeCuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self


def stepped(seed: int = 0):
    """A small model and an AdamW that has taken one step."""
    model, _ = build_tiny(TinyModelConfig(hidden_size=16, layers=1, heads=2, kv_heads=2, intermediate_size=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 259, (2, 8), generator=torch.Generator().manual_seed(seed))  # (B, T)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def test_a_state_holds_the_generator_of_the_device_the_process_trains_on(tmp_path, monkeypatch):
    """Saved on a machine with 8 visible GPUs, training on cuda:0: one CUDA state, cuda:0's, not 8."""
    cuda = FakeCuda(8).install(monkeypatch)
    model, optimizer = stepped()
    run_state.save_state(tmp_path / "state", 1, model, optimizer, {"tokens": 0, "loader": {}},
                          device=torch.device("cuda", 0))
    rng = load_file(tmp_path / "state" / "step-00000001" / "rng.safetensors")
    assert rng.keys() == {"torch", "cuda"}
    assert torch.equal(rng["cuda"], cuda.states[0])


@pytest.mark.parametrize("visible", [0, 1])
def test_a_state_from_8_gpus_resumes_where_fewer_are_visible(tmp_path, monkeypatch, visible):
    """A state written with one CUDA entry per visible device (cuda.0 .. cuda.7: how ftlab saved them before)
    resumes with 1 visible device (CUDA_VISIBLE_DEVICES=0, a Ray worker) or none: the device in use gets its own
    saved entry, nothing indexes past the visible devices, and the CPU stream continues exactly."""
    model, optimizer = stepped()
    run_state.save_state(tmp_path / "state", 1, model, optimizer, {"tokens": 0, "loader": {}})
    saved = tmp_path / "state" / "step-00000001"
    rng = load_file(saved / "rng.safetensors")
    expected_cpu = torch.rand(4, generator=torch.Generator().set_state(rng["torch"]))
    eight = {f"cuda.{i}": torch.full((16,), i, dtype=torch.uint8) for i in range(8)}
    save_file({"torch": rng["torch"], **eight}, saved / "rng.safetensors")
    progress = json.loads((saved / "progress.json").read_text())
    del progress["layout"]  # nor did states name their layout then
    (saved / "progress.json").write_text(json.dumps(progress))

    cuda = FakeCuda(visible).install(monkeypatch)
    device = torch.device("cuda" if visible else "cpu")
    resumed, resumed_optimizer = stepped(seed=1)
    progress = run_state.load_state(saved, resumed, resumed_optimizer, device=device)
    assert progress["step"] == 1
    assert torch.equal(torch.rand(4), expected_cpu)
    if visible:
        assert torch.equal(cuda.states[0], eight["cuda.0"])  # the device it trains on continues its stream
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_a_state_in_an_unknown_layout_is_refused_by_name(tmp_path):
    model, optimizer = stepped()
    run_state.save_state(tmp_path / "state", 1, model, optimizer, {"tokens": 0, "loader": {}})
    saved = tmp_path / "state" / "step-00000001"
    progress = json.loads((saved / "progress.json").read_text())
    (saved / "progress.json").write_text(json.dumps({**progress, "layout": "zarr"}))
    with pytest.raises(FtlabError, match="layout 'zarr'"):
        run_state.load_state(saved, model, optimizer)


def test_saving_a_sharded_state_holds_no_whole_copy_and_one_process_reads_it(tmp_path):
    """Two FSDP processes (gloo) save their state: each process's host memory grows by less than its shard of the
    state plus one whole tensor (measured 3 MB against a 21 MB shard; the old way, every process gathered the whole
    state: 43 MB). The files are safetensors and JSON only (no DCP .metadata pickle), and one process without a
    process group reads them back (2 -> 1) into exactly the whole tensors the two processes held."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    from fsdp_state_worker import SHAPE  # tests/ is on the path, as for conftest

    # big tensors are mmapped (a fixed threshold), so freed memory leaves the resident set and the peak is what was live
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(TESTS / "fsdp_state_worker.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    memory = [json.loads((tmp_path / f"memory-{rank}.json").read_text()) for rank in (0, 1)]
    for m in memory:
        assert 0 < m["increase"] <= m["shard"] + m["largest"], m
    # the final checkpoint is gathered to rank 0 alone: rank 1 keeps no copy (2 MB; the old way 14.8 MB, the whole)
    assert memory[1]["checkpoint_increase"] < memory[1]["weights"] / 2, memory[1]

    state = run_state.latest_state(tmp_path / "state")
    files = [p.relative_to(state) for p in state.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".safetensors", ".json"}
    assert sum(p.parts[0] == "sharded" and p.name.startswith("shard-00002-") for p in files) > 1  # several files a rank
    model, _ = build_tiny(SHAPE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run_state.load_state(state, model, optimizer)
    reference = load_file(tmp_path / "reference.safetensors")
    for name, p in model.named_parameters():
        assert torch.equal(p, reference[f"weights/{name}"]), name
        for slot, value in optimizer.state[p].items():
            assert torch.equal(value, reference[f"optimizer/{name}/{slot}"]), (name, slot)
