"""The findings of "LoRA Learns Less and Forgets Less" (Biderman et al. 2024) checked on a study, with intervals.

    claim = forgets_less_loss(study)      # a Claim (ftlab.report.verdicts): status, counts, headline, mde, notes

Each check picks the arms its finding compares, compares them with paired 95% intervals (verdicts.compare) and lets
Claim.decide count the agreements. What every check shares:
- comparisons stay within one setting and one optimizer;
- "best LR" is each group's best learning rate by learning (select.best_lrs); "plain full FT" is full FT without
  attention dropout at the smallest weight decay of its setting and optimizer (select.plain_full); "regularized
  full FT" is any other full FT;
- an arm is the seeds of one configuration at one duration; checkpoints of one run and separate runs (IFT epoch
  counts, CPT budgets: the paper's protocol) are alike, a duration is a duration;
- forgetting is read on the source loss (held-out source text, per document; higher = more forgotten) where both
  arms measured it, else on the source score (benchmarks; lower = more forgotten).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ftlab.analysis.statistics import Interval, clustered_spearman, t975, t_quantile, t_sf
from ftlab.report.select import Arm, analysed, arms_by_kind, departures, group_order, rank_ladder, sorted_arms
from ftlab.report.verdicts import FORGETTING, Claim, Comparison, compare, contrast_arms, decided, prespecified
from ftlab.results.study import Study

PAPER = "Biderman et al. 2024"
RANK_SHARE = 50  # delta_rank counts LoRA ranks r <= width / 50 (the paper's 16 and 64 of 4096: 0.4% and 1.6%)


# ----------------------------------------------------------------------------- describing and comparing arms


def _at(study: Study, arm: Arm) -> str:
    """An arm's duration in words (select.duration_text), with its setting when the study has several."""
    return arm.when if len({r.setting for r in study.rows}) < 2 else f"{arm.when}, {arm.setting}"


def _value(arm: Arm, instrument: str) -> float | None:
    """An arm's own score on an instrument as the store has it (mean over seeds): context beside a difference."""
    def one(m) -> float | None:
        if instrument == "unique":
            return m.diversity.unique_mean if m.diversity else None
        return getattr(m, instrument)
    values = [v for v in map(one, arm.rows) if v is not None]
    return float(np.mean(values)) if values else None


def _compare(study: Study, a: Arm, b: Arm, instrument: str, expected: int, what: str) -> Comparison | None:
    """verdicts.compare (b - a) with both arms named and their own scores in the detail."""
    return compare(study, a, b, instrument, expected, what, arm_a=a.label, arm_b=b.label,
                   value_a=_value(a, instrument), value_b=_value(b, instrument))


def _forgets(study: Study, a: Arm, b: Arm, more: int, what: str) -> Comparison | None:
    """b against a on forgetting, where the paper expects b to forget more (more=+1) or less (-1): the source loss
    (b - a > 0 = more forgotten) where both arms measured it, else the source score (b - a < 0 = more forgotten)."""
    return (_compare(study, a, b, "source_loss", more, what)
            or _compare(study, a, b, "source", -more, what))


def _headline(comparisons: list[Comparison | None], prefer: tuple[str, ...] = FORGETTING) -> Comparison | None:
    """The prespecified headline (verdicts.prespecified) on the first instrument of `prefer` that has comparisons
    (scales don't mix)."""
    found = [c for c in comparisons if c is not None]
    for instrument in prefer:
        on = [c for c in found if c.instrument == instrument]
        if on:
            return prespecified(on)
    return None


def _empty(pairs: int, what: str, instrument: str) -> str:
    """The "not enough data" sentence: nothing to pair, or pairs without shared per-example values."""
    if not pairs:
        return f"not enough data: {what}"
    return (f"not enough data: {pairs} pair{'s' if pairs > 1 else ''} to compare, but none with per-example "
            f"{instrument} values on shared documents")


# ----------------------------------------------------------------------------- LoRA against plain full FT


def _lora_vs_full(study: Study) -> list[tuple[Arm, Arm, str]]:
    """(plain full FT, LoRA group, what) at every (setting, optimizer, duration) both reached, best LR each; the
    plainest highest-rank LoRA first (the headline: closest to full FT, so the hardest case)."""
    return [(full, lora, f"{lora.label} vs {full.label} at {_at(study, lora)}")
            for kinds in arms_by_kind(study).values() for full in kinds["full"]
            for lora in sorted(kinds["lora"], key=lambda a: (departures(a.rows[0]), -(a.rows[0].rank or 0)))]


NO_PAIR = "no duration at which a LoRA group and plain full FT of one setting and optimizer were both evaluated"
MATCHED = ("Each LoRA group against plain full FT of the same setting and optimizer, at each duration both reached "
           "(separate runs or checkpoints alike; best LR each; the headline, fixed in advance: the plainest "
           "highest-rank LoRA at the longest duration of the first setting): ")


def learns_less(study: Study) -> Claim:
    claim = Claim("learns_less", "LoRA learns less than full finetuning at matched training duration.", PAPER,
                  MATCHED + "the learning score's difference LoRA - full FT over the learning tasks' documents "
                  "(paired bootstrap, 95%); agree if the interval lies below 0, disagree if above.", "learning")
    pairs = _lora_vs_full(study)
    return decided(claim, [_compare(study, f, lo, "learning", -1, what) for f, lo, what in pairs],
                    _empty(len(pairs), NO_PAIR, "learning"))


def forgets_less(study: Study) -> Claim:
    claim = Claim("forgets_less", "LoRA forgets less than full finetuning at matched training duration (source "
                  "benchmarks: the paper's instrument).", PAPER,
                  MATCHED + "the source score's difference LoRA - full FT over the source benchmarks' documents "
                  "(paired bootstrap, 95%); agree if the interval lies above 0 (LoRA kept more), disagree if below.",
                  "source")
    pairs = _lora_vs_full(study)
    return decided(claim, [_compare(study, f, lo, "source", +1, what) for f, lo, what in pairs],
                    _empty(len(pairs), NO_PAIR, "source score"))


def forgets_less_loss(study: Study) -> Claim:
    claim = Claim("forgets_less_loss", "LoRA forgets less than full finetuning at matched training duration "
                  "(held-out source loss: the second instrument, per document).", PAPER,
                  MATCHED + "the held-out source loss's difference LoRA - full FT over the same documents, weighted "
                  "by their tokens (paired bootstrap, 95%); agree if the interval lies below 0 (LoRA's loss rose "
                  "less), disagree if above.", "source_loss")
    pairs = _lora_vs_full(study)
    return decided(claim, [_compare(study, f, lo, "source_loss", -1, what) for f, lo, what in pairs],
                    _empty(len(pairs), NO_PAIR, "source loss"))


# ----------------------------------------------------------------------------- forgetting: duration and rank


def forgetting_grows_with_duration(study: Study) -> Claim:
    claim = Claim("forgetting_grows_with_duration", "Forgetting grows with training duration.", PAPER,
                  "Within one setting, group, optimizer and LR, each pair of consecutive durations, whether "
                  "checkpoints of one run or separate runs (each IFT epoch count its own run, each CPT budget its "
                  "own branch): longer - shorter on the source loss where both measured it (agree if the interval "
                  "lies above 0), else on the source score (agree if below 0); disagree if the other way. An "
                  "ordering: supported if most links agree and none disagrees (headline: plain full FT's last link).")
    ladders: dict[tuple, list[Arm]] = {}
    for key, arm in sorted(sorted_arms(analysed(study)), key=lambda kv: (kv[0][0], group_order(kv[1].rows[0]))):
        if key[4] is not None:
            ladders.setdefault(key[:4], []).append(arm)
    pairs = [(a, b) for ladder in ladders.values() for a, b in zip(ladder, ladder[1:])]
    comparisons = [_forgets(study, a, b, +1, f"{b.label} at {_at(study, b)} vs {_at(study, a)}") for a, b in pairs]
    return decided(claim, comparisons, _empty(len(pairs), "no configuration evaluated at two durations",
                                               "source loss or source score"), _headline(comparisons), rule="most")


def forgetting_ordered_by_rank(study: Study) -> Claim:
    claim = Claim("forgetting_ordered_by_rank", "Forgetting is ordered by capacity: a higher LoRA rank forgets more, "
                  "full finetuning the most.", PAPER,
                  "At each setting, optimizer and duration: LoRA ranks ascending (the plainest group of each rank), "
                  "then plain full FT, best LR each; each adjacent pair (a link), higher - lower on the source loss "
                  "where both measured it (agree if above 0), else on the source score (agree if below 0). An "
                  "ordering: supported if most links agree and none disagrees (one link alone, say full FT above "
                  "every rank, does not order the ranks); headline: the top link at the longest duration.")
    pairs = []
    for kinds in arms_by_kind(study).values():
        ladder = rank_ladder(kinds["lora"]) + kinds["full"]
        pairs += reversed(list(zip(ladder, ladder[1:])))
    comparisons = [_forgets(study, a, b, +1, f"{b.label} vs {a.label} at {_at(study, b)}") for a, b in pairs]
    return decided(claim, comparisons, _empty(len(pairs), "no duration with two LoRA ranks, or a LoRA rank and "
                                               "plain full FT, evaluated", "source loss or source score"),
                    _headline(comparisons), rule="most")


# ----------------------------------------------------------------------------- regularization (the paper's Fig 3)


EQUIVALENCE_SHARE = 0.25  # "about as it was": within a quarter of plain full FT's own change against the base


def _equivalent(study: Study, base: Arm, plain: Arm, reg: Arm, instruments: tuple[str, ...],
                what: str) -> Comparison | None:
    """reg - plain on the first instrument all three arms measured, judged for equivalence against the margin
    EQUIVALENCE_SHARE x |plain - base|, whose uncertainty is carried: both D - share|E| and D + share|E| (D = reg -
    plain, E = plain - base, |E| signed by its estimate) are contrasts of the three arms on the same documents, with
    their own intervals. Agree if the first lies below 0 and the second above, each at 5% one-sided (equivalent: two
    one-sided tests, the 90% interval of the usual TOST), disagree if either's 95% interval lies wholly on the wrong
    side (changed by more than the margin)."""
    for instrument in instruments:
        c = _compare(study, plain, reg, instrument, 0, what)
        effect = compare(study, base, plain, instrument, 0) if c is not None else None
        if effect is None:
            continue
        share = EQUIVALENCE_SHARE * (1.0 if effect.interval.estimate >= 0 else -1.0)
        upper = contrast_arms(study, [base, plain, reg], (share, -1 - share, 1.0), instrument)  # D - share |E|
        lower = contrast_arms(study, [base, plain, reg], (-share, -1 + share, 1.0), instrument)  # D + share |E|
        if upper is None or lower is None:
            continue
        one_sided = [i.estimate + sign * t_quantile(0.95, i.df) * i.se for i, sign in ((upper, 1), (lower, -1))]
        c.verdict = ("agree" if one_sided[0] < 0 < one_sided[1] else  # two one-sided tests at 5% each
                     "disagree" if upper.low > 0 or lower.high < 0 else "inconclusive")
        c.test = "margin"
        e = effect.interval
        c.detail.update(margin=EQUIVALENCE_SHARE * abs(e.estimate), margin_low=EQUIVALENCE_SHARE * min(abs(e.low),
                        abs(e.high)) if e.low * e.high > 0 else 0.0, margin_high=EQUIVALENCE_SHARE * max(abs(e.low),
                        abs(e.high)), plain_effect=e.estimate, above_margin=upper.as_dict(),
                        below_margin=lower.as_dict())
        return c
    return None


def _regularized(study: Study):
    """(setting, base arm or None, plain full FT arms, regularized arm, LoRA rank ladder) at each matched duration."""
    for (setting, _, _), kinds in arms_by_kind(study).items():
        found = study.base_of(setting)
        for reg in kinds["regularized"]:
            yield setting, Arm.of([found]) if found is not None else None, kinds["full"], reg, rank_ladder(
                kinds["lora"])


NO_REGULARIZED = "not enough data: no full-FT run with weight decay or attention dropout above plain full FT's"


def regularization(study: Study) -> Claim:
    claim = Claim("regularization", "Weight decay and attention dropout leave full finetuning about as it was "
                  "(learning and forgetting).", PAPER,
                  "At matched duration only (one setting and optimizer, best LR each). Each regularized full FT "
                  "(weight decay or attention dropout above plain full FT's) - plain full FT, on learning and on "
                  "forgetting (source loss where measured, else source score): an equivalence test with a margin "
                  f"fixed in advance, {EQUIVALENCE_SHARE:g} of plain full FT's own change against the base on that "
                  "instrument, its uncertainty carried (two one-sided tests at 5%, contrasts of the three arms on the "
                  "same documents). Agree if equivalent, disagree if changed by more than the margin (95%). An "
                  "equivalence over every comparison: supported only if all agree (outside Holm's family, which "
                  "tests differences from zero); needs the base model.")
    comparisons, regularized, no_base = [], 0, []
    for setting, base, plains, reg, _ in _regularized(study):
        regularized += 1
        if base is None:
            no_base.append(setting)
            continue
        for plain in plains:
            what = f"{reg.label} vs {plain.label} at {_at(study, reg)}"
            comparisons += [_equivalent(study, base, plain, reg, ("learning",), what),
                            _equivalent(study, base, plain, reg, FORGETTING, what)]
    if no_base and any(c is not None for c in comparisons):
        claim.notes.append(f"no base model evaluated in {', '.join(sorted(set(no_base)))}: no margin, so its "
                           "regularized runs are not compared")
    empty = (NO_REGULARIZED if not regularized else
             f"not enough data: no base model evaluated in {', '.join(sorted(set(no_base)))}, and the margin (a share "
             "of plain full FT's change against the base) needs it" if no_base and not any(comparisons) else
             "not enough data: no plain full FT evaluated at the regularized runs' durations, with per-example "
             "values on documents the base shares")
    return decided(claim, comparisons, empty, _headline(comparisons, ("learning",)), rule="all")


def lora_forgets_less_than_regularized(study: Study) -> Claim:
    claim = Claim("lora_forgets_less_than_regularized", "LoRA forgets less than regularized full finetuning (weight "
                  "decay, attention dropout).", PAPER,
                  "At matched duration only (one setting and optimizer, best LR each): the highest-rank plain LoRA - "
                  "each regularized full FT on forgetting, paired 95% interval, Holm-corrected: agree if LoRA forgot "
                  "less (source loss below 0, else source score above 0), disagree if more.")
    comparisons, regularized = [], 0
    for _, _, _, reg, ranks in _regularized(study):
        regularized += 1
        if ranks:
            comparisons.append(_forgets(study, reg, ranks[-1], -1,
                                        f"{ranks[-1].label} vs {reg.label} at {_at(study, reg)}"))
    return decided(claim, comparisons, NO_REGULARIZED if not regularized else "not enough data: no plain LoRA "
                   "evaluated at the regularized runs' durations, with per-example values on shared documents",
                   _headline(comparisons))


# ----------------------------------------------------------------------------- diversity


def diversity(study: Study) -> Claim:
    claim = Claim("diversity", "Generations collapse under finetuning: full FT has the fewest unique outputs per "
                  "problem, LoRA lies between full FT and the base model.", PAPER,
                  "Unique outputs per problem of the sampled task, paired over problems (best LR each). At each "
                  "setting, optimizer and duration: plain full FT - each LoRA group, agree if the interval lies "
                  "below 0; and each finetuned arm - the base model, agree if below 0; disagree if above. An "
                  "ordering: supported if most links agree and none disagrees.", "unique")
    comparisons, pairs, no_base = [], 0, False
    for (setting, _, _), kinds in arms_by_kind(study).items():
        found = study.base_of(setting)
        base = Arm.of([found]) if found is not None and found.diversity and found.diversity.per_problem else None
        no_base |= base is None
        for full in kinds["full"]:
            for lora in kinds["lora"]:
                pairs += 1
                comparisons.append(_compare(study, lora, full, "unique", -1,
                                            f"{full.label} vs {lora.label} at {_at(study, full)}"))
        for arm in kinds["full"] + kinds["lora"] + kinds["regularized"]:
            if base is not None:
                pairs += 1
                comparisons.append(_compare(study, base, arm, "unique", -1, f"{arm.label} at {_at(study, arm)} "
                                            "vs base"))
    if no_base:
        claim.notes.append("the base model's diversity is not measured (in some setting): finetuned against base "
                           "not compared there")
    return decided(claim, comparisons, _empty(pairs, "no diversity to compare: a full-FT and a LoRA checkpoint "
                                               "of one duration, or a checkpoint and the base", "unique-output"),
                   rule="most")


# ----------------------------------------------------------------------------- the rank of full FT's ΔW

def _k90_against(arm: Arm, rank: int, width: int, what: str) -> Comparison:
    """Mean k90 - min(10 r, width / 2) with its interval over seeds (zero-width for one seed: k90 is deterministic)."""
    k90s = np.array([r.spectrum.k90_mean for r in arm.rows])
    need = min(10 * rank, 0.5 * width)
    mean = float(k90s.mean())
    se = float(k90s.std(ddof=1) / np.sqrt(len(k90s))) if len(k90s) > 1 else 0.0
    half = t975(len(k90s) - 1) * se if len(k90s) > 1 else 0.0
    df = len(k90s) - 1
    p = min(1.0, 2 * t_sf(abs(mean - need) / se, df)) if se > 0 else float("nan")
    interval = Interval(mean - need, mean - need - half, mean - need + half, se,
                        len(arm.rows[0].spectrum.matrices), len(k90s), p, df if df else float("inf"),
                        runs=len(k90s) > 1)  # a t interval over the seeds
    verdict = "agree" if interval.low >= 0 else "disagree" if interval.high < 0 else "inconclusive"
    return Comparison(what, "k90", +1, interval, verdict,
                      {"setting": arm.setting, "duration": arm.duration, "k90": mean, "lora_rank": rank,
                       "threshold": need, "width": width, "ratio": mean / rank},
                      test="difference" if se > 0 else "exact")


def delta_rank(study: Study) -> Claim:
    claim = Claim("delta_rank", "Full finetuning's weight change ΔW has a rank 10-100x the typical LoRA ranks "
                  "(k90: the rank explaining 90% of ΔW's squared singular values).", PAPER,
                  "Per setting, each full-FT checkpoint with a spectrum (seeds together) against each LoRA rank r "
                  f"of that setting with r <= width/{RANK_SHARE} (width = the smallest min(m, n) of the analysed "
                  "matrices; the paper's r=16 and 64 are 0.4% and 1.6% of 4096, its r=256 reported, not required): "
                  "agree if the mean k90 over matrices >= min(10 r, width/2) (a Gaussian matrix's k90 is 0.5-0.7 of "
                  "its width), disagree if below. With one seed k90 has no sampling noise: the interval has zero "
                  "width; with seeds it is a t interval over them. Larger ranks are reported, not counted.",
                  "k90")
    full = [arm for _, arm in sorted_arms([r for r in analysed(study) if r.method == "full" and r.spectrum
                                            and r.spectrum.k90_mean is not None and r.spectrum.width])]
    ranks: dict[str, set[int]] = {}
    for r in analysed(study):
        if r.method == "lora" and r.rank is not None:
            ranks.setdefault(r.setting, set()).add(r.rank)
    comparisons, reported = [], []
    for arm in full:
        width = min(r.spectrum.width for r in arm.rows)
        for rank in sorted(ranks.get(arm.setting, ())):
            c = _k90_against(arm, rank, width, f"{arm.label} at {_at(study, arm)} vs r={rank}")
            (comparisons if rank <= width / RANK_SHARE else reported).append(c)
    if not comparisons and not reported:
        return decided(claim, [], "not enough data: " + ("no full-FT checkpoint has a spectrum" if not full else
                                                          "no LoRA run in a setting with a full-FT spectrum"))
    counted = [c for c in comparisons if c.detail["lora_rank"] == max(x.detail["lora_rank"] for x in comparisons)]
    headline = min(counted, key=lambda c: (c.detail["duration"] or 0.0)) if counted else None
    decided(claim, comparisons, f"not enough data: every LoRA rank is above width/{RANK_SHARE}, "
             "so none is counted", headline)
    k90s = [c.detail["k90"] for c in comparisons + reported]
    claim.sentence += f"; full FT's mean k90 {min(k90s):.3g}-{max(k90s):.3g}"
    by_rank = {c.detail["lora_rank"]: [x for x in reported if x.detail["lora_rank"] == c.detail["lora_rank"]]
               for c in reported}
    if by_rank:
        claim.sentence += f"; reported, not counted (r > width/{RANK_SHARE}): " + ", ".join(
            f"r={r} met k90 >= {cs[0].detail['threshold']:.3g} in {sum(c.verdict == 'agree' for c in cs)} of "
            f"{len(cs)}" for r, cs in sorted(by_rank.items()))
    return claim


# ----------------------------------------------------------------------------- KL to the base

MIN_CHECKPOINTS = 4
MIN_RUNS = 4  # training runs (seeds of one configuration count apart; CPT budgets branch off one run) per method


def _lineage(r) -> tuple:
    """The training run a checkpoint belongs to: its checkpoints (and a CPT budget's branch) are not independent."""
    return r.setting, r.group, r.lr, r.seed


def kl_points(study: Study, setting: str) -> tuple[str, list]:
    """(forgetting measure, [(KL, forgetting, run, method, row)]) over a setting's checkpoints: the source-loss rise
    over the base where MIN_CHECKPOINTS or more have it, else forgetting (base source score - source score). The KL
    figure (ftlab.report.figures) plots these."""
    rows = [r for r in analysed(study) if r.setting == setting and r.kl is not None]
    rise = [(r.kl, r.source_loss - r.base_source_loss, _lineage(r), r.method, r) for r in rows
            if r.source_loss is not None and r.base_source_loss is not None]
    if len(rise) >= MIN_CHECKPOINTS:
        return "source-loss rise", rise
    return "forgetting", [(r.kl, r.forgetting, _lineage(r), r.method, r) for r in rows if r.forgetting is not None]


def kl_predicts_forgetting(study: Study) -> Claim:
    claim = Claim("kl_predicts_forgetting", "KL(base || finetuned) on target prompts predicts forgetting across "
                  "checkpoints (the cheap forgetting predictor of \"RL's Razor\", 2025, measured beside the paper).",
                  "RL's Razor (2025), measured beside " + PAPER,
                  f"Per setting, over its checkpoints ({MIN_CHECKPOINTS} at least): Spearman's rank correlation "
                  "between KL to the base and forgetting (the source-loss rise over the base where measured, else "
                  "base source score - source score) within each method (full FT, LoRA: the methods differ in both, "
                  f"which would correlate them by itself), averaged over the methods with {MIN_RUNS}+ training runs; "
                  "its interval from a cluster bootstrap over training runs within each method (a run's checkpoints "
                  "are not independent); agree if the 95% interval lies above 0, disagree if below; Holm-corrected "
                  "over settings.", "rho")
    comparisons, short = [], []
    for setting in sorted({r.setting for r in analysed(study)}):
        measure, points = kl_points(study, setting)
        runs = {m: {p[2] for p in points if p[3] == m} for m in {p[3] for p in points}}
        kept = [p for p in points if len(runs[p[3]]) >= MIN_RUNS]
        if len(kept) < MIN_CHECKPOINTS:
            short.append(f"{setting}: {len(points)} checkpoints, runs per method "
                         + ", ".join(f"{m} {len(r)}" for m, r in sorted(runs.items())))
            continue
        lineages = {lin: i for i, lin in enumerate(sorted({p[2] for p in kept}, key=str))}
        rho = clustered_spearman(np.array([p[0] for p in kept]), np.array([p[1] for p in kept]),
                                 np.array([lineages[p[2]] for p in kept]), np.array([p[3] for p in kept]))
        methods = sorted({p[3] for p in kept})
        comparisons.append(Comparison(
            f"KL vs {measure} over {len(kept)} checkpoints of {rho.n} runs within {', '.join(methods)} ({setting})",
            "rho", +1, rho, rho.verdict(+1), {"setting": setting, "forgetting": measure, "checkpoints": len(kept),
                                              "runs": rho.n, "methods": methods}))
    return decided(claim, comparisons, f"not enough data: needs {MIN_CHECKPOINTS}+ checkpoints with KL and "
                   f"forgetting measured, from {MIN_RUNS}+ training runs of one method, per setting ("
                   + ("; ".join(short) or "no checkpoints") + ")",
                   max(comparisons, key=lambda c: c.interval.n) if comparisons else None)


PAPER_CHECKS = (learns_less, forgets_less, forgets_less_loss, forgetting_grows_with_duration,
                forgetting_ordered_by_rank, regularization, lora_forgets_less_than_regularized,
                diversity, delta_rank, kl_predicts_forgetting)
