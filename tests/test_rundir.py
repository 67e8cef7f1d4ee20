"""The run directory's one owner (ftlab.rundir), the atomic-file module (ftlab.io), the builtin table, the study's
plan of KL prompts, and that importing ftlab changes nothing process-wide."""

import json
import subprocess
import sys

import pytest

from conftest import tiny_config
from ftlab.builtin import DATA_KINDS, data_domain
from ftlab.config import MethodConfig, TrainConfig
from ftlab.errors import ConfigError, DataError, FtlabError
from ftlab.experiment.spec import load_experiment, plan_runs
from ftlab.experiment.status import progress
from ftlab.io import read_jsonl
from ftlab.config import lora_variant, method_label
from ftlab.rundir import (RunDir, RunLayout, base_of, checkpoint_duration, duration_name, find_runs, read_metrics,
                          run_checkpoints)


def make_run(root, steps=(3, 1, 2), final=True):
    """A run directory by hand: config.yaml, checkpoints/epochs-<i> saved at the given steps, final/."""
    run = RunLayout(root)
    run.path.mkdir(parents=True)
    run.config_yaml.write_text("{}\n")
    for i, step in enumerate(steps):
        ckpt = run.checkpoint("epochs", i + 1)
        ckpt.mkdir(parents=True)
        (ckpt / "ftlab.json").write_text(json.dumps({"step": step, "base": "/models/base"}))
    (run.checkpoints / "epochs-9.tmp").mkdir()  # a checkpoint being written
    if final:
        run.final.mkdir()
        (run.final / "ftlab.json").write_text(json.dumps({"step": 9, "base": "/models/base"}))
    return run


def test_checkpoints_in_training_order_and_runs_found(tmp_path):
    run = make_run(tmp_path / "study" / "a")
    make_run(tmp_path / "study" / "b" / "c", steps=(5,), final=False)
    (tmp_path / "study" / "notarun").mkdir()
    assert [c.name for c in run_checkpoints(run.path)] == ["epochs-2", "epochs-3", "epochs-1", "final"]
    assert find_runs(tmp_path / "study") == [tmp_path / "study" / "a", tmp_path / "study" / "b" / "c"]


def test_checkpoint_names_round_trip_to_durations():
    epochs, tokens = TrainConfig(epochs=4), TrainConfig(epochs=None, tokens=250_000)
    assert duration_name(epochs.unit, 0.5) == "epochs-0.5" and duration_name(tokens.unit, 250_000) == "tokens-250000"
    assert checkpoint_duration(epochs, "epochs-0.5", {}) == 0.5
    assert checkpoint_duration(tokens, "tokens-250000", {}) == 250_000
    assert checkpoint_duration(epochs, "final", {}) == 4 and checkpoint_duration(tokens, "final", {}) == 250_000
    assert checkpoint_duration(epochs, "step-7", {"epoch": 1.75}) == 1.75  # not a duration name: what it measured
    assert checkpoint_duration(epochs, "step-7", {}) is None


def test_base_of_a_checkpoint(tmp_path):
    """ftlab's own record first (it names the base relative to the checkpoint when the base is part of the run),
    else the adapter's word; a checkpoint naming neither has none."""
    a, b = tmp_path / "models" / "a", tmp_path / "models" / "b"
    a.mkdir(parents=True)
    b.mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(a)}))
    (adapter / "ftlab.json").write_text(json.dumps({"base": "../models/b"}))
    assert base_of(adapter) == str(b)  # the run's record, read from where the checkpoint is now
    (adapter / "ftlab.json").write_text(json.dumps({"step": 3}))
    assert base_of(adapter) == str(a)  # no record of ftlab's: the adapter's own word
    full = tmp_path / "full"
    full.mkdir()
    assert base_of(full) is None
    (full / "ftlab.json").write_text("{not json")
    with pytest.raises(FtlabError, match="ftlab.json: checkpoint info is damaged"):
        base_of(full)


def test_metrics_log_tolerates_a_line_cut_short_at_the_end_only(tmp_path, pairs):
    cfg = tiny_config(pairs, tmp_path / "run")
    with RunDir(cfg) as run:
        for step in range(1, 5):
            run.log({"step": step, "tokens": 10 * step, "tokens_per_s": 100.0 + step})
        run.write_plan(total_steps=8, tokens_per_step=10.0)
        with open(run.metrics, "a") as f:
            f.write('{"step": 5, "tok')  # a kill in the middle of a write
        assert [r["step"] for r in read_metrics(run.path)] == [1, 2, 3, 4]
        assert progress(run.path)["step"] == "4/8"  # `ftlab status` on a run being written
        run.truncate_log(2)  # a resume from the state of step 2
        assert [r["step"] for r in read_metrics(run.path)] == [1, 2]
        assert run.metrics.read_text().endswith("}\n")
        run.metrics.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
        with pytest.raises(FtlabError, match=r"metrics.jsonl:2: a damaged metrics line"):
            read_metrics(run.path)
    assert json.loads(RunLayout(cfg.output.dir).config_json.read_text())["output"]["dir"] == str(tmp_path / "run")


def test_jsonl_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,, "b": 3}\n')
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON .*column 9"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"{path}:2: expected a JSON object, got a JSON list"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8"):
        read_jsonl(path)


def test_lora_variant_and_method_label():
    plain = MethodConfig(name="lora", rank=16)
    assert lora_variant(plain) == [] and method_label(plain) == "lora-r16"
    full = MethodConfig(name="full", rslora=True)  # options of LoRA mean nothing to full FT
    assert lora_variant(full) == [] and method_label(full) == "full"
    m = MethodConfig(name="lora", rank=8, alpha=4.0, targets=["q_proj", "v_proj"], rslora=True, init="pissa",
                     loraplus_ratio=16.0)
    assert lora_variant(m) == ["rsLoRA", "init=pissa", "LoRA+ x16"]
    assert method_label(m) == "lora-r8-q_proj+v_proj-a4-rslora-initpissa-lora+x16"


EXPERIMENT = """
model: {{name: tiny}}
defaults: {{train: {{lr: 1.0e-3}}}}
settings:
  - {{name: math, data: {{regime: ift, path: "builtin:math-ift"}}, durations: [1]}}
  - {{name: source, data: {{regime: cpt, path: "builtin:source-cpt"}}, durations: [1000]}}
  - {{name: mine, data: {{regime: ift, path: pairs.jsonl}}, durations: [1]}}
  - {{name: mine-code, data: {{regime: ift, path: pairs.jsonl}}, durations: [1], kl_domain: code}}
methods: [{{name: lora, ranks: [2], options: {{dora: true}}}}]
{extra}
"""


def test_kl_prompts_are_chosen_explicitly_and_paths_resolve_beside_the_file(tmp_path, pairs):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT.format(extra=""))
    plans = {p.setting: p for p in plan_runs(load_experiment(exp), tmp_path / "out")}
    assert {s: p.kl_domain for s, p in plans.items()} == {"math": "math", "source": None, "mine": None,
                                                          "mine-code": "code"}
    assert plans["mine"].cfg.data.path == str(pairs)  # relative to the experiment file's folder
    assert plans["math"].method == "lora-r2-dora"
    assert {k: v.domain for k, v in DATA_KINDS.items()}["code-ift"] == data_domain("builtin:code-ift") == "code"
    exp.write_text(EXPERIMENT.format(extra="").replace("kl_domain: code", "kl_domain: poetry"))
    with pytest.raises(ConfigError, match=r"settings\[3\].kl_domain.*'poetry'"):
        plan_runs(load_experiment(exp), tmp_path / "out")
    exp.write_text(EXPERIMENT.format(extra="base_dir: /elsewhere"))  # set by code, never by the file
    with pytest.raises(ConfigError, match="unknown key 'base_dir'"):
        load_experiment(exp)


def test_importing_ftlab_changes_nothing_process_wide():
    """Every module imported in a fresh process: warning filters, Hugging Face's progress bars and stdout are as they
    were (the CLI sets them: ftlab.cli.process_settings). The libraries ftlab imports at module level are imported
    first: some set warning filters of their own (numpy, torch, peft's scipy)."""
    code = """
import ast, importlib, pkgutil, sys, warnings
from pathlib import Path
import ftlab
libraries = set()  # (module, name imported from it or None)
for path in Path(ftlab.__file__).parent.rglob("*.py"):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            libraries |= {(a.name, None) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            libraries |= {(node.module, a.name) for a in node.names}
for module, name in sorted(libraries, key=str):
    if module.split(".")[0] not in ("ftlab", "__future__"):
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):  # a submodule
            importlib.import_module(f"{module}.{name}")
        elif name is not None:
            getattr(imported, name)  # transformers loads its classes on first access
from transformers.utils import logging as hf_logging
before = (list(warnings.filters), hf_logging.is_progress_bar_enabled(), sys.stdout)
for m in pkgutil.walk_packages(ftlab.__path__, "ftlab."):
    if m.name != "ftlab.__main__":
        importlib.import_module(m.name)
after = (list(warnings.filters), hf_logging.is_progress_bar_enabled(), sys.stdout)
print(len([m for m in sys.modules if m.startswith("ftlab.")]), before == after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 50 and out[1] == "True", out
