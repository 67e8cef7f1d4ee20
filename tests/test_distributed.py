"""Several processes (FSDP2 over gloo, on the CPU) train what one process trains, and resume each other's runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config, tiny_overrides
from ftlab.state import branch_state
from ftlab.train import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

# 12 sequences of 4: three micro-batches a step, so one process also runs a weight-0 pass (distributed.my_share)
SETTINGS = ["train.global_batch=12", "train.micro_batch=4", "train.epochs=1", "train.keep_states=[3]",
            "model.tiny.layers=2"]


def run_procs(pairs, out, nproc: int, *overrides) -> None:
    """`ftlab train --nproc N` in a subprocess: the command a user types."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text("{}\n")
    args = tiny_overrides(pairs, *SETTINGS, *overrides)  # what tiny_config gives the one-process runs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ftlab", "train", str(config), *args, "--out", str(out),
                           "--nproc", str(nproc)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def final(run) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (run / "final" / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(run / "final" / name))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, weight in a.items():
        # summation order differs between one process and two; Adam amplifies it where a gradient is near 0:
        # 1e-4 is 1/30 of one step's update at lr 3e-3
        torch.testing.assert_close(b[key], weight, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_processes_train_what_one_trains(tmp_path, pairs, method):
    extra = [f"method.name={method}", "method.dropout=0"]  # dropout masks would differ between the layouts
    one = train(tiny_config(pairs, tmp_path / "one", *SETTINGS, *extra))
    run_procs(pairs, tmp_path / "two", 2, *extra)
    two = tmp_path / "two"
    assert len(losses(one)) == len(losses(two)) > 3
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    assert_same_weights(final(one), final(two))
    # what two processes saved is an ordinary checkpoint: one process loads it
    from ftlab.model import load_trained

    model, _ = load_trained(two / "final")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_run_resumes_on_another_number_of_processes(tmp_path, pairs):
    """The state kept at step 3 by two processes finishes on one, and one process's on two: the same weights."""
    extra = ["method.name=lora", "method.rank=4", "method.dropout=0"]
    one = train(tiny_config(pairs, tmp_path / "one", *SETTINGS, *extra))
    run_procs(pairs, tmp_path / "two", 2, *extra)
    branch_state(tmp_path / "two" / "kept" / "step-00000003", tmp_path / "two-then-one" / "state")
    two_then_one = train(tiny_config(pairs, tmp_path / "two-then-one", *SETTINGS, *extra))
    branch_state(one / "kept" / "step-00000003", tmp_path / "one-then-two" / "state")
    run_procs(pairs, tmp_path / "one-then-two", 2, *extra)
    for resumed in (two_then_one, tmp_path / "one-then-two"):
        first = json.loads((resumed / "metrics.jsonl").read_text().splitlines()[0])
        assert first["step"] == 4  # it went on from the kept state; nothing before it was redone
        assert_same_weights(final(one), final(resumed))


def test_each_process_resumes_its_own_random_stream(tmp_path, pairs, capsys):
    """LoRA dropout on: a 2-process run resumed on 2 processes from its state at step 3 ends at exactly the weights
    of the uninterrupted run (each process continues its own dropout masks); resumed on 1, it says they differ."""
    extra = ["method.name=lora", "method.rank=4", "method.dropout=0.1"]
    run_procs(pairs, tmp_path / "two", 2, *extra)
    kept = tmp_path / "two" / "kept" / "step-00000003"
    assert json.loads((kept / "progress.json").read_text())["layout"] == "sharded"
    branch_state(kept, tmp_path / "resumed" / "state")  # as if killed after step 3's state was saved
    run_procs(pairs, tmp_path / "resumed", 2, *extra)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "two")[3:]
    uninterrupted, resumed = final(tmp_path / "two"), final(tmp_path / "resumed")
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(resumed[k], w) for k, w in uninterrupted.items())

    branch_state(kept, tmp_path / "on-one" / "state")
    capsys.readouterr()
    train(tiny_config(pairs, tmp_path / "on-one", *SETTINGS, *extra))
    assert "saved by 2 process(es) and resumes on 1" in capsys.readouterr().out


def test_nproc_with_a_bad_config_fails_before_launching(tmp_path, pairs):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    proc = subprocess.run([sys.executable, "-m", "ftlab", "train", str(config), "model.name=tiny",
                           f"data.path={pairs}", "train.micro_batch=0", "--out", str(tmp_path / "r"), "--nproc", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "train.micro_batch" in proc.stderr
    assert "torch.distributed.run" not in proc.stdout and not (tmp_path / "r").exists()


STUDY = """
name: fsdp
model: {name: tiny, tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 320}}
defaults:
  train: {global_batch: 8, micro_batch: 4, warmup: 1, lr: 1.0e-3}
  data: {regime: ift, seq_len: 32}
settings:
  - {name: hi, data: {path: hi.jsonl}, durations: [1], lr: {full: 1.0e-3, lora: 1.0e-2}}
methods: [{name: full}, {name: lora, ranks: [2], options: {dropout: 0}}]
forgetting: [source_cloze]
eval: {limit: 4}
analyses: {spectrum: true, kl: false, diversity: []}
"""


def test_a_study_trains_each_run_on_several_processes(tmp_path):
    """`ftlab run --nproc 2` records what the one-process study records (scores and spectra to float noise)."""
    from ftlab.results.store import Store
    from ftlab.experiment.study import run_experiment

    (tmp_path / "hi.jsonl").write_text("".join(
        f'{{"prompt": "Say hi {i}: ", "completion": "hi {i % 3}"}}\n' for i in range(24)))
    exp = tmp_path / "fsdp.yaml"
    exp.write_text(STUDY)
    dumps = {}
    for nproc in (1, 2):
        run_experiment(exp, tmp_path / f"study-{nproc}", report=False, nproc=nproc)
        store = Store(tmp_path / f"study-{nproc}" / "results.sqlite")
        dumps[nproc] = store.dump()
        store.close()
    assert [r[:2] for r in dumps[2]["runs"]] == [r[:2] for r in dumps[1]["runs"]]
    assert all("done" in r for r in dumps[2]["runs"])
    for table in ("metrics", "spectra"):
        assert len(dumps[2][table]) == len(dumps[1][table]) > 0
        for a, b in zip(dumps[1][table], dumps[2][table]):
            assert [x for x in a if not isinstance(x, float)] == [x for x in b if not isinstance(x, float)]
            assert [x for x in b if isinstance(x, float)] == pytest.approx(
                [x for x in a if isinstance(x, float)], rel=1e-3, abs=1e-4)


def test_ranks_other_than_0_build_the_structure_without_reading_weights(tmp_path):
    """load_model on the meta device: the same parameters, names and dtypes, and no memory for their values."""
    from ftlab.config import ModelConfig, TinyModelConfig
    from ftlab.model import build_tiny, load_model, save_pretrained

    model, tokenizer = build_tiny(TinyModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64))
    save_pretrained(model, tokenizer, tmp_path / "m")
    real, _ = load_model(ModelConfig(name=str(tmp_path / "m")), torch.device("cpu"), torch.bfloat16)
    meta, _ = load_model(ModelConfig(name=str(tmp_path / "m")), torch.device("meta"), torch.bfloat16)
    shapes = {n: (p.shape, p.dtype) for n, p in real.named_parameters()}
    assert {n: (p.shape, p.dtype) for n, p in meta.named_parameters()} == shapes
    assert all(p.is_meta for p in meta.parameters())


def test_the_collective_timeout_is_the_runs_setting(tmp_path, pairs, monkeypatch):
    """train.collective_timeout_min reaches the process group: rank 0 alone writes checkpoints and copies kept
    states while the others wait in a collective, longer than torch's default 10 minutes for a 7B run on shared
    storage. The default is an hour; 0 is refused naming the key."""
    from datetime import timedelta

    import torch.distributed as dist

    from ftlab.errors import ConfigError

    asked = []

    def init_process_group(backend, **kwargs):
        asked.append(kwargs["timeout"])
        raise RuntimeError("stop: the process group is not needed further")

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    for minutes in (None, 90):
        setting = [] if minutes is None else [f"train.collective_timeout_min={minutes}"]
        with pytest.raises(RuntimeError, match="stop"):
            train(tiny_config(pairs, tmp_path / f"run-{minutes}", *setting))
    assert asked == [timedelta(minutes=60), timedelta(minutes=90)]
    with pytest.raises(ConfigError, match="train.collective_timeout_min"):
        tiny_config(pairs, tmp_path / "bad", "train.collective_timeout_min=0")
