"""The report's figures, one function per figure, drawn with matplotlib's Agg renderer (no display needed).

    m = Measures(study)           # ftlab.report.measures: each arm's numbers and intervals, computed once
    plot = tradeoff(m)            # -> Plot(id, title, caption, png=b"...", table=[{...}, ...]) or Plot(skipped=...)
    plots = draw_all(m)           # the figures section, in order

Each function returns a Plot: the PNG (bytes, deterministic for the same input: no timestamp or software
metadata) and `table`, every number it drew, one dict per point (with its interval's bounds where it has one), for
the report's CSV export. A figure whose data is absent is not drawn: `skipped` says "not enough data: <why>".
Conventions follow the paper: x = source score (mean source-benchmark accuracy: the paper's forgetting metric),
y = learning; colour = method and rank (full FT red, LoRA ranks a sequential blue palette); marker size = training
duration; one line per method/rank joining its durations (its best learning rate); error bars are 95% intervals.
Here: the learning-rate sweep, KL against forgetting, diversity; plots_tradeoff.py (learning vs forgetting on each
instrument), plots_duration.py (against duration, regularization), plots_spectrum.py (ΔW), plots_cost.py (cost).
"""

from __future__ import annotations

import math

import numpy as np

from ftlab.analysis.statistics import spearman
from ftlab.report.measures import Measures, group_order
from ftlab.report.plots_base import BASE, Plot, _by_group, _figure, _grid, _png, _settings, colours
from ftlab.report.plots_duration import duration, regularization
from ftlab.report.plots_spectrum import k90_layers, singular_values
from ftlab.report.plots_tradeoff import tradeoff, tradeoff_loss
from ftlab.results.rows import Row, best_lr_rows, best_lrs, sweep_duration


# ----------------------------------------------------------------------------- 3. learning-rate sweep


def lr_sweep(m: Measures) -> Plot:
    plot = Plot("lr_sweep", "Learning rate sweep",
                "Learning against learning rate per method/rank, at the longest duration every learning rate of the "
                "group reached; the ring marks the best learning rate.")
    points = [r for r in m.study.points() if r.learning is not None and r.lr is not None]
    groups: dict[tuple[str, str], dict[float, dict]] = {}  # (setting, group) -> lr -> duration -> learning
    for r in points:
        groups.setdefault((r.setting, r.group), {}).setdefault(r.lr, {})[r.duration] = r.learning
    swept = {k: v for k, v in groups.items() if len(v) >= 2 and sweep_duration(v) is not None}
    if not swept:
        plot.skipped = "not enough data: no method/rank was trained at two or more learning rates"
        return plot
    best, palette = best_lrs(points), colours(points)
    settings = sorted({s for s, _ in swept})
    fig, axes = _grid(len(settings), 6.5, 4.2)
    for ax, setting in zip(axes, settings):
        for (s, group), by_lr in sorted(swept.items(), key=lambda kv: _group_order(points, kv[0][1])):
            if s != setting:
                continue
            at = sweep_duration(by_lr)
            xy = sorted((lr, by_lr[lr][at]) for lr in by_lr)
            ax.plot([x for x, _ in xy], [y for _, y in xy], "o-", color=palette[group], label=f"{group} (at {at:g})")
            top = best[s, group]
            ax.scatter([top], [by_lr[top][at]], s=180, facecolor="none", edgecolor="black", zorder=3)
            plot.table += [{"setting": s, "group": group, "lr": x, "duration": at, "learning": y, "best": x == top}
                           for x, y in xy]
        ax.set(title=setting, xlabel="learning rate", ylabel="learning", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    plot.png = _png(fig)
    return plot


def _group_order(rows: list[Row], group: str) -> tuple:
    return group_order(next(r for r in rows if r.group == group))


# ----------------------------------------------------------------------------- 6. KL as a forgetting predictor


def kl_forgetting(m: Measures) -> Plot:
    plot = Plot("kl_forgetting", "KL(base || finetuned) vs forgetting",
                "Each dot a checkpoint: x = KL divergence of the finetuned model from the base on target prompts "
                "(nats/token), y = forgetting (base source score - checkpoint's). ρ: Spearman rank correlation.")
    rows = [r for r in m.study.points() if r.kl is not None and r.forgetting is not None]
    if not rows:
        plot.skipped = "not enough data: no checkpoint has both KL and forgetting (the base must be evaluated)"
        return plot
    palette = colours(rows)
    fig = _figure(6.5, 4.4)
    ax = fig.subplots()
    for group, grows in _by_group(rows).items():
        ax.scatter([r.kl for r in grows], [r.forgetting for r in grows], color=palette[group], label=group,
                   edgecolor="black", linewidth=0.5)
    rho = spearman([r.kl for r in rows], [r.forgetting for r in rows]) if len(rows) >= 3 else float("nan")
    rho = None if math.isnan(rho) else rho  # fewer than 3 points, or a constant side
    ax.set(title="KL vs forgetting" + (f" (ρ = {rho:.2f}, n = {len(rows)})" if rho is not None else ""),
           xlabel="KL(base || finetuned), nats/token", ylabel="forgetting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plot.table = [{"setting": r.setting, "group": r.group, "run": r.run, "checkpoint": r.checkpoint,
                   "duration": r.duration, "kl": r.kl, "forgetting": r.forgetting} for r in rows]
    plot.png = _png(fig)
    return plot


def diversity(m: Measures) -> Plot:
    plot = Plot("diversity", "Diversity of sampled generations",
                "Left: pass@k against k. Right: unique outputs per problem (mean), among passing and failing samples. "
                "Each group at its longest duration with its diversity measured (best learning rate); the base for "
                "reference.")
    from matplotlib.patches import Patch

    study = m.study
    rows = [r for r in best_lr_rows(study.points()) if r.diversity is not None]
    if not rows and not any(b.diversity for b in study.bases):
        plot.skipped = "not enough data: no checkpoint has its diversity measured (a sampled task)"
        return plot
    settings = _settings(rows) or sorted({b.setting for b in study.bases if b.diversity})
    palette = colours(rows)
    fig = _figure(11, 3.8 * len(settings))
    for (ax_k, ax_u), setting in zip(np.atleast_2d(fig.subplots(len(settings), 2)), settings):
        shown = [(g, rs[-1]) for g, rs in _by_group([r for r in rows if r.setting == setting]).items()]
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
                    fontsize=7)
        ax_u.set_xticks(x, [e[0] for e in entries], rotation=30, ha="right", fontsize=7)
        ax_k.set(title=f"{setting}: pass@k", xlabel="k", ylabel="pass@k", xscale="log")
        ax_u.set(title=f"{setting}: unique outputs per problem", ylabel="unique outputs (mean)")
        ax_k.legend(fontsize=7)
        for ax in (ax_k, ax_u):
            ax.grid(alpha=0.3)
    plot.png = _png(fig)
    return plot


FIGURES = (tradeoff, tradeoff_loss, duration, regularization, lr_sweep, k90_layers, singular_values, kl_forgetting,
           diversity)  # the figures section, in order (the cost figure has a section of its own: plots_cost.cost)


def draw_all(m: Measures) -> list[Plot]:
    """Every figure of the figures section, in order; skipped ones included (with their reason)."""
    return [draw(m) for draw in FIGURES]
