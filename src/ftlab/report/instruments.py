"""What each instrument can resolve in a study: its minimal detectable effect beside the effect plain full
finetuning has on it.

    rows = powers(Measures(study), claims)     # one Power per (instrument, setting)

An instrument (ftlab.report.verdicts.INSTRUMENTS) turns a checkpoint into per-example values. Its minimal detectable
effect (MDE) here is the median, over the study's comparisons on it in one setting (every claim's, each counted
once; settings differ in tasks, so in scale), of each comparison's MDE at the level Holm's correction holds it to in
its claim's family (2.8 standard errors alone, 3.6 among nine: ftlab.analysis.statistics). Beside it, the observed
effect of plain full FT (best learning rate, its longest duration with the instrument measured) against the base
model, paired over the same documents. The instrument resolves that effect when the effect's 95% interval clears the
MDE (its bound nearest 0 is at least the MDE; a point estimate alone is too noisy to say): one that does not cannot
tell the forgetting full FT causes from noise, let alone LoRA's smaller share of it. An instrument with no spread
(every checkpoint at its floor or ceiling: standard error 0) has no MDE: not estimable.
"""

from __future__ import annotations

import statistics as pystats
from dataclasses import dataclass

import numpy as np

from ftlab.report.measures import Measures
from ftlab.report.select import Arm, reference_arms
from ftlab.report.verdicts import INSTRUMENTS, Claim, Comparison, compare

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
