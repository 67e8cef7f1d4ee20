"""Uncertainty for every comparison a verdict counts: paired bootstrap standard errors, run-to-run variance from
seeds, verdicts at 95%, detectable effects at the level a family of tests demands.

    d = paired_difference(a, b)                 # a, b: (seeds, examples) per-example values of two checkpoints
    d.estimate, d.low, d.high, d.p              # b - a of the aggregate, its 95% interval, the p of "no difference"
    d.verdict(+1)                               # "agree" if b - a > 0 at 95%, "disagree" if < 0, else "inconclusive"
    d.mde_at(m)                                 # the effect detected with 80% power at Holm's level over m tests
    contrast(tasks, (1, -1.25, 0.25))           # any linear combination of arms on shared examples (a margin test)

Two checkpoints evaluated on the same examples differ by D = agg(b) - agg(a), where agg is the task's aggregate: the
mean of per-example values, or for token-level metrics the weighted mean (weights = tokens per document, so agg is a
ratio of sums). Its evaluation noise comes from the paired bootstrap (Efron & Tibshirani 1993, ch. 13; the "paired
bootstrap" of Koehn 2004 for MT): resample the examples with replacement, the same draw for both arms, and recompute
D; SE_eval is the replicates' standard deviation, scaled by sqrt(n / (n - 1)) (the bootstrap's plug-in variance is
short by that factor). Pairing removes the between-example variance the two arms share (a hard problem is hard for
both), which is most of it. For pass@k the examples are problems, so problems are resampled.

Training seeds (an experiment's `seeds:`). With MIN_SEEDS (3) or more seeds in every trained arm, the run-to-run
variance is estimated from the seeds' own aggregates, s_a^2 / S_a + s_b^2 / S_b, and added to SE_eval^2 (the
examples are resampled on the seeds' mean); the interval is D +- t(df) SE with Welch-Satterthwaite's df (S - 1 per
arm; SE_eval counts as exact), and p is the t test's. A resampling of 2 seeds would understate their variance by
(S - 1) / S and a t with 1 df is useless, so below 3 seeds the interval is the evaluation noise alone (D +- 1.96
SE_eval on the seeds' mean), which understates the uncertainty of a training outcome: `Interval.runs` is False and
the report says the verdict rests on evaluation noise only. A base model is not a training outcome: an arm marked
`fixed` has no run-to-run variance.

A verdict compares the interval with the direction the paper predicts: agree (excludes 0 on the predicted side),
disagree (excludes 0 on the other side) or inconclusive. The minimal detectable effect of a comparison in a family of
m tests corrected by Holm is the true difference detected with 80% power at Holm's strictest level, 5% / m
two-sided: (q(1 - 0.025 / m) + q(0.8)) SE, q the normal (or t(df)) quantile: 2.80 SE for one test, 3.61 SE for nine.

Rank correlation (Spearman's rho) between two quantities, with a bootstrap interval over clusters (the runs whose
checkpoints are not independent), within strata (methods): does KL to the base predict forgetting? Student's t
quantiles and tail probabilities (the regularized incomplete beta function; no SciPy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

N_BOOT = 2000  # bootstrap replicates: the 2.5% tail holds 50 of them
LEVEL = 0.95
POWER = 0.80
SEED = 0  # the bootstrap's own seed: the same data give the same interval
BLOCK = 250  # replicates drawn at a time: memory stays at BLOCK x seeds x examples numbers
MIN_SEEDS = 3  # seeds per trained arm from which the run-to-run variance is estimated

Verdict = Literal["agree", "disagree", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A difference (or a correlation) with its 95% interval."""

    estimate: float  # on the data as observed
    low: float
    high: float
    se: float  # standard error (evaluation noise, plus the run-to-run variance when `runs`)
    n: int  # examples (or checkpoints, for a correlation) behind it
    seeds: int = 1  # training seeds per trained arm (the fewest)
    p: float = float("nan")  # two-sided p-value of "no difference" (nan where not a test of zero)
    df: float = math.inf  # degrees of freedom of the t behind the interval (inf: normal)
    runs: bool = False  # the run-to-run variance is in se (>= MIN_SEEDS seeds in every trained arm)

    @property
    def mde(self) -> float:
        """The smallest true difference this comparison detects with 80% power at 5% (two-sided); nan when the
        standard error is 0 (no spread: not estimable) or unknown."""
        return self.mde_at(1)

    def mde_at(self, m: int) -> float:
        """The detectable effect at Holm's strictest level over a family of m tests (5% / m two-sided)."""
        if not np.isfinite(self.se) or self.se <= 0:
            return float("nan")
        return (t_quantile(1 - (1 - LEVEL) / (2 * max(m, 1)), self.df) + t_quantile(POWER, self.df)) * self.se

    def verdict(self, expected: int) -> Verdict:
        """expected +1: the paper predicts estimate > 0; -1: < 0."""
        if self.low > 0 or self.high < 0:
            return "agree" if (self.low > 0) == (expected > 0) else "disagree"
        return "inconclusive"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "se": self.se, "mde": self.mde,
                "n": self.n, "seeds": self.seeds, "p": self.p, "df": self.df, "runs": self.runs}


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
                      seed: int = SEED, fixed: tuple[bool, bool] = (False, False)) -> Interval:
    """agg(b) - agg(a) over the same examples, with its interval (see paired_difference_of)."""
    return paired_difference_of([Part(a, b, weights)], n_boot, seed, fixed)


def paired_difference_of(parts: list[Part], n_boot: int = N_BOOT, seed: int = SEED,
                         fixed: tuple[bool, bool] = (False, False)) -> Interval:
    """The mean over parts (tasks) of agg(b) - agg(a), with its interval (contrast with coefficients -1, +1)."""
    parts = [_checked(p) for p in parts]
    if not parts:
        raise ValueError("paired_difference_of needs at least one part")
    if any((len(p.a), len(p.b)) != (len(parts[0].a), len(parts[0].b)) for p in parts):
        raise ValueError("every part of a comparison needs the same seeds in each arm")
    return contrast([([p.a, p.b], p.weights) for p in parts], (-1.0, 1.0), n_boot, seed, fixed)


def contrast(tasks: list[tuple[list[np.ndarray], np.ndarray | None]], coefs: tuple[float, ...], n_boot: int = N_BOOT,
             seed: int = SEED, fixed: tuple[bool, ...] | None = None) -> Interval:
    """sum_k coefs[k] agg(arm k), mean over tasks, with its interval: the paired bootstrap over each task's examples
    (one draw for every arm) for the evaluation noise, and with MIN_SEEDS or more seeds in every trained arm the
    seeds' variance. tasks: per task ([arm k's values (S_k, n)], weights (n,) or None); seed i of an arm is the same
    training run in every task. fixed: which arms are not training outcomes (a base model)."""
    fixed = fixed or (False,) * len(coefs)
    per_seed = [np.mean([_aggregate(arms[k], w) for arms, w in tasks], axis=0) for k in range(len(coefs))]  # (S_k,)
    estimate = float(sum(c * x.mean() for c, x in zip(coefs, per_seed)))
    means = [([x.mean(axis=0) for x in arms], w) for arms, w in tasks]
    rng = np.random.default_rng(seed)
    diffs = np.concatenate([_replicates(means, coefs, min(BLOCK, n_boot - start), rng)
                            for start in range(0, n_boot, BLOCK)])  # (R,)
    n_min = min(arms[0].shape[1] for arms, _ in tasks)
    se_eval = float(diffs.std(ddof=1)) * math.sqrt(n_min / (n_min - 1)) if n_min > 1 else 0.0
    trained = [(c, x) for c, x, f in zip(coefs, per_seed, fixed) if not f and c != 0]
    seeds = min((len(x) for _, x in trained), default=1)
    runs = bool(trained) and seeds >= MIN_SEEDS
    var, df = se_eval**2, math.inf
    if runs:
        run_vars = [(c * c * float(x.var(ddof=1)) / len(x), len(x)) for c, x in trained]  # c^2 s^2 / S per arm
        var += sum(v for v, _ in run_vars)
        below = sum(v**2 / (k - 1) for v, k in run_vars)  # Welch-Satterthwaite
        df = var**2 / below if below > 0 else math.inf
    se = math.sqrt(var)
    half = t_quantile(1 - (1 - LEVEL) / 2, df) * se
    p = 2 * t_sf(abs(estimate) / se, df) if se > 0 else float(estimate == 0)
    return Interval(estimate, estimate - half, estimate + half, se, sum(arms[0].shape[1] for arms, _ in tasks), seeds,
                    min(1.0, p), df, runs)


def _checked(p: Part) -> Part:
    a, b = np.atleast_2d(np.asarray(p.a, dtype=float)), np.atleast_2d(np.asarray(p.b, dtype=float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"a paired comparison needs the same examples in both arms, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    return Part(a, b, None if p.weights is None else np.asarray(p.weights, dtype=float))


def _replicates(tasks: list[tuple[list[np.ndarray], np.ndarray | None]], coefs: tuple[float, ...], count: int,
                rng: np.random.Generator) -> np.ndarray:
    """`count` bootstrap replicates of the mean over tasks of sum_k coefs[k] agg(arm k), each arm (n,) (the seeds'
    mean): per task the examples, drawn once for every arm."""
    total = np.zeros(count)
    for arms, w in tasks:
        n = arms[0].shape[0]
        idx = rng.integers(0, n, size=(count, n))  # (R, n): the examples of each replicate, shared by every arm
        wr = None if w is None else w[idx]  # (R, n)
        total += sum(c * _aggregate(x[idx], wr) for c, x in zip(coefs, arms) if c != 0)
    return total / len(tasks)


def level_interval(parts: list[tuple[np.ndarray, np.ndarray | None]], n_boot: int = N_BOOT,
                   seed: int = SEED) -> Interval:
    """One checkpoint's (or arm's) score with its interval: the mean over parts (tasks) of agg(values), values
    (seeds, n) or (n,) with optional weights (n,); examples resampled, seeds' variance as in paired_difference_of.
    What a figure's error bar shows."""
    zero = [Part(np.zeros_like(np.atleast_2d(np.asarray(v, dtype=float))[:1]), v, w) for v, w in parts]
    return paired_difference_of(zero, n_boot, seed, fixed=(True, False))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_interval(x: np.ndarray, y: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Spearman's rho of independent paired observations with a bootstrap interval over the pairs."""
    x = np.asarray(x, dtype=float)
    return clustered_spearman(x, y, np.arange(len(x)), np.zeros(len(x), dtype=int), n_boot, seed)


def clustered_spearman(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, strata: np.ndarray,
                       n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """The mean over strata (e.g. methods) of Spearman's rho within each, weighted by its observations, with a
    cluster bootstrap: each replicate draws, within each stratum, its clusters (e.g. training runs, whose
    checkpoints are not independent) with replacement and keeps all their observations. n: the clusters."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    clusters, strata = np.asarray(clusters), np.asarray(strata)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"a rank correlation needs at least 3 pairs, got {len(x)}")
    rng = np.random.default_rng(seed)
    total, weight, estimate, est_weight = np.zeros(n_boot), np.zeros(n_boot), 0.0, 0
    n = 0
    for s in np.unique(strata):
        groups = [np.flatnonzero((strata == s) & (clusters == c)) for c in np.unique(clusters[strata == s])]
        n += len(groups)
        every = np.concatenate(groups)
        if len(every) < 3:
            continue
        r = spearman(x[every], y[every])
        if np.isfinite(r):
            estimate, est_weight = estimate + r * len(every), est_weight + len(every)
        draws = rng.integers(0, len(groups), size=(n_boot, len(groups)))  # (B, C): the clusters of each replicate
        reps = _spearman_draws(x, y, groups, draws)  # (B,)
        ok = np.isfinite(reps)
        total[ok] += reps[ok] * len(every)
        weight[ok] += len(every)
    estimate = estimate / est_weight if est_weight else float("nan")
    reps = total[weight > 0] / weight[weight > 0]
    if len(reps) < n_boot // 2:  # most replicates drew a constant side: no interval to speak of
        return Interval(estimate, -1.0, 1.0, float("nan"), n, p=1.0, runs=True)
    low, high = np.quantile(reps, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    p = min(1.0, 2 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return Interval(estimate, float(low), float(high), float("nan"), n, p=p, runs=True)  # the runs resampled


def _spearman_draws(x: np.ndarray, y: np.ndarray, groups: list[np.ndarray], draws: np.ndarray) -> np.ndarray:
    """Spearman's rho of each replicate's observations, (B,): vectorized when the clusters are of one size."""
    if len({len(g) for g in groups}) > 1:
        return np.array([spearman(x[i], y[i]) for i in (np.concatenate([groups[j] for j in row]) for row in draws)])
    obs = np.stack(groups)[draws].reshape(len(draws), -1)  # (B, m)
    rx, ry = _row_ranks(x[obs]), _row_ranks(y[obs])
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _row_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks within each row of v (B, m), ties given their average rank."""
    b, m = v.shape
    lo, span = v.min(), v.max() - v.min()
    keyed = (v - lo) / (span if span > 0 else 1.0) + 2.0 * np.arange(b)[:, None]  # rows apart, order kept
    flat = np.sort(keyed.ravel())
    first = np.searchsorted(flat, keyed, side="left") - m * np.arange(b)[:, None]
    last = np.searchsorted(flat, keyed, side="right") - m * np.arange(b)[:, None]
    return (first + last + 1) / 2


# ----------------------------------------------------------------------------- Student's t, without SciPy


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom (df inf: the normal)."""
    if not math.isfinite(df) or df > 1e7:
        return 1 - NormalDist().cdf(t)
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (df inf: the normal's), by bisection on t_sf."""
    z = NormalDist().inv_cdf(q)
    if not math.isfinite(df) or df > 1e7:
        return z
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, max(1.0, 2 * z)
    while t_sf(hi, df) > 1 - q:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf(mid, df) > 1 - q else (lo, mid)
    return (lo + hi) / 2


def t975(df: float) -> float:
    """Student's t 97.5% quantile: a mean over n seeds has the 95% half-width t975(n - 1) x its standard error."""
    return t_quantile(0.975, df)


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
    p_values = [1.0 if not np.isfinite(p) else p for p in p_values]  # no p: never significant
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    keep = [False] * len(p_values)
    for i, j in enumerate(order):
        if p_values[j] > (1 - level) / (len(p_values) - i):
            break
        keep[j] = True
    return keep


Rule = Literal["any", "all", "most"]


def classify(verdicts: list[Verdict], rule: Rule = "any") -> tuple[str, dict[str, int]]:
    """A claim's status from its comparisons' verdicts, and the counts.

    rule "any" (a finding that holds comparison by comparison): supported with some significant agreement and no
    significant disagreement; contradicted the reverse; mixed both; inconclusive: comparisons, none significant.
    rule "all" (an equivalence over every comparison, the intersection-union test: each at 5% keeps the claim at
    5%): supported only if every comparison agrees; contradicted if some disagree and none agree.
    rule "most" (an ordering, a chain of links): supported if more than half the links agree and none disagrees;
    contradicted if more than half disagree and none agrees. Not enough data: no comparison."""
    counts = {v: verdicts.count(v) for v in ("agree", "disagree", "inconclusive")}
    if not verdicts:
        return "not enough data", counts
    if counts["agree"] and counts["disagree"]:
        return "mixed", counts
    need = {"any": 1, "all": len(verdicts), "most": len(verdicts) // 2 + 1}[rule]
    if counts["agree"] >= need:
        return "supported", counts
    if counts["disagree"] >= (1 if rule == "all" else need):
        return "contradicted", counts
    return "inconclusive", counts
