"""Every YAML block of the README is a file of configs/examples/readme/, and each of those loads and plans (its data
paths pointed at small local files, as a user points them at theirs)."""

import re
from pathlib import Path

import pytest
from conftest import write_pairs, write_text

from ftlab.experiment.spec import load_experiment, plan_runs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "configs" / "examples" / "readme").glob("*.yaml"))


def test_every_yaml_block_of_the_readme_is_an_example_file():
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    files = {path.name: path.read_text() for path in EXAMPLES}
    assert blocks
    for block in blocks:
        assert block in files.values(), f"a README YAML block is no file of configs/examples/readme:\n{block[:200]}"
    assert len(blocks) == len(files)  # and every file is shown


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_loads_and_plans(path, tmp_path):
    exp = load_experiment(path)
    overrides = []
    if exp.model["name"].startswith("./"):  # your model directory
        (tmp_path / "my-model").mkdir()
        overrides.append(f"model.name={tmp_path / 'my-model'}")
    for i, s in enumerate(exp.settings):
        data = write_text(tmp_path / f"text{i}.jsonl") if s.data.get("regime") == "cpt" else \
            write_pairs(tmp_path / f"pairs{i}.jsonl")
        overrides.append(f"settings.{i}.data.path={data}")
        if "eval_path" in s.data:
            overrides.append(f"settings.{i}.data.eval_path={data}")
    plans = plan_runs(load_experiment(path, overrides), tmp_path / "out")
    assert plans and {p.setting for p in plans} == {s.name for s in exp.settings}
    assert all(p.learning for p in plans)  # named, or the held-out part of the setting's own data
