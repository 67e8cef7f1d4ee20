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


@pytest.fixture(scope="module")
def report(study_dir) -> Path:
    return write_report(study_dir)


def test_the_answer_comes_first_and_is_written_as_text(study_dir, report):
    page = report.read_text()
    text = summary_file(study_dir / "report.html").read_text()
    assert page.index('id="answer"') < page.index('id="claims"') < page.index('id="recommendation"')
    assert text.startswith("What to train in ")
    assert "within 25% of full FT's forgetting" in text and "within 100% of full FT's forgetting" in text
    # LoRA against plain full FT at the longest duration both reached (4 epochs), with intervals, and the cost ratio
    # each LoRA group against plain full FT at the longest duration both reached, with intervals, and its cost:
    # LoRA r=16 trains 1800 + 60 x 16 s against full FT's 3600 s, in 3 + 0.1 x 16 GB against 8 GB
    line = next(x for x in text.splitlines() if "LoRA r=16 against full FT at 4 epochs: learns " in x)
    assert "] less; forgets " in line and "] less; 0.77x" in line
    assert line.endswith("0.77x the device-hours, 0.57x the peak memory")
    assert "Caveat: one training seed" in text
    for term in ("MDE", "k90", "Holm", "parting step", "intruders"):  # the page explains the terms it uses
        assert f"<dt>{term}</dt>" in page
    runs = page[page.index('<section id="runs"'):page.index('<section id="missing"')]
    assert ">1 epoch</td>" in runs and "1 epochs" not in page  # durations as people write them


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


def _png(width: int, height: int) -> str:
    """A blank PNG of this size, base64."""
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff" * width for _ in range(height))  # filter byte + grey pixels
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return base64.b64encode(data).decode("ascii")


def _check_report():
    import sys

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    sys.path.insert(0, scripts)
    try:
        import check_report
    finally:
        sys.path.remove(scripts)
    if check_report.find_chromium(None) is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium); the browser check is skipped")
    return check_report


def test_the_first_screen_holds_the_answer_and_nothing_scrolls_sideways(report, tmp_path):
    check = _check_report()
    result = check.probe(report, check.find_chromium(None))
    assert check.failures(result) == []
    assert result["answer"]["first_bottom"] <= 900
    assert all(img["small_px"] * img["shown_width"] / img["width"] >= 10 for img in result["images"])
    # the check can fail: the answer below the first screen, a table wider than its box, legends under 10 px
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><div style="height:1200px"></div><div id="answer"><ul><li>x</li></ul></div>'
                   '<div class="scroll" style="overflow-x:auto;width:300px"><table class="rows"><tr>'
                   '<td style="white-space:nowrap">' + "wide " * 200 + '</td></tr></table></div>'
                   '<figure id="fig-x"><img width="200" height="100" data-small-px="14" style="width:100px" src="'
                   f'data:image/png;base64,{_png(200, 100)}"></figure></body></html>')
    found = check.failures(check.probe(bad, check.find_chromium(None)))
    assert any("do not hold the answer" in f for f in found)
    assert "a table (rows) scrolls sideways" in found
    assert any("legends show 7.0 px" in f for f in found)


def test_the_kl_figure_reads_forgetting_as_the_kl_finding_does(study_dir, report):
    import csv

    from ftlab.report.claims.paper import kl_points

    study = study_of(study_dir)
    [setting] = {r.setting for r in study.points()}
    measure, points = kl_points(study, setting)  # what the KL finding correlates
    table = list(csv.DictReader(open(study_dir / "report" / "kl_forgetting.csv")))
    assert {r["forgetting_measure"] for r in table} == {measure} == {"source-loss rise"}
    assert len(table) == len(points) == 12
    rows = {(r.run, r.checkpoint): r for r in study.points()}
    for t in table:  # the held-out source loss's rise over the base, not the source score's drop
        r = rows[t["run"], t["checkpoint"]]
        assert float(t["forgetting"]) == pytest.approx(r.source_loss - r.base_source_loss)


def test_without_forgetting_measured_the_answer_says_so(tmp_path):
    """A study whose checkpoints lack the forgetting tasks: no recommendation, and the reason is that one."""
    root = make_study(tmp_path / "study")
    for evaluation in root.rglob("eval.json"):
        doc = json.loads(evaluation.read_text())
        doc["scores"] = [s for s in doc["scores"] if s["task"] == "math"]
        doc["samples"] = {k: v for k, v in doc["samples"].items() if k == "math"}
        evaluation.write_text(json.dumps(doc))
    page = write_report(root).read_text()
    text = summary_file(root / "report.html").read_text()
    assert "no recommendation: no configuration has forgetting measured" in text
    assert "Not enough data: no configuration has forgetting measured" in page
