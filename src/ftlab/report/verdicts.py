"""What every finding's check shares: arms of a comparison, the instruments that measure them, paired intervals and
the three-way verdict.

    c = compare(study, lora_arm, full_arm, "learning", expected=-1, what="LoRA r=16 vs full FT at 2 epochs")
    c.verdict                                            # agree | disagree | inconclusive (95% paired interval)
    decided(claim, [c, ...], empty="not enough data: ...")   # the claim's status, counts, headline and sentence

An instrument turns a row into per-example values: learning (the learning tasks' headline metrics), source (the
source benchmarks' headline metrics: the source score), source_loss (held-out source loss per document, weighted
by its tokens), unique (distinct outputs per problem of a sampled task). Two arms are compared on the documents
both measured, task by task, and the difference of their aggregates (mean over tasks) gets a paired bootstrap
interval (ftlab.analysis.statistics); with 3 or more training seeds per arm, the run-to-run variance is added (a t
interval); a base model has none.
A comparison is one of four tests (Comparison.test): "difference" (a difference against zero: the claim's
comparisons of this kind, with the bootstrap-share ones, are one family corrected by Holm), "share" (a verdict from the
share of bootstrap replicates, e.g. of an argmax), "margin" (non-inferiority or equivalence against a margin fixed
before the data are seen: its own test at 5%, outside Holm's family, which is about zero) and "exact" (a measure
without sampling noise). A claim is decided by its rule (statistics.classify): "any" comparison agreeing and none
disagreeing, "all" agreeing (an equivalence), or "most" links of an ordering agreeing; not enough data with no
comparison. Its headline is fixed by the design, never picked by its estimate (prespecified), and its detectable
effect is at Holm's level over its family, in the headline's setting.
"""

from __future__ import annotations

import math
import statistics as pystats
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ftlab.analysis.statistics import (MIN_SEEDS, Interval, Part, Rule, classify, contrast, holm, level_interval,
                                      paired_difference_of, t_sf)
from ftlab.report.select import Arm, Measured
from ftlab.results.study import Row, Study

InstrumentName = Literal["learning", "source", "source_loss", "unique"]
FORGETTING = ("source_loss", "source")  # the forgetting instruments, the one with power first
INSTRUMENTS: dict[str, str] = {  # name -> what it measures, in words (the report's instrument table)
    "learning": "learning: the learning tasks' headline metric (higher = learned more)",
    "source": "source score: the source benchmarks' headline metric (lower = more forgotten)",
    "source_loss": "source loss: held-out source-domain loss, nats per token (higher = more forgotten)",
    "unique": "unique outputs per problem among a sampled task's samples (lower = less diverse)",
}
Test = Literal["difference", "share", "margin", "exact"]
CORRECTED = ("difference", "share")  # the tests Holm's correction covers


def _examples(m: Measured, instrument: str, study: Study) -> dict[str, dict[str, tuple[float, float]]]:
    """key -> per-document (value, weight) of one row under an instrument."""
    if instrument == "unique":
        d = m.diversity
        return {f"{d.task}/unique": {p: (u, 1.0) for p, u in d.per_problem.items()}} if d and d.per_problem else {}
    if instrument == "learning":
        keys = [f"{t}/{study.tasks[t].metric}" for t in m.learning_tasks if t in study.tasks]
    elif instrument == "source":
        keys = [f"{t}/{study.tasks[t].metric}" for t in m.source_tasks if t in study.tasks]
    elif instrument == "source_loss":
        keys = [k for k in m.examples if k.endswith("/loss") and k.split("/")[0] in study.tasks
                and study.tasks[k.split("/")[0]].role == "source_loss"]
    else:
        raise ValueError(f"unknown instrument {instrument!r}")
    return {k: m.values(k) for k in keys if m.values(k)}


def shared_values(study: Study, rows: list[Measured], instrument: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per task every row measured: the values on the documents all rows share, (rows, n), and their weights (n,)
    (None when all are 1). What an arm's level resamples, and a sweep's bootstrap (every LR's rows at once)."""
    measured = [_examples(m, instrument, study) for m in rows]
    keys = sorted(set.intersection(*(set(e) for e in measured))) if measured else []
    found = []
    for key in keys:
        docs = sorted(set.intersection(*(set(e[key]) for e in measured)))
        if docs:
            values = np.stack([np.array([e[key][d][0] for d in docs]) for e in measured])
            weights = np.array([measured[0][key][d][1] for d in docs])
            found.append((values, None if np.all(weights == 1.0) else weights))
    return found


def parts(study: Study, a: Arm, b: Arm, instrument: str) -> list[Part]:
    """The paired parts (one per task both arms measured on every seed) over the documents all rows share."""
    n = len(a.rows)
    return [Part(values[:n], values[n:], weights) for values, weights in shared_values(study, a.rows + b.rows,
                                                                                         instrument)]


def level(study: Study, arm: Arm, instrument: str) -> Interval | None:
    """An arm's own score on an instrument with its bootstrap interval (a figure's error bar); None if unmeasured."""
    found = shared_values(study, arm.rows, instrument)
    return level_interval(found) if found else None


@dataclass
class Comparison:
    """One comparison a verdict counts: b - a on an instrument, its 95% interval and how it sides with the paper."""

    what: str  # "LoRA r=16 vs full FT, 2 epochs": b vs a, in words
    instrument: str  # an INSTRUMENTS name, or what else was compared (k90, lr ratio, rho)
    expected: int  # +1: the paper predicts estimate > 0; -1: < 0
    interval: Interval
    verdict: str  # agree | disagree | inconclusive
    detail: dict = field(default_factory=dict)  # setting, duration, arms' own values, ...
    test: Test = "difference"  # what decides the verdict (the module's docstring)
    family: int = 1  # the tests Holm's correction counted it among (1: outside any family)

    def as_dict(self) -> dict:
        return {"what": self.what, "instrument": self.instrument, "expected": self.expected, "verdict": self.verdict,
                "test": self.test, **self.interval.as_dict(), "mde": self.interval.mde_at(self.family),
                "family": self.family, **self.detail}

    def text(self) -> str:
        """"LoRA r=16 vs full FT at 2 epochs: learning -0.05 [-0.08, -0.02]": the comparison in words."""
        i = self.interval
        margin = f" (margin {self.detail['margin']:.3g})" if "margin" in self.detail else ""
        return f"{self.what}: {self.instrument} {i.estimate:+.3g} [{i.low:+.3g}, {i.high:+.3g}]{margin}"


def compare(study: Study, a: Arm, b: Arm, instrument: str, expected: int, what: str | None = None,
            **detail) -> Comparison | None:
    """b - a on an instrument over the documents both measured (None when they share none), with its verdict."""
    found = parts(study, a, b, instrument)
    if not found:
        return None
    interval = paired_difference_of(found, fixed=(not isinstance(a.rows[0], Row), not isinstance(b.rows[0], Row)))
    return Comparison(what or f"{b.label} vs {a.label}", instrument, expected, interval, interval.verdict(expected),
                      {"setting": a.setting, "duration": b.duration, **detail})


def fixed(what: str, instrument: str, expected: int, estimate: float, low: float, high: float, n: int,
          verdict: str, **detail) -> Comparison:
    """A comparison whose interval and verdict come from elsewhere (a deterministic measure, a test's fixture)."""
    se = (high - low) / (2 * 1.959964) if high > low else 0.0
    if se == 0:  # no sampling noise: outside Holm's family
        return Comparison(what, instrument, expected, Interval(estimate, low, high, se, n), verdict, detail, "exact")
    p = min(1.0, 2 * t_sf(abs(estimate) / se, math.inf))
    return Comparison(what, instrument, expected, Interval(estimate, low, high, se, n, p=p), verdict, detail)


def contrast_arms(study: Study, arms: list[Arm], coefs: tuple[float, ...], instrument: str) -> Interval | None:
    """sum_k coefs[k] x arm k's score on an instrument, over the documents every arm measured (None if none): a
    margin test's statistic (statistics.contrast), e.g. reg - plain - 0.25 (plain - base)."""
    rows = [r for a in arms for r in a.rows]
    found = shared_values(study, rows, instrument)
    if not found:
        return None
    cuts = np.cumsum([0] + [len(a.rows) for a in arms])
    tasks = [([values[cuts[k]:cuts[k + 1]] for k in range(len(arms))], w) for values, w in found]
    return contrast(tasks, coefs, fixed=tuple(not isinstance(a.rows[0], Row) for a in arms))


def prespecified(comparisons: list[Comparison]) -> Comparison | None:
    """The headline fixed by the design, not by the data: in the first setting (by name), the first comparison the
    check lists at that setting's longest duration (each check lists its primary comparison first)."""
    if not comparisons:
        return None
    setting = min(str(c.detail.get("setting", "")) for c in comparisons)
    here = [c for c in comparisons if str(c.detail.get("setting", "")) == setting]
    longest = max((c.detail.get("duration") for c in here if c.detail.get("duration") is not None), default=None)
    return next(c for c in here if longest is None or c.detail.get("duration") == longest)


@dataclass
class Claim:
    """One finding and what this study says about it."""

    id: str  # short key: learns_less, forgets_less, ...
    finding: str  # the finding, in a sentence
    source: str  # whose finding: "Biderman et al. 2024", "Schulman et al. 2025 (LoRA Without Regret)"
    rule: str  # how the verdict is decided
    instrument: str = ""  # what measures it (an INSTRUMENTS name, k90, lr ratio, ...)
    status: str = "not enough data"  # supported | contradicted | mixed | inconclusive | not enough data
    sentence: str = ""  # the verdict's numbers in words
    counts: dict = field(default_factory=lambda: {"agree": 0, "disagree": 0, "inconclusive": 0})
    headline: Comparison | None = None  # the comparison the sentence leads with
    mde: float | None = None  # detectable effect at Holm's level: median over the headline's setting and instrument
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caveats: one seed only, the miniature departs from the paper

    def decide(self, comparisons: list[Comparison | None], empty: str, headline: Comparison | None = None,
               rule: Rule = "any") -> Claim:
        """Status, counts, headline (default: prespecified) and sentence.

        The comparisons that test a difference against zero (and those decided by a bootstrap share) are one
        family: a verdict counts as significant only if it survives Holm's correction over the family (family-wise
        95%), so that among a grid's many comparisons the ~5% that a null effect makes look significant by chance
        do not decide the claim. One that does not is counted inconclusive, with detail["holm"] saying so; its 95%
        interval is shown as it is. Margin tests (non-inferiority, equivalence) are outside the family."""
        self.comparisons = [c for c in comparisons if c is not None]
        family = [c for c in self.comparisons if c.test in CORRECTED]
        for c, kept in zip(family, holm([c.interval.p for c in family])):
            c.family = len(family)
            if c.verdict != "inconclusive" and not kept:
                c.verdict = "inconclusive"
                c.detail["holm"] = f"not significant after Holm's correction over {len(family)} comparisons"
        self.status, self.counts = classify([c.verdict for c in self.comparisons], rule)
        if not self.comparisons:
            self.sentence = empty
            return self
        self.headline = headline or prespecified(self.comparisons)
        h = self.headline
        mdes = [c.interval.mde_at(c.family) for c in self.comparisons  # scales of instruments and settings differ
                if c.instrument == h.instrument and c.detail.get("setting") == h.detail.get("setting")
                and np.isfinite(c.interval.se)]  # a bootstrap share or a correlation: no standard error
        finite = [m for m in mdes if np.isfinite(m)]
        self.mde = pystats.median(finite) if finite else None
        spread = "" if not mdes else (f"; detectable {self.mde:.2g}" if self.mde is not None
                                      else "; detectable: no spread, not estimable")
        links = (f"; {self.counts['agree']} of {len(self.comparisons)} links resolved in the paper's order"
                 if rule == "most" else "")
        self.sentence = (f"{h.text()}; {self.counts['agree']} agree, {self.counts['disagree']} "
                         f"disagree, {self.counts['inconclusive']} inconclusive at 95% (of {len(self.comparisons)}"
                         + (", Holm-corrected" if len(family) > 1 else "") + ")" + links + spread)
        sampled = [c for c in self.comparisons if c.test != "exact" and np.isfinite(c.interval.p)]
        if sampled and not all(c.interval.runs for c in sampled):
            fewest = min(c.interval.seeds for c in sampled if not c.interval.runs)
            self.sentence += "; rests on evaluation noise only (" + (
                f"{fewest} training seed{'s' if fewest > 1 else ''}, fewer than {MIN_SEEDS})" if fewest < MIN_SEEDS
                else "its intervals do not resample the training runs)")
            if fewest < MIN_SEEDS:
                self.notes.append(f"fewer than {MIN_SEEDS} training seeds: the intervals hold the evaluation's noise, "
                                  "not the variation between training runs, so a verdict says how these runs differ, "
                                  f"not how training runs of these configurations would (list {MIN_SEEDS} or more "
                                  "seeds: in the experiment for that)")
        elif sampled:
            self.sentence += "; the variation between training runs included"
        return self

    def note_contradictions(self, shown: int = 3) -> Claim:
        """Say where this study contradicts the paper: a note with the (largest) disagreeing comparisons' numbers."""
        against = sorted((c for c in self.comparisons if c.verdict == "disagree"),
                         key=lambda c: -abs(c.interval.estimate))
        if against:
            where = ("here" if self.status == "contradicted"
                     else f"in {len(against)} of {len(self.comparisons)} comparisons")
            more = f" (and {len(against) - shown} more)" if len(against) > shown else ""
            self.notes.append(f"this study contradicts the paper {where}: "
                              + "; ".join(c.text() for c in against[:shown]) + more)
        return self

    def as_dict(self) -> dict:
        return {"id": self.id, "finding": self.finding, "source": self.source, "rule": self.rule,
                "instrument": self.instrument, "status": self.status, "sentence": self.sentence,
                "counts": self.counts, "mde": self.mde, "notes": self.notes,
                "headline": self.headline.as_dict() if self.headline else None,
                "comparisons": [c.as_dict() for c in self.comparisons]}


def decided(claim: Claim, comparisons: list[Comparison | None], empty: str,
            headline: Comparison | None = None, rule: Rule = "any") -> Claim:
    """What every finding's check ends with: Claim.decide; where forgetting was read on both of its instruments,
    how many comparisons each; the instrument the headline (and the MDE) is on, when the claim names none; and the
    comparisons that contradict the paper, noted."""
    claim.decide(comparisons, empty, headline, rule)
    used = {c.instrument for c in claim.comparisons}
    if len(used & set(FORGETTING)) > 1:
        n = {i: sum(c.instrument == i for c in claim.comparisons) for i in FORGETTING}
        claim.sentence += (f" (forgetting read on the source loss in {n['source_loss']} comparisons, on the source "
                           f"score in {n['source']} without per-document source loss)")
    if claim.headline is not None and not claim.instrument:
        claim.instrument = claim.headline.instrument
    return claim.note_contradictions()
