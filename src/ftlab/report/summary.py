"""The answer first: per setting, what to train within each forgetting budget; how much LoRA learns less and forgets
less than plain full FT at matched duration, with 95% intervals; what it costs beside full FT; and the caveats that
touch the answer. The top of report.html shows it, and `ftlab run` and `ftlab demo` print it when they end (the
report writes it as text beside its data: summary.txt).

    s = summarize(m, claims, advised, powers, failed)
    print(s.text())

LoRA against full FT is read from the findings' own comparisons (learns_less; forgets_less_loss where forgetting is
read on the held-out source loss, else forgets_less) at the longest duration both reached; the cost from the cost view
(figures.cost_points: best learning rate, longest duration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftlab.report.advice import Advice, Answer
from ftlab.report.figures import cost_points
from ftlab.report.instruments import Power
from ftlab.report.measures import FORGETTING_WORDS, Measures
from ftlab.report.select import duration_text, reference_arms
from ftlab.report.verdicts import Claim, Comparison

FORGETS_CLAIM = {"source_loss": "forgets_less_loss", "source": "forgets_less"}
NAMES = {"learning": "learning", "source": "the source score", "source_loss": "the source loss",
         "unique": "diversity (unique outputs per problem)"}  # an instrument in a caveat
ON = {"source_loss": "held-out source loss, nats/token", "source": "source score"}  # what a difference is read on


@dataclass
class SettingAnswer:
    """One setting's answer."""

    setting: str
    learning_tasks: list[str]
    forgetting: str  # the forgetting instrument: source_loss or source
    answers: list[Answer] = field(default_factory=list)
    versus: list[Versus] = field(default_factory=list)  # each LoRA group against plain full FT
    unmeasurable: list[str] = field(default_factory=list)
    no_answer: str | None = None  # why no budget is answered (when none is and no instrument is dead)


@dataclass
class Versus:
    """A LoRA group against plain full FT: learning and forgetting at the longest duration both reached (LoRA - full
    FT, paired, 95%), and its cost as a multiple of full FT's (best LR, longest duration)."""

    label: str  # "LoRA r=16"
    when: str | None = None  # the duration both reached: "4 epochs"
    learns: Comparison | None = None
    forgets: Comparison | None = None
    cost: str | None = None  # "0.62x the device-hours, 0.4x the peak memory"

    def words(self, forgetting: str) -> str:
        parts = [learning_words(self.learns)] if self.learns else []
        parts += [forgetting_words(self.forgets, forgetting)] if self.forgets else []
        parts += [self.cost] if self.cost else []
        return f"{self.label} against full FT" + (f" at {self.when}" if self.when else "") + ": " + "; ".join(parts)


@dataclass
class Summary:
    settings: list[SettingAnswer] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run -> why it failed

    def text(self) -> str:
        """The summary as plain text (what `ftlab run` and `ftlab demo` print)."""
        lines = [f"FAILED: {run}: {why}" for run, why in self.failed.items()]
        for s in self.settings:
            lines.append(f"What to train in {s.setting} (learning: {', '.join(s.learning_tasks) or 'none'}; "
                         f"forgetting: {FORGETTING_WORDS[s.forgetting]}):")
            lines += [f"  {line}" for line in _lines(s)]
        lines += [f"Caveat: {c}" for c in self.caveats]
        return "\n".join(lines)


def _lines(s: SettingAnswer) -> list[str]:
    out = list(s.unmeasurable) + ([f"no recommendation: {s.no_answer}"] if s.no_answer else [])
    for a in s.answers:
        pick = (f"{a.best.name}: learning {a.best.learning.text()}, forgetting {a.best.forgetting.text()}"
                + (f" (tied: {'; '.join(p.name for p in a.ties)})" if a.ties else "")) if a.best else no_answer(a)
        out.append(f"within {budget_words(a)}: {pick}")
    out += [v.words(s.forgetting) for v in s.versus]
    return out


def no_answer(a: Answer) -> str:
    """Why no configuration is within a budget."""
    if a.below:
        return (f"none within it at 95%: {a.below} of {a.candidates} have estimates below it, but their intervals "
                "reach above (the instrument cannot certify this little forgetting)")
    return "none within it: every configuration forgot more"


def budget_words(a: Answer) -> str:
    """"25% of full FT's forgetting (0.026)", "your --forgetting-budget (0.05)"."""
    what = "your --forgetting-budget" if a.what.startswith("--") else f"{a.what} forgetting"
    return f"{what} ({a.budget:.3g})"


def learning_words(c: Comparison) -> str:
    """"learns 0.05 [0.02, 0.08] less" (LoRA - full FT, paired), or "learning not distinguishable (...)"."""
    i = c.interval
    if i.low <= 0 <= i.high:
        return f"learning not distinguishable ({i.estimate:+.3g} [{i.low:+.3g}, {i.high:+.3g}])"
    side = "less" if i.estimate < 0 else "more"
    return f"learns {abs(i.estimate):.3g} [{min(abs(i.low), abs(i.high)):.3g}, {max(abs(i.low), abs(i.high)):.3g}] " \
           f"{side}"


def forgetting_words(c: Comparison, instrument: str) -> str:
    """The same for forgetting: LoRA - full FT on the source loss (lower = forgot less) or score (higher = less)."""
    i = c.interval
    sign = -1 if instrument == "source_loss" else +1  # LoRA forgot less: its loss lower, its score higher
    less, low, high = sign * i.estimate, min(sign * i.low, sign * i.high), max(sign * i.low, sign * i.high)
    if low <= 0 <= high:
        return f"forgetting not distinguishable ({i.estimate:+.3g} [{i.low:+.3g}, {i.high:+.3g}] {ON[instrument]})"
    side = "less" if less > 0 else "more"
    return f"forgets {abs(less):.3g} [{min(abs(low), abs(high)):.3g}, {max(abs(low), abs(high)):.3g}] {side}"


def summarize(m: Measures, claims: list[Claim], advised: Advice, powers: list[Power],
              failed: dict[str, str] | None = None) -> Summary:
    """The summary of a study from what the report computed: its claims, advice and instruments."""
    by_id = {c.id: c for c in claims}
    summary = Summary(failed=dict(failed or {}))
    settings = sorted({r.setting for r in m.study.points()})
    costs = cost_points(m)
    references = reference_arms(m.study)
    for setting in settings:
        rows = [r for r in m.study.points() if r.setting == setting]
        tasks = sorted({t for r in rows for t in r.learning_tasks})
        s = SettingAnswer(setting, tasks, m.instrument(setting),
                          [a for a in advised.answers if a.setting == setting],
                          unmeasurable=list(advised.unmeasurable.get(setting, [])))
        if not s.answers and not s.unmeasurable:
            ref = advised.reference.get(setting)
            why = ("no plain full FT to scale the default budgets by" if ref is None else
                   "plain full FT forgot nothing here, so there are no default budgets")
            s.no_answer = advised.missing or f"{why}; give ftlab report --forgetting-budget X"
        dead = {"learning" if u.startswith("learning") else s.forgetting for u in s.unmeasurable}
        learns = [] if "learning" in dead else _longest(by_id.get("learns_less"), setting)
        forgets = [] if s.forgetting in dead else _longest(by_id.get(FORGETS_CLAIM[s.forgetting]), setting)
        ratios = _cost(costs, references.get(setting, []), setting)
        labels = list(dict.fromkeys([*ratios, *(c.detail.get("arm_b") for c in learns + forgets)]))
        durations = [c.detail["duration"] for c in learns + forgets]
        when = duration_text(max(durations), rows[0].duration_unit) if durations else None
        s.versus = [Versus(label, when, next((c for c in learns if c.detail.get("arm_b") == label), None),
                           next((c for c in forgets if c.detail.get("arm_b") == label), None), ratios.get(label))
                    for label in labels if label]
        summary.settings.append(s)
    summary.caveats = _caveats(m, powers)
    return summary


def _longest(claim: Claim | None, setting: str) -> list[Comparison]:
    """The claim's comparisons in the setting at the longest duration it compared."""
    found = [c for c in (claim.comparisons if claim else []) if c.detail.get("setting") == setting
             and c.detail.get("duration") is not None]
    if not found:
        return []
    longest = max(c.detail["duration"] for c in found)
    return [c for c in found if c.detail["duration"] == longest]


def _cost(costs: list, references: list, setting: str) -> dict[str, str]:
    """LoRA group -> its device-hours and peak memory as multiples of plain full FT's (best LR, longest duration), in
    the cost view's order (by rank)."""
    if not references:
        return {}
    full = next((c for p, c in costs if p.arm.setting == setting and p.arm.label == references[0].label), None)
    if full is None:
        return {}
    out = {}
    for p, c in costs:
        if p.arm.setting != setting or p.arm.rows[0].method == "full":
            continue
        parts = [f"{c[k] / full[k]:.2g}x the {words}" for k, words in
                 (("device_hours", "device-hours"), ("peak_memory_gb", "peak memory"))
                 if c[k] is not None and full[k]]
        out[p.arm.label] = ", ".join(parts) or None
    return out


def _caveats(m: Measures, powers: list[Power]) -> list[str]:
    out = []
    rows = m.study.points()
    seeds = {(r.setting, r.group, r.lr, r.duration): set() for r in rows}
    for r in rows:
        seeds[r.setting, r.group, r.lr, r.duration].add(r.seed)
    if rows and max(len(v) for v in seeds.values()) == 1:
        out.append("one training seed: the intervals hold the evaluation's noise, not the variation between "
                   "training runs (list seeds: in the experiment for that)")
    if any(r.cost.device == "cpu" for r in rows):
        out.append("cost measured on a CPU: device-hours and memory do not carry over to a GPU (`ftlab plan` "
                   "predicts a GPU's)")
    for p in powers:
        where = f" in {p.setting}" if p.setting else ""
        if p.full is not None and not p.estimable:
            out.append(f"{NAMES[p.instrument]}{where} has no spread (every example of the base and of full FT "
                       "scores the same): not measurable with this instrument here")
        elif p.resolved is False:
            mde = p.mde if p.mde is not None else p.full.interval.mde
            out.append(f"{NAMES[p.instrument]}{where} cannot resolve full FT's effect (detectable {mde:.2g}, "
                       f"full FT - base {p.full.interval.estimate:+.2g}): read its verdicts with care")
    return out
