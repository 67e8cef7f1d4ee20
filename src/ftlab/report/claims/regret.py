"""Findings of "LoRA Without Regret" (Schulman et al., Thinking Machines, 2025) checked on a study, with intervals.

    claim = regret_loss_curves(study)     # a Claim (ftlab.report.verdicts): status, counts, headline, mde, notes

LoRA matches full FT in a low-regret regime: its training loss tracks full FT's until the adapter's capacity runs
out, then the curves part; its best LR is about 10x full FT's (ftlab.report.claims.sweeps.best_lr checks that) and
nearly independent of rank; attention-only LoRA underperforms LoRA on all layers.

Where the curves part: d(s) = LoRA's training loss - full FT's at each logged step s both runs share (each group at
its best LR; per seed the curve of its longest run, averaged over seeds). Smooth d with a centred moving average over
w = max(3, steps / 10) steps; the noise of one step, σ, is the robust spread of d's step-to-step changes (1.4826 MAD
of the first differences / √2), so the smoothed gap's noise at a step is σ / √(steps in its window). The parting
step is the first from which the smoothed gap stays above Z_PART times that noise to the end of the run, with at
least w steps after it (a rise within the last window cannot be told from noise); "never" if there is none. Z_PART
is 3 rather than 1.96 because the tail is tested at every step. Its uncertainty: a bootstrap over the steps'
residuals around the smoothed gap (the same steps drawn for every rank of a setting, so the full-FT noise they share
stays shared), the parting step found again in each replicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlab.analysis.statistics import BLOCK, LEVEL, N_BOOT, SEED, Interval
from ftlab.report.claims.sweeps import (SHARE, TOL, best_lr_draws, bootstrap_comparison, edge_note, grid_note,
                                        target_comparisons)
from ftlab.report.select import LrSweep, analysed, best_lr_rows, lr_sweeps, plain_full, plain_lora
from ftlab.report.verdicts import Claim, Comparison, decided
from ftlab.results.study import Row, Study

REGRET = "Schulman et al. 2025"
RANK_SPREAD = 2.0  # "nearly independent of rank": the ranks' best LRs within a factor of 2
Z_PART = 3.0  # the smoothed gap must exceed this many of its standard errors from the parting step on
WINDOW_SHARE = 0.1  # the smoothing window: a tenth of the steps (at least 3)
CELLS = 2_000_000  # numbers per bootstrap block (replicates x ranks x steps): memory stays at tens of MB


# ----------------------------------------------------------------------------- best LR independent of rank


PARAMETRIZATION_NOTE = (
    "Schulman et al. scale LoRA by a fixed alpha over r (1/r), under which the update's size at a given LR does not grow "
    "with the rank; these ranks use the paper's alpha = 2r (a fixed scale of 2), under which a higher rank takes larger "
    "steps at the same LR, so a best LR falling with rank is what this parametrization predicts")


def regret_best_lr_rank_independent(study: Study) -> Claim:
    claim = Claim(
        "regret_best_lr_rank_independent", "LoRA's best learning rate is nearly independent of its rank.", REGRET,
        "Per setting and optimizer, the plain LoRA ranks (all modules, α = 2r) with an LR sweep of at least 2 LRs: "
        "max / min of their best LRs, each fitted as for best_lr. Bootstrap as for best_lr (documents shared by every "
        f"LR, seeds resampled, fitted again): agree if the spread is <= {RANK_SPREAD:g}x in >= 95% of replicates, "
        "disagree if above in >= 95%, else inconclusive (Holm-corrected). A best LR at the edge of its sweep is only "
        "a bound: such a replicate counts only if the bound alone decides.",
        "best-LR spread over ranks (max / min)")
    sweeps = lr_sweeps(study.points())
    ladders: dict[tuple[str, str], list[LrSweep]] = {}
    for s in sweeps.values():
        if plain_lora(s.first):
            ladders.setdefault((s.setting, s.optimizer), []).append(s)
    comparisons, used = [], []
    for (setting, optimizer), ladder in sorted(ladders.items()):
        ladder.sort(key=lambda s: s.first.rank)
        draws = best_lr_draws(study, ladder) if len(ladder) >= 2 else None
        if draws is None:
            continue
        used += ladder
        best = np.stack(draws.fitted, axis=1)  # (B, ranks)
        spread = best.max(axis=1) / best.min(axis=1)  # (B,)
        low, high = np.stack(draws.low, axis=1), np.stack(draws.high, axis=1)  # (B, ranks): where each can lie
        with np.errstate(divide="ignore", invalid="ignore"):
            most = high.max(axis=1) / low.min(axis=1)  # (B,): the widest spread the bounds allow
            least = np.maximum(low.max(axis=1) / high.min(axis=1), 1.0)  # the narrowest
        observed = draws.observed
        comparisons.append(bootstrap_comparison(
            f"best LR across LoRA ranks {', '.join(str(s.first.rank) for s in ladder)} ({setting})",
            "best-LR spread", max(observed) / min(observed), spread, most <= RANK_SPREAD * (1 + TOL), draws.n,
            draws.seeds, least > RANK_SPREAD * (1 + TOL), setting=setting, optimizer=optimizer,
            best_lrs={str(s.first.rank): s.best for s in ladder},
            fitted_lrs={str(s.first.rank): f for s, f in zip(ladder, observed)},
            lrs={str(s.first.rank): s.lrs for s in ladder},
            at_sweep_edge=[s.group for s in ladder if s.at_edge]))
    claim.notes += edge_note(used) + grid_note(used)
    if used:
        claim.notes.append(PARAMETRIZATION_NOTE)
    return decided(claim, comparisons, "not enough data: needs an LR sweep (learning at 2 or more LRs) of two or "
                   "more LoRA ranks in one setting and optimizer"
                   + (f"; ranks swept: {', '.join(f'{s.group} ({s.setting})' for ss in ladders.values() for s in ss)}"
                      if ladders else ""))


# ----------------------------------------------------------------------------- where the loss curves part


@dataclass
class Curve:
    """A group's training loss at its logged steps (mean over seeds)."""

    steps: np.ndarray  # (n,) int
    loss: np.ndarray  # (n,)
    seeds: int


def group_curve(study: Study, rows: list[Row]) -> Curve | None:
    """The training curve of one group at one LR in one setting: per seed, its longest run's curve (the runs of a
    seed in duration order; a shorter IFT run has its own schedule, a CPT budget branches off the long run), then
    the mean over seeds at the steps all of them logged."""
    by_seed: dict[int, list[Row]] = {}
    for r in rows:
        by_seed.setdefault(r.seed, []).append(r)
    curves = []
    for _, runs in sorted(by_seed.items()):
        for r in sorted(runs, key=lambda r: -np.inf if r.duration is None else r.duration, reverse=True):
            points = {p.step: p.loss for p in study.curves.get(r.run, []) if p.loss is not None}
            if points:
                curves.append(points)
                break
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return Curve(np.array(steps), np.array([[c[s] for s in steps] for c in curves]).mean(axis=0), len(curves))


def window(n: int) -> int:
    return max(3, int(round(n * WINDOW_SHARE)))


def _smooth(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred moving average over the last axis (w steps, fewer at the ends) and how many steps each one holds."""
    n, half = x.shape[-1], w // 2
    c = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, axis=-1)], axis=-1)  # (..., n + 1)
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + (w - half), 0, n)
    return (c[..., hi] - c[..., lo]) / (hi - lo), hi - lo


def _noise(d: np.ndarray) -> np.ndarray:
    """One step's noise in the gap: the robust spread of its step-to-step changes (1.4826 MAD / √2), (...,)."""
    diff = np.diff(d, axis=-1)  # (..., n - 1)
    mad = np.median(np.abs(diff - np.median(diff, axis=-1, keepdims=True)), axis=-1)
    return 1.4826 * mad / np.sqrt(2)


def parting_index(d: np.ndarray, w: int) -> np.ndarray:
    """d (..., n): the gap LoRA - full FT per step -> the index of the parting step (n: never), (...,)."""
    n = d.shape[-1]
    smooth, count = _smooth(d, w)
    above = smooth > Z_PART * _noise(d)[..., None] / np.sqrt(count)  # (..., n)
    stays = np.flip(np.cumprod(np.flip(above, axis=-1), axis=-1), axis=-1).astype(bool)  # above from here to the end
    first = np.argmax(stays, axis=-1)
    return np.where(stays[..., -1] & (first <= n - w), first, n)  # a parting needs a window of steps after it


def parting_draws(gaps: np.ndarray, w: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """gaps (K, n) of K ranks -> (n_boot, K) parting indices under the residual bootstrap (one draw of steps shared
    by the K ranks) around a trend smoothed over a quarter of the window (the detection smooths each replicate over
    w again; a trend smoothed over w already would move the parting earlier by half a window). Residuals are scaled by
    √(f / (f - 1)), f the trend's window: a moving average absorbs part of each step's noise."""
    fit = max(3, w // 4)  # the trend replicates are built on: smoothing it with w again would blur the parting
    trend, _ = _smooth(gaps, fit)
    resid = (gaps - trend) * np.sqrt(fit / (fit - 1))
    rng = np.random.default_rng(seed)
    n = gaps.shape[1]
    block = max(1, min(BLOCK, CELLS // gaps.size))  # a paper-scale run logs ~25,000 steps
    out = []
    for start in range(0, n_boot, block):
        idx = rng.integers(0, n, size=(min(block, n_boot - start), n))  # (b, n)
        out.append(parting_index(trend[None] + resid[:, idx].transpose(1, 0, 2), w))  # (b, K, n) -> (b, K)
    return np.concatenate(out)


def regret_loss_curves(study: Study) -> Claim:
    claim = Claim(
        "regret_loss_curves", "LoRA's training loss tracks full FT's until its capacity runs out: the curves part, "
        "later (or never) for a higher rank.", REGRET,
        f"Per setting and optimizer, each plain LoRA rank vs plain full FT, each at its best LR (per seed the curve "
        f"of its longest run): the parting step is the first step from which the gap (LoRA - full FT training loss, "
        f"smoothed over a tenth of the steps) stays above {Z_PART:g} times its noise (estimated from the gap's "
        "step-to-step changes) to the end; never if it does not. Each adjacent rank pair: agree if the higher rank "
        "parts later (or never) in >= 95% of 2000 bootstrap replicates (residuals around the smoothed gap, the same "
        "steps for every rank), disagree if earlier in >= 95%, else inconclusive; parting steps within half the "
        "window count as a tie, and a parting needs a window of steps after it.", "parting step")
    rows = best_lr_rows(analysed(study))
    comparisons, reasons = [], []
    for setting, optimizer in sorted({(r.setting, r.optimizer) for r in rows}):
        here = [r for r in rows if (r.setting, r.optimizer) == (setting, optimizer)]
        found, note = _parting(study, here)
        comparisons += found
        (claim.notes if found or note.startswith("parting") else reasons).append(note)
    return decided(claim, comparisons, "not enough data: needs training curves of plain full FT and of two or more "
                   "plain LoRA ranks in one setting and optimizer" + "".join(f"; {r}" for r in reasons))


def _parting(study: Study, rows: list[Row]) -> tuple[list[Comparison], str]:
    """The adjacent-rank comparisons of one setting and optimizer, and a note: each rank's parting step (or what is
    missing)."""
    setting = rows[0].setting
    full = group_curve(study, plain_full(rows))
    ranks: dict[int, list[Row]] = {}
    for r in rows:
        if plain_lora(r):
            ranks.setdefault(r.rank, []).append(r)
    curves = {k: c for k, c in ((k, group_curve(study, rs)) for k, rs in sorted(ranks.items())) if c is not None}
    if full is None or not curves:
        return [], f"{setting}: no training curve of {'plain full FT' if full is None else 'plain LoRA'}"
    steps = sorted(set(full.steps).intersection(*(set(c.steps) for c in curves.values())))
    if len(steps) < 2 * window(len(steps)):
        return [], f"{setting}: only {len(steps)} training steps logged by every curve"
    w, n = window(len(steps)), len(steps)
    gaps = np.stack([_on(c, steps) - _on(full, steps) for c in curves.values()])  # (K, n)
    observed = parting_index(gaps, w)  # (K,)
    draws = parting_draws(gaps, w)  # (B, K)
    past = steps[-1] + (steps[-1] - steps[-2])  # "never" as one logged step past the end
    to_step = np.append(np.asarray(steps, dtype=float), past)
    shown = ", ".join(f"r={k} {'never' if i == n else f'at step {steps[i]}'}" for k, i in zip(curves, observed))
    note = (f"parting steps ({setting}, {n} steps {steps[0]}-{steps[-1]}, window {w}, noise "
            f"{float(_noise(gaps).mean()):.2g} per step): {shown}")
    comparisons = []
    ks = list(curves)
    for j in range(1, len(ks)):
        lo, hi = draws[:, j - 1], draws[:, j]
        later = (hi > lo + w // 2) | (hi == n)
        earlier = hi < lo - w // 2
        verdict = "agree" if later.mean() >= SHARE else "disagree" if earlier.mean() >= SHARE else "inconclusive"
        diff = to_step[hi] - to_step[lo]
        low, high = np.quantile(diff, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
        estimate = float(to_step[observed[j]] - to_step[observed[j - 1]])
        interval = Interval(estimate, float(low), float(high), float(diff.std(ddof=1)), n,
                            min(full.seeds, curves[ks[j]].seeds, curves[ks[j - 1]].seeds),
                            1 - max(float(later.mean()), float(earlier.mean())))
        comparisons.append(Comparison(
            f"LoRA r={ks[j]} vs r={ks[j - 1]}: where each parts from full FT ({setting})", "parting step", +1,
            interval, verdict,
            {"setting": setting, "ranks": [ks[j - 1], ks[j]], "window": w,
             "parting_step": {str(k): None if i == n else int(steps[i]) for k, i in zip(ks, observed)},
             "share_later": float(later.mean()), "share_earlier": float(earlier.mean())}, test="share"))
    return comparisons, note


def _on(curve: Curve, steps: list[int]) -> np.ndarray:
    """A curve's loss at the given steps (all of them logged by it)."""
    at = {int(s): i for i, s in enumerate(curve.steps)}
    return curve.loss[[at[int(s)] for s in steps]]


# ----------------------------------------------------------------------------- attention-only underperforms


def regret_attention_only(study: Study) -> Claim:
    claim = Claim(
        "regret_attention_only", "Attention-only LoRA underperforms LoRA on all layers (MLP included) at the same "
        "rank.", REGRET,
        "For each pair of LoRA arms of one rank, alpha, setting, optimizer and duration with targets attn and all "
        "(each at its best LR): attn vs all on learning, paired 95% interval; agree if attention-only learns less.",
        "learning")
    return decided(claim, target_comparisons(study, ("all",)), "not enough data: needs attention-only LoRA (targets: "
                   "attn) beside all-module LoRA of the same rank, setting and duration")


REGRET_CHECKS = (regret_best_lr_rank_independent, regret_loss_curves, regret_attention_only)
