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

from ftlab.analysis.statistics import Interval, spearman_interval, t975
from ftlab.report.select import Arm, analysed, arms_by_kind, rank_ladder, sorted_arms
from ftlab.report.verdicts import FORGETTING, Claim, Comparison, compare, decided
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
    """The largest |difference| on the first instrument of `prefer` that has comparisons (scales don't mix)."""
    found = [c for c in comparisons if c is not None]
    for instrument in prefer:
        on = [c for c in found if c.instrument == instrument]
        if on:
            return max(on, key=lambda c: abs(c.interval.estimate))
    return None


def _empty(pairs: int, what: str, instrument: str) -> str:
    """The "not enough data" sentence: nothing to pair, or pairs without shared per-example values."""
    if not pairs:
        return f"not enough data: {what}"
    return (f"not enough data: {pairs} pair{'s' if pairs > 1 else ''} to compare, but none with per-example "
            f"{instrument} values on shared documents")


# ----------------------------------------------------------------------------- LoRA against plain full FT


def _lora_vs_full(study: Study) -> list[tuple[Arm, Arm, str]]:
    """(plain full FT, LoRA group, what) at every (setting, optimizer, duration) both reached, best LR each."""
    return [(full, lora, f"{lora.label} vs {full.label} at {_at(study, lora)}")
            for kinds in arms_by_kind(study).values() for full in kinds["full"] for lora in kinds["lora"]]


NO_PAIR = "no duration at which a LoRA group and plain full FT of one setting and optimizer were both evaluated"
MATCHED = ("Each LoRA group against plain full FT of the same setting and optimizer, at each duration both reached "
           "(separate runs or checkpoints alike; best LR each): ")


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
                  "lies above 0), else on the source score (agree if below 0); disagree if the other way.")
    ladders: dict[tuple, list[Arm]] = {}
    for key, arm in sorted_arms(analysed(study)):
        if key[4] is not None:
            ladders.setdefault(key[:4], []).append(arm)
    pairs = [(a, b) for ladder in ladders.values() for a, b in zip(ladder, ladder[1:])]
    comparisons = [_forgets(study, a, b, +1, f"{b.label} at {_at(study, b)} vs {_at(study, a)}") for a, b in pairs]
    return decided(claim, comparisons, _empty(len(pairs), "no configuration evaluated at two durations",
                                               "source loss or source score"), _headline(comparisons))


def forgetting_ordered_by_rank(study: Study) -> Claim:
    claim = Claim("forgetting_ordered_by_rank", "Forgetting is ordered by capacity: a higher LoRA rank forgets more, "
                  "full finetuning the most.", PAPER,
                  "At each setting, optimizer and duration: LoRA ranks ascending (the plainest group of each rank), "
                  "then plain full FT, best LR each; each adjacent pair, higher - lower on the source loss where "
                  "both measured it (agree if above 0), else on the source score (agree if below 0).")
    pairs = []
    for kinds in arms_by_kind(study).values():
        ladder = rank_ladder(kinds["lora"]) + kinds["full"]
        pairs += zip(ladder, ladder[1:])
    comparisons = [_forgets(study, a, b, +1, f"{b.label} vs {a.label} at {_at(study, b)}") for a, b in pairs]
    return decided(claim, comparisons, _empty(len(pairs), "no duration with two LoRA ranks, or a LoRA rank and "
                                               "plain full FT, evaluated", "source loss or source score"),
                    _headline(comparisons))


# ----------------------------------------------------------------------------- regularization (the paper's Fig 3)


def _equivalent(study: Study, base: Arm | None, plain: Arm, reg: Arm, instruments: tuple[str, ...],
                what: str) -> Comparison | None:
    """reg - plain on the first instrument both (and the base) measured, judged for equivalence: agree if its
    interval lies within +-margin, disagree if wholly outside, margin = half plain full FT's effect against the base."""
    for instrument in instruments:
        c = _compare(study, plain, reg, instrument, 0, what)
        effect = compare(study, base, plain, instrument, 0) if base is not None and c is not None else None
        if effect is None:
            continue
        margin, i = 0.5 * abs(effect.interval.estimate), c.interval
        verdict = ("agree" if -margin <= i.low and i.high <= margin
                   else "disagree" if i.low > margin or i.high < -margin else "inconclusive")
        return dataclasses.replace(c, verdict=verdict, detail={**c.detail, "margin": margin,
                                                               "plain_effect": effect.interval.estimate})
    return None


def regularization(study: Study) -> Claim:
    claim = Claim("regularization", "Weight decay and attention dropout leave full finetuning about as it was "
                  "(learning and forgetting), while LoRA forgets less than regularized full finetuning.", PAPER,
                  "At matched duration only (one setting and optimizer, best LR each; checkpoints of other durations "
                  "are never compared). (a) Each regularized full FT (weight decay or attention dropout above plain "
                  "full FT's) - plain full FT, on learning and on forgetting (source loss where measured, else "
                  "source score): an equivalence check with margin = half of plain full FT's own change against the "
                  "base on that instrument; agree if the 95% interval lies within +-margin, disagree if wholly "
                  "outside. (b) The highest-rank LoRA - each regularized full FT on forgetting: agree if LoRA "
                  "forgot less (source loss below 0, else source score above 0), disagree if more.")
    equivalence, lora_less, regularized, no_base = [], [], 0, False
    for (setting, _, _), kinds in arms_by_kind(study).items():
        found = study.base_of(setting)
        base = Arm.of([found]) if found is not None else None
        no_base |= base is None
        ranks = rank_ladder(kinds["lora"])
        for reg in kinds["regularized"]:
            regularized += 1
            for plain in kinds["full"]:
                what = f"{reg.label} vs {plain.label} at {_at(study, reg)}"
                equivalence += [_equivalent(study, base, plain, reg, ("learning",), what),
                                _equivalent(study, base, plain, reg, FORGETTING, what)]
            if ranks:
                lora_less.append(_forgets(study, reg, ranks[-1], -1,
                                          f"{ranks[-1].label} vs {reg.label} at {_at(study, reg)}"))
    if no_base and regularized:
        claim.notes.append("no base model evaluated in some setting: half (a) needs its effect to set the margin")
    empty = ("not enough data: no full-FT run with weight decay or attention dropout above plain full FT's"
             if not regularized else "not enough data: no plain full FT (with a base model) or LoRA evaluated at "
             "the regularized runs' durations, with per-example values on shared documents")
    return decided(claim, equivalence + lora_less, empty, _headline(lora_less) or _headline(
        equivalence, ("learning",)))


# ----------------------------------------------------------------------------- diversity


def diversity(study: Study) -> Claim:
    claim = Claim("diversity", "Generations collapse under finetuning: full FT has the fewest unique outputs per "
                  "problem, LoRA lies between full FT and the base model.", PAPER,
                  "Unique outputs per problem of the sampled task, paired over problems (best LR each). At each "
                  "setting, optimizer and duration: plain full FT - each LoRA group, agree if the interval lies "
                  "below 0; and each finetuned arm - the base model, agree if below 0; disagree if above.", "unique")
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
                                               "of one duration, or a checkpoint and the base", "unique-output"))


# ----------------------------------------------------------------------------- the rank of full FT's ΔW

def _k90_against(arm: Arm, rank: int, width: int, what: str) -> Comparison:
    """Mean k90 - min(10 r, width / 2) with its interval over seeds (zero-width for one seed: k90 is deterministic)."""
    k90s = np.array([r.spectrum.k90_mean for r in arm.rows])
    need = min(10 * rank, 0.5 * width)
    mean = float(k90s.mean())
    se = float(k90s.std(ddof=1) / np.sqrt(len(k90s))) if len(k90s) > 1 else 0.0
    half = t975(len(k90s) - 1) * se if len(k90s) > 1 else 0.0
    interval = Interval(mean - need, mean - need - half, mean - need + half, se,
                        len(arm.rows[0].spectrum.matrices), len(k90s))
    verdict = "agree" if interval.low >= 0 else "disagree" if interval.high < 0 else "inconclusive"
    return Comparison(what, "k90", +1, interval, verdict,
                      {"setting": arm.setting, "duration": arm.duration, "k90": mean, "lora_rank": rank,
                       "threshold": need, "width": width, "ratio": mean / rank})


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


def _kl_pairs(study: Study, setting: str) -> tuple[str, list[float], list[float]]:
    """(forgetting measure, KL, forgetting) over a setting's checkpoints: the source-loss rise over the base where
    MIN_CHECKPOINTS or more have it, else forgetting (base source score - source score)."""
    rows = [r for r in analysed(study) if r.setting == setting and r.kl is not None]
    rise = [(r.kl, r.source_loss - r.base_source_loss) for r in rows
            if r.source_loss is not None and r.base_source_loss is not None]
    if len(rise) >= MIN_CHECKPOINTS:
        return "source-loss rise", [k for k, _ in rise], [f for _, f in rise]
    forgot = [(r.kl, r.forgetting) for r in rows if r.forgetting is not None]
    return "forgetting", [k for k, _ in forgot], [f for _, f in forgot]


def kl_predicts_forgetting(study: Study) -> Claim:
    claim = Claim("kl_predicts_forgetting", "KL(base || finetuned) on target prompts predicts forgetting across "
                  "checkpoints (the cheap forgetting predictor of \"RL's Razor\", 2025, measured beside the paper).",
                  "RL's Razor (2025), measured beside " + PAPER,
                  f"Per setting, over its checkpoints ({MIN_CHECKPOINTS} at least): Spearman's rank correlation "
                  "between KL to the base and forgetting (the source-loss rise over the base where measured, else "
                  "base source score - source score), with a bootstrap interval over checkpoints; agree if the 95% "
                  "interval lies above 0, disagree if below.", "rho")
    comparisons, short = [], []
    for setting in sorted({r.setting for r in analysed(study)}):
        measure, kl, forgot = _kl_pairs(study, setting)
        if len(kl) < MIN_CHECKPOINTS:
            short.append(f"{setting}: {len(kl)}")
            continue
        rho = spearman_interval(np.array(kl), np.array(forgot))
        comparisons.append(Comparison(f"KL vs {measure} over {len(kl)} checkpoints ({setting})", "rho", +1, rho,
                                      rho.verdict(+1), {"setting": setting, "forgetting": measure,
                                                        "checkpoints": len(kl)}))
    return decided(claim, comparisons, f"not enough data: fewer than {MIN_CHECKPOINTS} checkpoints with KL and "
                    "forgetting measured per setting (" + (", ".join(short) or "no checkpoints") + ")",
                    max(comparisons, key=lambda c: c.interval.n) if comparisons else None)


PAPER_CHECKS = (learns_less, forgets_less, forgets_less_loss, forgetting_grows_with_duration,
                forgetting_ordered_by_rank, regularization, diversity, delta_rank, kl_predicts_forgetting)
