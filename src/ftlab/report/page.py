"""`ftlab report DIR`: one self-contained HTML page on a study, and every number in it as CSV and JSON, read from
the study's results store alone (a folder of plain `ftlab train`/`ftlab eval` runs is first indexed into one).

    ftlab report studies/math-ift                      # -> studies/math-ift/report.html + studies/math-ift/report/
    ftlab report studies/math-ift --out /tmp/r.html    # -> /tmp/r.html + /tmp/r/
    ftlab report studies/math-ift --forgetting-budget 0.05   # also: what learns most forgetting at most 0.05

The page (OUT, default DIR/report.html) works offline in any browser: figures are PNGs embedded as data: URIs,
the CSS is inline, there is no script and no link outside the file. Its sections: a header (study directory, runs,
checkpoints, ftlab version); the claims (ftlab.report.claims: per finding its verdict, the counts of agreeing,
disagreeing and inconclusive comparisons, the headline difference with its 95% interval, the minimal detectable
effect, notes and rule); the instruments (ftlab.report.measures: each one's detectable effect beside full FT's
effect on it); the recommendation (ftlab.report.advice: the learning-forgetting Pareto front and forgetting budgets);
the cost view and the figures (ftlab.report.figures; skipped ones listed with the reason); one table row per
(run, checkpoint); and what is missing. This module writes every part of the page and every export.
Next to it, in the folder named after OUT without its suffix (DIR/report/ by default):
    results.json       the Study (every row; per-example values stay in the store), the claims (Claim.as_dict: every
                       comparison with its interval), the instruments, the recommendation, each figure's table
    rows.csv           one line per (run, checkpoint), with its cost
    claims.csv         one line per finding (comparisons.csv: one per comparison a verdict counts)
    instruments.csv    one line per instrument and setting
    pareto_front.csv   the front's configurations; budgets.csv: the answer per forgetting budget
    <figure id>.csv    the numbers each drawn figure plotted, with the intervals' bounds (tradeoff, tradeoff_loss,
                       duration, regularization, lr_sweep, k90_layers, singular_values, kl_forgetting, diversity,
                       cost); a skipped figure's stale CSV is removed
Every file is written under a temporary name and renamed; the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
import struct
from collections import Counter
from pathlib import Path

from ftlab import __version__
from ftlab.errors import FtlabError
from ftlab.io import write_text
from ftlab.report import advice, measures
from ftlab.report.advice import Advice, Summary, budget_words, no_answer, summarize
from ftlab.report.claims import check_claims
from ftlab.report.figures import CONTENT_PX, SMALL_PX, STEERING_FIGURES, Plot, cost, draw_all
from ftlab.report.measures import FORGETTING_WORDS, Measures, Power, cost_of, cost_points
from ftlab.report.select import analysed, duration_text, sorted_arms
from ftlab.report.verdicts import INSTRUMENTS, Claim, Comparison, compare
from ftlab.results.index import study_of
from ftlab.results.store import Store
from ftlab.results.study import Row, Study
from ftlab.rundir import StudyLayout

SECTIONS = ("summary", "claims", "instruments", "recommendation", "cost", "steering", "figures", "runs",
            "missing", "glossary")  # the page's section ids (scripts/check_report.py checks them)
GLOSSARY = (  # the terms the page uses, in a sentence each
    ("learning", "the mean headline metric of a setting's learning tasks on its held-out examples (higher = learned "
                 "more); by default the token accuracy of the responses held out of the setting's own data "
                 "(heldout_accuracy)"),
    ("forgetting", "how much worse the finetuned model does than the base on the source domain: the rise of its "
                   "held-out source loss (nats/token) where measured per document, else the drop of the source score "
                   "(the mean accuracy of the source benchmarks)"),
    ("95% interval, paired", "a bootstrap over the examples both models were evaluated on (and over training seeds "
                             "where there are several): the range the difference lies in, 95 times in 100"),
    ("MDE", "minimal detectable effect: the true difference a paired comparison detects with 80% power at 5%, 2.8 x "
            "its standard error; a smaller effect may be there and not be seen"),
    ("Holm", "Holm's correction: a finding's many comparisons are tested as one family, so that the 5% of them a "
             "null effect makes look significant by chance do not decide it"),
    ("forgetting budget", "the forgetting you accept; what learns most within it is the configuration whose "
                          "forgetting's interval lies at or below it with the most learning"),
    ("Pareto front", "the configurations no other beats on both learning (higher) and forgetting (lower)"),
    ("k90", "the number of singular directions holding 90% of the weight change ΔW's energy (squared Frobenius "
            "norm): its effective rank; k90/min(m,n) as a share of the matrix's smaller side"),
    ("intruders", "intruder dimensions: top singular vectors of the finetuned weight that are nearly orthogonal (|cos| "
                  "below a threshold) to every singular vector of the base weight: new directions, not tuned ones"),
    ("parting step", "the training step from which LoRA's training loss stays above full FT's by more than its noise "
                     "(LoRA Without Regret's capacity limit); \"never\" if the curves do not part"),
    ("no spread", "an instrument on which every example of the base and every configuration scores the same (exact "
                  "match at 0 everywhere): it ranks nothing, and nothing is recommended from it"),
)
ROW_COLUMNS = ("run", "checkpoint", "group", "lr", "seed", "duration", "duration_unit", "step", "tokens", "learning",
               "heldout_loss", "base_learning", "source", "base_source", "forgetting", "source_loss", "base_source_loss",
               "k90_mean", "k90_frac_mean", "rel_change_mean", "intruders_total", "unique_mean", "kl", "wall_s",
               "device_hours", "tokens_per_s", "peak_memory_gb", "device", "trainable_params", "total_params", "setting",
               "duplicate_of")


def write_report(study_dir: str | Path, out: str | Path | None = None,
                 forgetting_budget: float | None = None) -> Path:
    """Read the study's store, check the claims, draw the figures, write the page and its data; returns the page.
    forgetting_budget: the forgetting a user allows (the source-loss rise where measured, else the source-score
    drop): the recommendation says what learns most within it."""
    if forgetting_budget is not None and not (math.isfinite(forgetting_budget) and forgetting_budget >= 0):
        raise FtlabError(f"--forgetting-budget: expected a forgetting of at least 0 (a source-loss rise in "
                         f"nats/token, or a source-score drop), got {forgetting_budget}")
    study = study_of(study_dir)
    claims = check_claims(study)
    m = Measures(study)
    plots = draw_all(m)
    cost_plot = cost(m)
    steering = [draw(m) for draw in STEERING_FIGURES]
    powers = measures.powers(m, claims)
    advised = advice.advise(m, forgetting_budget)
    answer = summarize(m, claims, advised, powers, _failed(study_dir))
    page = Path(out) if out is not None else StudyLayout(study_dir).report
    data_dir = page.with_suffix("")
    data_dir.mkdir(parents=True, exist_ok=True)
    recommendation = {"forgetting_budget": forgetting_budget, "front": advice.front_records(advised),
                      "budgets": advice.budget_records(advised)}
    write_text(data_dir / "results.json", json.dumps(
        {"ftlab_version": __version__, "study": _without_examples(study), "claims": [c.as_dict() for c in claims],
         "instruments": [p.record() for p in powers], "recommendation": recommendation,
         "figures": [{"id": p.id, "title": p.title, "skipped": p.skipped, "table": p.table}
                     for p in [*plots, cost_plot, *steering]]},
        indent=1, default=str) + "\n")
    write_text(summary_file(page), answer.text() + "\n")
    write_text(data_dir / "rows.csv", csv_text([row_record(r) for r in study.rows], ROW_COLUMNS))
    write_text(data_dir / "claims.csv", csv_text([claim_record(c) for c in claims]))
    write_text(data_dir / "comparisons.csv", csv_text([{"claim": c.id, **x.as_dict()} for c in claims
                                                       for x in c.comparisons]))
    write_text(data_dir / "instruments.csv", csv_text([p.record() for p in powers]))
    write_text(data_dir / "pareto_front.csv", csv_text(recommendation["front"]))
    write_text(data_dir / "budgets.csv", csv_text(recommendation["budgets"]))
    qlora = qlora_records(study)
    if qlora:
        write_text(data_dir / "qlora_vs_lora.csv", csv_text(qlora))
    for p in [*plots, cost_plot, *steering]:
        target = data_dir / f"{p.id}.csv"
        if p.skipped is None:
            write_text(target, csv_text(p.table))
        elif target.exists():
            target.unlink()
    body = [claims_html(claims), _instruments_html(powers), _recommendation_html(advised, forgetting_budget),
            _cost_html(m, cost_plot, data_dir.name, _qlora_html(qlora)),
            steering_html(study, claims, steering, data_dir.name), _figures_html(plots, data_dir.name),
            _rows_html(study), _missing_html(study), _glossary_html()]
    write_text(page, render(study, body, data_dir.name, answer))
    return page


def summary_file(page: str | Path) -> Path:
    """Where the report writes its summary as text (what `ftlab run` and `ftlab demo` print): beside its data."""
    return Path(page).with_suffix("") / "summary.txt"


def print_answer(study_dir: str | Path) -> None:
    """Print the summary the study's report wrote (the end of `ftlab run` and `ftlab demo`)."""
    path = summary_file(StudyLayout(study_dir).report)
    if path.exists():
        print("\n" + path.read_text(encoding="utf-8"), end="", flush=True)


def _failed(study_dir: str | Path) -> dict[str, str]:
    """The study's failed runs and why, from its store (a folder of plain runs has none)."""
    layout = StudyLayout(study_dir)
    if not layout.store.exists():
        return {}
    with Store(layout.store) as store:
        return {name: r.reason or "no reason recorded" for name, r in sorted(store.runs().items())
                if r.status == "failed"}


def claim_record(c: Claim) -> dict:
    """One line of claims.csv: Claim.as_dict with the counts and the headline spread into columns (the comparisons
    go to comparisons.csv)."""
    d = c.as_dict()
    h = d["headline"] or {}
    return {"id": d["id"], "source": d["source"], "finding": d["finding"], "status": d["status"], **d["counts"],
            "headline": h.get("what"), "instrument": h.get("instrument", d["instrument"]),
            "estimate": h.get("estimate"), "low": h.get("low"), "high": h.get("high"), "mde": d["mde"],
            "sentence": d["sentence"], "notes": " | ".join(d["notes"]), "rule": d["rule"]}


def _without_examples(study: Study) -> dict:
    """The Study as JSON-able data, without the per-example values and the training curves (the store's examples and
    curves tables hold them)."""
    data = dataclasses.asdict(study)
    data.pop("curves")
    for row in data["rows"] + data["bases"] + data["steered"]:
        row.pop("examples", None)
    return data


def row_record(r: Row) -> dict:
    """One table row: the row's own fields plus its cost, spectrum and diversity summaries."""
    record = {k: getattr(r, k) for k in ROW_COLUMNS if hasattr(r, k)}
    record["group"] = r.group
    record["heldout_loss"] = r.scores.get("heldout_loss/loss")  # the held-out loss on the setting's own data
    c = r.cost
    record.update(wall_s=c.wall_s, device_hours=c.device_hours, tokens_per_s=c.tokens_per_s,
                  peak_memory_gb=c.peak_memory_gb, device=c.device, trainable_params=c.trainable_params,
                  total_params=c.total_params)
    s = r.spectrum
    record.update(k90_mean=s and s.k90_mean, k90_frac_mean=s and s.k90_frac_mean,
                  rel_change_mean=s and s.rel_change_mean, intruders_total=s and s.intruders_total,
                  unique_mean=r.diversity and r.diversity.unique_mean)
    return record


# ----------------------------------------------------------------------------- HTML

def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def num(x: object) -> str:
    """A number as the page shows it: 4 significant digits, "–" for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def table(head: list[str], rows: list[list[str]], cls: str = "", numeric: frozenset[int] = frozenset(),
          ids: list[str] | None = None) -> str:
    """An HTML table in a horizontally scrolling box; cells are HTML already (escape them first), columns whose
    index is in `numeric` right-aligned; ids: each row's id attribute."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join((f'<tr id="{esc(ids[n])}">' if ids else "<tr>")
                   + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
                   + "</tr>" for n, row in enumerate(rows))
    klass = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{klass}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def csv_text(records: list[dict], columns: tuple[str, ...] | None = None) -> str:
    """CSV of records (columns default: the union of their keys, in order of first appearance); None -> empty."""
    if columns is None:
        columns = tuple(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in records])
    return buf.getvalue()


CSS = """
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:8px 20px 40px;box-sizing:border-box}
h1{font-size:1.6em;margin:.6em 0 .2em}h2{margin-top:1.6em;border-bottom:1px solid #d5dae0;padding-bottom:.2em}
h3{font-size:1.05em;margin:.8em 0 .3em}
nav a{margin-right:1em}.meta{color:#5a6570}
figure{margin:1.2em 0;padding:10px;background:#fff;border:1px solid #e1e5ea;border-radius:6px}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{color:#4a545e;font-size:.9em;margin-top:.4em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86em;background:#fff}
th,td{border:1px solid #e1e5ea;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f0f2f5;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.rows{font-size:.78em}table.rows td,table.rows th{padding:3px 4px}
table.rows td:nth-child(-n+2){overflow-wrap:anywhere}table.rows td:first-child{min-width:7em}
table.claims td{max-width:360px}table.claims ul{margin:.3em 0 0;padding-left:1.1em}
.status{font-weight:600;white-space:nowrap;border-radius:4px;padding:2px 6px}
.supported{background:#d4f4dd;color:#11622a}.contradicted{background:#fbd9d6;color:#8d1c12}
.mixed{background:#fdf0c8;color:#7a5600}.inconclusive{background:#dde8f6;color:#1f4e79}
.not-enough-data{background:#e6e9ed;color:#4a545e}
.answer{background:#fff;border:1px solid #c9d6e3;border-radius:6px;padding:4px 16px 8px;margin:.6em 0}
.answer h2{margin-top:.4em}.answer ul{margin:.2em 0;padding-left:1.2em}.dead{color:#8d1c12}
.failed{background:#fbd9d6;color:#8d1c12;border:1px solid #e8a49c;border-radius:6px;padding:6px 14px;margin-top:8px}
.glossary dt{font-weight:600;margin-top:.4em}.glossary dd{margin-left:1.2em}
.rule,.source{color:#5a6570;font-size:.92em}summary{cursor:pointer;color:#3a5a80}.tie{color:#7a5600;font-weight:600}
"""


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG header, so the browser reserves the space before decoding."""
    return struct.unpack(">II", png[16:24])


def render(study: Study, sections: list[str], data_dir: str, answer: Summary | None = None) -> str:
    """The whole page as one string (deterministic: no timestamps): the header with the answer, then the sections'
    HTML."""
    runs = len({r.run for r in study.rows})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ftlab report: {esc(study.root)}</title><style>{CSS}</style></head>
<body><main>
<header id="summary">{_failed_html(answer.failed) if answer is not None else ""}<h1>ftlab report</h1>
<p class="meta">study <code>{esc(study.root)}</code> · {runs} runs · {len(study.rows)} checkpoints
· ftlab {esc(__version__)} · the numbers behind every figure and table: <code>{esc(data_dir)}/</code> (JSON, CSV)</p>
<nav>{"".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS[1:])}</nav>
{_answer_html(answer) if answer is not None else ""}</header>
{"".join(sections)}</main></body></html>
"""


def _failed_html(failed: dict[str, str]) -> str:
    """The banner over everything when a run failed: which, and why."""
    if not failed:
        return ""
    items = "".join(f"<li><code>{esc(run)}</code>: {esc(why)}</li>" for run, why in failed.items())
    return (f'<div class="failed" id="failed"><b>{len(failed)} run{"s" if len(failed) > 1 else ""} failed</b>; '
            f'the report shows what the others measured.<ul>{items}</ul></div>')


def _answer_html(answer: Summary) -> str:
    """The answer first: per setting what to train within each budget, LoRA against full FT, cost, caveats."""
    out = ['<div class="answer" id="answer"><h2>The answer</h2>']
    if not answer.settings:
        out.append("<p>No setting has a checkpoint measured yet.</p>")
    for s in answer.settings:
        out.append(f"<h3>{esc(s.setting)}</h3><p class=\"meta\">learning: {esc(', '.join(s.learning_tasks) or 'none')}"
                   f"; forgetting: {esc(FORGETTING_WORDS[s.forgetting])}</p><ul>")
        out += [f'<li class="dead">{esc(u)}</li>' for u in s.unmeasurable]
        out += [f"<li>No recommendation: {esc(s.no_answer)}</li>"] if s.no_answer else []
        for a in s.answers:
            pick = esc(no_answer(a))
            if a.best:
                ties = "; ".join(p.name for p in a.ties)
                pick = (f"<b>{esc(a.best.name)}</b>: learning {esc(a.best.learning.text())}, forgetting "
                        f"{esc(a.best.forgetting.text())}" + (f' <span class="tie">tied: {esc(ties)}</span>' if ties
                                                              else ""))
            out.append(f"<li>Within {esc(budget_words(a))}: {pick}</li>")
        out += [f"<li>{esc(v.words(s.forgetting))}</li>" for v in s.versus]
        out.append("</ul>")
    if answer.caveats:
        out.append('<p class="meta"><b>Caveats:</b> ' + "; ".join(esc(c) for c in answer.caveats) + ".</p>")
    out.append('<p class="meta">Details: the recommendation (the front and every budget), the claims and the '
               'instruments below; 95% paired intervals throughout.</p></div>')
    return "".join(out)


def claims_html(claims: list[Claim]) -> str:
    shared = [n for n, k in Counter(n for c in claims for n in dict.fromkeys(c.notes)).items() if k > 1]
    rows = []
    for c in claims:
        notes = "".join(f"<li>{f'[{shared.index(n) + 1}]' if n in shared else esc(n)}</li>" for n in c.notes)
        headline = esc(c.headline.text()) if c.headline else esc(c.sentence)  # "not enough data: why"
        rows.append([f'{esc(c.finding)}<div class="source">{esc(c.source)}</div>',
                     f'<span class="status {c.status.replace(" ", "-")}">{esc(c.status)}</span>',
                     f'{c.counts["agree"]} / {c.counts["disagree"]} / {c.counts["inconclusive"]}',
                     headline, esc(num(c.mde)), f"<ul>{notes}</ul>" if notes else "",
                     (f"<details><summary>numbers</summary>{esc(c.sentence)}</details>" if c.headline else "")
                     + f'<details class="rule"><summary>rule</summary>{esc(c.rule)}</details>'])
    shared_html = ('<p class="meta">Notes said of several findings:</p><ol class="meta">'
                   + "".join(f"<li>{esc(n)}</li>" for n in shared) + "</ol>") if shared else ""
    return ('<section id="claims"><h2>Does this study reproduce the published findings?</h2>'
            '<p class="meta">One row per finding. Each comparison gets a paired 95% interval (a bootstrap over the '
            'examples both checkpoints were evaluated on; with 3 or more training seeds per arm, a t interval that '
            'adds the variation between runs; with fewer, the verdict rests on evaluation noise only and says so) '
            'and agrees, disagrees or is inconclusive, Holm-corrected within the finding; non-inferiority and '
            'equivalence are tested against margins fixed in advance. A finding is supported with significant '
            'agreements and no significant disagreement (an equivalence: every comparison agreeing; an ordering: '
            'most links agreeing), contradicted the reverse, mixed with both, inconclusive otherwise. Headline: the '
            'comparison the design fixes in advance, b - a. MDE: the effect detected with 80% power at Holm\'s '
            'level, median over the finding\'s comparisons in the headline\'s setting and instrument. '
            'Forgetting: the base model\'s source score minus the checkpoint\'s, or the rise of its held-out source '
            'loss (higher = more forgotten). Notes said of several findings are numbered below the table.</p>'
            + table(["finding (whose)", "verdict", "agree / disagree / inconclusive", "headline difference [95%]",
                     "detectable (MDE)", "notes", "numbers and rule"], rows, "claims", frozenset({2, 4}),
                    [f"claim-{c.id}" for c in claims])
            + shared_html + "</section>\n")


def _instruments_html(rows: list[Power]) -> str:
    """The instruments section of the page."""
    cells = []
    for p in rows:
        effect = "not measured" if p.full is None else esc(
            p.full.text() + (" (not significant)" if p.full.verdict == "inconclusive" else ""))
        cells.append([esc(INSTRUMENTS[p.instrument]), esc(p.setting or "–"), str(p.comparisons), esc(num(p.mde)),
                      effect, esc(num(p.full.interval.mde if p.full else None)),
                      esc(p.resolution) if p.resolved is not False
                      else f'<span class="tie">{esc(p.resolution)}</span>'])
    return ('<section id="instruments"><h2>Instruments: what this study can detect</h2>'
            '<p class="meta">Minimal detectable effect (MDE): the true difference a paired comparison detects with '
            '80% power at the level Holm\'s correction holds it to in its claim (2.8 standard errors alone, 3.6 '
            'among nine); here the median over the study\'s comparisons on the instrument in the setting. Beside it, '
            'plain full FT (best learning rate, longest duration) against the base model, paired over the same '
            'documents: unless that effect\'s 95% interval clears the MDE the instrument cannot resolve the '
            'forgetting (or learning) full FT causes, and a verdict read on it says little. No spread (standard '
            'error 0): not estimable.</p>'
            + table(["instrument", "setting", "comparisons", "MDE (median)", "plain full FT vs base [95%]",
                     "that comparison's MDE", "resolves full FT's effect?"], cells, "instruments",
                    frozenset({2, 3, 5}))
            + "</section>\n")


def _recommendation_html(advice: Advice, budget: float | None) -> str:
    """The recommendation section of the page."""
    out = ['<section id="recommendation"><h2>What to train: the learning-forgetting front</h2>'
           '<p class="meta">Candidates: each method/rank at its best learning rate, at each duration it was trained '
           'for. Forgetting is read against the base model on the held-out source loss (its rise, nats/token) where '
           'the setting measured it, else on the source score (its drop); higher = more forgotten. The front holds '
           'the configurations no other beats on both learning and forgetting; neighbours on it are compared paired '
           'over the same documents (95%). A configuration is within a forgetting budget when its forgetting\'s 95% '
           'interval lies at or below the budget; ties: learning not distinguishable from the best\'s (paired, 95%).'
           '</p>']
    for setting, why in advice.unmeasurable.items():
        out.append(f"<h3>{esc(setting)}</h3>" + "".join(f'<p class="dead">{esc(w)}.</p>' for w in why))
    if not advice.front and not advice.unmeasurable:
        out.append(f"<p>Not enough data: {esc(advice.missing or 'no configuration has learning and forgetting')}."
                   "</p>")
    if not advice.front:
        out.append("</section>\n")
        return "".join(out)
    for setting, steps in advice.front.items():
        measure = FORGETTING_WORDS[steps[0].point.instrument]
        out.append(f"<h3>{esc(setting)}</h3>")
        rows = []
        for i, s in enumerate(steps):
            if s.distinct is None:
                change, flag = ("–", "") if i == 0 else ("not paired (no shared per-example values)", "")
            else:
                change = f"learning {s.learning_gain.text(True)}, forgetting {s.forgetting_gain.text(True)}"
                flag = "distinguishable" if s.distinct else '<span class="tie">not distinguishable at 95%</span>'
            rows.append([esc(s.point.name), esc(s.point.learning.text()), esc(s.point.forgetting.text()),
                         esc(change), flag])
        out.append(table(["configuration (least forgetting first)", "learning [95%]", f"forgetting: {measure} [95%]",
                          "change from the row above [95%]", "from the row above"], rows, "front"))
        answers = [a for a in advice.answers if a.setting == setting]
        ref = advice.reference.get(setting)
        if ref is None:
            note = f"Budgets on the {measure}; no plain full FT to scale the default budgets by."
        else:
            note = (f"Budgets on the {measure}; plain full FT's at its longest duration ({ref.name}): "
                    f"{ref.forgetting.text()}" + ("." if ref.forgetting.estimate > 0 else
                                                  ": it forgot nothing to take a share of, so no default budgets."))
        if budget is not None:
            note += f" --forgetting-budget {budget:g} is read on the {measure}."
        out.append(f'<p class="meta">{esc(note)}</p>')
        rows = [[esc(a.what), esc(f"{a.budget:.3g}"), esc(a.best.name) if a.best else esc(no_answer(a)),
                 esc(a.best.learning.text()) if a.best else "–", esc(a.best.forgetting.text()) if a.best else "–",
                 esc("; ".join(p.name for p in a.ties)) or "–", f"{len(a.within)} of {a.candidates}"]
                for a in answers]
        if rows:
            out.append(table(["budget", "forgetting allowed", "learns most within it", "learning [95%]",
                              "forgetting [95%]", "tied with it (learning, paired 95%)", "within the budget"],
                             rows, "budgets", frozenset({1, 6})))
    out.append("</section>\n")
    return "".join(out)


def _figure_html(p: Plot, data_dir: str) -> str:
    width, height = _png_size(p.png)
    src = "data:image/png;base64," + base64.b64encode(p.png).decode("ascii")
    small = SMALL_PX * max(1.0, width / CONTENT_PX)  # its legends' height in the PNG's pixels (figures.small)
    return (f'<figure id="fig-{esc(p.id)}"><h3>{esc(p.title)}</h3>'
            f'<img src="{src}" alt="{esc(p.title)}" width="{width}" height="{height}" data-small-px="{small:.1f}">'
            f'<figcaption>{esc(p.caption)} Data: <code>{esc(data_dir)}/{esc(p.id)}.csv</code>.</figcaption>'
            f'</figure>')


STEERING_CLAIMS = ("forgets_less_matched_learning", "interpolation_front", "intruder_repair",
                   "early_stop_tracks_learning", "replay_prevents_forgetting")  # ftlab.report.claims.steering's findings, shown again here


def steering_html(study: Study, claims: list[Claim], plots: list[Plot], data_dir: str) -> str:
    """The steering section: what moved a model along the learning-forgetting plane without more training
    (interpolation toward the base, intruder dimensions scaled) and during it (the source loss as it trained, early
    stops), the findings on it, and every steered checkpoint's numbers."""
    out = ['<section id="steering"><h2>Steering forgetting</h2><p class="meta">Checkpoints moved toward the base '
           '(analyses.interpolation), LoRA checkpoints with their intruder dimensions scaled (analyses.intruders), '
           'and the source loss measured as each run trained (data.source_eval; train.stop_at_forgetting stops a '
           'run at a budget). Findings (also in the claims above):</p><ul>']
    out += [f'<li><a href="#claim-{esc(c.id)}">{esc(c.finding)}</a>: <b>{esc(c.status)}</b>. {esc(c.sentence)}</li>'
            for c in claims if c.id in STEERING_CLAIMS]
    out.append("</ul>")
    out += [_figure_html(p, data_dir) for p in plots if p.png is not None]
    out += [f'<p class="meta" id="skipped-{esc(p.id)}"><b>{esc(p.title)}</b>: {esc(p.skipped)}</p>'
            for p in plots if p.png is None]
    if study.steered:
        rows = [[esc(r.run), esc(r.steered_from), esc(r.steer), esc(num(r.factor)), esc(num(r.learning)),
                 esc(num(r.source_loss)), esc(num(r.forgetting))] for r in study.steered]
        out.append(table(["run", "checkpoint", "steer", "factor", "learning", "source loss", "forgetting"], rows))
    out.append("</section>\n")
    return "".join(out)


def _figures_html(plots: list[Plot], data_dir: str) -> str:
    out = ['<section id="figures"><h2>Figures</h2>']
    out += [_figure_html(p, data_dir) for p in plots if p.png is not None]
    skipped = [p for p in plots if p.png is None]
    if skipped:
        out.append('<h3>Not drawn</h3><ul id="skipped">' + "".join(
            f'<li id="skipped-{esc(p.id)}"><b>{esc(p.title)}</b>: {esc(p.skipped)}</li>' for p in skipped) + "</ul>")
    out.append("</section>\n")
    return "".join(out)


def _cost_html(m: Measures, plot: Plot, data_dir: str, qlora: str = "") -> str:
    head = '<section id="cost"><h2>Cost beside quality</h2>'
    if plot.png is None:
        return f'{head}<p id="skipped-cost">{esc(plot.skipped)}</p>{qlora}</section>\n'
    rows = []
    for p, c in cost_points(m):
        rows.append([esc(p.name), esc(p.learning.text() if p.learning else "–"),
                     esc(p.forgetting.text() if p.forgetting else "–"), esc(FORGETTING_WORDS[p.instrument]),
                     esc(num(c["device_hours"])), esc(num(c["tokens_per_s"])), esc(num(c["peak_memory_gb"])),
                     esc(_count(c["trainable_params"])), esc(_count(c["total_params"])), esc(c["device"] or "–")])
    return (head + '<p class="meta">Each configuration at its best learning rate and longest duration: what it '
            'learned and forgot (95% intervals) against what training it cost. Device-hours: training wall time '
            '(summed over resumes) in hours; peak memory: the training device\'s peak (CUDA: most allocated; CPU: '
            'the process\'s peak resident size, which in a study trained in one process includes the runs before '
            'it).</p>' + _figure_html(plot, data_dir)
            + table(["configuration", "learning [95%]", "forgetting [95%]", "forgetting measure", "device-hours",
                     "tokens/s", "peak memory, GB", "trainable params", "total params", "device"], rows, "cost",
                    frozenset({4, 5, 6, 7, 8})) + qlora + "</section>\n")


# ----------------------------------------------------------------------------- QLoRA against LoRA


def qlora_records(study: Study) -> list[dict]:
    """Each QLoRA arm against the LoRA arm that differs from it only by the 4-bit base (same setting, rank, options,
    optimizer, LR and duration), where the study trained both: learning and forgetting as QLoRA - LoRA with their
    paired 95% intervals over the documents both measured, and the training cost of each (means over seeds)."""
    found = dict(sorted_arms([r for r in analysed(study) if r.method in ("lora", "qlora")]))
    out = []
    for (setting, group, optimizer, lr, duration), qlora in found.items():
        twin = found.get((setting, group.replace("QLoRA", "LoRA", 1), optimizer, lr, duration))
        if qlora.rows[0].method != "qlora" or twin is None:
            continue
        forgetting = "source_loss" if all(r.source_loss is not None for r in qlora.rows + twin.rows) else "source"
        record = {"setting": setting, "qlora": qlora.label, "lora": twin.label, "duration": qlora.when}
        for name, instrument in (("learning", "learning"), ("forgetting", forgetting)):
            c: Comparison | None = compare(study, twin, qlora, instrument, expected=-1)
            record[f"{name}_instrument"] = instrument
            for key in ("estimate", "low", "high"):
                record[f"{name}_{key}"] = getattr(c.interval, key) if c is not None else None
        for arm, side in ((qlora, "qlora"), (twin, "lora")):
            spent = cost_of(arm)
            record.update({f"{side}_{key}": spent[key] for key in ("wall_s", "peak_memory_gb")})
        out.append(record)
    return out


def _qlora_html(records: list[dict]) -> str:
    """The QLoRA-against-LoRA table of the cost section ("" when the study trained no QLoRA beside its LoRA)."""
    if not records:
        return ""

    def diff(r: dict, name: str) -> str:
        if r[f"{name}_estimate"] is None:
            return "–"
        low, high = r[f"{name}_low"], r[f"{name}_high"]
        verdict = "differs" if low > 0 or high < 0 else "no difference resolved"
        return f"{r[f'{name}_estimate']:+.3g} [{low:+.3g}, {high:+.3g}] ({verdict})"

    def ratio(r: dict, key: str) -> str:
        q, lo = r[f"qlora_{key}"], r[f"lora_{key}"]
        return "–" if q is None or not lo else f"{q / lo:.2f}x"

    rows = [[esc(r["setting"]), esc(f"{r['qlora']} vs {r['lora']}"), esc(r["duration"]), esc(diff(r, "learning")),
             esc(diff(r, "forgetting") + f" ({INSTRUMENTS[r['forgetting_instrument']].split(':')[0]})"),
             esc(ratio(r, "wall_s")), esc(ratio(r, "peak_memory_gb"))] for r in records]
    return ('<h3 id="qlora">QLoRA against LoRA</h3><p class="meta">QLoRA trains the same adapter on a base held in '
            '4-bit NF4. Each difference is QLoRA - LoRA with its paired 95% interval over the documents both '
            'measured (forgetting: a source-loss rise is positive, a source-score drop negative); time and peak '
            'memory are QLoRA / LoRA (on the CPU the 4-bit layers dequantize in every pass: slower, and the memory '
            'saving shows only where weights dominate). Both are evaluated on their own base: QLoRA on the 4-bit '
            'one it trained on.</p>'
            + table(["setting", "arms", "duration", "learning, QLoRA - LoRA", "forgetting, QLoRA - LoRA",
                     "time", "peak memory"], rows, "qlora", frozenset({3, 4, 5, 6})))


def _count(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


ROW_TABLE = (("lr", "lr"), ("learning", "learning"), ("source", "source"), ("forgetting", "forgetting"),
             ("source_loss", "source loss"), ("k90_mean", "k90 mean"), ("k90_frac_mean", "k90 frac"),
             ("rel_change_mean", "‖ΔW‖/ ‖W‖"), ("intruders_total", "intru- ders"), ("unique_mean", "unique"),
             ("kl", "KL"), ("device_hours", "device-h"), ("tokens_per_s", "tok/s"), ("peak_memory_gb", "peak GB"),
             ("trainable_params", "trainable"))  # (record key, header); the base's numbers: a line per setting


def _rows_html(study: Study) -> str:
    body = []
    columns = ROW_TABLE[:2] + ((("heldout_loss", "held-out loss"),) if any(
        "heldout_loss/loss" in r.scores for r in study.rows) else ()) + ROW_TABLE[2:]
    for r in study.rows:
        rec = row_record(r)
        ckpt = r.checkpoint + (f" (= {r.duplicate_of})" if r.duplicate_of else "")
        body.append([esc(r.run), esc(ckpt), esc(r.group), esc(duration_text(r.duration, r.duration_unit)),
                     *(esc(num(rec[key])) for key, _ in columns)])
    bases = "; ".join(f"{b.setting}: learning {num(b.learning)}, source {num(b.source)}, source loss "
                      f"{num(b.source_loss)}" for b in study.bases if b.scores)
    note = ("learning = mean headline metric of the learning tasks; held-out loss: the loss on the responses (CPT: "
            "the documents) held out of the setting's own data, nats/token (heldout_loss); source = the source score, "
            "the mean headline metric of the source benchmarks; forgetting = the base's source score − source "
            "(higher = more forgotten); source loss: held-out source-domain loss, nats/token; device-h: the run's "
            "training wall time in hours, tok/s its mean throughput, peak GB its device's peak memory, trainable its trainable parameters "
            "(the run's, at every checkpoint). A checkpoint marked (= x) is the same model as x and is left out of "
            "figures and claims." + (f" The base model: {bases}." if bases else ""))
    return (f'<section id="runs"><h2>Runs and checkpoints</h2><p class="meta">{esc(note)}</p>'
            + table(["run", "checkpoint", "method", "duration", *(h for _, h in columns)], body, "rows",
                    frozenset(range(4, 4 + len(columns)))) + "</section>\n")  # durations may wrap


def _glossary_html() -> str:
    items = "".join(f"<dt>{esc(term)}</dt><dd>{esc(words)}</dd>" for term, words in GLOSSARY)
    return f'<section id="glossary"><h2>Glossary</h2><dl class="glossary">{items}</dl></section>\n'


def _missing_html(study: Study) -> str:
    if not study.missing:
        return '<section id="missing"><h2>Missing</h2><p>Nothing missing.</p></section>\n'
    items = "".join(f"<li>{esc(m)}</li>" for m in study.missing)
    return (f'<section id="missing"><h2>Missing</h2><p class="meta">{len(study.missing)} items; the report shows '
            f'what the study has.</p><ul>{items}</ul></section>\n')
