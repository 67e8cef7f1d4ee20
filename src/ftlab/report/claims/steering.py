"""Steering forgetting: the findings on what moves a model along the learning-forgetting plane, checked on a study.

    claims = [check(study) for check in STEERING_CHECKS]

- forgets_less_matched_learning: the paper's "LoRA forgets less", read at matched learning instead of matched
  duration: plain full FT's forgetting at each LoRA checkpoint's learning, read along full FT's duration curve
  (the base, then its checkpoints by duration), minus LoRA's own.
- interpolation_front (Lin et al. 2024, WiSE-FT style interpolation): full FT interpolated toward its base
  (W_base + a·ΔW: the base, each a, the final model) reaches LoRA's learning with less forgetting than LoRA.
- intruder_repair (Shuttleworth et al. 2024, "An Illusion of Equivalence"): scaling a LoRA checkpoint's intruder
  dimensions (by 0.7 there) lowers its forgetting, with little change in learning.
- early_stop_tracks_learning (Kalajdzievski 2024): along a run's training, forgetting (the rise of the source loss,
  data.source_eval) rises with learning (the fall of the held-out learning loss): stopping early avoids
  forgetting only by learning less.
- replay_prevents_forgetting (Bethune et al. 2025): a setting whose training mixes in source text (data.replay)
  forgets less than the same groups on the same data without it.

Forgetting at matched learning (ftlab.analysis.steering.matched_learning): the curve's forgetting is read linearly
between the two consecutive models whose learning brackets the reference's; its interval resamples the documents
of both instruments, so the level it is read at moves too. Forgetting is the held-out source loss where every model
measured it per document (higher = more forgotten), else the source score (negated: lower = more forgotten). Each
group at its best LR (ftlab.report.select), the first training seed's run.
"""

from __future__ import annotations

import numpy as np

from ftlab.analysis.statistics import spearman_interval
from ftlab.analysis.steering import matched_learning
from ftlab.report.select import Arm, Measured, arms_by_kind, best_lr_rows, duration_text, group_order
from ftlab.report.verdicts import Claim, Comparison, compare, decided, fixed, shared_values
from ftlab.results.study import Row, Study

MATCHED = ("Per setting and optimizer, each group at its best LR, the first seed: ")


# ----------------------------------------------------------------------------- curves


def _first_seed(arm: Arm) -> Row:
    return min(arm.rows, key=lambda r: r.seed)


def full_duration_curves(study: Study) -> dict[tuple[str, str], list[Row]]:
    """(setting, optimizer) -> plain full FT's checkpoints by duration (at its best LR, first seed)."""
    out: dict[tuple[str, str], list[Row]] = {}
    for (setting, optimizer, _), kinds in arms_by_kind(study).items():
        for arm in kinds["full"][:1]:
            out.setdefault((setting, optimizer), []).append(_first_seed(arm))
    return {k: sorted(rs, key=lambda r: r.duration or 0.0) for k, rs in out.items()}


def interpolation_curve(study: Study, row: Row) -> list[Row]:
    """A checkpoint's interpolations toward its base, by weight a ascending, then the checkpoint itself."""
    steered = [s for s in study.steered if s.steer == "interp" and s.run == row.run and s.steered_from == row.checkpoint]
    return sorted(steered, key=lambda s: s.factor or 0.0) + [row]


def lora_rows(study: Study) -> list[Row]:
    """Each LoRA group's checkpoints at its best LR (first seed), in the report's order."""
    return [_first_seed(arm) for kinds in arms_by_kind(study).values() for arm in kinds["lora"]]


def _where(study: Study, row: Row) -> str:
    when = duration_text(row.duration, row.duration_unit)
    return when if len({r.setting for r in study.rows}) < 2 else f"{when}, {row.setting}"


# ----------------------------------------------------------------------------- reading a curve at matched learning


def forgetting_instrument(study: Study, models: list[Measured]) -> tuple[str, int] | None:
    """(instrument, sign): the source loss (sign +1: higher = more forgotten) where every model measured it per
    document on shared documents, else the source score (sign -1); None if neither."""
    for instrument, sign in (("source_loss", 1), ("source", -1)):
        if shared_values(study, models, instrument):
            return instrument, sign
    return None


def at_matched_learning(study: Study, reference: Row, curve: list[Measured], expected: int,
                        what: str) -> Comparison | None:
    """The curve's forgetting at the reference's learning minus the reference's (forgetting units: the source loss,
    nats/token, or the source score's drop), with its bootstrap interval; None where something is unmeasured or the
    curve does not reach the reference's learning."""
    models = [reference, *curve]
    picked = forgetting_instrument(study, models)
    learning = shared_values(study, models, "learning")
    if picked is None or not learning:
        return None
    instrument, sign = picked
    forgetting = [(sign * values, weights) for values, weights in shared_values(study, models, instrument)]
    interval = matched_learning(learning, forgetting)
    if interval is None:
        return None
    return Comparison(what, f"{instrument} at matched learning", expected, interval, interval.verdict(expected),
                      {"setting": reference.setting, "duration": reference.duration, "forgetting": instrument,
                       "learning_reference": reference.learning})


# ----------------------------------------------------------------------------- the findings


def forgets_less_matched_learning(study: Study) -> Claim:
    claim = Claim("forgets_less_matched_learning", "LoRA forgets less than full finetuning at matched learning (the "
                  "paper's finding read at equal learning instead of equal duration).", "Biderman et al. 2024",
                  MATCHED + "each LoRA checkpoint's learning is read on plain full FT's duration curve (the base, "
                  "then its checkpoints by duration, linear between the two that bracket it); full FT's forgetting "
                  "there minus LoRA's, with a bootstrap interval over the documents of both instruments; agree if "
                  "above 0 (full FT forgot more at the same learning), disagree if below.")
    curves = full_duration_curves(study)
    comparisons, unreached = [], 0
    for row in lora_rows(study):
        curve = curves.get((row.setting, row.optimizer))
        base = study.base_of(row.setting)
        if not curve or base is None:
            continue
        c = at_matched_learning(study, row, [base, *curve], +1, f"full FT vs {row.group} at the learning of "
                                f"{row.group} at {_where(study, row)}")
        unreached += c is None
        comparisons.append(c)
    if unreached:
        claim.notes.append(f"{unreached} LoRA checkpoint(s) learned more (or less) than full FT's duration curve "
                           "covers, or lack a measurement: not compared")
    return decided(claim, comparisons, "not enough data: needs plain full FT and LoRA checkpoints with learning and "
                   "forgetting measured, and the base")


def interpolation_front(study: Study) -> Claim:
    claim = Claim("interpolation_front", "Full finetuning interpolated toward its base reaches LoRA's learning with "
                  "less forgetting than LoRA.", "Lin et al. 2024",
                  MATCHED + "plain full FT's final checkpoint at its longest duration is interpolated toward the "
                  "base (W_base + a·ΔW for each analyses.interpolation weight: the curve runs base, each a, a = 1); "
                  "each LoRA checkpoint's learning is read on that curve; its forgetting there minus LoRA's, with a "
                  "bootstrap interval; agree if below 0 (interpolated full FT forgot less), disagree if above.")
    finals = {key: curve[-1] for key, curve in full_duration_curves(study).items()}
    comparisons, unreached = [], 0
    for row in lora_rows(study):
        final, base = finals.get((row.setting, row.optimizer)), study.base_of(row.setting)
        curve = interpolation_curve(study, final) if final is not None else []
        if base is None or len(curve) < 2:
            continue
        c = at_matched_learning(study, row, [base, *curve], -1,
                                f"interpolated full FT vs {row.group} at the learning of {row.group} at "
                                f"{_where(study, row)}")
        unreached += c is None
        comparisons.append(c)
    if unreached:
        claim.notes.append(f"{unreached} LoRA checkpoint(s) outside the interpolation curve's learning (or "
                           "unmeasured): not compared")
    return decided(claim, comparisons, "not enough data: needs plain full FT interpolated toward the base "
                   "(analyses.interpolation) and LoRA checkpoints, with learning and forgetting measured")


def intruder_repair(study: Study) -> Claim:
    claim = Claim("intruder_repair", "Scaling a LoRA checkpoint's intruder dimensions down lowers its forgetting, "
                  "with little change in learning.", "Shuttleworth et al. 2024",
                  "Each LoRA checkpoint with intruder dimensions scaled (analyses.intruders) against itself: the "
                  "source loss's difference scaled - LoRA over the same documents (paired bootstrap, 95%; agree if "
                  "below 0), else the source score's (agree if above 0); the change in learning is noted.")
    by_key = {(r.run, r.checkpoint): r for r in study.points()}
    comparisons = []
    for scaled in sorted((s for s in study.steered if s.steer == "intruders"), key=lambda s: (s.run, s.factor)):
        row = by_key.get((scaled.run, scaled.steered_from))
        if row is None:
            continue
        a, b = Arm(row.group, [row]), Arm(f"{row.group} intruders x{scaled.factor:g}", [scaled])
        what = f"{b.label} vs {a.label} at {_where(study, row)}"
        c = compare(study, a, b, "source_loss", -1, what) or compare(study, a, b, "source", +1, what)
        learned = compare(study, a, b, "learning", 0)
        if c is not None and learned is not None:
            i = learned.interval
            c.detail["learning_change"] = i.as_dict()
            claim.notes.append(f"{what}: learning {i.estimate:+.3g} [{i.low:+.3g}, {i.high:+.3g}]")
        comparisons.append(c)
    return decided(claim, comparisons, "not enough data: needs LoRA checkpoints with intruder dimensions scaled "
                   "(analyses.intruders) and measured")


MIN_POINTS = 4  # logged evaluations a run's curve needs for a rank correlation


def early_stop_tracks_learning(study: Study) -> Claim:
    claim = Claim("early_stop_tracks_learning", "Forgetting rises with learning along training: stopping early "
                  "avoids forgetting only by learning less.", "Kalajdzievski 2024",
                  "Each run that measured the source loss as it trained (data.source_eval): over its logged "
                  "evaluations, Spearman's rho between learning (the base's held-out learning loss minus the "
                  "step's) and forgetting (the step's source loss minus the base's), bootstrap over the "
                  "evaluations; agree if the interval lies above 0.", "rho")
    comparisons = []
    for run, points in sorted(study.curves.items()):
        both = [p for p in points if p.eval_loss is not None and p.source_loss is not None]
        if len(both) < MIN_POINTS or both[0].step != 0:
            continue
        learned = np.array([both[0].eval_loss - p.eval_loss for p in both])
        forgot = np.array([p.source_loss - both[0].source_loss for p in both])
        if np.ptp(learned) == 0 or np.ptp(forgot) == 0:
            continue
        rho = spearman_interval(learned, forgot)
        comparisons.append(fixed(f"{run}: forgetting vs learning over {len(both)} evaluations", "rho", +1,
                                 rho.estimate, rho.low, rho.high, rho.n, rho.verdict(+1),
                                 final_rise=float(forgot[-1]), final_gain=float(learned[-1])))
    return decided(claim, comparisons, "not enough data: needs runs that measured the source loss as they trained "
                   f"(data.source_eval, train.eval_every), {MIN_POINTS} evaluations or more")


def replay_prevents_forgetting(study: Study) -> Claim:
    claim = Claim("replay_prevents_forgetting", "Mixing a little source-domain data into finetuning (replay) prevents "
                  "most forgetting.", "Bethune et al. 2025",
                  "Each group at its best LR in a setting with data.replay against the same group, at the same "
                  "duration, in a setting on the same data and regime without replay (first seeds): the source loss's "
                  "difference replay - none over the same documents (paired bootstrap, 95%; agree if below 0), else "
                  "the source score's (agree if above 0); the change in learning is noted.")
    rows = best_lr_rows(study.points())
    rows = [r for r in rows if r.seed == min(x.seed for x in rows)]
    plain = {(r.regime, r.data, r.group, r.optimizer, r.duration): r for r in rows if not r.replay}
    comparisons = []
    for r in sorted((r for r in rows if r.replay), key=lambda r: (r.setting, group_order(r), r.duration or 0.0)):
        none = plain.get((r.regime, r.data, r.group, r.optimizer, r.duration))
        if none is None:
            continue
        a, b = Arm(none.group, [none]), Arm(f"{r.group} replay {r.replay:g}", [r])
        what = f"{b.label} vs none at {_where(study, r)} ({r.setting} vs {none.setting})"
        c = compare(study, a, b, "source_loss", -1, what) or compare(study, a, b, "source", +1, what)
        learned = compare(study, a, b, "learning", 0)
        if c is not None and learned is not None:
            i = learned.interval
            claim.notes.append(f"{what}: learning {i.estimate:+.3g} [{i.low:+.3g}, {i.high:+.3g}]")
        comparisons.append(c)
    return decided(claim, comparisons, "not enough data: needs a setting with data.replay beside one on the same "
                   "data without it, the same groups measured in both")


STEERING_CHECKS = (forgets_less_matched_learning, interpolation_front, intruder_repair, early_stop_tracks_learning,
                   replay_prevents_forgetting)
