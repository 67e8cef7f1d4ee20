"""The figures against training duration, with 95% intervals as error bars: learning and forgetting of plain full FT
and each LoRA group (the paper's Figs. 2-3), and the regularization comparison (full FT with weight decay or attention
dropout beside them).

Panels per setting: learning, source score, and the source-loss rise over the base where the setting measured the
held-out source loss. Each point is an arm at its group's best learning rate (seeds together); the error bars are
ftlab.report.measures' intervals (the score's own; the paired rise over the base).
"""

from __future__ import annotations

import numpy as np

from ftlab.report.measures import Measures, Value, best_arms, empty_record, group_order
from ftlab.report.plots_base import Plot, _figure, _legend, _png, colours
from ftlab.report.verdicts import Arm
from ftlab.results.rows import plain_full

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
    plain = {id(r) for r in plain_full(m.study.points())}
    found = [a for a in best_arms(m.study) if a.rows[0].method == "lora" or id(a.rows[0]) in plain]
    groups = {(a.setting, a.label) for a in found}
    if not any(sum((a.setting, a.label) == g for a in found) >= 2 for g in groups):
        plot.skipped = "not enough data: no configuration was evaluated at two or more durations"
        return plot
    _draw(plot, m, found, set())
    return plot


def regularization(m: Measures) -> Plot:
    plot = Plot("regularization", "Regularization: LoRA vs weight decay and attention dropout",
                "Learning, source score and (where measured) the source-loss rise over the base against training "
                "duration for plain full FT, full FT with weight decay or attention dropout (dashed), and LoRA (best "
                "learning rate of each); error bars: 95% bootstrap intervals.")
    points = m.study.points()
    plain = {id(r) for r in plain_full(points)}
    regularized = {(r.setting, r.group) for r in points if r.method == "full" and id(r) not in plain}
    settings = {s for s, _ in regularized}
    if not settings:
        plot.skipped = "not enough data: no full-FT run with weight decay or attention dropout"
        return plot
    _draw(plot, m, [a for a in best_arms(m.study) if a.setting in settings], regularized)
    return plot


def _draw(plot: Plot, m: Measures, found: list[Arm], dashed: set[tuple[str, str]]) -> None:
    """A row of panels per setting, a line per group across its durations."""
    settings = sorted({a.setting for a in found})
    panels = {s: [p for p in PANELS if p != "source_loss_rise" or m.instrument(s) == "source_loss"]
              for s in settings}
    cols = max(len(p) for p in panels.values())
    palette = colours([r for a in found for r in a.rows])
    fig = _figure(4.3 * cols + 0.8, 3.7 * len(settings))
    axes = np.atleast_2d(fig.subplots(len(settings), cols))
    for row_axes, setting in zip(axes, settings):
        here = sorted((a for a in found if a.setting == setting),
                      key=lambda a: (*group_order(a.rows[0]), a.duration or 0.0))
        for arm in here:
            plot.table.append({"setting": setting, "group": arm.label, "lr": arm.rows[0].lr,
                               "duration": arm.duration, "seeds": len(arm.rows),
                               **{k: v for p in PANELS for k, v in _record(m, arm, p).items()}})
        groups = list(dict.fromkeys(a.label for a in here))
        for ax, panel in zip(row_axes, panels[setting]):
            for k, group in enumerate(groups):
                xy = [(a.duration, v) for a in here if a.label == group and a.duration is not None
                      and (v := _value(m, a, panel)) is not None]
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
            ax.set_xticks(durations, [f"{d:g}" for d in durations])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        _legend(list(row_axes), fontsize=7, loc="best")
        for ax in row_axes[len(panels[setting]):]:
            ax.set_visible(False)
    plot.png = _png(fig)


def _value(m: Measures, arm: Arm, panel: str) -> Value | None:
    return m.forgetting(arm, "source_loss") if panel == "source_loss_rise" else m.value(arm, panel)


def _record(m: Measures, arm: Arm, panel: str) -> dict:
    v = _value(m, arm, panel) if panel != "source_loss_rise" or m.instrument(arm.setting) == "source_loss" else None
    return v.record(panel) if v is not None else empty_record(panel)
