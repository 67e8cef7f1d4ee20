"""Uncertainty for every comparison a verdict counts: paired bootstrap intervals, verdicts at 95%, detectable effects.

    d = paired_difference(a, b)                 # a, b: (seeds, examples) per-example values of two checkpoints
    d.estimate, d.low, d.high, d.mde            # b - a of the aggregate, its 95% interval, the detectable effect
    d.verdict(+1)                               # "agree" if b - a > 0 at 95%, "disagree" if < 0, else "inconclusive"

Two checkpoints evaluated on the same examples differ by D = agg(b) - agg(a), where agg is the task's aggregate: the
mean of per-example values, or for token-level metrics the weighted mean (weights = tokens per document, so agg is a
ratio of sums). Its sampling distribution comes from the paired bootstrap (Efron & Tibshirani 1993, ch. 13; the
"paired bootstrap" of Koehn 2004 for MT): resample the examples with replacement, the same draw for both arms, and
recompute D; the 95% interval is the 2.5th and 97.5th percentiles of N_BOOT replicates. Pairing removes the
between-example variance the two arms share (a hard problem is hard for both), which is most of it. For pass@k the
examples are problems and the per-problem values are pass@k estimates, so problems are resampled.

With several training seeds per arm (an experiment's `seeds:`), each replicate also resamples the seeds of each arm
(a two-level bootstrap: seeds, then examples shared by both arms), so the interval carries the variation across
training runs too; with one seed it is the evaluation noise alone, which understates the uncertainty of a training
outcome (the report says so).

A verdict compares the interval with the direction the paper predicts: agree (excludes 0 on the predicted side),
disagree (excludes 0 on the other side) or inconclusive. The minimal detectable effect of a comparison is the
difference a two-sided 5% test would detect with 80% power: (z_0.975 + z_0.8) · SE = 2.80 · SE, SE the bootstrap
standard deviation of D.

Rank correlation (Spearman's rho) between two quantities over checkpoints, with a bootstrap interval over
checkpoints: does KL to the base predict forgetting? Student's t quantile (t975) for a mean over a few seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

N_BOOT = 2000  # bootstrap replicates: the 2.5% tail holds 50 of them
LEVEL = 0.95
MDE_Z = 1.959964 + 0.841621  # z_{0.975} + z_{0.80}: two-sided 5% test, 80% power
SEED = 0  # the bootstrap's own seed: the same data give the same interval
BLOCK = 250  # replicates drawn at a time: memory stays at BLOCK x seeds x examples numbers

Verdict = Literal["agree", "disagree", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A difference (or a correlation) with its 95% bootstrap interval."""

    estimate: float  # on the data as observed
    low: float
    high: float
    se: float  # bootstrap standard deviation
    n: int  # examples (or checkpoints, for a correlation) behind it
    seeds: int = 1  # training seeds per arm (the fewer of the two)
    p: float = float("nan")  # two-sided bootstrap p-value of "no difference" (nan where not a test of zero)

    @property
    def mde(self) -> float:
        """The smallest true difference this comparison detects with 80% power at 5% (two-sided)."""
        return MDE_Z * self.se

    def verdict(self, expected: int) -> Verdict:
        """expected +1: the paper predicts estimate > 0; -1: < 0."""
        if self.low > 0 or self.high < 0:
            return "agree" if (self.low > 0) == (expected > 0) else "disagree"
        return "inconclusive"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "se": self.se, "mde": self.mde,
                "n": self.n, "seeds": self.seeds, "p": self.p}


def _aggregate(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Mean over the last axis, or the weighted mean; values (..., n), weights (..., n) or (n,)."""
    if weights is None:
        return values.mean(axis=-1)
    return (values * weights).sum(axis=-1) / weights.sum(axis=-1)


@dataclass(frozen=True)
class Part:
    """One task of a comparison: per-example values of both arms on the same examples.

    a: (seeds_a, n) or (n,); b: (seeds_b, n) or (n,); example j is the same document in both; seed i of a task is
    the same training run in every part. weights: (n,), e.g. tokens per document for a token-weighted metric (then
    a and b hold per-document means)."""

    a: np.ndarray
    b: np.ndarray
    weights: np.ndarray | None = None


def paired_difference(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None, n_boot: int = N_BOOT,
                      seed: int = SEED) -> Interval:
    """agg(b) - agg(a) over the same examples, with its paired (and, with seeds, two-level) bootstrap interval."""
    return paired_difference_of([Part(a, b, weights)], n_boot, seed)


def paired_difference_of(parts: list[Part], n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """The mean over parts (tasks) of agg(b) - agg(a), with its bootstrap interval: each replicate draws the seeds
    of each arm once (a seed is one training run, whatever the task) and the examples of each part."""
    parts = [_checked(p) for p in parts]
    if not parts:
        raise ValueError("paired_difference_of needs at least one part")
    seeds_a, seeds_b = len(parts[0].a), len(parts[0].b)
    if any((len(p.a), len(p.b)) != (seeds_a, seeds_b) for p in parts):
        raise ValueError("every part of a comparison needs the same seeds in each arm")
    estimate = float(np.mean([_aggregate(p.b, p.weights).mean() - _aggregate(p.a, p.weights).mean()
                              for p in parts]))
    rng = np.random.default_rng(seed)
    diffs = np.concatenate([_replicates(parts, min(BLOCK, n_boot - start), rng)
                            for start in range(0, n_boot, BLOCK)])  # (R,)
    low, high = np.quantile(diffs, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))  # replicates across zero
    return Interval(estimate, float(low), float(high), float(diffs.std(ddof=1)),
                    sum(p_.a.shape[1] for p_ in parts), min(seeds_a, seeds_b), p)


def _checked(p: Part) -> Part:
    a, b = np.atleast_2d(np.asarray(p.a, dtype=float)), np.atleast_2d(np.asarray(p.b, dtype=float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"a paired comparison needs the same examples in both arms, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    return Part(a, b, None if p.weights is None else np.asarray(p.weights, dtype=float))


def _replicates(parts: list[Part], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` bootstrap replicates of the mean over parts of agg(b) - agg(a): per replicate, the seeds of each arm
    drawn once for all parts, and per part the examples, drawn once for both arms."""
    seeds = [rng.integers(0, len(x), size=(count, len(x))) for x in (parts[0].a, parts[0].b)]  # (R, S) each
    total = np.zeros(count)
    for p in parts:
        n = p.a.shape[1]
        idx = rng.integers(0, n, size=(count, n))  # (R, n): the examples of each replicate, shared by both arms
        wr = None if p.weights is None else p.weights[idx][:, None, :]  # (R, 1, n)
        arms = [_aggregate(x[s[:, :, None], idx[:, None, :]], wr).mean(axis=1)  # (R, S, n) -> (R,)
                for x, s in zip((p.a, p.b), seeds)]
        total += arms[1] - arms[0]
    return total / len(parts)


def level_interval(parts: list[tuple[np.ndarray, np.ndarray | None]], n_boot: int = N_BOOT,
                   seed: int = SEED) -> Interval:
    """One checkpoint's (or arm's) score with its bootstrap interval: the mean over parts (tasks) of agg(values),
    values (seeds, n) or (n,) with optional weights (n,); seeds and examples resampled as in paired_difference_of.
    What a figure's error bar shows."""
    zero = [Part(np.zeros_like(np.atleast_2d(np.asarray(v, dtype=float))[:1]), v, w) for v, w in parts]
    return paired_difference_of(zero, n_boot, seed)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_interval(x: np.ndarray, y: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Spearman's rho of paired observations (checkpoints) with a bootstrap interval over the pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"a rank correlation needs at least 3 pairs, got {len(x)}")
    rng = np.random.default_rng(seed)
    reps = np.array([spearman(x[i], y[i]) for i in rng.integers(0, len(x), size=(n_boot, len(x)))])
    reps = reps[~np.isnan(reps)]
    if len(reps) < n_boot // 2:  # most replicates drew a constant side: no interval to speak of
        return Interval(spearman(x, y), -1.0, 1.0, float("nan"), len(x))
    low, high = np.quantile(reps, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return Interval(spearman(x, y), float(low), float(high), float(reps.std(ddof=1)), len(x))


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t975(df: int) -> float:
    """Student's t 97.5% quantile with df degrees of freedom: the table, then the Cornish-Fisher expansion (within
    0.003 from 10 on). A mean over n seeds has the 95% half-width t975(n - 1) x its standard error."""
    if df in T_975:
        return T_975[df]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def holm(p_values: list[float], level: float = LEVEL) -> list[bool]:
    """Which of a family of tests stay significant after Holm's step-down correction (family-wise error 1 - level):
    the i-th smallest p must be <= (1 - level) / (m - i), and the first that is not stops the rest."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    keep = [False] * len(p_values)
    for i, j in enumerate(order):
        if p_values[j] > (1 - level) / (len(p_values) - i):
            break
        keep[j] = True
    return keep


def classify(verdicts: list[Verdict]) -> tuple[str, dict[str, int]]:
    """A claim's status from its comparisons' verdicts, and the counts.

    supported: some significant agreement and no significant disagreement; contradicted: the reverse; mixed: both;
    inconclusive: comparisons, none significant; not enough data: no comparison."""
    counts = {v: verdicts.count(v) for v in ("agree", "disagree", "inconclusive")}
    if not verdicts:
        return "not enough data", counts
    if counts["agree"] and counts["disagree"]:
        return "mixed", counts
    if counts["agree"]:
        return "supported", counts
    if counts["disagree"]:
        return "contradicted", counts
    return "inconclusive", counts
