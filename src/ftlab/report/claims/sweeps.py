"""Findings of Biderman et al. 2024 that need side studies: an LR sweep (LoRA's best LR about 10x full FT's), an
alpha sweep (α = 2r learns best), a target-module sweep (attention-only LoRA learns least), IFT beside CPT on one
base model (IFT forgets more) and long CPT budgets (LoRA r=256 at 20B tokens learns about as much as full FT at 4B).

    claim = best_lr(study)      # a Claim (ftlab.report.verdicts): status, counts, headline, mde, notes

Each check compares arms (the seeds of one configuration at one duration, each group at its best LR: select.best_lrs)
within one setting and one optimizer; IFT against CPT compares two settings that share the base model and the
source documents.

A best LR is an argmax over a sweep (select.lr_sweeps), so it has no paired difference to bootstrap; instead each
replicate resamples the learning tasks' documents (one draw for every LR of every sweep given, so the sweeps stay
paired) and each LR's seeds, recomputes each LR's learning at its sweep's duration and takes the argmax again
(best_lr_draws), fitted by a parabola in log LR through the argmax and its neighbours (fit_best: the grid alone
knows a best LR only to its step). A finding about best LRs (a ratio of two, a spread over ranks) is then decided by
the share of replicates inside the paper's range (bootstrap_comparison). One at the edge of its sweep may lie beyond
it: a bound, which decides only where the bound alone does (edge_note, grid_note say so). The fit assumes the curve
is a parabola near its top; its model error is not in the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlab.analysis.statistics import BLOCK, LEVEL, MIN_SEEDS, N_BOOT, SEED, Interval
from ftlab.report.select import (LrSweep, analysed, arms, best_lr_rows, departures, lr_sweeps, plain_full,
                                 plain_lora)
from ftlab.report.verdicts import Claim, Comparison, compare, contrast_arms, decided, shared_values
from ftlab.results.study import Row, Study

PAPER = "Biderman et al. 2024"
BAND = (3.0, 30.0)  # "about 10x": within half an order of magnitude of it
TOL = 1e-9  # relative tolerance for LR ratios and budgets written in decimal (5e-4 / 5e-5, T / 4)
SHARE = 0.95  # a bootstrap verdict needs this share of its replicates on one side


# ----------------------------------------------------------------------------- the uncertainty of a best LR


@dataclass
class Draws:
    """Each sweep's best LR in every bootstrap replicate, and what the replicates resampled."""

    best: list[np.ndarray]  # per sweep: (n_boot,) the argmax LR of each replicate
    fitted: list[np.ndarray]  # per sweep: (n_boot,) the fitted best LR (fit_best), the argmax at an edge
    low: list[np.ndarray]  # per sweep: (n_boot,) the lowest the true best can be (0 at the sweep's lowest LR)
    high: list[np.ndarray]  # per sweep: (n_boot,) the highest (inf at the sweep's highest LR)
    observed: list[float]  # per sweep: the fitted best LR on the data as observed
    n: int  # documents resampled (summed over learning tasks)
    seeds: int  # the fewest seeds of any LR


def fit_best(lrs: list[float], learning: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """learning (..., L) at the sweep's LRs -> the best LR (...,) from a parabola in log LR through the argmax and its
    two neighbours (its vertex lies between them), and the range the true best can lie in: the vertex itself inside
    the grid; at an edge (no neighbour beyond it to fit), from the edge's LR outwards to 0 or inf."""
    x = np.log(np.asarray(lrs, dtype=float))
    i = np.argmax(learning, axis=-1)  # ties: the smaller LR
    lo_i, hi_i = np.clip(i - 1, 0, len(x) - 1), np.clip(i + 1, 0, len(x) - 1)
    y0, y1, y2 = (np.take_along_axis(learning, j[..., None], -1)[..., 0] for j in (lo_i, i, hi_i))
    x0, x1, x2 = x[lo_i], x[i], x[hi_i]
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.exp(np.where(den != 0, x1 - 0.5 * num / np.where(den != 0, den, 1.0), x1))
    lrs_ = np.asarray(lrs, dtype=float)
    bottom, top = i == 0, i == len(x) - 1
    fitted = np.where(bottom | top, lrs_[i], vertex)
    return fitted, np.where(bottom, 0.0, fitted), np.where(top, np.inf, fitted)


def best_lr_draws(study: Study, sweeps: list[LrSweep], n_boot: int = N_BOOT, seed: int = SEED) -> Draws | None:
    """The sweeps' best LRs under a bootstrap over the learning tasks' documents (one draw shared by every LR of every
    sweep given) and each LR's seeds, each fitted (fit_best); None when the rows share no per-example learning
    values."""
    rows = [r for s in sweeps for rs in s.rows for r in rs]
    found = shared_values(study, rows, "learning")
    if not found:
        return None
    rng = np.random.default_rng(seed)
    learning = np.zeros((n_boot, len(rows)))  # (B, R): each row's learning in each replicate
    observed = np.zeros(len(rows))  # (R,): on the documents as they are
    for values, weights in found:  # values (R, n), weights (n,) or None
        n = values.shape[1]
        w = np.ones(n) if weights is None else weights
        observed += (values * w).sum(-1) / w.sum() / len(found)
        for start in range(0, n_boot, BLOCK):
            count = min(BLOCK, n_boot - start)
            idx = rng.integers(0, n, size=(count, n))  # (b, n): the same documents for every row
            picked = values[:, idx]  # (R, b, n)
            agg = picked.mean(-1) if weights is None else (picked * weights[idx]).sum(-1) / weights[idx].sum(-1)
            learning[start:start + count] += agg.T / len(found)  # mean over tasks, as Row.learning
    draws = Draws([], [], [], [], [], sum(v.shape[1] for v, _ in found),
                  min(len(rs) for s in sweeps for rs in s.rows))
    col = 0
    for s in sweeps:
        per_lr, seen = [], []
        for rs in s.rows:
            pick = col + rng.integers(0, len(rs), size=(n_boot, len(rs)))  # (B, seeds): seeds resampled
            per_lr.append(np.take_along_axis(learning, pick, axis=1).mean(axis=1))  # (B,)
            seen.append(observed[col:col + len(rs)].mean())
            col += len(rs)
        per_lr = np.stack(per_lr, axis=1)  # (B, L)
        draws.best.append(np.asarray(s.lrs)[np.argmax(per_lr, axis=1)])
        for out, got in zip((draws.fitted, draws.low, draws.high), fit_best(s.lrs, per_lr)):
            out.append(got)
        draws.observed.append(float(fit_best(s.lrs, np.array(seen))[0]))
    return draws


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
                         n: int, seeds: int, outside: np.ndarray | None = None, **detail) -> Comparison:
    """A comparison decided by the share of bootstrap replicates surely inside the paper's range (`inside`, boolean
    per replicate) or surely outside it (`outside`; default: not inside): agree with >= 95% inside, disagree with
    >= 95% outside, else inconclusive; its p (1 - the larger share) enters the claim's Holm family. A replicate whose
    best LR lies at the edge of its sweep is a bound, in neither unless the bound alone decides. The interval is the
    replicates' 95% percentile interval; no standard error (hence no detectable effect) for an argmax's ratio."""
    share = float(np.mean(inside))
    out = float(np.mean(~inside if outside is None else outside))
    verdict = "agree" if share >= SHARE else "disagree" if out >= SHARE else "inconclusive"
    finite = draws[np.isfinite(draws)]
    low, high = np.quantile(finite, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2]) if len(finite) else (np.nan, np.nan)
    interval = Interval(float(estimate), float(low), float(high), float("nan"), n, seeds, 1 - max(share, out),
                        runs=seeds >= MIN_SEEDS)  # each LR's seeds are resampled
    return Comparison(what, instrument, +1, interval, verdict, {"share_inside": share, "share_outside": out,
                                                                **detail}, test="share")


# ----------------------------------------------------------------------------- best LR: about 10x full FT's


def best_lr(study: Study) -> Claim:
    claim = Claim(
        "best_lr", "LoRA's best learning rate is about 10x full finetuning's (code 5e-4 vs 5e-5, math 2e-4 vs 1e-5).",
        PAPER, "Per setting and optimizer, each LoRA group's best LR over plain full FT's (headline: the plainest "
        "highest rank), at the longest duration all LRs of the group reached, each group with at least 2 LRs tried. "
        "Each best LR is fitted: a parabola in log LR through the argmax and its two neighbours, its vertex. "
        "Bootstrap (2000 replicates): resample the learning tasks' documents (one draw for every LR of the setting) "
        "and each LR's seeds, recompute each LR's learning, fit each group's best LR again and the ratio. Agree if the "
        f"ratio lies in [{BAND[0]:g}, {BAND[1]:g}] in >= 95% of replicates, disagree if outside in >= 95%, else "
        "inconclusive (Holm-corrected). A best LR at the edge of its sweep is only a bound (the true best may lie "
        "beyond it): such a replicate counts as inside or outside only if the bound alone decides.",
        "best-LR ratio (LoRA / full FT)")
    points = study.points()
    sweeps = lr_sweeps(points)
    full_groups = {(r.setting, r.group) for r in plain_full(points)}
    comparisons, used = [], []
    for key, full in sweeps.items():
        if key not in full_groups:
            continue
        loras = sorted((s for s in sweeps.values() if s.setting == full.setting and s.optimizer == full.optimizer
                        and s.first.method == "lora"), key=lambda s: (departures(s.first), -(s.first.rank or 0)))
        draws = best_lr_draws(study, [full, *loras]) if loras else None
        if draws is None:
            continue
        used += [full, *loras]
        for k, lora in enumerate(loras, start=1):
            ratio = draws.fitted[k] / draws.fitted[0]  # (B,)
            with np.errstate(divide="ignore", invalid="ignore"):
                low, high = draws.low[k] / draws.high[0], draws.high[k] / draws.low[0]  # (B,): the ratio's range
            inside = (low >= BAND[0] * (1 - TOL)) & (high <= BAND[1] * (1 + TOL))
            outside = (high < BAND[0] * (1 - TOL)) | (low > BAND[1] * (1 + TOL))
            comparisons.append(bootstrap_comparison(
                f"{lora.group} / {full.group} best LR ({full.setting})" + _bound(lora, full), "best-LR ratio",
                draws.observed[k] / draws.observed[0], ratio, inside, draws.n, draws.seeds, outside,
                setting=full.setting, optimizer=full.optimizer,
                lora_best_lr=lora.best, full_best_lr=full.best, lora_fitted_lr=draws.observed[k],
                full_fitted_lr=draws.observed[0], lora_lrs=lora.lrs, full_lrs=full.lrs,
                lora_duration=lora.duration, full_duration=full.duration,
                at_sweep_edge=[s.group for s in (lora, full) if s.at_edge]))
    claim.notes += edge_note(used) + grid_note(used)
    return decided(claim, comparisons, "not enough data: needs an LR sweep (learning at 2 or more LRs) of plain full "
                   "FT and of a LoRA group in one setting and optimizer; " + _sweeps_found(sweeps))


def _bound(lora: LrSweep, full: LrSweep) -> str:
    """What an edge makes of the ratio LoRA / full FT: a lower bound, an upper bound, or nothing known."""
    above = (lora.at_edge and lora.best == lora.lrs[-1]) or (full.at_edge and full.best == full.lrs[0])
    below = (lora.at_edge and lora.best == lora.lrs[0]) or (full.at_edge and full.best == full.lrs[-1])
    if above and below:
        return ": both at their sweeps' edges, so no bound"
    return ": a lower bound (edge of a sweep)" if above else ": an upper bound (edge of a sweep)" if below else ""


def _sweeps_found(sweeps: dict[tuple[str, str], LrSweep]) -> str:
    if not sweeps:
        return "no group has learning at 2 LRs"
    return "swept: " + ", ".join(f"{g} ({s})" for s, g in sweeps)


# ----------------------------------------------------------------------------- alpha and target-module sweeps


def sweep_arms(study: Study, swept: str) -> dict[tuple, dict]:
    """LoRA arms at their group's best LR, grouped by what a sweep of `swept` ("alpha" or "targets") holds fixed
    (setting, optimizer, rank, the other LoRA options, regularizers, duration): {fixed: {swept value: arm}}."""
    lora = [r for r in best_lr_rows(analysed(study)) if r.method == "lora" and r.rank is not None]
    out: dict[tuple, dict] = {}
    for arm in arms(lora).values():
        r = arm.rows[0]
        held = {"setting": r.setting, "optimizer": r.optimizer, "rank": r.rank, "alpha": r.alpha,
                "targets": r.targets or "all", "variant": r.variant, "weight_decay": r.weight_decay,
                "attention_dropout": r.attention_dropout, "duration": r.duration}
        value = held.pop(swept)
        out.setdefault(tuple(held.items()), {})[value] = arm
    return out


def alpha_2r_best(study: Study) -> Claim:
    claim = Claim(
        "alpha_2r_best", "α = 2r is the best LoRA scaling: in an alpha sweep, α = 2r learns most.", PAPER,
        "For each alpha sweep (LoRA arms of one rank, setting, optimizer, targets and duration, each alpha group at "
        "its best LR, with several alphas including 2r): α = 2r vs each other alpha on learning, paired 95% "
        "interval; agree if α = 2r learns more.", "learning")
    comparisons = []
    for held, by_alpha in sorted(sweep_arms(study, "alpha").items(), key=lambda kv: _order(kv[0])):
        rank = dict(held)["rank"]
        two_r = next((arm for a, arm in by_alpha.items() if a is not None and abs(a - 2 * rank) <= TOL * rank), None)
        if two_r is None:
            continue
        for alpha, arm in sorted((a, arm) for a, arm in by_alpha.items() if arm is not two_r and a is not None):
            comparisons.append(compare(study, arm, two_r, "learning", +1,
                                       f"LoRA r={rank} α={2 * rank:g} (2r) vs α={alpha:g} at {arm.when}",
                                       alpha=alpha, rank=rank, targets=dict(held)["targets"]))
    return decided(claim, comparisons, "not enough data: needs LoRA runs of one rank, setting and duration with "
                   "several alphas, 2r among them, and per-example learning values")


def _order(held: tuple) -> tuple:
    d = dict(held)
    return d["setting"], d["optimizer"], d["rank"], str(d.get("alpha")), d.get("targets", ""), d["variant"], \
        d["duration"] if d["duration"] is not None else -np.inf


def target_comparisons(study: Study, against: tuple[str, ...]) -> list[Comparison | None]:
    """Attention-only LoRA (targets "attn") vs each of `against` ("all", "mlp") at the same rank, alpha, setting,
    optimizer and duration, each at its best LR, on learning (the findings expect attention-only to learn less)."""
    comparisons = []
    for held, by_targets in sorted(sweep_arms(study, "targets").items(), key=lambda kv: _order(kv[0])):
        attn = by_targets.get("attn")
        for other in (t for t in against if attn is not None and t in by_targets):
            comparisons.append(compare(study, by_targets[other], attn, "learning", -1,
                                       f"LoRA r={dict(held)['rank']} attention-only vs {other} at "
                                       f"{attn.when} ({attn.setting})", targets=other, rank=dict(held)["rank"]))
    return comparisons


def attention_only_worst(study: Study) -> Claim:
    claim = Claim(
        "attention_only_worst", "Target all modules: attention-only LoRA learns least (MLP matters most).", PAPER,
        "For each target-module sweep (LoRA arms of one rank, alpha, setting, optimizer and duration with targets "
        "attn and all or mlp, each at its best LR): attn vs all and attn vs mlp on learning, paired 95% interval; "
        "agree if attention-only learns less.", "learning")
    return decided(claim, target_comparisons(study, ("all", "mlp")), "not enough data: needs attention-only LoRA "
                   "(targets: attn) beside all-module or MLP-only LoRA of the same rank, setting and duration")


# ----------------------------------------------------------------------------- IFT forgets more than CPT


def ift_forgets_more_than_cpt(study: Study) -> Claim:
    claim = Claim(
        "ift_forgets_more_than_cpt", "IFT forgets more than CPT (code IFT at 16 epochs, ~1.2B tokens, forgets more "
        "than code CPT at 20B tokens).", PAPER,
        "For each IFT setting and CPT setting on the same base model (their base evaluations agree on the shared "
        "source documents) and each method group in both (best LR, one optimizer): every IFT checkpoint vs every "
        "CPT checkpoint trained on at least as many tokens, paired over the shared source documents: the source "
        "loss where both measured it (agree if IFT's is higher), else the source score (agree if IFT's is lower); "
        "95% interval.", "source_loss (else source score)")
    rows = best_lr_rows(analysed(study))
    settings = {regime: sorted({r.setting for r in rows if r.regime == regime}) for regime in ("ift", "cpt")}
    comparisons, missing = [], []
    for ift in settings["ift"]:
        for cpt in settings["cpt"]:
            same = _same_base(study, ift, cpt)
            if same is False:
                missing.append(f"{ift} and {cpt} have different base models (their base scores differ)")
                continue
            if same is None:
                claim.notes.append(f"{ift} and {cpt}: the base model is not measured in both, so that they share "
                                   "it is assumed, not checked")
            found = _regime_pairs(study, rows, ift, cpt, missing)
            if found and _tasks(rows, ift) != _tasks(rows, cpt):
                claim.notes.append(f"{ift} and {cpt} differ in target domain too (learning tasks "
                                   f"{', '.join(_tasks(rows, ift))} vs {', '.join(_tasks(rows, cpt))}): domain and "
                                   "regime are confounded")
            comparisons += found
    found = [c for c in comparisons if c is not None]
    headline = max(found, key=lambda c: (c.detail["ift_tokens"], c.detail["cpt_tokens"]), default=None)
    why = "".join(f"; {m}" for m in missing) or ("" if not all(settings.values()) else "; no source measure shared")
    return decided(claim, comparisons, "not enough data: needs an IFT and a CPT setting on one base model with the "
                   f"same source documents, and a CPT checkpoint trained on as many tokens as an IFT one{why}",
                   headline)


def _regime_pairs(study: Study, rows: list[Row], ift: str, cpt: str, missing: list[str]) -> list[Comparison | None]:
    """Each group's IFT arms vs its CPT arms trained on at least as many tokens."""
    by = {s: {} for s in (ift, cpt)}
    for key, arm in arms([r for r in rows if r.setting in by]).items():
        by[key[0]].setdefault((key[1], key[2]), []).append(arm)
    out = []
    for group in sorted(set(by[ift]) & set(by[cpt])):
        for a in by[ift][group]:
            tokens = a.rows[0].tokens
            if tokens is None:
                missing.append(f"{group[0]} IFT at {a.when}: its tokens are unknown")
                continue
            later = [c for c in by[cpt][group] if (c.rows[0].tokens or 0) >= tokens]
            if not later:
                most = max(c.rows[0].tokens or 0 for c in by[cpt][group])
                missing.append(f"{group[0]}: no CPT checkpoint trained on as many tokens as IFT at {a.when} "
                               f"({tokens:,}; CPT reached {most:,})")
                continue
            for c in sorted(later, key=lambda c: c.rows[0].tokens):
                what = f"{group[0]}: IFT {a.when} ({tokens:,} tokens) vs CPT {c.when}"
                detail = {"ift_setting": ift, "cpt_setting": cpt, "ift_tokens": tokens,
                          "cpt_tokens": c.rows[0].tokens, "group": group[0]}
                out.append(compare(study, c, a, "source_loss", +1, what, **detail)
                           or compare(study, c, a, "source", -1, what, **detail))
    return out


def _tasks(rows: list[Row], setting: str) -> list[str]:
    return sorted({t for r in rows if r.setting == setting for t in r.learning_tasks})


def _same_base(study: Study, a: str, b: str) -> bool | None:
    """Do two settings' base evaluations agree on every source document both measured (the same model gives the same
    values)? None when either base or any shared source value is missing."""
    ba, bb = study.base_of(a), study.base_of(b)
    if ba is None or bb is None:
        return None
    shared = [(ba.values(k), bb.values(k)) for k in set(ba.examples) & set(bb.examples) if k.split("/")[0] in
              study.tasks and study.tasks[k.split("/")[0]].role in ("forgetting", "source_loss")]
    pairs = [(x[d][0], y[d][0]) for x, y in shared for d in set(x) & set(y)]
    if not pairs:
        return None
    return bool(np.allclose(*np.array(pairs).T, rtol=1e-6, atol=1e-9))


# ----------------------------------------------------------------------------- a high rank at a long CPT budget


def high_rank_long_cpt(study: Study) -> Claim:
    claim = Claim(
        "high_rank_long_cpt", "In CPT, LoRA r=256 at 20B tokens learns about as much as full FT at 4B (a 5x smaller "
        "budget).", PAPER,
        "Per CPT setting and optimizer (best LR of each group): the highest plain LoRA rank at its longest budget T "
        "vs plain full FT at its largest budget T' <= T/4, on learning (LoRA - full FT, paired 95% interval). "
        "Non-inferiority with the margin fixed in advance as half of full FT's learning gain g from T' to its "
        "largest budget <= T, its uncertainty carried: the contrast LoRA - full FT(T') + g / 2 of the three arms on "
        "the same documents, 95% interval; agree if it lies above 0, disagree if below, else inconclusive (a margin "
        "test, outside Holm's family).", "learning")
    rows = [r for r in best_lr_rows(analysed(study)) if r.regime == "cpt"]
    comparisons, missing = [], []
    for setting, optimizer in sorted({(r.setting, r.optimizer) for r in rows}):
        here = [r for r in rows if (r.setting, r.optimizer) == (setting, optimizer)]
        found = _long_budget(study, here, missing)
        if found is not None:
            comparisons.append(found)
            if found.detail["margin"] <= 0:
                claim.notes.append(f"{setting}: full FT learned no more at its longer budget than at the shorter, so "
                                   "the margin is not positive: agreeing needs LoRA to learn more")
    return decided(claim, comparisons, "not enough data: needs a CPT setting with plain LoRA and plain full FT, the "
                   "full FT at a budget <= a quarter of LoRA's longest and at a longer one" +
                   "".join(f"; {m}" for m in missing))


def _long_budget(study: Study, rows: list[Row], missing: list[str]) -> Comparison | None:
    """The highest LoRA rank at its longest budget vs full FT at the largest budget <= a quarter of it, decided by
    non-inferiority (see high_rank_long_cpt)."""
    lora = {k: a for k, a in arms([r for r in rows if plain_lora(r)]).items() if a.duration is not None}
    full = {k: a for k, a in arms(plain_full(rows)).items() if a.duration is not None}
    if not lora or not full:
        missing.append(f"{rows[0].setting}: needs plain LoRA and plain full FT")
        return None
    top = max(a.rows[0].rank for a in lora.values())
    long = max((a for a in lora.values() if a.rows[0].rank == top), key=lambda a: a.duration)
    budgets = {a.duration: a for a in full.values()}
    short = [d for d in budgets if d <= long.duration / 4 * (1 + TOL)]
    if not short:
        missing.append(f"{long.setting}: no full-FT budget <= T/4 = {long.duration / 4:,.0f} (LoRA r={top} at "
                       f"{long.when}; full FT at {', '.join(a.when for a in budgets.values())})")
        return None
    t_short = max(short)
    upper = [d for d in budgets if t_short < d <= long.duration * (1 + TOL)]
    if not upper:
        missing.append(f"{long.setting}: full FT has no budget between {budgets[t_short].when} and {long.when} to "
                       "size the margin with")
        return None
    gain = compare(study, budgets[t_short], budgets[max(upper)], "learning", +1)
    c = compare(study, budgets[t_short], long, "learning", +1,
                f"LoRA r={top} at {long.when} vs full FT at {budgets[t_short].when} ({long.setting})")
    if c is None or gain is None:
        missing.append(f"{long.setting}: no per-example learning values shared by the arms")
        return None
    short_arm, upper_arm = budgets[t_short], budgets[max(upper)]
    test = contrast_arms(study, [short_arm, upper_arm, long], (-1.5, 0.5, 1.0), "learning")  # L - F' + (F - F') / 2
    if test is None:
        missing.append(f"{long.setting}: no per-example learning values shared by the three arms")
        return None
    c.verdict = "agree" if test.low > 0 else "disagree" if test.high < 0 else "inconclusive"
    c.test = "margin"
    c.detail.update(margin=gain.interval.estimate / 2, noninferiority=test.as_dict(),
                    budget_ratio=long.duration / t_short, lora_budget=long.duration, full_budget=t_short,
                    full_gain=gain.interval.as_dict(), full_gain_to=max(upper), rank=top)
    return c


SWEEP_CHECKS = (best_lr, alpha_2r_best, attention_only_worst, ift_forgets_more_than_cpt, high_rank_long_cpt)
