"""What every report figure shares: the Plot record, figure and PNG helpers, the colours, grouping, Pareto.

PNGs are deterministic for the same input (no timestamp or software metadata). Colours follow the paper's
convention: full FT red, LoRA ranks a sequential blue palette (light = small rank); regularized full FT oranges
(weight decay) and greens (attention dropout).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftlab.errors import FtlabError
from ftlab.report.measures import group_order
from ftlab.results.rows import Row, plain_full

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
        raise FtlabError("the report's figures need matplotlib (an ftlab dependency): pip install matplotlib") from None
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


def _legend(axes: list, **kw) -> None:
    """A legend on the first of `axes` that has labelled artists (none when none has: a panel left empty)."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**kw)
            return


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


def _by_group(rows: list[Row]) -> dict[str, list[Row]]:
    """group -> its rows sorted by duration, groups in group_order."""
    out: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: (*group_order(r), r.duration or 0)):
        out.setdefault(r.group, []).append(r)
    return out


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (source score, learning) no other point beats on both (both maximized), by source score."""
    front, best = [], float("-inf")
    for f, l in sorted(points, key=lambda p: (-p[0], -p[1])):
        if l > best:
            front.append((f, l))
            best = l
    return sorted(front)
