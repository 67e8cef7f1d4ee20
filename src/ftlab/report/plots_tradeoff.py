"""The learning-forgetting figures (the paper's Fig. 4), with 95% intervals on both axes: forgetting read on the
source benchmarks (the paper's instrument) and on the held-out source loss (the second instrument, per document).

Each dot is an arm (one configuration at one duration, its seeds together); its error bars are the bootstrap
intervals of ftlab.report.measures (the score's own interval on the benchmark figure; the paired interval of the
rise over the base on the source-loss figure). Regularized full FT is left to the regularization figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftlab.report.measures import Measures, Value, group_order
from ftlab.report.plots_base import BASE, Plot, _grid, _png, colours, pareto
from ftlab.report.verdicts import Arm, arms
from ftlab.results.rows import Study, best_lrs, plain_full


@dataclass
class _Dot:
    arm: Arm
    x: Value
    y: Value  # learning


def _candidates(study: Study) -> tuple[list[Arm], set[tuple]]:
    """Every arm but regularized full FT's, in a fixed order, and the keys (setting, group, lr) of each group's
    best learning rate."""
    points = study.points()
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
    _draw(plot, m.study, dots, best, "source", +1, "source score (higher = less forgotten)", base_x)
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
    _draw(plot, m.study, dots, best, "source_loss_rise", -1,
          "source-loss rise over the base, nats/token (reversed: right = less forgotten)",
          {s: 0.0 for s in measured})
    return plot


def _draw(plot: Plot, study: Study, dots: list[_Dot], best: set[tuple], x_name: str, better: int, xlabel: str,
          base_x: dict[str, float | None]) -> None:
    """One panel per setting; better = +1 when a larger x is better (source score), -1 when smaller (loss rise)."""
    palette = colours([r for d in dots for r in d.arm.rows])
    settings = sorted({d.arm.setting for d in dots})
    fig, axes = _grid(len(settings), 6.5, 4.6)
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
        ax.set(title=f"{setting} (size: {unit} {', '.join(f'{dur:g}' for dur in durations)})", xlabel=xlabel,
               ylabel=f"learning ({', '.join(here[0].arm.rows[0].learning_tasks)})")
        if better < 0:
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    plot.png = _png(fig)


def _bars(values: list[Value]) -> list[list[float]]:
    """matplotlib's (2, n) error extents: below, above."""
    below, above = zip(*(v.bar() for v in values))
    return [list(below), list(above)]
