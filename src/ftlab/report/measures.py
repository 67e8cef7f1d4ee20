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

from dataclasses import dataclass

from ftlab.analysis.statistics import Interval
from ftlab.report.select import Arm
from ftlab.report.verdicts import compare, level
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
