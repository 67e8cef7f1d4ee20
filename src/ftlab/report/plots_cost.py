"""The cost view: what each configuration learned and forgot against what it cost to train (device-hours and peak
memory), each configuration (a group at its best learning rate) at its longest duration.

A run's cost is what training wrote in its run.json (wall time summed over resumes, the device's peak memory,
trainable and total parameters) and the mean tokens/s of its metrics log (ftlab.results.index.run_cost); with seeds,
the mean over them. Device-hours are the training wall time in hours on the run's device(s) as recorded, so a
multi-GPU run counts its wall time once.
"""

from __future__ import annotations

import numpy as np

from ftlab.report.measures import Measures, Point, best_arms, group_order, longest
from ftlab.report.plots_base import Plot, _figure, _legend, _png, colours
from ftlab.report.verdicts import Arm

SHORT = {"source_loss": "source-loss rise", "source": "source-score drop"}  # forgetting's y label
COST_AXES = (("device_hours", "device-hours", "device-hours (training wall time)"),
             ("peak_memory_gb", "peak memory", "peak memory, GB"))  # (cost key, short name, axis label)


def cost_of(arm: Arm) -> dict:
    """An arm's cost: the mean over its seeds' runs (device and parameters: the first run's)."""
    def mean(key: str) -> float | None:
        values = [getattr(r.cost, key) for r in arm.rows if getattr(r.cost, key) is not None]
        return float(np.mean(values)) if values else None
    first = arm.rows[0].cost  # the seeds share the configuration: its device and sizes
    return {"wall_s": mean("wall_s"), "device_hours": mean("device_hours"), "tokens_per_s": mean("tokens_per_s"),
            "peak_memory_gb": mean("peak_memory_gb"), "device": first.device,
            "trainable_params": first.trainable_params, "total_params": first.total_params}


def cost_points(m: Measures) -> list[tuple[Point, dict]]:
    """(point, cost) of each group at its best learning rate and longest duration, in the figures' order."""
    found = sorted(longest(best_arms(m.study)), key=lambda a: (a.setting, *group_order(a.rows[0])))
    return [(m.point(a), cost_of(a)) for a in found]


def cost(m: Measures) -> Plot:
    plot = Plot("cost", "Learning and forgetting against cost",
                "Each dot a configuration (its best learning rate) at its longest duration: learning (top) and "
                "forgetting (bottom: the source-loss rise over the base where measured, else the source-score drop; "
                "higher = more forgotten) against the training's device-hours (left) and peak memory (right); error "
                "bars: 95% intervals.")
    found = [(p, c) for p, c in cost_points(m) if c["wall_s"] is not None or c["peak_memory_gb"] is not None]
    if not found:
        plot.skipped = "not enough data: no run has its cost recorded (run.json, written by training)"
        return plot
    settings = sorted({p.arm.setting for p, _ in found})
    palette = colours([r for p, _ in found for r in p.arm.rows])
    fig = _figure(10.5, 6.4 * len(settings))
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
        _legend([*axes[2 * i], *axes[2 * i + 1]], fontsize=7, loc="best")
    for p, c in found:
        plot.table.append({**p.record(), **c})
    plot.png = _png(fig)
    return plot

