"""Config: YAML + dotted overrides, round trip, and loud errors naming the key (exit status 2 from the CLI)."""

import subprocess
import sys

import pytest
import yaml

from ftlab.cli import main
from ftlab.config import RunConfig, dump_yaml, from_dict, load_config, to_dict
from ftlab.errors import ConfigError


@pytest.fixture
def cfg_file(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"path": "pairs.jsonl", "seq_len": 64},  # relative to the config file
        "method": {"name": "lora", "rank": 4},
        "train": {"lr": "2e-4", "epochs": 1},
    }))
    return path


def test_overrides_and_yaml_floats(cfg_file, tmp_path):
    cfg = load_config(cfg_file, ["method.rank=8", "train.lr=1e-3", "train.checkpoints=[0.5, 1]"], out=str(tmp_path / "r"))
    assert cfg.method.rank == 8 and cfg.train.lr == 1e-3 and cfg.train.checkpoints == [0.5, 1.0]
    assert cfg.data.path == str(tmp_path / "pairs.jsonl")
    assert cfg.lora_alpha() == 16.0  # default alpha = 2r
    assert load_config(cfg_file, [], out="x").train.lr == 2e-4  # "2e-4" is a string to YAML 1.1


def test_round_trip(cfg_file):
    cfg = load_config(cfg_file, ["method.targets=[q_proj, v_proj]", "train.tokens=1000", "train.epochs=null"], out="o")
    again = from_dict(RunConfig, yaml.safe_load(dump_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("override, message", [
    (["method.rnak=8"], "unknown key 'method.rnak' (did you mean 'method.rank'?)"),
    (["trian.lr=1"], "unknown key 'trian' (did you mean 'train'?)"),
    (["method.rank=abc"], "method.rank: expected an integer, got 'abc'"),
    (["method.rank=0"], "method.rank: must be >= 1, got 0"),
    (["train.lr=0"], "train.lr: must be > 0"),
    (["train.lr=-1e-4"], "train.lr: must be > 0"),
    (["method.dora=yes please"], "method.dora: expected true or false"),
    (["method.name=adalora"], "method.name: expected one of 'full', 'lora', 'qlora'"),
    (["data.path=nowhere.jsonl"], "data.path: nowhere.jsonl does not exist"),
    (["train.global_batch=10", "train.micro_batch=4"], "train.global_batch: must be a multiple of train.micro_batch"),
    (["train.tokens=100"], "set exactly one of train.epochs and train.tokens"),
    (["train.checkpoints=[2]"], "train.checkpoints[0]: must be in (0, 1.0]"),
    (["method.rank=100"], "method.rank: 100 is larger than the smallest target layer allows (64)"),
    (["method.targets=everything"], "method.targets: expected all, attn, mlp or a list"),
    (["model.name=/no/such/dir"], "model.name: '/no/such/dir' is neither a local directory nor a hub id"),
])
def test_bad_values_name_the_key(cfg_file, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, override, out="o")
    assert message in str(err.value)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml", [], out="o")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, [], out="o")


def test_cli_exits_2_before_any_work(cfg_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), "method.rnak=8", "--out", str(out)]) == 2
    assert "did you mean 'method.rank'" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_cli_entry_point_exit_status(cfg_file, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ftlab", "train", str(cfg_file), "train.lr=0", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "train.lr: must be > 0" in result.stderr and "Traceback" not in result.stderr
