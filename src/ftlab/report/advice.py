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

from ftlab.report.measures import FORGETTING_WORDS, Measures, Point, Value
from ftlab.report.select import Arm, best_arms, reference_arms
from ftlab.report.verdicts import compare, shared_values

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
