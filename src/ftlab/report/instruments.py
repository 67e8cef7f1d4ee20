"""What each instrument can resolve in a study: its minimal detectable effect beside the effect plain full
finetuning has on it.

    rows = powers(Measures(study), claims)     # one Power per (instrument, setting)

An instrument (ftlab.report.verdicts.INSTRUMENTS) turns a checkpoint into per-example values. Its minimal detectable
effect (MDE) here is the median, over the study's comparisons on it in one setting (every claim's, each counted
once; settings differ in tasks, so in scale), of 2.8 x the comparison's bootstrap standard error: the true difference
a two-sided 5% test detects with 80% power (ftlab.analysis.statistics). Beside it, the observed effect of plain full
FT (best learning rate, its longest duration with the instrument measured) against the base model, paired over the
same documents: an instrument whose MDE exceeds that effect cannot tell the forgetting full FT causes from noise, let
alone LoRA's smaller share of it.
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
    mde: float | None  # median over them of 2.8 x SE
    setting: str | None = None
    full: Comparison | None = None  # plain full FT - base

    @property
    def resolved(self) -> bool | None:
        """Whether full FT's effect is at least the detectable effect (its own MDE without study comparisons); an
        effect of zero is never resolved (an instrument at its floor or ceiling shows no spread, and an MDE of 0)."""
        if self.full is None:
            return None
        mde = self.mde if self.mde is not None else self.full.interval.mde
        effect = abs(self.full.interval.estimate)
        return effect > 0 and effect >= mde

    def record(self) -> dict:
        i = self.full.interval if self.full else None
        return {"instrument": self.instrument, "measures": INSTRUMENTS[self.instrument],
                "comparisons": self.comparisons, "mde": self.mde, "setting": self.setting,
                "full_vs_base": self.full.what if self.full else None, "effect": i and i.estimate,
                "effect_low": i and i.low, "effect_high": i and i.high, "effect_mde": i and i.mde,
                "significant": self.full.verdict != "inconclusive" if self.full else None,
                "resolved": self.resolved}


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
    """(how many, the median of 2.8 x SE) over comparisons with a finite standard error."""
    mdes = [c.interval.mde for c in comparisons if np.isfinite(c.interval.mde)]
    return len(mdes), (pystats.median(mdes) if mdes else None)


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
