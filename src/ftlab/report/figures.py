"""The report's figures, one function per figure, in the order the page shows them: the cost view (its own section),
then the figures section (FIGURES). Drawn with matplotlib's Agg renderer (no display needed).

    m = Measures(study)           # ftlab.report.measures: each arm's numbers and intervals, computed once
    plot = tradeoff(m)            # -> Plot(id, title, caption, png=b"...", table=[{...}, ...]) or Plot(skipped=...)
    plots = draw_all(m)           # the figures section, in order

Each function returns a Plot: the PNG (bytes, deterministic for the same input: no timestamp or software
metadata) and `table`, every number it drew, one dict per point (with its interval's bounds where it has one), for
the report's CSV export. A figure whose data is absent is not drawn: `skipped` says "not enough data: <why>".
Conventions follow the paper: x = source score (mean source-benchmark accuracy: the paper's forgetting metric),
y = learning; colour = method and rank (full FT red, LoRA ranks a sequential blue palette, light = small rank;
regularized full FT oranges for weight decay, greens for attention dropout); marker size = training duration; one
line per method/rank joining its durations (its best learning rate); error bars are 95% intervals.

The cost view: each configuration (a group at its best learning rate) at its longest duration, what it learned and
forgot against what it cost to train. A run's cost is what training wrote in its run.json (wall time summed over
resumes, the device's peak memory, trainable and total parameters) and the mean tokens/s of its metrics log
(ftlab.results.index.run_cost); with seeds, the mean over them. Device-hours are the training wall time in hours
on the run's device(s) as recorded, so a multi-GPU run counts its wall time once.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftlab.analysis.statistics import spearman
from ftlab.errors import FtlabError
from ftlab.report.advice import pareto
from ftlab.report.claims.paper import kl_points
from ftlab.report.measures import Measures, Value, cost_points, empty_record
from ftlab.report.select import (Arm, analysed, arms, best_arms, best_lr_rows, best_lrs, duration_text, group_order,
                                 lr_sweeps, plain_full)
from ftlab.results.study import Row, Study
from ftlab.rundir import SPECTRUM, RunLayout

# ----------------------------------------------------------------------------- helpers

FULL = "#c0392b"  # plain full FT
BASE = "#f1c40f"  # the base model's star
MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Plot:
    """One figure of the report: its PNG and the numbers drawn, or why it was skipped."""

    id: str  # stable key: file names and HTML ids
    title: str
    caption: str = ""
    png: bytes | None = None
    table: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None  # "not enough data: ..." when not drawn


def figure(width: float, height: float):
    """A matplotlib Figure outside pyplot (no global state, no display); fails with an install hint."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FtlabError("the report's figures need matplotlib (an ftlab dependency): pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def grid(n: int, width: float, height: float) -> tuple[Any, list]:
    """A figure of n panels, at most two per row (the paper's 2x2 grid of settings stays readable)."""
    cols = min(n, 2)
    rows = -(-n // cols)
    fig = figure(width * cols + 1.5, height * rows)
    axes = list(np.atleast_1d(fig.subplots(rows, cols)).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


CONTENT_PX = 1118  # the widest a figure is shown on the page (its <main> at 1,180 px less padding and border)
SMALL_PX = 11  # legends and small labels as shown on the page, in CSS px (readable: 10 or more)
DPI = 100


def small(fig) -> float:
    """The font size (points) that shows SMALL_PX tall on the page: a figure wider than the page's content is shown
    scaled down, so its small text is drawn larger in proportion."""
    shown = min(1.0, CONTENT_PX / (fig.get_figwidth() * DPI))
    return SMALL_PX / shown * 72 / DPI


def legend(axes: list, **kw) -> None:
    """A legend on the first of `axes` that has labelled artists (none when none has: a panel left empty)."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**kw)
            return


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})  # no version string: same bytes each run
    return buf.getvalue()


def colours(rows: list[Row]) -> dict[str, Any]:
    """group -> colour: plain full FT red, regularized full FT oranges (weight decay) and greens (dropout),
    LoRA groups blues from light (smallest rank) to dark, QLoRA groups purples."""
    from matplotlib import colormaps

    plain = {r.group for r in plain_full(rows)}
    out: dict[str, Any] = {g: FULL for g in plain}
    full_other = sorted({r.group for r in rows if r.method == "full"} - plain)
    wd = [g for g in full_other if "attn-drop" not in g]
    drop = [g for g in full_other if "attn-drop" in g]
    for names, cmap in ((wd, "Oranges"), (drop, "Greens")):
        out.update({g: colormaps[cmap](0.45 + 0.45 * i / max(len(names) - 1, 1)) for i, g in enumerate(names)})
    for method, cmap in (("lora", "Blues"), ("qlora", "Purples")):
        groups = sorted({(r.rank or 0, r.group) for r in rows if r.method == method})
        out.update({g: colormaps[cmap](0.35 + 0.6 * i / max(len(groups) - 1, 1)) for i, (_, g) in enumerate(groups)})
    return out


def settings_of(rows: list[Row]) -> list[str]:
    return sorted({r.setting for r in rows})


def by_group(rows: list[Row]) -> dict[str, list[Row]]:
    """group -> its rows sorted by duration, groups in group_order."""
    out: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: (*group_order(r), r.duration or 0)):
        out.setdefault(r.group, []).append(r)
    return out


# ============================================================ the cost view (a section of its own)

SHORT = {"source_loss": "source-loss rise", "source": "source-score drop"}  # forgetting's y label
COST_AXES = (("device_hours", "device-hours", "device-hours (training wall time)"),
             ("peak_memory_gb", "peak memory", "peak memory, GB"))  # (cost key, short name, axis label)


def cost(m: Measures) -> Plot:
    plot = Plot("cost", "Learning and forgetting against cost",
                "Each dot a configuration (its best learning rate) at its longest duration: learning (top) and "
                "forgetting (bottom: the source-loss rise over the base where measured, else the source-score drop; "
                "higher = more forgotten) against the training's device-hours (left) and peak memory (right); error "
                "bars: 95% intervals.")
    found = [(p, c) for p, c in cost_points(m) if c["wall_s"] is not None or c["peak_memory_gb"] is not None]
    if not found:
        plot.skipped = (f"not enough data: no run has its cost recorded ({RunLayout('.').cost.name}, written by "
                        "training)")
        return plot
    settings = sorted({p.arm.setting for p, _ in found})
    palette = colours([r for p, _ in found for r in p.arm.rows])
    fig = figure(10.5, 6.4 * len(settings))
    axes = np.atleast_2d(fig.subplots(2 * len(settings), 2))
    for i, setting in enumerate(settings):
        here = [(p, c) for p, c in found if p.arm.setting == setting]
        measure = SHORT[here[0][0].instrument]
        for row, (what, label) in enumerate((("learning", "learning"), ("forgetting", f"forgetting ({measure})"))):
            for ax, (key, short, xlabel) in zip(axes[2 * i + row], COST_AXES):
                for p, c in here:
                    v = getattr(p, what)
                    if v is None or c[key] is None:
                        continue
                    below, above = v.bar()
                    ax.errorbar([c[key]], [v.estimate], yerr=[[below], [above]], fmt="o", ms=7,
                                color=palette[p.arm.label], mec="black", mew=0.5, capsize=2, elinewidth=0.8,
                                label=p.arm.label)
                ax.set(title=f"{setting}: {what} vs {short}", xlabel=xlabel, ylabel=label)
                ax.grid(alpha=0.3)
        legend([*axes[2 * i], *axes[2 * i + 1]], fontsize=small(fig), loc="best")
    for p, c in found:
        plot.table.append({**p.record(), **c})
    plot.png = png(fig)
    return plot


# ============================================================ 1-2. learning vs forgetting (the paper's Fig. 4)

@dataclass
class _Dot:
    arm: Arm
    x: Value
    y: Value  # learning


def _candidates(study: Study) -> tuple[list[Arm], set[tuple]]:
    """Every arm but regularized full FT's, in a fixed order, and the keys (setting, group, lr) of each group's
    best learning rate."""
    points = analysed(study)
    regularized = {id(r) for r in points if r.method == "full"} - {id(r) for r in plain_full(points)}
    rows = [r for r in points if id(r) not in regularized]
    best = {(s, g, lr) for (s, g), lr in best_lrs([r for r in rows if r.learning is not None]).items()}
    found = sorted(arms(rows).values(), key=lambda a: (*group_order(a.rows[0]), a.rows[0].lr or 0.0,
                                                       a.duration or 0.0))
    return found, best


def tradeoff(m: Measures) -> Plot:
    plot = Plot("tradeoff", "Learning vs forgetting (source benchmarks)",
                "Each dot a configuration at one duration: x = source score (mean source-task accuracy; right = less "
                "forgotten), y = learning; error bars: 95% bootstrap intervals over the tasks' examples (and seeds). "
                "Colour = method and rank, size = training duration; lines join the durations of each group's best "
                "learning rate (other learning rates faint, without bars). Dashed: the Pareto frontier of the best "
                "learning rates' points. Star: base.")
    found, best = _candidates(m.study)
    dots = [_Dot(a, x, y) for a in found
            if (x := m.value(a, "source")) is not None and (y := m.value(a, "learning")) is not None]
    if not dots:
        plot.skipped = "not enough data: no checkpoint has both a learning and a source score"
        return plot
    base_x = {b.setting: b.source for b in m.study.bases}
    _draw_tradeoff(plot, m.study, dots, best, "source", +1, "source score (higher = less forgotten)", base_x)
    return plot


def tradeoff_loss(m: Measures) -> Plot:
    plot = Plot("tradeoff_loss", "Learning vs forgetting (held-out source loss)",
                "As the figure before, with forgetting read on the second instrument: x = the rise of the held-out "
                "source-domain loss over the base model's (nats/token, paired over the same documents; the axis is "
                "reversed so that right = less forgotten, as before), y = learning; error bars: 95% paired "
                "bootstrap intervals. Star: base (no rise).")
    found, best = _candidates(m.study)
    measured = {s for s in {a.setting for a in found} if m.instrument(s) == "source_loss"}
    dots = [_Dot(a, x, y) for a in found if a.setting in measured
            if (x := m.forgetting(a, "source_loss")) is not None and (y := m.value(a, "learning")) is not None]
    if not dots:
        plot.skipped = ("not enough data: no checkpoint has both learning and the held-out source loss with its "
                        "base model's (the source_loss task)")
        return plot
    _draw_tradeoff(plot, m.study, dots, best, "source_loss_rise", -1,
          "source-loss rise over the base, nats/token (reversed: right = less forgotten)",
          {s: 0.0 for s in measured})
    return plot


def _draw_tradeoff(plot: Plot, study: Study, dots: list[_Dot], best: set[tuple], x_name: str, better: int, xlabel: str,
          base_x: dict[str, float | None]) -> None:
    """One panel per setting; better = +1 when a larger x is better (source score), -1 when smaller (loss rise)."""
    palette = colours([r for d in dots for r in d.arm.rows])
    settings = sorted({d.arm.setting for d in dots})
    fig, axes = grid(len(settings), 6.5, 4.6)
    for ax, setting in zip(axes, settings):
        here = [d for d in dots if d.arm.setting == setting]
        durations = sorted({d.arm.duration for d in here if d.arm.duration is not None})
        size = {dur: 30 + 170 * i / max(len(durations) - 1, 1) for i, dur in enumerate(durations)}
        front = set(pareto([(better * d.x.estimate, d.y.estimate) for d in here  # of the best LRs' points
                            if (setting, d.arm.label, d.arm.rows[0].lr) in best]))
        for group in dict.fromkeys(d.arm.label for d in here):
            mine = [d for d in here if d.arm.label == group]
            chosen = [d for d in mine if (setting, group, d.arm.rows[0].lr) in best]
            faint = [d for d in mine if (setting, group, d.arm.rows[0].lr) not in best]
            xs, ys = [d.x.estimate for d in chosen], [d.y.estimate for d in chosen]
            ax.plot(xs, ys, "-", color=palette[group], lw=1.2)
            if chosen:
                ax.errorbar(xs, ys, xerr=_bars([d.x for d in chosen]), yerr=_bars([d.y for d in chosen]), fmt="none",
                            ecolor=palette[group], elinewidth=0.8, capsize=2, alpha=0.8, zorder=2)
            ax.scatter(xs, ys, s=[size.get(d.arm.duration, 40) for d in chosen], color=palette[group],
                       edgecolor="black", linewidth=0.5, label=group, zorder=3)
            ax.scatter([d.x.estimate for d in faint], [d.y.estimate for d in faint],
                       s=[size.get(d.arm.duration, 40) for d in faint], color=palette[group], alpha=0.3, zorder=2)
        line = sorted((better * x, y) for x, y in front)
        ax.plot([x for x, _ in line], [y for _, y in line], "--", color="black", lw=1, label="Pareto frontier")
        base = study.base_of(setting)
        if base is not None and base.learning is not None and base_x.get(setting) is not None:
            ax.scatter([base_x[setting]], [base.learning], marker="*", s=260, color=BASE, edgecolor="black",
                       label="base", zorder=4)
            plot.table.append({"setting": setting, "group": "base", "lr": None, "duration": 0, "seeds": 1,
                               "runs": base.run, "checkpoint": "base", "learning": base.learning,
                               x_name: base_x[setting], "best_lr": True, "pareto": False})
        for d in here:
            first = d.arm.rows[0]
            chosen = (setting, d.arm.label, first.lr) in best
            plot.table.append({"setting": setting, "group": d.arm.label, "lr": first.lr, "duration": d.arm.duration,
                               "seeds": len(d.arm.rows), "runs": " ".join(r.run for r in d.arm.rows),
                               "checkpoint": first.checkpoint, **d.y.record("learning"), **d.x.record(x_name),
                               "best_lr": chosen, "pareto": chosen and (better * d.x.estimate, d.y.estimate) in front})
        unit = here[0].arm.rows[0].duration_unit
        ax.set(title=f"{setting} (size: {', '.join(duration_text(dur, unit) for dur in durations)})", xlabel=xlabel,
               ylabel=f"learning ({', '.join(here[0].arm.rows[0].learning_tasks)})")
        if better < 0:
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=small(fig), loc="best")
    plot.png = png(fig)


def _bars(values: list[Value]) -> list[list[float]]:
    """matplotlib's (2, n) error extents: below, above."""
    below, above = zip(*(v.bar() for v in values))
    return [list(below), list(above)]


# ============================================================ 3-4. against duration; regularization (Figs. 2-3)

PANELS = {  # column of the table -> the panel's (title, y label)
    "learning": ("learning", "learning"),
    "source": ("source score", "source score (higher = less forgotten)"),
    "source_loss_rise": ("source-loss rise", "source-loss rise over the base, nats/token"),
}
DODGE = 0.02  # log2 units between neighbouring groups' points at one duration (the CSV keeps the true duration)


def duration(m: Measures) -> Plot:
    plot = Plot("duration", "Learning and forgetting against training duration",
                "Plain full FT and each LoRA group at its best learning rate: learning, source score and (where "
                "measured) the held-out source loss's rise over the base, against training duration (log scale); "
                "error bars: 95% bootstrap intervals over the examples (and seeds).")
    plain = {id(r) for r in plain_full(analysed(m.study))}
    found = [a for a in best_arms(m.study) if a.rows[0].method == "lora" or id(a.rows[0]) in plain]
    groups = {(a.setting, a.label) for a in found}
    if not any(sum((a.setting, a.label) == g for a in found) >= 2 for g in groups):
        plot.skipped = "not enough data: no configuration was evaluated at two or more durations"
        return plot
    _draw_durations(plot, m, found, set())
    return plot


def regularization(m: Measures) -> Plot:
    plot = Plot("regularization", "Regularization: LoRA vs weight decay and attention dropout",
                "Learning, source score and (where measured) the source-loss rise over the base against training "
                "duration for plain full FT, full FT with weight decay or attention dropout (dashed), and LoRA (best "
                "learning rate of each); error bars: 95% bootstrap intervals.")
    points = analysed(m.study)
    plain = {id(r) for r in plain_full(points)}
    regularized = {(r.setting, r.group) for r in points if r.method == "full" and id(r) not in plain}
    settings = {s for s, _ in regularized}
    if not settings:
        plot.skipped = "not enough data: no full-FT run with weight decay or attention dropout"
        return plot
    _draw_durations(plot, m, [a for a in best_arms(m.study) if a.setting in settings], regularized)
    return plot


def _draw_durations(plot: Plot, m: Measures, found: list[Arm], dashed: set[tuple[str, str]]) -> None:
    """A row of panels per setting, a line per group across its durations."""
    settings = sorted({a.setting for a in found})
    panels = {s: [p for p in PANELS if p != "source_loss_rise" or m.instrument(s) == "source_loss"]
              for s in settings}
    cols = max(len(p) for p in panels.values())
    palette = colours([r for a in found for r in a.rows])
    fig = figure(4.3 * cols + 0.8, 3.7 * len(settings))
    axes = np.atleast_2d(fig.subplots(len(settings), cols))
    for row_axes, setting in zip(axes, settings):
        here = sorted((a for a in found if a.setting == setting),
                      key=lambda a: (*group_order(a.rows[0]), a.duration or 0.0))
        for arm in here:
            plot.table.append({"setting": setting, "group": arm.label, "lr": arm.rows[0].lr,
                               "duration": arm.duration, "seeds": len(arm.rows),
                               **{k: v for p in PANELS for k, v in _panel_record(m, arm, p).items()}})
        groups = list(dict.fromkeys(a.label for a in here))
        for ax, panel in zip(row_axes, panels[setting]):
            for k, group in enumerate(groups):
                xy = [(a.duration, v) for a in here if a.label == group and a.duration is not None
                      and (v := _panel_value(m, a, panel)) is not None]
                if not xy:
                    continue
                below, above = zip(*(v.bar() for _, v in xy))
                dodge = 2 ** (DODGE * (k - (len(groups) - 1) / 2))  # groups side by side, so bars don't hide
                ax.errorbar([x * dodge for x, _ in xy], [v.estimate for _, v in xy], yerr=[below, above],
                            fmt=("--" if (setting, group) in dashed else "-") + "o", color=palette[group], ms=4,
                            capsize=2, elinewidth=0.8, label=group)
            durations = sorted({a.duration for a in here if a.duration is not None})
            title, ylabel = PANELS[panel]
            ax.set(title=f"{setting}: {title}", xlabel=here[0].rows[0].duration_unit, ylabel=ylabel)
            ax.set_xscale("log", base=2)
            unit = here[0].rows[0].duration_unit
            ax.set_xticks(durations, [duration_text(d, unit).split(" ")[0] for d in durations])  # the number alone
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        legend(list(row_axes), fontsize=small(fig), loc="best")
        for ax in row_axes[len(panels[setting]):]:
            ax.set_visible(False)
    plot.png = png(fig)


def _panel_value(m: Measures, arm: Arm, panel: str) -> Value | None:
    return m.forgetting(arm, "source_loss") if panel == "source_loss_rise" else m.value(arm, panel)


def _panel_record(m: Measures, arm: Arm, panel: str) -> dict:
    measured = panel != "source_loss_rise" or m.instrument(arm.setting) == "source_loss"
    v = _panel_value(m, arm, panel) if measured else None
    return v.record(panel) if v is not None else empty_record(panel)


# ============================================================ 5. the learning-rate sweep

def lr_sweep(m: Measures) -> Plot:
    plot = Plot("lr_sweep", "Learning rate sweep",
                "Learning against learning rate per method/rank, at the longest duration every learning rate of the "
                "group reached (mean over seeds); the ring marks the best learning rate.")
    sweeps = lr_sweeps(m.study.points())  # a study's own lr_sweep: its runs alone, as the study picked its LR
    if not sweeps:
        plot.skipped = "not enough data: no method/rank was trained at two or more learning rates"
        return plot
    palette = colours([r for r in m.study.points() if r.learning is not None and r.lr is not None])
    settings = sorted({s for s, _ in sweeps})
    fig, axes = grid(len(settings), 6.5, 4.2)
    for ax, setting in zip(axes, settings):
        for (s, group), sweep in sorted(sweeps.items(), key=lambda kv: group_order(kv[1].first)):
            if s != setting:
                continue
            at = sweep.duration
            xy = [(lr, sum(r.learning for r in rows) / len(rows)) for lr, rows in zip(sweep.lrs, sweep.rows)]
            when = duration_text(at, sweep.first.duration_unit)
            ax.plot([x for x, _ in xy], [y for _, y in xy], "o-", color=palette[group], label=f"{group} (at {when})")
            ax.scatter([sweep.best], [dict(xy)[sweep.best]], s=180, facecolor="none", edgecolor="black", zorder=3)
            plot.table += [{"setting": s, "group": group, "lr": x, "duration": at, "learning": y,
                            "best": x == sweep.best} for x, y in xy]
        ax.set(title=setting, xlabel="learning rate", ylabel="learning", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=small(fig), loc="best")
    plot.png = png(fig)
    return plot


# ============================================================ 6-7. the spectrum of ΔW (Fig. 6, Fig. S7)

def _spectrum_run(study: Study, need_values: bool = False) -> list[Row]:
    """The checkpoints of the run whose ΔW spectra are shown: full FT preferred (plain, best LR), then the run
    with the most checkpoints that have per-matrix spectra."""
    def ok(r: Row) -> bool:
        return bool(r.spectrum and r.spectrum.matrices) and (
            not need_values or any(m.singular_values for m in r.spectrum.matrices))

    rows = [r for r in analysed(study) if ok(r)]
    if not rows:
        return []
    plain, best = {id(r) for r in plain_full(rows)}, {id(r) for r in best_lr_rows(analysed(study))}
    runs = sorted({r.run for r in rows})
    run = max(runs, key=lambda n: (any(r.method == "full" for r in rows if r.run == n),
                                   any(id(r) in plain for r in rows if r.run == n),
                                   any(id(r) in best for r in rows if r.run == n),
                                   sum(r.run == n for r in rows)))  # ties: the first run name
    return sorted((r for r in rows if r.run == run), key=lambda r: (r.duration or 0, r.checkpoint))


def k90_layers(m: Measures) -> Plot:
    plot = Plot("k90_layers", "Rank of the weight change per layer (k90 of ΔW)",
                "k90 = the rank explaining 90% of ΔW's squared singular values, per layer, one panel per module, one "
                "line per checkpoint (darker = longer training); dashed: a Gaussian matrix of the same shape.")
    rows = _spectrum_run(m.study)
    if not rows:
        plot.skipped = f"not enough data: no checkpoint has a {SPECTRUM} with per-matrix values (`ftlab spectrum`)"
        return plot
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    modules = sorted({m.module for r in rows for m in r.spectrum.matrices},
                     key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER), m))
    cols = min(4, len(modules))
    nrows = -(-len(modules) // cols)
    fig = figure(3.2 * cols + 0.6, 2.8 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    fig.suptitle(f"{rows[0].run} ({rows[0].group})")
    for ax, module in zip(axes, modules):
        for i, r in enumerate(rows):
            ms = sorted((m for m in r.spectrum.matrices
                         if m.module == module and m.layer is not None and m.k90 is not None), key=lambda m: m.layer)
            colour = colormaps["viridis"](0.9 * (1 - i / max(len(rows) - 1, 1)))
            ax.plot([m.layer for m in ms], [m.k90 for m in ms], "o-", ms=3, color=colour,
                    label=f"{r.checkpoint}")
            plot.table += [{"run": r.run, "checkpoint": r.checkpoint, "duration": r.duration, "module": module,
                            "layer": m.layer, "k90": m.k90, "k90_frac": m.k90_frac, "gaussian_k90": m.gaussian_k90}
                           for m in ms]
        gauss = sorted((m.layer, m.gaussian_k90) for m in rows[-1].spectrum.matrices
                       if m.module == module and m.layer is not None and m.gaussian_k90 is not None)
        if gauss:
            ax.plot([x for x, _ in gauss], [y for _, y in gauss], "--", color="grey", label="Gaussian")
        ax.set(title=module, xlabel="layer", ylabel="k90")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=small(fig), loc="best")
    for ax in axes[len(modules):]:
        ax.set_visible(False)
    plot.png = png(fig)
    return plot


# ----------------------------------------------------------------------------- one matrix's spectrum (Fig. S7)


def singular_values(m: Measures) -> Plot:
    plot = Plot("singular_values", "Singular values of one matrix: W_base, W_ft and ΔW",
                "Left: singular values (log scale). Right: cumulative explained variance (sum of σ² up to k over "
                "the total); the dotted line is 90%, where k90 is read.")
    rows = _spectrum_run(m.study, need_values=True)
    if not rows:
        plot.skipped = f"not enough data: no {SPECTRUM} carries singular values (`ftlab spectrum` option)"
        return plot
    r = rows[-1]
    candidates = [m for m in r.spectrum.matrices if m.singular_values]
    layers = sorted({m.layer for m in candidates if m.layer is not None}) or [0]
    mid = layers[len(layers) // 2]
    m = min(candidates, key=lambda m: (abs((m.layer if m.layer is not None else mid) - mid),
                                       MODULE_ORDER.index(m.module) if m.module in MODULE_ORDER else 99, m.name))
    fig = figure(10, 3.8)
    ax_s, ax_c = fig.subplots(1, 2)
    series = {k: np.asarray(v, dtype=float) for k, v in m.singular_values.items() if v}
    names = {"base": "W_base", "finetuned": "W_ft", "delta": "ΔW"}
    for key in ("base", "finetuned", "delta"):
        if key not in series:
            continue
        s = series[key]
        cev = np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), 1e-30)
        k = np.arange(1, len(s) + 1)
        ax_s.plot(k, np.maximum(s, 1e-30), label=names[key])
        ax_c.plot(k, cev, label=f"{names[key]} (k90 {int(np.searchsorted(cev, 0.9 - 1e-12) + 1)})")
        plot.table += [{"matrix": m.name, "checkpoint": r.checkpoint, "which": key, "k": int(i), "sigma": float(v),
                        "explained": float(c)} for i, v, c in zip(k, s, cev)]
    ax_c.axhline(0.9, ls=":", color="grey")
    ax_s.set(title=f"{m.name} ({r.checkpoint})", xlabel="index k", ylabel="singular value", yscale="log")
    ax_c.set(title="cumulative explained variance", xlabel="index k", ylabel="share of Σσ²", ylim=(0, 1.02))
    for ax in (ax_s, ax_c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=small(fig))
    fig.suptitle(f"{r.run} ({r.group})")
    plot.png = png(fig)
    return plot


# ============================================================ 8-9. KL as a forgetting predictor; diversity

def kl_forgetting(m: Measures) -> Plot:
    plot = Plot("kl_forgetting", "KL(base || finetuned) vs forgetting",
                "Each dot a checkpoint: x = KL divergence of the finetuned model from the base on target prompts "
                "(nats/token), y = forgetting as the KL finding reads it (claims.paper.kl_points): the held-out "
                "source-loss rise over the base where enough checkpoints have it, else the source-score drop. "
                "ρ: Spearman rank correlation over the setting's checkpoints (the finding's own is within methods).")
    settings = sorted({r.setting for r in analysed(m.study) if r.kl is not None})
    found = [(s, measure, [(p[4], p[1]) for p in points]) for s in settings
             for measure, points in [kl_points(m.study, s)] if points]
    if not found:
        plot.skipped = "not enough data: no checkpoint has both KL and forgetting (the base must be evaluated)"
        return plot
    palette = colours([r for _, _, points in found for r, _ in points])
    fig, axes = grid(len(found), 6.5, 4.4)
    for ax, (setting, measure, points) in zip(axes, found):
        forgetting = {id(r): f for r, f in points}
        for group, grows in by_group([r for r, _ in points]).items():
            ax.scatter([r.kl for r in grows], [forgetting[id(r)] for r in grows], color=palette[group], label=group,
                       edgecolor="black", linewidth=0.5)
        kl, forgot = [r.kl for r, _ in points], [f for _, f in points]
        rho = spearman(kl, forgot) if len(points) >= 3 else float("nan")
        rho = None if math.isnan(rho) else rho  # fewer than 3 points, or a constant side
        ax.set(title=f"{setting}" + (f" (ρ = {rho:.2f}, n = {len(points)})" if rho is not None else ""),
               xlabel="KL(base || finetuned), nats/token", ylabel=measure)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=small(fig))
        plot.table += [{"setting": setting, "group": r.group, "run": r.run, "checkpoint": r.checkpoint,
                        "duration": r.duration, "kl": r.kl, "forgetting": f, "forgetting_measure": measure}
                       for r, f in points]
    plot.png = png(fig)
    return plot


def diversity(m: Measures) -> Plot:
    plot = Plot("diversity", "Diversity of sampled generations",
                "Left: pass@k against k. Right: unique outputs per problem (mean), among passing and failing samples. "
                "Each group at its longest duration with its diversity measured (best learning rate); the base for "
                "reference.")
    from matplotlib.patches import Patch

    study = m.study
    rows = [r for r in best_lr_rows(analysed(study)) if r.diversity is not None]
    if not rows and not any(b.diversity for b in study.bases):
        plot.skipped = "not enough data: no checkpoint has its diversity measured (a sampled task)"
        return plot
    settings = settings_of(rows) or sorted({b.setting for b in study.bases if b.diversity})
    palette = colours(rows)
    fig = figure(11, 3.8 * len(settings))
    for (ax_k, ax_u), setting in zip(np.atleast_2d(fig.subplots(len(settings), 2)), settings):
        shown = [(g, rs[-1]) for g, rs in by_group([r for r in rows if r.setting == setting]).items()]
        entries = [(g, r.diversity, palette[g], r) for g, r in shown]
        base = study.base_of(setting) or next((b for b in study.bases if b.setting == setting and b.diversity), None)
        if base and base.diversity:
            entries.append(("base", base.diversity, BASE, None))
        for label, d, colour, r in entries:
            ks = sorted(d.pass_at_k)
            ax_k.plot(ks, [d.pass_at_k[k] for k in ks], "-", color=colour, label=label, lw=1.5)
            common = {"setting": setting, "group": label, "checkpoint": r.checkpoint if r else "base",
                      "duration": r.duration if r else 0, "task": d.task}
            plot.table += [{**common, "kind": "pass@k", "k": k, "value": d.pass_at_k[k]} for k in ks]
            plot.table += [{**common, "kind": key, "value": getattr(d, key)}
                           for key in ("unique_mean", "unique_pass_mean", "unique_fail_mean")]
        x = np.arange(len(entries))
        passing = [d.unique_pass_mean or 0 for _, d, _, _ in entries]
        failing = [d.unique_fail_mean or 0 for _, d, _, _ in entries]
        ax_u.bar(x, passing, color=[c for _, _, c, _ in entries], edgecolor="black")
        ax_u.bar(x, failing, bottom=passing, color=[c for _, _, c, _ in entries], edgecolor="black", hatch="//",
                 alpha=0.6)
        ax_u.legend(handles=[Patch(facecolor="white", edgecolor="black", label="among passing samples"),
                             Patch(facecolor="white", edgecolor="black", hatch="//", label="among failing samples")],
                    fontsize=small(fig))
        ax_u.set_xticks(x, [e[0] for e in entries], rotation=30, ha="right", fontsize=small(fig))
        ax_k.set(title=f"{setting}: pass@k", xlabel="k", ylabel="pass@k", xscale="log")
        ax_u.set(title=f"{setting}: unique outputs per problem", ylabel="unique outputs (mean)")
        ax_k.legend(fontsize=small(fig))
        for ax in (ax_k, ax_u):
            ax.grid(alpha=0.3)
    plot.png = png(fig)
    return plot


FIGURES = (tradeoff, tradeoff_loss, duration, regularization, lr_sweep, k90_layers, singular_values, kl_forgetting,
           diversity)  # the figures section, in order (the cost figure has a section of its own: cost)


def draw_all(m: Measures) -> list[Plot]:
    """Every figure of the figures section, in order; skipped ones included (with their reason)."""
    return [draw(m) for draw in FIGURES]


# ============================================================ steering forgetting (the page's section of its own)

def _forgetting_of(r, on_loss: bool) -> float | None:
    """A row's forgetting on the plane: its source-loss rise over the base (on_loss), else its source-score drop."""
    if on_loss:
        return None if r.source_loss is None or r.base_source_loss is None else r.source_loss - r.base_source_loss
    return r.forgetting


def steering_plane(m: Measures) -> Plot:
    plot = Plot("steering_plane", "Steering forgetting: learning vs forgetting, trained and steered",
                "Each group at its best learning rate (first seed): solid, its checkpoints by duration from the base "
                "(star); dashed, its final checkpoint interpolated toward the base (W_base + a·ΔW; LoRA: the adapter "
                "scaled by a; small dots, labelled a); x, the LoRA checkpoint with its intruder dimensions scaled. "
                "x = forgetting: the source-loss rise over the base (nats/token) where measured, else the source "
                "score's drop; right = more forgotten.")
    study = m.study
    rows = [min(a.rows, key=lambda r: r.seed) for a in best_arms(study)]
    steered = [s for s in study.steered if any(s.run == r.run for r in rows)]
    settings = sorted({r.setting for r in steered})
    if not settings:
        plot.skipped = "not enough data: no checkpoint was steered (analyses.interpolation, analyses.intruders)"
        return plot
    palette = colours(rows)
    fig, axes = grid(len(settings), 6.5, 4.6)
    for ax, setting in zip(axes, settings):
        base = study.base_of(setting)
        on_loss = base is not None and base.source_loss is not None
        here = [r for r in rows if r.setting == setting]
        for group, grows in by_group(here).items():
            grows = sorted(grows, key=lambda r: r.duration or 0.0)
            points = [(x, r.learning, r) for r in grows
                      if (x := _forgetting_of(r, on_loss)) is not None and r.learning is not None]
            start = [(0.0, base.learning)] if base is not None and base.learning is not None else []
            line = start + [(x, y) for x, y, _ in points]
            ax.plot([x for x, _ in line], [y for _, y in line], "-", color=palette[group], lw=1.2)
            ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], color=palette[group], edgecolor="black",
                       linewidth=0.5, label=group, zorder=3)
            for x, y, r in points:
                plot.table.append({"setting": setting, "group": group, "run": r.run, "checkpoint": r.checkpoint,
                                   "steer": "", "factor": None, "duration": r.duration, "learning": y,
                                   "forgetting": x})
            for r in grows:
                mine = sorted((s for s in steered if s.run == r.run and s.steered_from == r.checkpoint),
                              key=lambda s: (s.steer, s.factor or 0.0))
                interp = [(x, s.learning, s) for s in mine if s.steer == "interp"
                          if (x := _forgetting_of(s, on_loss)) is not None and s.learning is not None]
                own = _forgetting_of(r, on_loss)
                if interp and own is not None and r.learning is not None:
                    line = start + [(x, y) for x, y, _ in interp] + [(own, r.learning)]
                    ax.plot([x for x, _ in line], [y for _, y in line], "--", color=palette[group], lw=1)
                    for x, y, s in interp:
                        ax.scatter([x], [y], s=14, color=palette[group], zorder=3)
                        ax.annotate(f"{s.factor:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
                for s in mine:
                    x = _forgetting_of(s, on_loss)
                    if s.steer == "intruders" and x is not None and s.learning is not None:
                        ax.scatter([x], [s.learning], marker="x", s=50, color=palette[group], zorder=4)
                    if x is not None and s.learning is not None:
                        plot.table.append({"setting": setting, "group": group, "run": s.run,
                                           "checkpoint": s.checkpoint, "steer": s.steer, "factor": s.factor,
                                           "duration": s.duration, "learning": s.learning, "forgetting": x})
        if base is not None and base.learning is not None:
            ax.scatter([0.0], [base.learning], marker="*", s=260, color=BASE, edgecolor="black", label="base",
                       zorder=4)
        ax.set(title=setting, ylabel="learning",
               xlabel="source-loss rise over the base, nats/token" if on_loss else "forgetting (source score drop)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    plot.png = png(fig)
    return plot


def forgetting_curves(m: Measures) -> Plot:
    plot = Plot("forgetting_curves", "Forgetting during training",
                "Each run that measured the source loss as it trained (data.source_eval, every train.eval_every "
                "steps): left, its held-out learning loss; right, its source loss's rise over the base's (step 0), "
                "nats/token, against the optimizer step. A run stopped by train.stop_at_forgetting ends where its "
                "rise crossed the budget.")
    curves = {run: [p for p in points if p.source_loss is not None]
              for run, points in sorted(m.study.curves.items())}
    curves = {run: points for run, points in curves.items() if len(points) >= 2 and points[0].step == 0}
    if not curves:
        plot.skipped = "not enough data: no run measured the source loss as it trained (data.source_eval)"
        return plot
    fig = figure(11, 4.2)
    ax_l, ax_f = fig.subplots(1, 2)
    for run, points in curves.items():
        steps = [p.step for p in points]
        rise = [p.source_loss - points[0].source_loss for p in points]
        learned = [(p.step, p.eval_loss) for p in points if p.eval_loss is not None]
        ax_l.plot([s for s, _ in learned], [v for _, v in learned], "-", lw=1, label=run)
        ax_f.plot(steps, rise, "-", lw=1, label=run)
        plot.table += [{"run": run, "step": p.step, "tokens": p.tokens, "eval_loss": p.eval_loss,
                        "source_loss": p.source_loss, "source_loss_rise": r} for p, r in zip(points, rise)]
    ax_l.set(title="held-out learning loss", xlabel="step", ylabel="nats/token")
    ax_f.set(title="source-loss rise over the base", xlabel="step", ylabel="nats/token")
    for ax in (ax_l, ax_f):
        ax.grid(alpha=0.3)
    ax_f.legend(fontsize=6, loc="best")
    plot.png = png(fig)
    return plot


STEERING_FIGURES = (steering_plane, forgetting_curves)  # the steering section's figures, in order
