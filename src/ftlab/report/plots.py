"""The report's figures, one function per figure, drawn with matplotlib's Agg renderer (no display needed).

    plot = tradeoff(study)        # -> Plot(id, title, caption, png=b"...", table=[{...}, ...]) or Plot(skipped=...)

Each function returns a Plot: the PNG (bytes, deterministic for the same input: no timestamp or software
metadata) and `table`, every number it drew, one dict per point, for the report's CSV export. A figure whose
data is absent is not drawn: `skipped` says "not enough data: <why>". Conventions follow the paper: x = source
score (mean source-benchmark accuracy: the paper's forgetting metric), y = learning; colour = method and rank (full
FT red, LoRA ranks a sequential blue palette); marker size = training duration; one line per method/rank joining its
durations (its best learning rate).
"""

from __future__ import annotations

import math

import numpy as np

from ftlab.analysis.statistics import spearman
from ftlab.report.plots_base import BASE, Plot, _by_group, _figure, _grid, _png, _settings, _unit, colours, pareto
from ftlab.report.plots_spectrum import k90_layers, singular_values
from ftlab.results.rows import Row, Study, best_lr_rows, best_lrs, plain_full, sweep_duration


# ----------------------------------------------------------------------------- 1. learning vs forgetting


def tradeoff(study: Study) -> Plot:
    plot = Plot("tradeoff", "Learning vs forgetting",
                "Each dot a checkpoint: x = source score (mean source-task accuracy; right = less forgotten), "
                "y = learning. Colour = method and rank, size = training duration; lines join the durations of each "
                "group's best learning rate (other learning rates faint). Dashed: the Pareto frontier. Star: base.")
    points = [r for r in study.points() if r.learning is not None and r.source is not None]
    if not points:
        plot.skipped = "not enough data: no checkpoint has both a learning and a source score"
        return plot
    regularized = {id(r) for r in points if r.method == "full"} - {id(r) for r in plain_full(points)}
    points = [r for r in points if id(r) not in regularized]  # weight decay / dropout: the regularization figure
    best = {id(r) for r in best_lr_rows(points)}
    palette, settings = colours(points), _settings(points)
    fig, axes = _grid(len(settings), 6.5, 4.6)
    for ax, setting in zip(axes, settings):
        rows = [r for r in points if r.setting == setting]
        durations = sorted({r.duration for r in rows if r.duration is not None})
        size = {d: 30 + 170 * i / max(len(durations) - 1, 1) for i, d in enumerate(durations)}
        front = pareto([(r.source, r.learning) for r in rows])
        for group, grows in _by_group(rows).items():
            chosen = [r for r in grows if id(r) in best]
            faint = [r for r in grows if id(r) not in best]
            ax.plot([r.source for r in chosen], [r.learning for r in chosen], "-", color=palette[group], lw=1.2)
            ax.scatter([r.source for r in chosen], [r.learning for r in chosen],
                       s=[size.get(r.duration, 40) for r in chosen], color=palette[group], edgecolor="black",
                       linewidth=0.5, label=group, zorder=3)
            ax.scatter([r.source for r in faint], [r.learning for r in faint],
                       s=[size.get(r.duration, 40) for r in faint], color=palette[group], alpha=0.3, zorder=2)
        ax.plot([f for f, _ in front], [l for _, l in front], "--", color="black", lw=1, label="Pareto frontier")
        base = study.base_of(setting)
        if base and base.learning is not None and base.source is not None:
            ax.scatter([base.source], [base.learning], marker="*", s=260, color=BASE, edgecolor="black",
                       label="base", zorder=4)
            plot.table.append({"setting": setting, "group": "base", "run": base.run, "checkpoint": "base",
                               "duration": 0, "learning": base.learning, "source": base.source,
                               "best_lr": True, "pareto": False})
        for r in rows:
            plot.table.append({"setting": setting, "group": r.group, "run": r.run, "checkpoint": r.checkpoint,
                               "duration": r.duration, "learning": r.learning, "source": r.source,
                               "best_lr": id(r) in best, "pareto": (r.source, r.learning) in front})
        ax.set(title=f"{setting} (size: {_unit(rows)} {', '.join(f'{d:g}' for d in durations)})",
               xlabel="source score (higher = less forgotten)",
               ylabel=f"learning ({', '.join(rows[0].learning_tasks)})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    plot.png = _png(fig)
    return plot


# ----------------------------------------------------------------------------- 2. regularization


def regularization(study: Study) -> Plot:
    plot = Plot("regularization", "Regularization: LoRA vs weight decay and attention dropout",
                "Learning (left) and source score (right) against training duration for plain full FT, full FT "
                "with weight decay or attention dropout, and LoRA (best learning rate of each).")
    points = [r for r in study.points() if r.learning is not None or r.source is not None]
    plain = {id(r) for r in plain_full(points)}
    regularized = [r for r in points if r.method == "full" and id(r) not in plain]
    settings = _settings(regularized)
    if not settings:
        plot.skipped = "not enough data: no full-FT run with weight decay or attention dropout"
        return plot
    rows_all = [r for r in best_lr_rows(points) if r.setting in settings]
    palette = colours(rows_all)
    fig = _figure(11, 3.8 * len(settings))
    axes = np.atleast_2d(fig.subplots(len(settings), 2))
    for (ax_l, ax_f), setting in zip(axes, settings):
        rows = [r for r in rows_all if r.setting == setting]
        for group, grows in _by_group(rows).items():
            style = "--" if group in {r.group for r in regularized} else "-"
            for ax, key in ((ax_l, "learning"), (ax_f, "source")):
                xy = [(r.duration, getattr(r, key)) for r in grows if getattr(r, key) is not None]
                ax.plot([x for x, _ in xy], [y for _, y in xy], style + "o", color=palette[group], label=group, ms=4)
            for r in grows:
                plot.table.append({"setting": setting, "group": group, "run": r.run, "checkpoint": r.checkpoint,
                                   "duration": r.duration, "learning": r.learning, "source": r.source})
        ax_l.set(title=f"{setting}: learning", xlabel=_unit(rows), ylabel="learning")
        ax_f.set(title=f"{setting}: source score", xlabel=_unit(rows), ylabel="source score (higher = less forgotten)")
        durations = sorted({r.duration for r in rows if r.duration is not None})
        for ax in (ax_l, ax_f):
            ax.set_xscale("log", base=2)
            ax.set_xticks(durations, [f"{d:g}" for d in durations])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        ax_f.legend(fontsize=7, loc="best")
    plot.png = _png(fig)
    return plot


# ----------------------------------------------------------------------------- 3. learning-rate sweep


def lr_sweep(study: Study) -> Plot:
    plot = Plot("lr_sweep", "Learning rate sweep",
                "Learning against learning rate per method/rank, at the longest duration every learning rate of the "
                "group reached; the ring marks the best learning rate.")
    points = [r for r in study.points() if r.learning is not None and r.lr is not None]
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
    r = next(r for r in rows if r.group == group)
    return (r.method != "full", r.rank or 0, group)


# ----------------------------------------------------------------------------- 6. KL as a forgetting predictor


def kl_forgetting(study: Study) -> Plot:
    plot = Plot("kl_forgetting", "KL(base || finetuned) vs forgetting",
                "Each dot a checkpoint: x = KL divergence of the finetuned model from the base on target prompts "
                "(nats/token), y = forgetting (base source score - checkpoint's). ρ: Spearman rank correlation.")
    rows = [r for r in study.points() if r.kl is not None and r.forgetting is not None]
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


def diversity(study: Study) -> Plot:
    plot = Plot("diversity", "Diversity of sampled generations",
                "Left: pass@k against k. Right: unique outputs per problem (mean), among passing and failing samples. "
                "Each group at its longest duration with its diversity measured (best learning rate); the base for "
                "reference.")
    from matplotlib.patches import Patch

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


FIGURES = (tradeoff, regularization, lr_sweep, k90_layers, singular_values, kl_forgetting, diversity)


def draw_all(study: Study) -> list[Plot]:
    """Every figure of the report, in order; skipped ones included (with their reason)."""
    return [draw(study) for draw in FIGURES]
