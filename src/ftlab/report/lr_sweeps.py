"""LR sweeps and the uncertainty of their argmax: which LR learned most, and how sure the study is of it.

    sweeps = lr_sweeps(study.points())             # (setting, group) -> LrSweep: LRs tried, rows, best LR
    draws = best_lr_draws(study, [full, lora])      # each sweep's best LR in 2000 bootstrap replicates

A best LR is an argmax, so it has no paired difference to bootstrap; instead each replicate resamples the learning
tasks' documents (one draw for every LR of every sweep given, so the sweeps stay paired) and each LR's seeds,
recomputes each LR's learning at its sweep's duration and takes the argmax again. A finding about best LRs (a ratio
of two, a spread over ranks) is then decided by the share of replicates inside the paper's range
(bootstrap_comparison). The LR grid bounds the resolution: a best LR is known only to the grid's step, and one at the
edge of its sweep may lie beyond it (edge_note, grid_note say so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlab.analysis.statistics import BLOCK, LEVEL, N_BOOT, SEED, Interval
from ftlab.report.verdicts import Comparison, shared_values
from ftlab.results.rows import Row, Study, best_lrs, sweep_duration

SHARE = 0.95  # a bootstrap verdict needs this share of its replicates on one side


@dataclass
class LrSweep:
    """One group's LR sweep in a setting: the LRs tried (ascending), each LR's rows at the sweep's duration (one per
    seed) and the best LR (rows.best_lrs)."""

    setting: str
    group: str
    optimizer: str
    duration: float
    lrs: list[float]
    rows: list[list[Row]]  # rows[i]: LR i's rows at `duration`
    best: float

    @property
    def at_edge(self) -> bool:
        """The best LR is the lowest or highest tried: the true best may lie beyond the sweep."""
        return self.best in (self.lrs[0], self.lrs[-1])

    @property
    def first(self) -> Row:
        return self.rows[0][0]


def lr_sweeps(rows: list[Row]) -> dict[tuple[str, str], LrSweep]:
    """(setting, group) -> its LR sweep, for groups with learning at two or more LRs at a common duration (the
    longest all of them reached, as rows.best_lrs picks). A group the study swept (its lr_sweep's runs, grp
    "lr-sweep") is read on those runs alone, as the study picked its LR; any other on all its rows."""
    swept = {(r.setting, r.group) for r in rows if r.grp == "lr-sweep"}
    scored = [r for r in rows if r.learning is not None and r.lr is not None
              and ((r.setting, r.group) not in swept or r.grp == "lr-sweep")]
    best = best_lrs(scored)
    by: dict[tuple[str, str], dict[float, list[Row]]] = {}
    for r in scored:
        by.setdefault((r.setting, r.group), {}).setdefault(r.lr, []).append(r)
    out = {}
    for key, by_lr in sorted(by.items()):
        duration = sweep_duration({lr: {r.duration: r.learning for r in rs} for lr, rs in by_lr.items()})
        if len(by_lr) < 2 or duration is None:
            continue
        lrs = sorted(by_lr)
        at_d = [sorted((r for r in by_lr[lr] if r.duration == duration), key=lambda r: r.seed) for lr in lrs]
        out[key] = LrSweep(key[0], key[1], at_d[0][0].optimizer, duration, lrs, at_d, best[key])
    return out


@dataclass
class Draws:
    """Each sweep's best LR in every bootstrap replicate, and what the replicates resampled."""

    best: list[np.ndarray]  # per sweep: (n_boot,) best LR of each replicate
    n: int  # documents resampled (summed over learning tasks)
    seeds: int  # the fewest seeds of any LR


def best_lr_draws(study: Study, sweeps: list[LrSweep], n_boot: int = N_BOOT, seed: int = SEED) -> Draws | None:
    """The sweeps' best LRs under a bootstrap over the learning tasks' documents (one draw shared by every LR of every
    sweep given) and each LR's seeds; None when the rows share no per-example learning values."""
    rows = [r for s in sweeps for rs in s.rows for r in rs]
    found = shared_values(study, rows, "learning")
    if not found:
        return None
    rng = np.random.default_rng(seed)
    learning = np.zeros((n_boot, len(rows)))  # (B, R): each row's learning in each replicate
    for values, weights in found:  # values (R, n), weights (n,) or None
        n = values.shape[1]
        for start in range(0, n_boot, BLOCK):
            count = min(BLOCK, n_boot - start)
            idx = rng.integers(0, n, size=(count, n))  # (b, n): the same documents for every row
            picked = values[:, idx]  # (R, b, n)
            agg = picked.mean(-1) if weights is None else (picked * weights[idx]).sum(-1) / weights[idx].sum(-1)
            learning[start:start + count] += agg.T / len(found)  # mean over tasks, as Row.learning
    best, col = [], 0
    for s in sweeps:
        per_lr = []
        for rs in s.rows:
            pick = col + rng.integers(0, len(rs), size=(n_boot, len(rs)))  # (B, seeds): seeds resampled
            per_lr.append(np.take_along_axis(learning, pick, axis=1).mean(axis=1))  # (B,)
            col += len(rs)
        best.append(np.asarray(s.lrs)[np.argmax(np.stack(per_lr, axis=1), axis=1)])  # ties: the smaller LR
    return Draws(best, sum(v.shape[1] for v, _ in found), min(len(rs) for s in sweeps for rs in s.rows))


def edge_note(sweeps: list[LrSweep]) -> list[str]:
    """A note naming the best LRs at the edge of their sweep."""
    edges = [f"{s.group} {s.best:g} ({'lowest' if s.best == s.lrs[0] else 'highest'} of {len(s.lrs)} tried, "
             f"{s.setting})" for s in sweeps if s.at_edge]
    return [f"best LR at the edge of its sweep, so the true best may lie beyond it: {'; '.join(edges)}"] if edges \
        else []


def grid_note(sweeps: list[LrSweep]) -> list[str]:
    """The LR grids' resolution: an argmax is known only to the grid's step."""
    steps = [b / a for s in sweeps for a, b in zip(s.lrs, s.lrs[1:])]
    return [f"the LR grids step by {min(steps):.3g}x-{max(steps):.3g}x: a best LR (and a ratio of two) is resolved "
            "only to that factor"] if steps else []


def bootstrap_comparison(what: str, instrument: str, estimate: float, draws: np.ndarray, inside: np.ndarray,
                         n: int, seeds: int, **detail) -> Comparison:
    """A comparison decided by the share of bootstrap replicates inside the paper's range (`inside`, boolean per
    replicate): agree with >= 95% inside, disagree with >= 95% outside, else inconclusive. The interval is the
    replicates' 95% percentile interval; no standard error (hence no detectable effect) for an argmax's ratio."""
    share = float(np.mean(inside))
    verdict = "agree" if share >= SHARE else "disagree" if 1 - share >= SHARE else "inconclusive"
    low, high = np.quantile(draws, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return Comparison(what, instrument, +1, Interval(float(estimate), float(low), float(high), float("nan"), n, seeds),
                      verdict, {"share_inside": share, **detail})
