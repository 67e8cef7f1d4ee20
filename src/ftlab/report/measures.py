"""Each configuration's numbers with their 95% intervals, as the report's figures, cost view and recommendation show
them.

    m = Measures(study)
    v = m.value(arm, "learning")               # Value(estimate, low, high): the arm's score and its error bar
    f = m.forgetting(arm)                      # how much it forgot against its setting's base, higher = more
    v.text()                                   # "0.54 [0.5, 0.58]"

An arm (ftlab.report.verdicts) is one configuration at one duration, a row per training seed. Its score on an
instrument is verdicts.level (a bootstrap over examples, with 3+ seeds their variance too); its forgetting is the paired difference against
the setting's base model (verdicts.compare): the rise of the held-out source loss (nats/token) where the setting
measured it per document, else the drop of the source score. Without per-example values a number keeps its point
estimate (the rows' mean) and has no interval.
"""

from __future__ import annotations

import statistics as pystats
from dataclasses import dataclass

import numpy as np

from ftlab.analysis.statistics import Interval
from ftlab.report.select import Arm, best_arms, group_order, longest, reference_arms
from ftlab.report.verdicts import INSTRUMENTS, Claim, Comparison, compare, level
from ftlab.results.study import Study

FORGETTING_WORDS = {  # forgetting instrument -> what its numbers are, in words (figures, tables, the CLI option)
    "source_loss": "source-loss rise over the base (nats/token)",
    "source": "source-score drop from the base",
}


@dataclass(frozen=True)
class Value:
    """A number with its 95% interval (low and high None when no per-example values gave one)."""

    estimate: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, interval: Interval, sign: int = 1) -> Value:
        """The interval's estimate and bounds, negated when sign is -1."""
        if sign < 0:
            return cls(-interval.estimate, -interval.high, -interval.low)
        return cls(interval.estimate, interval.low, interval.high)

    @property
    def upper(self) -> float:
        """The interval's upper bound, or the estimate without one."""
        return self.estimate if self.high is None else self.high

    def bar(self) -> tuple[float, float]:
        """(below, above): an error bar's extent from the estimate (0, 0 without an interval)."""
        if self.low is None or self.high is None:
            return 0.0, 0.0
        return max(self.estimate - self.low, 0.0), max(self.high - self.estimate, 0.0)

    def text(self, signed: bool = False) -> str:
        """"0.54 [0.5, 0.58]"; signed: "+0.06 [+0.03, +0.09]" (a difference)."""
        f = ("{:+.3g}" if signed else "{:.3g}").format
        interval = "" if self.low is None else f" [{f(self.low + 0.0)}, {f(self.high + 0.0)}]"  # + 0.0: no "-0"
        return f(self.estimate + 0.0) + interval

    def record(self, name: str) -> dict:
        """{name, name_low, name_high}: a CSV row's columns."""
        return {name: self.estimate, f"{name}_low": self.low, f"{name}_high": self.high}


def empty_record(name: str) -> dict:
    return {name: None, f"{name}_low": None, f"{name}_high": None}


def _mean(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


class Measures:
    """A study's per-arm numbers, each computed once per report (a bootstrap costs milliseconds, and the figures,
    the cost view and the recommendation ask for the same arms)."""

    def __init__(self, study: Study):
        self.study = study
        self._cache: dict[tuple, Value | None] = {}

    def _once(self, arm: Arm, what: str, compute) -> Value | None:
        key = (tuple((r.run, r.checkpoint) for r in arm.rows), what)
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def value(self, arm: Arm, instrument: str) -> Value | None:
        """An arm's score on an instrument (learning, source, source_loss) with its bootstrap interval
        (verdicts.level); the rows' mean without an interval when they have no per-example values; None when
        unmeasured."""
        def compute() -> Value | None:
            interval = level(self.study, arm, instrument)
            if interval is not None:
                return Value.of(interval)
            mean = _mean([getattr(r, instrument) for r in arm.rows])
            return None if mean is None else Value(mean)
        return self._once(arm, instrument, compute)

    def instrument(self, setting: str) -> str:
        """Forgetting's instrument in a setting: source_loss where its base and its checkpoints measured the held-out
        source loss, else source."""
        base = self.study.base_of(setting)
        measured = base is not None and base.source_loss is not None and any(
            r.source_loss is not None for r in self.study.points() if r.setting == setting)
        return "source_loss" if measured else "source"

    def forgetting(self, arm: Arm, instrument: str | None = None) -> Value | None:
        """How much the arm forgot against its setting's base (higher = more): the source-loss rise or the
        source-score drop (default: the setting's instrument), paired over the documents both measured; the
        difference of the stored means, without an interval, when they share no per-example values; None without
        a base."""
        instrument = instrument or self.instrument(arm.setting)
        return self._once(arm, f"forgetting:{instrument}", lambda: self._forgetting(arm, instrument))

    def _forgetting(self, arm: Arm, instrument: str) -> Value | None:
        base = self.study.base_of(arm.setting)
        if base is None:
            return None
        base_arm = Arm.of([base])
        if instrument == "source_loss":
            c = compare(self.study, base_arm, arm, "source_loss", +1)  # arm - base: the rise
            if c is not None:
                return Value.of(c.interval)
            mean = _mean([r.source_loss for r in arm.rows])
            return None if mean is None or base.source_loss is None else Value(mean - base.source_loss)
        c = compare(self.study, arm, base_arm, "source", -1)  # base - arm: the drop
        if c is not None:
            return Value.of(c.interval)
        mean = _mean([r.source for r in arm.rows])
        return None if mean is None or base.source is None else Value(base.source - mean)

    def point(self, arm: Arm) -> Point:
        instrument = self.instrument(arm.setting)
        return Point(arm, self.value(arm, "learning"), self.forgetting(arm, instrument), instrument)


@dataclass
class Point:
    """One configuration at one duration with what it learned and forgot (a figure's dot, a row of the advice)."""

    arm: Arm
    learning: Value | None
    forgetting: Value | None
    instrument: str  # forgetting's: source_loss or source

    @property
    def lr(self) -> float | None:
        return self.arm.rows[0].lr

    @property
    def name(self) -> str:
        """"LoRA r=16, lr 0.001, 4 epochs": the configuration in words."""
        return f"{self.arm.label}, lr {self.lr:g}, {self.arm.when}" if self.lr is not None else (
            f"{self.arm.label}, {self.arm.when}")

    def record(self) -> dict:
        first = self.arm.rows[0]
        return {"setting": self.arm.setting, "group": self.arm.label, "lr": self.lr, "duration": self.arm.duration,
                "duration_unit": first.duration_unit, "seeds": len(self.arm.rows),
                **(self.learning.record("learning") if self.learning else empty_record("learning")),
                **(self.forgetting.record("forgetting") if self.forgetting else empty_record("forgetting")),
                "forgetting_measure": self.instrument}


# ----------------------------------------------------------------------------- what each configuration cost


def cost_of(arm: Arm) -> dict:
    """An arm's cost: the mean over its seeds' runs (device and parameters: the first run's)."""
    def mean(key: str) -> float | None:
        values = [getattr(r.cost, key) for r in arm.rows if getattr(r.cost, key) is not None]
        return float(np.mean(values)) if values else None
    first = arm.rows[0].cost  # the seeds share the configuration: its device and sizes
    return {"wall_s": mean("wall_s"), "device_hours": mean("device_hours"), "tokens_per_s": mean("tokens_per_s"),
            "peak_memory_gb": mean("peak_memory_gb"), "device": first.device,
            "trainable_params": first.trainable_params, "total_params": first.total_params}


def cost_points(m: Measures) -> list[tuple[Point, dict]]:
    """(point, cost) of each group at its best learning rate and longest duration, in the figures' order."""
    found = sorted(longest(best_arms(m.study)), key=lambda a: (a.setting, *group_order(a.rows[0])))
    return [(m.point(a), cost_of(a)) for a in found]


# ----------------------------------------------------------------------------- what each instrument can resolve
# What each instrument can resolve in a study: its minimal detectable effect beside the effect plain full
# finetuning has on it.
#
#     rows = powers(Measures(study), claims)     # one Power per (instrument, setting)
#
# An instrument (ftlab.report.verdicts.INSTRUMENTS) turns a checkpoint into per-example values. Its minimal detectable
# effect (MDE) here is the median, over the study's comparisons on it in one setting (every claim's, each counted
# once; settings differ in tasks, so in scale), of each comparison's MDE at the level Holm's correction holds it to in
# its claim's family (2.8 standard errors alone, 3.6 among nine: ftlab.analysis.statistics). Beside it, the observed
# effect of plain full FT (best learning rate, its longest duration with the instrument measured) against the base
# model, paired over the same documents. The instrument resolves that effect when the effect's 95% interval clears the
# MDE (its bound nearest 0 is at least the MDE; a point estimate alone is too noisy to say): one that does not cannot
# tell the forgetting full FT causes from noise, let alone LoRA's smaller share of it. An instrument with no spread
# (every checkpoint at its floor or ceiling: standard error 0) has no MDE: not estimable.

EXPECTED = {"learning": +1, "source": -1, "source_loss": +1, "unique": -1}  # full FT - base, as the paper expects


@dataclass
class Power:
    """An instrument's minimal detectable effect, and full FT's effect on it in one setting."""

    instrument: str
    comparisons: int  # the study's comparisons on it (in the setting)
    mde: float | None  # median over them of the MDE at each one's Holm level (None: no spread)
    setting: str | None = None
    full: Comparison | None = None  # plain full FT - base

    @property
    def estimable(self) -> bool:
        """Whether the instrument has a detectable effect at all: no spread (standard error 0) has none."""
        mde = self.mde if self.mde is not None else (self.full.interval.mde if self.full else float("nan"))
        return bool(np.isfinite(mde) and mde > 0)

    @property
    def resolved(self) -> bool | None:
        """Whether full FT's effect clears the detectable effect (its own MDE without study comparisons): the bound
        of its 95% interval nearest 0 is at least the MDE. None when unmeasured or not estimable (no spread)."""
        if self.full is None or not self.estimable:
            return None
        mde = self.mde if self.mde is not None else self.full.interval.mde
        i = self.full.interval
        nearest = 0.0 if i.low <= 0 <= i.high else min(abs(i.low), abs(i.high))
        return nearest >= mde

    @property
    def resolution(self) -> str:
        """The table's answer in words."""
        if self.full is None:
            return "–"
        if not self.estimable:
            return "no spread: not estimable"
        return ("yes: its interval clears the MDE" if self.resolved else "no: its interval reaches below the MDE")

    def record(self) -> dict:
        i = self.full.interval if self.full else None
        return {"instrument": self.instrument, "measures": INSTRUMENTS[self.instrument],
                "comparisons": self.comparisons, "mde": self.mde, "setting": self.setting,
                "full_vs_base": self.full.what if self.full else None, "effect": i and i.estimate,
                "effect_low": i and i.low, "effect_high": i and i.high, "effect_mde": i and i.mde,
                "significant": self.full.verdict != "inconclusive" if self.full else None,
                "resolved": self.resolved, "estimable": self.estimable}


def _distinct(claims: list[Claim]) -> list[Comparison]:
    """Every claim's comparisons, each once (several claims may count the same pair)."""
    seen, out = set(), []
    for c in (c for claim in claims for c in claim.comparisons):
        i = c.interval
        key = (c.what, c.instrument, i.estimate, i.low, i.high)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _full_effect(m: Measures, setting: str, arms: list[Arm], instrument: str) -> Comparison | None:
    base = m.study.base_of(setting)
    if base is None:
        return None
    for arm in arms:  # the longest duration first
        c = compare(m.study, Arm.of([base]), arm, instrument, EXPECTED[instrument],
                    f"{arm.label} at {arm.when} vs base")
        if c is not None:
            return c
    return None


def _mde(comparisons: list[Comparison]) -> tuple[int, float | None]:
    """(how many, the median MDE at each one's Holm level) over comparisons with a standard error; None when none
    has a spread."""
    found = [c for c in comparisons if np.isfinite(c.interval.se)]
    mdes = [m for m in (c.interval.mde_at(c.family) for c in found) if np.isfinite(m)]
    return len(found), (pystats.median(mdes) if mdes else None)


def powers(m: Measures, claims: list[Claim]) -> list[Power]:
    """One row per instrument and setting where full FT's effect was measured, the MDE over that setting's
    comparisons (settings differ in tasks, so in scale); one row over the whole study otherwise."""
    comparisons = _distinct(claims)
    references = reference_arms(m.study)
    out = []
    for instrument in INSTRUMENTS:
        on = [c for c in comparisons if c.instrument == instrument]
        found = [Power(instrument, *_mde([c for c in on if c.detail.get("setting") == s]), s, effect)
                 for s, arms in sorted(references.items())
                 if (effect := _full_effect(m, s, arms, instrument)) is not None]
        out += found or [Power(instrument, *_mde(on))]
    return out
