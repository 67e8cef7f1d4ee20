"""What to train: the configurations on the learning-forgetting Pareto front, with their intervals, and for a
forgetting budget the configuration that learns most within it.

    advice = advise(Measures(study), budget=0.05)     # budget: forgetting allowed, or None for the default table
    advice.front["ift: math @ base"]                  # [Step(point, learning_gain, forgetting_gain, distinct)]
    advice.answers                                    # [Answer(setting, budget, best, ties, ...)]

Candidates are each group's best learning rate (rows.best_lrs) at each duration it was evaluated, per setting.
Forgetting is read against the setting's base on the held-out source loss (its rise, nats/token) where the setting
measured it per document, else on the source score (its drop) - ftlab.report.measures. The front holds the
candidates no other beats on both learning (higher) and forgetting (lower), by their estimates; each neighbour pair
on it is compared paired over the same documents, and a pair whose learning and forgetting differences both have a
95% interval containing 0 is not distinguishable at 95%.
A configuration is within a budget when the upper bound of its forgetting's 95% interval is at most the budget (its
estimate, when it has no interval); the answer is the one with the most learning among them, and those whose
learning is not distinguishable from it (the paired difference's 95% interval contains 0) are ties. Budgets: the
user's (`ftlab report DIR --forgetting-budget X`) and, always, 25/50/75/100% of plain full FT's forgetting at its
longest duration (best learning rate).
An instrument with no spread in a setting (every example of the base and of every candidate scores the same, as exact
match at 0 everywhere) cannot rank anything: the setting gets no front and no answer from it, only what it reads
("not measurable with this instrument here") and which instrument would measure it (INSTEAD).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftlab.report.measures import FORGETTING_WORDS, Measures, Point, Power, Value, cost_points
from ftlab.report.select import Arm, best_arms, duration_text, reference_arms
from ftlab.report.verdicts import Claim, Comparison, compare, shared_values

BUDGET_SHARES = (0.25, 0.5, 0.75, 1.0)  # of plain full FT's forgetting at its longest duration
INSTEAD = {  # instrument -> what would measure it where it has no spread
    "learning": "token-level learning on the setting's own held-out data: heldout_accuracy and heldout_loss (the "
                "default when a setting names no learning tasks), or a task's teacher-forced token accuracy",
    "source": "the held-out source loss per document: source_heldout (your own source text under eval.data_dir) or "
              "the built-in source_loss",
    "source_loss": "a larger or more varied held-out source text (source_heldout)",
}


@dataclass
class Step:
    """A configuration on the front, and how it differs from the one before it (less forgetting, less learning)."""

    point: Point
    learning_gain: Value | None = None  # its learning - the previous one's, paired
    forgetting_gain: Value | None = None  # its forgetting - the previous one's, paired
    distinct: bool | None = None  # either difference excludes 0 at 95%; None: first on the front, or not paired
    # (the two share no per-example values)


@dataclass
class Answer:
    """What learns most within one forgetting budget of one setting."""

    setting: str
    budget: float
    what: str  # "25% of full FT's", "--forgetting-budget"
    instrument: str  # source_loss or source
    candidates: int  # configurations with forgetting measured
    within: list[Point] = field(default_factory=list)
    below: int = 0  # configurations whose forgetting estimate (not its interval) is within the budget
    best: Point | None = None
    ties: list[Point] = field(default_factory=list)  # within the budget, learning not distinguishable from best's


@dataclass
class Advice:
    front: dict[str, list[Step]] = field(default_factory=dict)  # setting -> its front, least forgetting first
    reference: dict[str, Point] = field(default_factory=dict)  # setting -> plain full FT at its longest duration
    answers: list[Answer] = field(default_factory=list)
    unmeasurable: dict[str, list[str]] = field(default_factory=dict)  # setting -> what could not be measured, why
    missing: str | None = None  # why no configuration is a candidate at all


def no_spread(m: Measures, setting: str, instrument: str) -> bool:
    """Whether every example of the setting's base and of every candidate scores the same on the instrument."""
    base = m.study.base_of(setting)
    arms = [a for a in best_arms(m.study) if a.setting == setting] + ([Arm.of([base])] if base is not None else [])
    values = {float(v) for arm in arms for found, _ in shared_values(m.study, arm.rows, instrument)
              for v in found.ravel()}
    return len(values) == 1


def unmeasurable(m: Measures, setting: str, instrument: str) -> str:
    """What a setting's page and summary say of an instrument with no spread."""
    words = "learning" if instrument == "learning" else f"forgetting ({FORGETTING_WORDS[instrument]})"
    return (f"{words}: not measurable with this instrument here: every example of the base and of every "
            f"configuration scores the same, so it ranks nothing and nothing is recommended from it; "
            f"{INSTEAD[instrument]} would measure it")


def advise(m: Measures, budget: float | None = None) -> Advice:
    """The front of every setting and the answers for the default budgets (and `budget`, when given)."""
    advice = Advice()
    every = list(map(m.point, best_arms(m.study)))
    points = [p for p in every if p.learning is not None and p.forgetting is not None]
    if not points:
        advice.missing = ("no configuration is evaluated yet" if not every else
                          "no configuration has learning measured (its setting's learning tasks)"
                          if all(p.learning is None for p in every) else
                          "no configuration has forgetting measured (the forgetting tasks, on the base model and on "
                          "the checkpoints)")
    references = reference_arms(m.study)
    for setting in sorted({p.arm.setting for p in points}):
        here = [p for p in points if p.arm.setting == setting]
        dead = [i for i in ("learning", here[0].instrument) if no_spread(m, setting, i)]
        if dead:
            advice.unmeasurable[setting] = [unmeasurable(m, setting, i) for i in dead]
            continue
        advice.front[setting] = _front(m, here)
        budgets = [] if budget is None else [(budget, "--forgetting-budget")]
        ref = next((p for p in map(m.point, references.get(setting, [])) if p.forgetting is not None), None)
        if ref is not None:
            advice.reference[setting] = ref
            if ref.forgetting.estimate > 0:  # else full FT forgot nothing to take a share of (the page says so)
                budgets += [(share * ref.forgetting.estimate, f"{share:.0%} of full FT's") for share in BUDGET_SHARES]
        advice.answers += [_answer(m, here, setting, b, what) for b, what in budgets]
    return advice


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (source score, learning) no other point beats on both (both maximized), by source score."""
    front, best = [], float("-inf")
    for f, l in sorted(points, key=lambda p: (-p[0], -p[1])):
        if l > best:
            front.append((f, l))
            best = l
    return sorted(front)


def _front(m: Measures, points: list[Point]) -> list[Step]:
    """The Pareto front, least forgetting first, each step compared with the one before."""
    best = set(pareto([(-p.forgetting.estimate, p.learning.estimate) for p in points]))
    on = sorted((p for p in points if (-p.forgetting.estimate, p.learning.estimate) in best),
                key=lambda p: (p.forgetting.estimate, p.learning.estimate))
    steps = [Step(on[0])] if on else []
    for before, p in zip(on, on[1:]):
        learned = compare(m.study, before.arm, p.arm, "learning", +1)
        forgot = compare(m.study, before.arm, p.arm, p.instrument, +1)  # source loss: the rise; score: its drop, -
        if learned is None or forgot is None:
            steps.append(Step(p))
            continue
        gains = Value.of(learned.interval), Value.of(forgot.interval, 1 if p.instrument == "source_loss" else -1)
        steps.append(Step(p, *gains, any(g.low > 0 or g.high < 0 for g in gains)))
    return steps


def _answer(m: Measures, points: list[Point], setting: str, budget: float, what: str) -> Answer:
    answer = Answer(setting, budget, what, points[0].instrument, len(points))
    answer.within = [p for p in points if p.forgetting.upper <= budget]
    answer.below = sum(p.forgetting.estimate <= budget for p in points)
    if not answer.within:
        return answer
    answer.best = max(answer.within, key=lambda p: (p.learning.estimate, -p.forgetting.estimate))
    for p in answer.within:
        if p is answer.best:
            continue
        c = compare(m.study, answer.best.arm, p.arm, "learning", -1)
        tied = (c.interval.low <= 0 <= c.interval.high) if c is not None else (
            p.learning.estimate == answer.best.learning.estimate)
        if tied:
            answer.ties.append(p)
    return answer


# ----------------------------------------------------------------------------- exports


def front_records(advice: Advice) -> list[dict]:
    return [{**s.point.record(), "position": i + 1,
             **(s.learning_gain.record("learning_gain") if s.learning_gain else {}),
             **(s.forgetting_gain.record("forgetting_gain") if s.forgetting_gain else {}),
             "distinct_from_previous": s.distinct}
            for steps in advice.front.values() for i, s in enumerate(steps)]


def budget_records(advice: Advice) -> list[dict]:
    return [{"setting": a.setting, "budget": a.budget, "budget_is": a.what, "forgetting_measure": a.instrument,
             "within": len(a.within), "estimate_within": a.below, "candidates": a.candidates,
             "best": a.best.name if a.best else None,
             **(a.best.record() if a.best else {}),
             "ties": "; ".join(p.name for p in a.ties)} for a in advice.answers]


# ----------------------------------------------------------------------------- the answer first (the summary)
# The answer first: per setting, what to train within each forgetting budget; how much LoRA learns less and forgets
# less than plain full FT at matched duration, with 95% intervals; what it costs beside full FT; and the caveats that
# touch the answer. The top of report.html shows it, and `ftlab run` and `ftlab demo` print it when they end (the
# report writes it as text beside its data: summary.txt).
#
#     s = summarize(m, claims, advised, powers, failed)
#     print(s.text())
#
# LoRA against full FT is read from the findings' own comparisons (learns_less; forgets_less_loss where forgetting is
# read on the held-out source loss, else forgets_less) at the longest duration both reached; the cost from the cost view
# (measures.cost_points: best learning rate, longest duration).

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
