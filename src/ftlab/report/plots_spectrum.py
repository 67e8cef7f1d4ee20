"""The report's spectrum figures: k90 of ΔW per layer and module (paper Fig. 6), one matrix's spectrum (Fig. S7)."""

from __future__ import annotations

import numpy as np

from ftlab.report.measures import Measures
from ftlab.report.plots_base import MODULE_ORDER, Plot, _figure, _png
from ftlab.results.rows import Row, Study, best_lr_rows, plain_full


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


def k90_layers(m: Measures) -> Plot:
    plot = Plot("k90_layers", "Rank of the weight change per layer (k90 of ΔW)",
                "k90 = the rank explaining 90% of ΔW's squared singular values, per layer, one panel per module, one "
                "line per checkpoint (darker = longer training); dashed: a Gaussian matrix of the same shape.")
    rows = _spectrum_run(m.study)
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


def singular_values(m: Measures) -> Plot:
    plot = Plot("singular_values", "Singular values of one matrix: W_base, W_ft and ΔW",
                "Left: singular values (log scale). Right: cumulative explained variance (sum of σ² up to k over "
                "the total); the dotted line is 90%, where k90 is read.")
    rows = _spectrum_run(m.study, need_values=True)
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
