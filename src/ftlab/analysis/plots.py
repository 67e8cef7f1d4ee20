"""The report's figures, one function per figure, drawn with matplotlib's Agg renderer (no display needed).

    plot = tradeoff(study)        # -> Plot(id, title, caption, png=b"...", table=[{...}, ...]) or Plot(skipped=...)

Each function returns a Plot: the PNG (bytes, deterministic for the same input: no timestamp or software
metadata) and `table`, every number it drew, one dict per point, for the report's CSV export. A figure whose
data is absent is not drawn: `skipped` says "not enough data: <why>". Conventions follow the paper: x =
forgetting score, y = learning; colour = method and rank (full FT red, LoRA ranks a sequential blue palette);
marker size = training duration; one line per method/rank joining its durations (its best learning rate).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftlab.analysis.results import Row, Study, best_lr_rows, best_lrs, plain_full, sweep_duration
from ftlab.errors import FtlabError

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


def _figure(width: float, height: float):
    """A matplotlib Figure outside pyplot (no global state, no display); fails with an install hint."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FtlabError("the report's figures need matplotlib: pip install 'ftlab[report]'") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _grid(n: int, width: float, height: float) -> tuple[Any, list]:
    """A figure of n panels, at most two per row (the paper's 2x2 grid of settings stays readable)."""
    cols = min(n, 2)
    rows = -(-n // cols)
    fig = _figure(width * cols + 1.5, height * rows)
    axes = list(np.atleast_1d(fig.subplots(rows, cols)).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version string: same bytes each run
    return buf.getvalue()


def colours(rows: list[Row]) -> dict[str, Any]:
    """group -> colour: plain full FT red, regularized full FT oranges (weight decay) and greens (dropout),
    LoRA groups blues from light (smallest rank) to dark."""
    from matplotlib import colormaps

    plain = {r.group for r in plain_full(rows)}
    out: dict[str, Any] = {g: FULL for g in plain}
    full_other = sorted({r.group for r in rows if r.method == "full"} - plain)
    wd = [g for g in full_other if "attn-drop" not in g]
    drop = [g for g in full_other if "attn-drop" in g]
    for names, cmap in ((wd, "Oranges"), (drop, "Greens")):
        out.update({g: colormaps[cmap](0.45 + 0.45 * i / max(len(names) - 1, 1)) for i, g in enumerate(names)})
    lora = sorted({(r.rank or 0, r.group) for r in rows if r.method == "lora"})
    out.update({g: colormaps["Blues"](0.35 + 0.6 * i / max(len(lora) - 1, 1)) for i, (_, g) in enumerate(lora)})
    return out


def _settings(rows: list[Row]) -> list[str]:
    return sorted({r.setting for r in rows})


def _unit(rows: list[Row]) -> str:
    return rows[0].duration_unit if rows else "epochs"


def _by_group(rows: list[Row]) -> dict[str, list[Row]]:
    """group -> its rows sorted by duration, groups ordered full FT first then LoRA by rank."""
    out: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: (r.method != "full", r.rank or 0, r.group, r.duration or 0)):
        out.setdefault(r.group, []).append(r)
    return out


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (forgetting score, learning) no other point beats on both (both maximized), by forgetting."""
    front, best = [], float("-inf")
    for f, l in sorted(points, key=lambda p: (-p[0], -p[1])):
        if l > best:
            front.append((f, l))
            best = l
    return sorted(front)


# ----------------------------------------------------------------------------- 1. learning vs forgetting


def tradeoff(study: Study) -> Plot:
    plot = Plot("tradeoff", "Learning vs forgetting",
                "Each dot a checkpoint: x = forgetting score (mean source-task accuracy; right = less forgotten), "
                "y = learning. Colour = method and rank, size = training duration; lines join the durations of each "
                "group's best learning rate (other learning rates faint). Dashed: the Pareto frontier. Star: base.")
    points = [r for r in study.points() if r.learning is not None and r.forgetting is not None]
    if not points:
        plot.skipped = "not enough data: no checkpoint has both a learning and a forgetting score"
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
        front = pareto([(r.forgetting, r.learning) for r in rows])
        for group, grows in _by_group(rows).items():
            chosen = [r for r in grows if id(r) in best]
            faint = [r for r in grows if id(r) not in best]
            ax.plot([r.forgetting for r in chosen], [r.learning for r in chosen], "-", color=palette[group], lw=1.2)
            ax.scatter([r.forgetting for r in chosen], [r.learning for r in chosen],
                       s=[size.get(r.duration, 40) for r in chosen], color=palette[group], edgecolor="black",
                       linewidth=0.5, label=group, zorder=3)
            ax.scatter([r.forgetting for r in faint], [r.learning for r in faint],
                       s=[size.get(r.duration, 40) for r in faint], color=palette[group], alpha=0.3, zorder=2)
        ax.plot([f for f, _ in front], [l for _, l in front], "--", color="black", lw=1, label="Pareto frontier")
        base = study.base_of(setting)
        if base and base.learning is not None and base.forgetting is not None:
            ax.scatter([base.forgetting], [base.learning], marker="*", s=260, color=BASE, edgecolor="black",
                       label="base", zorder=4)
            plot.table.append({"setting": setting, "group": "base", "run": base.run, "checkpoint": "base",
                               "duration": 0, "learning": base.learning, "forgetting": base.forgetting,
                               "best_lr": True, "pareto": False})
        for r in rows:
            plot.table.append({"setting": setting, "group": r.group, "run": r.run, "checkpoint": r.checkpoint,
                               "duration": r.duration, "learning": r.learning, "forgetting": r.forgetting,
                               "best_lr": id(r) in best, "pareto": (r.forgetting, r.learning) in front})
        ax.set(title=f"{setting} (size: {_unit(rows)} {', '.join(f'{d:g}' for d in durations)})",
               xlabel="forgetting score (higher = less forgotten)",
               ylabel=f"learning ({', '.join(rows[0].learning_tasks)})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    plot.png = _png(fig)
    return plot


# ----------------------------------------------------------------------------- 2. regularization


def regularization(study: Study) -> Plot:
    plot = Plot("regularization", "Regularization: LoRA vs weight decay and attention dropout",
                "Learning (left) and forgetting score (right) against training duration for plain full FT, full FT "
                "with weight decay or attention dropout, and LoRA (best learning rate of each).")
    points = [r for r in study.points() if r.learning is not None or r.forgetting is not None]
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
            for ax, key in ((ax_l, "learning"), (ax_f, "forgetting")):
                xy = [(r.duration, getattr(r, key)) for r in grows if getattr(r, key) is not None]
                ax.plot([x for x, _ in xy], [y for _, y in xy], style + "o", color=palette[group], label=group, ms=4)
            for r in grows:
                plot.table.append({"setting": setting, "group": group, "run": r.run, "checkpoint": r.checkpoint,
                                   "duration": r.duration, "learning": r.learning, "forgetting": r.forgetting})
        ax_l.set(title=f"{setting}: learning", xlabel=_unit(rows), ylabel="learning")
        ax_f.set(title=f"{setting}: forgetting", xlabel=_unit(rows), ylabel="forgetting score (higher = less)")
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


# ----------------------------------------------------------------------------- 4. k90 per layer (paper Fig. 6)


def _spectrum_run(study: Study, need_values: bool = False) -> list[Row]:
    """The checkpoints of the run whose ΔW spectra are shown: full FT preferred (plain, best LR), then the run
    with the most checkpoints that have per-matrix spectra."""
    def ok(r: Row) -> bool:
        return bool(r.spectrum and r.spectrum.matrices) and (
            not need_values or any(m.singular_values for m in r.spectrum.matrices))

    rows = [r for r in study.points() if ok(r)]
    if not rows:
        return []
    plain, best = {id(r) for r in plain_full(rows)}, {id(r) for r in best_lr_rows(study.points())}
    runs = sorted({r.run for r in rows})
    run = max(runs, key=lambda n: (any(r.method == "full" for r in rows if r.run == n),
                                   any(id(r) in plain for r in rows if r.run == n),
                                   any(id(r) in best for r in rows if r.run == n),
                                   sum(r.run == n for r in rows)))  # ties: the first run name
    return sorted((r for r in rows if r.run == run), key=lambda r: (r.duration or 0, r.checkpoint))


def k90_layers(study: Study) -> Plot:
    plot = Plot("k90_layers", "Rank of the weight change per layer (k90 of ΔW)",
                "k90 = the rank explaining 90% of ΔW's squared singular values, per layer, one panel per module, one "
                "line per checkpoint (darker = longer training); dashed: a Gaussian matrix of the same shape.")
    rows = _spectrum_run(study)
    if not rows:
        plot.skipped = "not enough data: no checkpoint has a spectrum.json with per-matrix values (`ftlab spectrum`)"
        return plot
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    modules = sorted({m.module for r in rows for m in r.spectrum.matrices},
                     key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER), m))
    cols = min(4, len(modules))
    nrows = -(-len(modules) // cols)
    fig = _figure(3.2 * cols + 0.6, 2.8 * nrows + 0.4)
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
    axes[0].legend(fontsize=7, loc="best")
    for ax in axes[len(modules):]:
        ax.set_visible(False)
    plot.png = _png(fig)
    return plot


# ----------------------------------------------------------------------------- 5. one matrix's spectrum (Fig. S7)


def singular_values(study: Study) -> Plot:
    plot = Plot("singular_values", "Singular values of one matrix: W_base, W_ft and ΔW",
                "Left: singular values (log scale). Right: cumulative explained variance (sum of σ² up to k over "
                "the total); the dotted line is 90%, where k90 is read.")
    rows = _spectrum_run(study, need_values=True)
    if not rows:
        plot.skipped = "not enough data: no spectrum.json carries singular values (`ftlab spectrum` option)"
        return plot
    r = rows[-1]
    candidates = [m for m in r.spectrum.matrices if m.singular_values]
    layers = sorted({m.layer for m in candidates if m.layer is not None}) or [0]
    mid = layers[len(layers) // 2]
    m = min(candidates, key=lambda m: (abs((m.layer if m.layer is not None else mid) - mid),
                                       MODULE_ORDER.index(m.module) if m.module in MODULE_ORDER else 99, m.name))
    fig = _figure(10, 3.8)
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
        ax.legend(fontsize=7)
    fig.suptitle(f"{r.run} ({r.group})")
    plot.png = _png(fig)
    return plot


# ----------------------------------------------------------------------------- 6. KL as a forgetting predictor


def kl_forgetting(study: Study) -> Plot:
    plot = Plot("kl_forgetting", "KL(base || finetuned) vs forgetting",
                "Each dot a checkpoint: x = KL divergence of the finetuned model from the base on target prompts "
                "(nats/token), y = forgetting drop (base score - checkpoint score). ρ: Spearman rank correlation.")
    rows = [r for r in study.points() if r.kl is not None and r.forgetting_drop is not None]
    if not rows:
        plot.skipped = "not enough data: no checkpoint has both kl.json and a forgetting drop (base_eval needed)"
        return plot
    palette = colours(rows)
    fig = _figure(6.5, 4.4)
    ax = fig.subplots()
    for group, grows in _by_group(rows).items():
        ax.scatter([r.kl for r in grows], [r.forgetting_drop for r in grows], color=palette[group], label=group,
                   edgecolor="black", linewidth=0.5)
    rho = spearman([r.kl for r in rows], [r.forgetting_drop for r in rows]) if len(rows) >= 3 else None
    ax.set(title="KL vs forgetting" + (f" (ρ = {rho:.2f}, n = {len(rows)})" if rho is not None else ""),
           xlabel="KL(base || finetuned), nats/token", ylabel="forgetting drop")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plot.table = [{"setting": r.setting, "group": r.group, "run": r.run, "checkpoint": r.checkpoint,
                   "duration": r.duration, "kl": r.kl, "forgetting_drop": r.forgetting_drop} for r in rows]
    plot.png = _png(fig)
    return plot


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when a side is constant."""
    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for value in np.unique(a):  # ties share their mean rank
            r[a == value] = r[a == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


# ----------------------------------------------------------------------------- 7. diversity


def diversity(study: Study) -> Plot:
    plot = Plot("diversity", "Diversity of sampled generations",
                "Left: pass@k against k. Right: unique outputs per problem (mean), among passing and failing samples. "
                "Each group at its longest duration with a diversity.json (best learning rate); the base for "
                "reference.")
    from matplotlib.patches import Patch

    rows = [r for r in best_lr_rows(study.points()) if r.diversity is not None]
    if not rows and not any(b.diversity for b in study.bases):
        plot.skipped = "not enough data: no checkpoint has a diversity.json"
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
