"""Paths: a run's saved config holds absolute paths, so it resumes from any working directory; an old run whose
config holds relative ones resumes where they still resolve the same; the CPT held-out split does not depend on how
or where the data is named; and a run refused for its data or model leaves no --out behind (or one a fixed config
may use)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY_MODEL, write_pairs, write_text
from ftlab.cli import main
from ftlab.config import DataConfig
from ftlab.model import byte_tokenizer
from ftlab.packing import PackedText
from ftlab.errors import FtlabError
from ftlab.rundir import base_of

SHORT = [*TINY_MODEL, "data.seq_len=32", "data.eval_fraction=0.1", "train.global_batch=16", "train.micro_batch=8",
         "train.epochs=1", "train.lr=3e-3", "train.warmup=2", "output.resume_every=3", "method.name=lora",
         "method.rank=4"]


def final(run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(run / "final" / "adapter_model.safetensors").items()}


def test_a_run_resumes_from_another_working_directory(tmp_path, monkeypatch, capsys):
    """The config names its data beside itself; trained from the config's folder, resumed from its parent (the
    same data, reached by another relative path): the saved config compares equal and the run ends where an
    uninterrupted one does."""
    project = tmp_path / "project"
    project.mkdir()
    write_pairs(project / "pairs.jsonl")
    (project / "tok").mkdir()
    byte_tokenizer().save_pretrained(project / "tok")
    (project / "cfg.yaml").write_text(yaml.safe_dump({"data": {"path": "pairs.jsonl"},
                                                      "model": {"tiny": {"tokenizer": "tok"}}}))
    out = tmp_path / "run"
    monkeypatch.chdir(project)
    assert main(["train", "cfg.yaml", *SHORT, "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["path"] == str(project / "pairs.jsonl")
    assert saved["model"]["tiny"]["tokenizer"] == str(project / "tok")
    uninterrupted = final(out)

    shutil.rmtree(out / "state" / "step-00000006")  # the last state lost: the run resumes from step 3
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "project/cfg.yaml", *SHORT, "--out", "run"]) == 0
    assert "resuming: " in capsys.readouterr().out
    assert all(torch.equal(final(out)[k], w) for k, w in uninterrupted.items())


def test_an_old_run_with_relative_paths_resumes_where_they_resolve_the_same(tmp_path, monkeypatch, capsys):
    """A config saved by an older ftlab holds data.path as given. It is read from the working directory, as
    load_config reads it: from the folder it was trained in, it names the same file and the run resumes (its
    config is then saved with the absolute path); from elsewhere, it names nothing and the run is refused."""
    write_pairs(tmp_path / "pairs.jsonl")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("{}\n")
    assert main(["train", "cfg.yaml", *SHORT, "data.path=pairs.jsonl", "--out", "run"]) == 0
    for name, load, dump in (("config.yaml", yaml.safe_load, yaml.safe_dump),
                             ("config.json", json.loads, json.dumps)):
        cfg = load((tmp_path / "run" / name).read_text())
        cfg["data"]["path"] = "pairs.jsonl"  # as an older ftlab saved it
        (tmp_path / "run" / name).write_text(dump(cfg))
    shutil.rmtree(tmp_path / "run" / "state" / "step-00000006")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    status = main(["train", "../cfg.yaml", *SHORT, f"data.path={tmp_path / 'pairs.jsonl'}", "--out", "../run"])
    assert status == 2 and "different config (data.path: 'pairs.jsonl' there" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cfg.yaml", *SHORT, f"data.path={tmp_path / 'pairs.jsonl'}", "--out", "run"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["path"] == str(tmp_path / "pairs.jsonl")


def held_out(path: str, eval_fraction: float = 0.3) -> list[list[int]]:
    """The CPT held-out split's sequences of the data at `path` (seed 0)."""
    cfg = DataConfig(regime="cpt", path=path, seq_len=16, eval_fraction=eval_fraction)
    return [s["input_ids"].tolist() for s in PackedText(cfg, byte_tokenizer(), "eval", seed=0)]


def test_the_cpt_held_out_split_does_not_depend_on_where_the_data_is(tmp_path, monkeypatch):
    """A document is held out by a hash of (seed, its file relative to data.path, its line): the same documents for a
    relative and an absolute path, for a copy elsewhere, and for a directory of files moved as a whole."""
    data = tmp_path / "a" / "corpus"
    data.mkdir(parents=True)
    write_text(data / "one.jsonl", n_docs=30, seed=1)
    write_text(data / "two.jsonl", n_docs=30, seed=2)
    shutil.copytree(data, tmp_path / "b" / "moved")
    monkeypatch.chdir(tmp_path)
    reference = held_out(str(data / "one.jsonl"))
    assert reference and len(reference) < len(held_out(str(data / "one.jsonl"), eval_fraction=0.9))
    assert held_out("a/corpus/one.jsonl") == reference
    assert held_out(str(tmp_path / "b" / "moved" / "one.jsonl")) == reference
    assert held_out("a/corpus") == held_out(str(tmp_path / "b" / "moved"))


def test_a_run_refused_for_its_data_or_model_leaves_no_out_behind(tmp_path, capsys):
    good = write_pairs(tmp_path / "good.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b", "x": tru}\n')
    wrong_shape = tmp_path / "text.jsonl"
    write_text(wrong_shape)  # raw text where IFT needs prompt/completion pairs
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    out = tmp_path / "run"
    for data, message in ((bad, f"{bad}:2: not valid JSON (Expecting value at column 41)"),
                          (wrong_shape, f"{wrong_shape}:1: a raw-text record has no prompt/response")):
        capsys.readouterr()
        assert main(["train", str(cfg), *SHORT, f"data.path={data}", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()

    model = tmp_path / "model"  # a model directory whose weights were cut short
    assert main(["train", str(cfg), *SHORT, f"data.path={good}", "train.epochs=0.2", "--out", str(tmp_path / "m")]) == 0
    shutil.copytree(tmp_path / "m" / "base", model)
    (model / "ftlab.json").unlink()  # a downloaded model: no checksums, only its header says it is damaged
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    capsys.readouterr()
    assert main(["train", str(cfg), *SHORT, f"data.path={good}", f"model.name={model}", "--out", str(out)]) == 2
    assert f"{model / 'model.safetensors'}: not a readable safetensors file" in capsys.readouterr().err
    assert not out.exists()
    assert main(["train", str(cfg), *SHORT, f"data.path={good}", "--out", str(out)]) == 0


def test_a_run_refused_after_its_out_was_written_accepts_the_fixed_config(tmp_path, capsys):
    """A data error past the records read before --out is written: the run saved no state, so the fixed config (here
    another data file) starts it over in the same --out."""
    good = write_pairs(tmp_path / "good.jsonl")
    late = tmp_path / "late.jsonl"
    lines = good.read_text().splitlines()
    late.write_text("\n".join(lines[:20] + ['{"prompt": "a"}'] + lines[20:]) + "\n")  # line 21 has no completion
    cfg, out = tmp_path / "cfg.yaml", tmp_path / "run"
    cfg.write_text("{}\n")
    assert main(["train", str(cfg), *SHORT, f"data.path={late}", "--out", str(out)]) == 2
    assert f"{late}:21: unknown record shape with keys ['prompt']" in capsys.readouterr().err
    assert (out / "config.yaml").exists() and not (out / "state").exists()
    assert main(["train", str(cfg), *SHORT, f"data.path={good}", "--out", str(out)]) == 0
    assert "saved no state or checkpoint yet; it starts over with this config (data.path" in capsys.readouterr().out
    assert main(["train", str(cfg), *SHORT, f"data.path={late}", "--out", str(out)]) == 2  # trained: refused
    assert "holds a run with a different config (data.path" in capsys.readouterr().err



def test_a_moved_or_copied_run_finds_its_own_base(tmp_path):
    """A run names its tiny base relative to each checkpoint: moved, it is evaluated with no word about where it
    was; copied and the original deleted, the copy is evaluated and its spectrum taken against its own base."""
    write_pairs(tmp_path / "pairs.jsonl")
    run = tmp_path / "run"
    assert main(["train", str(_config(tmp_path)), *SHORT, "--out", str(run)]) == 0
    assert json.loads((run / "final" / "ftlab.json").read_text())["base"] == "../base"
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert base_of(moved / "final") == str((moved / "base").resolve())
    assert main(["eval", str(moved), "--tasks", "source_loss", "--limit", "4"]) == 0
    assert (moved / "final" / "eval.json").exists()

    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    shutil.rmtree(moved)
    assert base_of(copy / "final") == str((copy / "base").resolve())
    assert main(["spectrum", str(copy), "--out", str(tmp_path / "spectrum.json")]) == 0
    assert json.loads((tmp_path / "spectrum.json").read_text())["base"] == str((copy / "base").resolve())


def test_a_checkpoint_whose_base_is_gone_says_so(tmp_path):
    """A checkpoint naming a local base that is no longer there: one message naming the base, the file that names
    it and how to name another; a hub id is passed on as it is."""
    ckpt = tmp_path / "final"
    ckpt.mkdir()
    (ckpt / "ftlab.json").write_text(json.dumps({"step": 1, "base": str(tmp_path / "models" / "llama")}))
    with pytest.raises(FtlabError, match=r"llama .*ftlab\.json.*--base"):
        base_of(ckpt)
    (ckpt / "ftlab.json").write_text(json.dumps({"step": 1, "base": "meta-llama/Llama-2-7b-hf"}))
    assert base_of(ckpt) == "meta-llama/Llama-2-7b-hf"
    (ckpt / "ftlab.json").write_text(json.dumps({"step": 1, "base": "builtin:base-tiny"}))
    assert (Path(base_of(ckpt)) / "config.json").exists()


def _config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "pairs.jsonl")}}))
    return path
