"""The answer at the top of the report: what to train per setting, LoRA against full FT, cost and caveats; a banner
naming failed runs; and no recommendation from an instrument with no spread."""

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from test_report import make_study  # noqa: E402

from ftlab.io import file_digest  # noqa: E402
from ftlab.report import write_report  # noqa: E402
from ftlab.report.advice import advise  # noqa: E402
from ftlab.report.measures import Measures  # noqa: E402
from ftlab.report.page import summary_file  # noqa: E402
from ftlab.results.index import study_of  # noqa: E402


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("study"))


def test_the_answer_comes_first_and_is_written_as_text(study_dir):
    page = write_report(study_dir).read_text()
    text = summary_file(study_dir / "report.html").read_text()
    assert page.index('id="answer"') < page.index('id="claims"') < page.index('id="recommendation"')
    assert text.startswith("What to train in ")
    assert "within 25% of full FT's forgetting" in text and "within 100% of full FT's forgetting" in text
    # LoRA against plain full FT at the longest duration both reached (4 epochs), with intervals, and the cost ratio
    assert "LoRA r=16 against full FT at 4 epochs: learns " in text and "] less" in text
    assert "LoRA r=1 against full FT at 4 epochs: forgets 0.246 [" in text and "less (held-out source loss" in text
    # LoRA r=16: 1800 + 60 x 16 s against full FT's 3600 s; 3 + 0.1 x 16 GB against 8 GB
    assert "cost of LoRA r=16: 0.77x full FT's device-hours, 0.57x full FT's peak memory" in text
    assert "Caveat: one training seed" in text


def _no_spread(root: Path, task: str = "math", metric: str = "exact_match_strict") -> None:
    """Every example of `task`, base and checkpoints alike, scores 0 (exact match at its floor)."""
    for samples in root.rglob(f"eval_samples/{task}.jsonl"):
        records = [json.loads(line) for line in samples.read_text().splitlines()]
        samples.write_text("".join(json.dumps({**r, "metrics": {metric: 0.0}}) + "\n" for r in records))
        evaluation = samples.parent.parent / "eval.json"
        doc = json.loads(evaluation.read_text())
        doc["scores"] = [{**s, "value": 0.0} if s["task"] == task else s for s in doc["scores"]]
        doc["samples"][task] = file_digest(samples)
        evaluation.write_text(json.dumps(doc))


def test_a_learning_instrument_with_no_spread_recommends_nothing(tmp_path):
    root = make_study(tmp_path / "study")
    _no_spread(root)
    advice = advise(Measures(study_of(root)), budget=0.35)
    assert advice.answers == [] and advice.front == {}
    [why] = next(iter(advice.unmeasurable.values()))
    assert why.startswith("learning: not measurable with this instrument here") and "heldout_accuracy" in why
    page = write_report(root).read_text()
    text = summary_file(root / "report.html").read_text()
    assert "learning: not measurable with this instrument here" in text
    assert "within " not in text and " learns " not in text  # no pick, no learning comparison read from it
    assert 'class="dead"' in page


def test_failed_runs_are_named_at_the_very_top(tmp_path):
    from dataclasses import replace

    from ftlab.results.store import Store
    from ftlab.rundir import StudyLayout

    root = make_study(tmp_path / "study")
    study_of(root)  # indexes the folder into its store
    layout = StudyLayout(root)
    layout.experiment.write_text("{}\n")  # read as a study's own store from now on, not indexed again
    with Store(layout.store) as store:
        name, record = next(iter(store.runs().items()))
        store.put_run(replace(record, status="failed", reason="out of memory"))
    page = write_report(root).read_text()
    assert page.index('id="failed"') < page.index("<h1>")
    assert f"<code>{name}</code>: out of memory" in page
    assert summary_file(root / "report.html").read_text().startswith(f"FAILED: {name}: out of memory\n")
