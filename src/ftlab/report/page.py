"""`ftlab report DIR`: one self-contained HTML page on a study, and every number in it as CSV and JSON, read from
the study's results store alone (a folder of plain `ftlab train`/`ftlab eval` runs is first indexed into one).

    ftlab report studies/math-ift                      # -> studies/math-ift/report.html + studies/math-ift/report/
    ftlab report studies/math-ift --out /tmp/r.html    # -> /tmp/r.html + /tmp/r/

The page (OUT, default DIR/report.html) works offline in any browser: figures are PNGs embedded as data: URIs,
the CSS is inline, there is no script and no link outside the file. It holds a header (study directory, runs,
checkpoints, ftlab version), the claims check (ftlab.report.claims), the figures (ftlab.report.plots; skipped
ones listed with the reason), one table row per (run, checkpoint), and what is missing.
Next to it, in the folder named after OUT without its suffix (DIR/report/ by default):
    results.json       the Study (every row; per-example values stay in the store), the claims with their numbers,
                       each figure's table
    rows.csv           one line per (run, checkpoint)
    claims.csv         one line per finding
    <figure id>.csv    the numbers each drawn figure plotted (tradeoff, regularization, lr_sweep, k90_layers,
                       singular_values, kl_forgetting, diversity); a skipped figure's stale CSV is removed
Every file is written under a temporary name and renamed; the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import struct
from pathlib import Path

from ftlab import __version__
from ftlab.io import write_text
from ftlab.report.claims import Claim, check_claims
from ftlab.report.plots import Plot, draw_all
from ftlab.results.index import study_of
from ftlab.results.rows import Row, Study

SECTIONS = ("summary", "claims", "figures", "runs", "missing")  # the page's section ids (scripts/check_report.py)
ROW_COLUMNS = ("run", "checkpoint", "group", "lr", "seed", "duration", "duration_unit", "step", "tokens", "learning",
               "base_learning", "source", "base_source", "forgetting", "source_loss", "base_source_loss", "k90_mean",
               "k90_frac_mean", "rel_change_mean", "intruders_total", "unique_mean", "kl", "wall_s",
               "tokens_per_s", "peak_memory_gb", "trainable_params", "setting", "duplicate_of")


def write_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Read the study's store, check the claims, draw the figures, write the page and its data; returns the page."""
    study = study_of(study_dir)
    claims = check_claims(study)
    plots = draw_all(study)
    page = Path(out) if out is not None else Path(study_dir) / "report.html"
    data_dir = page.with_suffix("")
    data_dir.mkdir(parents=True, exist_ok=True)
    write_text(data_dir / "results.json", json.dumps(
        {"ftlab_version": __version__, "study": _without_examples(study), "claims": [dataclasses.asdict(c) for c in claims],
         "figures": [{"id": p.id, "title": p.title, "skipped": p.skipped, "table": p.table} for p in plots]},
        indent=1, default=str) + "\n")
    write_text(data_dir / "rows.csv", _csv([row_record(r) for r in study.rows], ROW_COLUMNS))
    write_text(data_dir / "claims.csv", _csv([{"id": c.id, "status": c.status, "finding": c.finding,
                                               "sentence": c.sentence, "rule": c.rule} for c in claims]))
    for p in plots:
        target = data_dir / f"{p.id}.csv"
        if p.skipped is None:
            write_text(target, _csv(p.table))
        elif target.exists():
            target.unlink()
    write_text(page, render(study, claims, plots, data_dir.name))
    return page


def _csv(records: list[dict], columns: tuple[str, ...] | None = None) -> str:
    if columns is None:  # the union of keys, in order of first appearance
        columns = tuple(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in records])
    return buf.getvalue()


def _without_examples(study: Study) -> dict:
    """The Study as JSON-able data, without the per-example values and the training curves (the store's examples and
    curves tables hold them)."""
    data = dataclasses.asdict(study)
    data.pop("curves")
    for row in data["rows"] + data["bases"]:
        row.pop("examples", None)
    return data


def row_record(r: Row) -> dict:
    """One table row: the row's own fields plus its spectrum and diversity summaries."""
    record = {k: getattr(r, k) for k in ROW_COLUMNS if hasattr(r, k)}
    record["group"] = r.group
    record.update(wall_s=r.cost.wall_s, tokens_per_s=r.cost.tokens_per_s, peak_memory_gb=r.cost.peak_memory_gb,
                  trainable_params=r.cost.trainable_params)
    s = r.spectrum
    record.update(k90_mean=s and s.k90_mean, k90_frac_mean=s and s.k90_frac_mean,
                  rel_change_mean=s and s.rel_change_mean, intruders_total=s and s.intruders_total,
                  unique_mean=r.diversity and r.diversity.unique_mean)
    return record


# ----------------------------------------------------------------------------- HTML

CSS = """
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:8px 20px 40px;box-sizing:border-box}
h1{font-size:1.6em;margin:.6em 0 .2em}h2{margin-top:1.6em;border-bottom:1px solid #d5dae0;padding-bottom:.2em}
h3{font-size:1.05em;margin:.2em 0}
nav a{margin-right:1em}.meta{color:#5a6570}
figure{margin:1.2em 0;padding:10px;background:#fff;border:1px solid #e1e5ea;border-radius:6px}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{color:#4a545e;font-size:.9em;margin-top:.4em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86em;background:#fff}
th,td{border:1px solid #e1e5ea;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f0f2f5;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.rows td:nth-child(-n+2){white-space:nowrap}
table.claims td{max-width:420px}
.status{font-weight:600;white-space:nowrap;border-radius:4px;padding:2px 6px}
.supported{background:#d4f4dd;color:#11622a}.contradicted{background:#fbd9d6;color:#8d1c12}
.mixed{background:#fdf0c8;color:#7a5600}.not-enough-data{background:#e6e9ed;color:#4a545e}
.rule{color:#5a6570;font-size:.92em}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(x: object) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG header, so the browser reserves the space before decoding."""
    return struct.unpack(">II", png[16:24])


def render(study: Study, claims: list[Claim], plots: list[Plot], data_dir: str) -> str:
    """The whole page as one string (deterministic: no timestamps)."""
    runs = len({r.run for r in study.rows})
    parts = [f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ftlab report: {_e(study.root)}</title><style>{CSS}</style></head>
<body><main>
<header id="summary"><h1>ftlab report</h1>
<p class="meta">study <code>{_e(study.root)}</code> · {runs} runs · {len(study.rows)} checkpoints
· ftlab {_e(__version__)} · the numbers behind every figure and table: <code>{_e(data_dir)}/</code> (JSON, CSV)</p>
<nav>{"".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS[1:])}</nav></header>
"""]
    parts.append(_claims_html(claims))
    parts.append(_figures_html(plots, data_dir))
    parts.append(_rows_html(study))
    parts.append(_missing_html(study))
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _claims_html(claims: list[Claim]) -> str:
    rows = "".join(
        f'<tr id="claim-{_e(c.id)}"><td>{_e(c.finding)}</td>'
        f'<td><span class="status {c.status.replace(" ", "-")}">{_e(c.status)}</span></td>'
        f'<td>{_e(c.sentence)}</td><td class="rule">{_e(c.rule)}</td></tr>' for c in claims)
    return (f'<section id="claims"><h2>Does this study reproduce the paper?</h2>'
            f'<p class="meta">One row per finding of Biderman et al. (2024), decided by the rule in the last column; '
            f'forgetting = the base model\'s source score minus the checkpoint\'s (higher = more forgotten).</p>'
            f'<div class="scroll"><table class="claims"><thead><tr><th>finding</th><th>status</th><th>this study</th>'
            f'<th>rule</th></tr></thead><tbody>{rows}</tbody></table></div></section>\n')


def _figures_html(plots: list[Plot], data_dir: str) -> str:
    out = ['<section id="figures"><h2>Figures</h2>']
    for p in plots:
        if p.png is None:
            continue
        width, height = _png_size(p.png)
        src = "data:image/png;base64," + base64.b64encode(p.png).decode("ascii")
        out.append(f'<figure id="fig-{_e(p.id)}"><h3>{_e(p.title)}</h3>'
                   f'<img src="{src}" alt="{_e(p.title)}" width="{width}" height="{height}">'
                   f'<figcaption>{_e(p.caption)} Data: <code>{_e(data_dir)}/{_e(p.id)}.csv</code>.</figcaption>'
                   f'</figure>')
    skipped = [p for p in plots if p.png is None]
    if skipped:
        out.append('<h3>Not drawn</h3><ul id="skipped">' + "".join(
            f'<li id="skipped-{_e(p.id)}"><b>{_e(p.title)}</b>: {_e(p.skipped)}</li>' for p in skipped) + "</ul>")
    out.append("</section>\n")
    return "".join(out)


ROW_TABLE = (("lr", "lr"), ("duration", "duration"), ("learning", "learning"), ("base_learning", "base L"),
             ("source", "source"), ("base_source", "base S"), ("forgetting", "forgetting"),
             ("source_loss", "source loss"), ("base_source_loss", "base loss"),
             ("k90_mean", "k90 mean"), ("k90_frac_mean", "k90/min(m,n)"), ("rel_change_mean", "‖ΔW‖/‖W‖"),
             ("intruders_total", "intruders"), ("unique_mean", "unique"), ("kl", "KL"))  # (record key, header)


def _rows_html(study: Study) -> str:
    body = []
    for r in study.rows:
        rec = row_record(r)
        ckpt = r.checkpoint + (f" (= {r.duplicate_of})" if r.duplicate_of else "")
        cells = [f"<td>{_e(x)}</td>" for x in (r.run, ckpt, r.group)]
        cells += [f'<td class="n">{_e(_num(rec[key]))}</td>' for key, _ in ROW_TABLE]
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in ("run", "checkpoint", "method", *(h for _, h in ROW_TABLE)))
    units = ", ".join(sorted({r.duration_unit for r in study.rows}))
    note = (f"duration in {units}; learning = mean headline metric of the learning tasks; source = the source score, "
            "the mean headline metric of the source benchmarks; base L / base S: the base model's on the same tasks; "
            "forgetting = base S − source (higher = more forgotten); source loss: held-out source-domain loss, "
            "nats/token. A checkpoint marked (= x) is the same model as x and is left out of figures and claims.")
    return (f'<section id="runs"><h2>Runs and checkpoints</h2><p class="meta">{_e(note)}</p>'
            f'<div class="scroll"><table class="rows"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div></section>\n')


def _missing_html(study: Study) -> str:
    if not study.missing:
        return '<section id="missing"><h2>Missing</h2><p>Nothing missing.</p></section>\n'
    items = "".join(f"<li>{_e(m)}</li>" for m in study.missing)
    return (f'<section id="missing"><h2>Missing</h2><p class="meta">{len(study.missing)} items; the report shows '
            f'what the study has.</p><ul>{items}</ul></section>\n')

