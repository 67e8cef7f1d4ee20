"""Every rule that chooses what is compared: which rows are plain full FT or plain LoRA, each group's best learning
rate, an LR sweep's duration, the arms a finding, a figure or the advice reads, and how a duration is written.
The findings (ftlab.report.claims), the figures, the advice and the study's planner (its LR sweep's pick) ask here;
none re-derives a rule.

    arms(rows)                    # (setting, group, optimizer, lr, duration) -> Arm: the seeds of one configuration
    best_lrs(rows)                # (setting, group) -> its best learning rate
    plain_full(rows)              # unregularized full FT: the reference every comparison is read against
    lr_sweeps(study.points())     # (setting, group) -> LrSweep: the LRs tried, their rows, the best

Words: a group is what a learning-rate sweep varies over (Row.group: "LoRA r=16", "full FT wd=0.0001"); an arm is
one configuration at one duration, a row per training seed (or a setting's base model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ftlab.results.study import BaseResult, Row, Study

Measured = Row | BaseResult
Where = tuple[str, str, float | None]  # (setting, optimizer, duration): what an arm may be compared within


@dataclass
class Arm:
    """One configuration at one duration: a row per training seed (or the setting's base model)."""

    label: str  # "LoRA r=16", "full FT", "base"
    rows: list[Measured]

    @classmethod
    def of(cls, rows: list[Measured], label: str | None = None) -> Arm:
        first = rows[0]
        return cls(label or (first.group if isinstance(first, Row) else "base"), list(rows))

    @property
    def setting(self) -> str:
        return self.rows[0].setting

    @property
    def duration(self) -> float | None:
        first = self.rows[0]
        return first.duration if isinstance(first, Row) else 0.0

    @property
    def when(self) -> str:
        """Its duration in words: "2 epochs", "262,144 tokens" (duration_text)."""
        first = self.rows[0]
        return duration_text(self.duration, first.duration_unit if isinstance(first, Row) else "")


def arms(rows: list[Row]) -> dict[tuple, Arm]:
    """The rows grouped into arms by (setting, group, optimizer, lr, duration): seeds of one configuration together.
    (The group already names the optimizer when it is not AdamW; it is in the key so nothing compares across it.)"""
    grouped: dict[tuple, list[Row]] = {}
    for r in rows:
        grouped.setdefault((r.setting, r.group, r.optimizer, r.lr, r.duration), []).append(r)
    return {key: Arm.of(sorted(rs, key=lambda r: r.seed)) for key, rs in grouped.items()}


def sorted_arms(rows: list[Row]) -> list[tuple[tuple, Arm]]:
    """arms in a fixed order: setting, optimizer, group, lr, then duration ascending."""
    def order(item: tuple) -> tuple:
        setting, group, optimizer, lr, duration = item[0]
        return setting, optimizer, group, lr or 0.0, -math.inf if duration is None else duration
    return sorted(arms(rows).items(), key=order)


# ----------------------------------------------------------------------------- plain full FT, plain LoRA


def plain_full(rows: list[Row]) -> list[Row]:
    """Unregularized full FT: no attention dropout and the smallest weight decay used by full FT in its setting
    (and optimizer)."""
    smallest: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.method == "full" and not r.attention_dropout:
            key = (r.setting, r.optimizer)
            smallest[key] = min(smallest.get(key, r.weight_decay), r.weight_decay)
    return [r for r in rows if r.method == "full" and not r.attention_dropout
            and r.weight_decay == smallest.get((r.setting, r.optimizer))]


def departures(r: Row) -> int:
    """How many of a LoRA row's options depart from the paper's: alpha 2r, all modules, no variant, no regularizer."""
    return sum([r.alpha is not None and r.rank is not None and r.alpha != 2 * r.rank,
                r.targets not in ("", "all"), bool(r.variant), bool(r.weight_decay), bool(r.attention_dropout)])


def plain_lora(r: Row) -> bool:
    """LoRA as the paper runs it, departing from it in nothing (departures): the groups a rank ladder holds."""
    return r.method == "lora" and r.rank is not None and departures(r) == 0


def rank_ladder(lora: list[Arm]) -> list[Arm]:
    """The plainest LoRA arm of each rank (the fewest departures: a plain one where there is one), by rank
    ascending."""
    by_rank: dict[int, Arm] = {}
    for arm in sorted(lora, key=lambda a: (departures(a.rows[0]), a.label)):
        if arm.rows[0].rank is not None:
            by_rank.setdefault(arm.rows[0].rank, arm)
    return [by_rank[k] for k in sorted(by_rank)]


def analysed(study: Study) -> list[Row]:
    """The one selection of rows every finding, figure and the advice compare (the grid, regularization and plain
    runs): all but an LR sweep's runs (grp "lr-sweep": measured on learning only, at one duration, to pick the LR
    the grid trains at). A sweep run shares its group, LR and duration with a grid run at the picked LR; pooled, the
    two would pass for two seeds of one arm (and, with no source loss, hide that arm's forgetting). Only lr_sweeps
    reads the sweep's runs."""
    return [r for r in study.points() if r.grp != "lr-sweep"]


# ----------------------------------------------------------------------------- best learning rates


def best_lrs(rows: list[Row], key: Callable[[Row], tuple] = lambda r: (r.setting, r.group)
             ) -> dict[tuple, float | None]:
    """(setting, group) -> its best learning rate: the highest mean learning over seeds at the longest duration
    that every LR of the group reached (as an LR sweep would pick). Durations may be checkpoints of one run or
    separate runs (CPT budgets, IFT epochs run one by one): the rows of one LR are taken together. Ties go to the
    smaller LR. `key`: what a sweep varies over (the study's planner: (setting, method label))."""
    by_lr: dict[tuple, dict[float | None, dict[float, list[float]]]] = {}
    for r in rows:
        if r.learning is not None:
            by_lr.setdefault(key(r), {}).setdefault(r.lr, {}).setdefault(r.duration, []).append(r.learning)
        else:
            by_lr.setdefault(key(r), {}).setdefault(r.lr, {})
    best = {}
    for key, lrs in by_lr.items():
        at = sweep_duration({lr: {d: v for d, v in ds.items() if v} for lr, ds in lrs.items()})

        def score(lr: float | None) -> float:
            values = [sum(v) / len(v) for d, v in lrs[lr].items() if v and (at is None or d == at)]
            return max(values) if values else float("-inf")

        best[key] = max(sorted(lrs, key=lambda x: (x is None, x or 0.0)), key=score)
    return best


def sweep_duration(by_run: dict) -> float | None:
    """The longest duration at which every run or LR (-> {duration: learning}) has a learning score; None if none."""
    scored = [{d for d, v in durations.items() if v is not None and d is not None} for durations in by_run.values()]
    return max(set.intersection(*scored), default=None) if scored else None


def best_lr_rows(rows: list[Row]) -> list[Row]:
    """The rows of each group's best learning rate (see best_lrs), every duration and seed."""
    lrs = best_lrs(rows)
    return [r for r in rows if r.lr == lrs.get((r.setting, r.group))]


@dataclass
class LrSweep:
    """One group's LR sweep in a setting: the LRs tried (ascending), each LR's rows at the sweep's duration (one per
    seed) and the best LR (best_lrs)."""

    setting: str
    group: str
    optimizer: str
    duration: float
    lrs: list[float]
    rows: list[list[Row]]  # rows[i]: LR i's rows at `duration`
    best: float

    @property
    def at_edge(self) -> bool:
        """The best LR is the lowest or highest tried: the true best may lie beyond the sweep."""
        return self.best in (self.lrs[0], self.lrs[-1])

    @property
    def first(self) -> Row:
        return self.rows[0][0]


def lr_sweeps(rows: list[Row]) -> dict[tuple[str, str], LrSweep]:
    """(setting, group) -> its LR sweep, for groups with learning at two or more LRs at a common duration (the
    longest all of them reached, as best_lrs picks). A group the study swept (its lr_sweep's runs, grp
    "lr-sweep") is read on those runs alone, as the study picked its LR; any other on all its rows."""
    swept = {(r.setting, r.group) for r in rows if r.grp == "lr-sweep"}
    scored = [r for r in rows if r.learning is not None and r.lr is not None
              and ((r.setting, r.group) not in swept or r.grp == "lr-sweep")]
    best = best_lrs(scored)
    by: dict[tuple[str, str], dict[float, list[Row]]] = {}
    for r in scored:
        by.setdefault((r.setting, r.group), {}).setdefault(r.lr, []).append(r)
    out = {}
    for key, by_lr in sorted(by.items()):
        duration = sweep_duration({lr: {r.duration: r.learning for r in rs} for lr, rs in by_lr.items()})
        if len(by_lr) < 2 or duration is None:
            continue
        lrs = sorted(by_lr)
        at_d = [sorted((r for r in by_lr[lr] if r.duration == duration), key=lambda r: r.seed) for lr in lrs]
        out[key] = LrSweep(key[0], key[1], at_d[0][0].optimizer, duration, lrs, at_d, best[key])
    return out


# ----------------------------------------------------------------------------- the arms findings and figures read


def group_order(r: Row) -> tuple:
    """Groups in the report's order: full FT first, then LoRA by rank."""
    return r.method != "full", r.rank or 0, r.group


def arms_by_kind(study: Study) -> dict[Where, dict[str, list[Arm]]]:
    """(setting, optimizer, duration) -> {"full": plain full FT, "lora": LoRA groups, "regularized": other full FT},
    each group at its best LR (the rows of analysed: never an LR sweep's)."""
    rows = best_lr_rows(analysed(study))
    plain = {id(r) for r in plain_full(rows)}
    out: dict[Where, dict[str, list[Arm]]] = {}
    for (setting, _, optimizer, _, duration), arm in sorted_arms(rows):
        first = arm.rows[0]
        kind = "lora" if first.method == "lora" else "full" if id(first) in plain else "regularized"
        out.setdefault((setting, optimizer, duration), {"full": [], "lora": [], "regularized": []})[kind].append(arm)
    return out


def best_arms(study: Study) -> list[Arm]:
    """The arms of each group's best learning rate (best_lr_rows of analysed), every duration, in a fixed order."""
    def order(item: tuple) -> tuple:
        setting, _, optimizer, lr, duration = item[0]
        return (setting, *group_order(item[1].rows[0]), optimizer, lr or 0.0,
                -math.inf if duration is None else duration)
    return [arm for _, arm in sorted(arms(best_lr_rows(analysed(study))).items(), key=order)]


def longest(arms_: list[Arm]) -> list[Arm]:
    """Of each (setting, group, optimizer, lr), its arm at the longest duration."""
    def length(arm: Arm) -> float:
        return -math.inf if arm.duration is None else arm.duration

    out: dict[tuple, Arm] = {}
    for arm in arms_:
        key = (arm.setting, arm.label, arm.rows[0].optimizer, arm.rows[0].lr)
        if key not in out or length(arm) > length(out[key]):
            out[key] = arm
    return list(out.values())


def reference_arms(study: Study) -> dict[str, list[Arm]]:
    """setting -> plain full FT at its best learning rate, longest duration first (AdamW before other optimizers):
    the reference the instruments and the forgetting budgets are read against."""
    plain = {id(r) for r in plain_full(analysed(study))}
    out: dict[str, list[Arm]] = {}
    for arm in best_arms(study):
        if id(arm.rows[0]) in plain:
            out.setdefault(arm.setting, []).append(arm)
    return {s: sorted(found, key=lambda a: (a.rows[0].optimizer not in ("", "adamw"), a.label,
                                            -(a.duration if a.duration is not None else -math.inf)))
            for s, found in out.items()}


# ----------------------------------------------------------------------------- words


def duration_text(duration: float | None, unit: str) -> str:
    """How a duration is written everywhere: "1 epoch", "0.125 epochs", "262,144 tokens"."""
    if duration is None:
        return "duration unknown"
    unit = unit[:-1] if duration == 1 and unit.endswith("s") else unit
    return f"{duration:,.0f} {unit}" if unit.startswith("token") else f"{duration:g} {unit}"
