"""Does a study reproduce the paper? One verdict per finding, with the numbers behind it.

    claims = check_claims(study_of("studies/math-ift"))
    claims[0].status, claims[0].sentence, claims[0].numbers

Every check compares rows of one setting only (regime, data and base model; see ftlab.results.rows), and
counts comparisons that agree or disagree with the paper:
    supported        every comparison agrees
    contradicted     none agrees
    mixed            some agree and some do not (the sentence gives the counts)
    not enough data  nothing to compare (the sentence says what is missing)
"Best LR" means each group's best learning rate (results.best_lrs: highest learning at the longest duration
all its runs reached). "Plain full FT" means full FT without attention dropout, at the smallest weight decay its
setting used. The source score is the mean source-benchmark accuracy (higher = less forgotten); forgetting is the
base's source score minus a checkpoint's (higher = more forgotten).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from ftlab.results.rows import Row, Study, best_lr_rows, best_lrs, plain_full

Status = Literal["supported", "contradicted", "mixed", "not enough data"]
NO_DATA: Status = "not enough data"


@dataclass
class Claim:
    """One finding of the paper and what this study says about it."""

    id: str  # short key: learns_less, forgets_less, ...
    finding: str  # the paper's finding, in a sentence
    rule: str  # how the verdict is decided
    status: Status = NO_DATA
    sentence: str = ""  # the verdict's numbers in words
    numbers: dict = field(default_factory=dict)  # every comparison the verdict counts


def verdict(agree: int, disagree: int) -> Status:
    """supported (all agree), contradicted (none does), mixed, or not enough data (no comparison)."""
    if agree + disagree == 0:
        return NO_DATA
    return "supported" if disagree == 0 else "contradicted" if agree == 0 else "mixed"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _counted(claim: Claim, pairs: list[dict], what: str, empty: str) -> Claim:
    """Set status and sentence from pairs carrying "agree"; `what` is "...in {a} of {n} ..." text."""
    agree = sum(p["agree"] for p in pairs)
    claim.status = verdict(agree, len(pairs) - agree)
    claim.numbers = {"agree": agree, "disagree": len(pairs) - agree, "comparisons": pairs}
    claim.sentence = empty if not pairs else what.format(a=agree, n=len(pairs))
    return claim


def _selected(study: Study, need: Callable[[Row], bool]) -> tuple[list[Row], dict[tuple[str, float | None], Row]]:
    """Best-LR rows satisfying `need`, and plain full FT's among them by (setting, duration)."""
    rows = [r for r in best_lr_rows(study.points()) if need(r)]
    return rows, {(r.setting, r.duration): r for r in plain_full(rows)}


def _against_full(study: Study, key: str, agree: Callable[[float, float], bool]) -> list[dict]:
    """Each LoRA group at each duration where plain full FT has `key` too (best LR of each), with the verdict."""
    rows, full = _selected(study, lambda r: getattr(r, key) is not None)
    return [{"setting": r.setting, "duration": r.duration, "lora": r.group, "rank": r.rank,
             f"lora_{key}": getattr(r, key), f"full_{key}": getattr(full[r.setting, r.duration], key),
             "agree": agree(getattr(r, key), getattr(full[r.setting, r.duration], key))}
            for r in rows if r.method == "lora" and (r.setting, r.duration) in full]


def learns_less(study: Study) -> Claim:
    claim = Claim("learns_less", "LoRA learns less than full finetuning (at matched training duration).",
                  "For each LoRA group (rank), at each duration where plain full FT was also evaluated (best LR of "
                  "each): agree if LoRA's learning < full FT's.")
    pairs = _against_full(study, "learning", lambda lora, full: lora < full)
    return _counted(claim, pairs, "LoRA learned less than full FT in {a} of {n} comparisons"
                    + _example(pairs, "learning"),
                    "not enough data: no duration with both a full-FT and a LoRA learning score")


def forgets_less(study: Study) -> Claim:
    claim = Claim("forgets_less", "LoRA forgets less than full finetuning (at matched training duration).",
                  "For each LoRA group (rank), at each duration where plain full FT was also evaluated (best LR of "
                  "each, chosen by learning): agree if LoRA's source score > full FT's.")
    pairs = _against_full(study, "source", lambda lora, full: lora > full)
    return _counted(claim, pairs, "LoRA kept a higher source score than full FT in {a} of {n} comparisons"
                    + _example(pairs, "source"),
                    "not enough data: no duration with both a full-FT and a LoRA source score")


def _example(pairs: list[dict], key: str) -> str:
    """"; at duration 4: full FT 0.52 vs LoRA r=1 0.21, ..." for the longest duration compared (of one setting)."""
    if not pairs:
        return ""
    last = max(pairs, key=lambda p: p["duration"] if p["duration"] is not None else float("-inf"))
    shown = sorted((p for p in pairs if (p["setting"], p["duration"]) == (last["setting"], last["duration"])),
                   key=lambda p: (p.get("rank") or 0, p["lora"]))
    lora = ", ".join(f"{p['lora']} {_fmt(p['lora_' + key])}" for p in shown)
    where = f" in {last['setting']}" if len({p["setting"] for p in pairs}) > 1 else ""
    return f"; at duration {_fmt(last['duration'])}{where}: full FT {_fmt(last['full_' + key])} vs {lora}"


def forgetting_order(study: Study) -> Claim:
    claim = Claim("forgetting_order", "Forgetting grows with training duration and is ordered by rank "
                  "(higher LoRA rank forgets more; full FT the most).",
                  "Duration: in every run, each pair of consecutive checkpoints agrees if the source score did "
                  "not rise. Rank: at each duration, LoRA ranks in increasing order then plain full FT (best LR of "
                  "each); each adjacent pair agrees if the higher rank's source score is not above the lower's.")
    by_run: dict[str, list[Row]] = {}
    for r in study.points():
        if r.source is not None and r.duration is not None:
            by_run.setdefault(r.run, []).append(r)
    duration_pairs = []
    for run, rows in sorted(by_run.items()):
        rows.sort(key=lambda r: r.duration)
        duration_pairs += [{"run": run, "from": a.duration, "to": b.duration, "source_from": a.source,
                            "source_to": b.source, "agree": b.source <= a.source}
                           for a, b in zip(rows, rows[1:])]
    rows, full = _selected(study, lambda r: r.source is not None)
    ladders: dict[tuple[str, float | None], dict[int, Row]] = {}
    for r in sorted(rows, key=lambda r: len(r.group), reverse=True):  # the plainest group of a rank wins
        if r.method == "lora" and r.rank is not None:
            ladders.setdefault((r.setting, r.duration), {})[r.rank] = r
    rank_pairs = []
    for key, by_rank in sorted(ladders.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        ladder = [by_rank[k] for k in sorted(by_rank)] + ([full[key]] if key in full else [])
        rank_pairs += [{"setting": key[0], "duration": key[1], "lower": a.group, "higher": b.group,
                        "source_lower": a.source, "source_higher": b.source,
                        "agree": b.source <= a.source} for a, b in zip(ladder, ladder[1:])]
    pairs = duration_pairs + rank_pairs
    a_d, a_r = sum(p["agree"] for p in duration_pairs), sum(p["agree"] for p in rank_pairs)
    claim = _counted(claim, pairs, "", "not enough data: no run with two evaluated checkpoints and no duration "
                     "with two evaluated ranks")
    claim.numbers.update(duration=duration_pairs, rank=rank_pairs)
    del claim.numbers["comparisons"]
    if pairs:
        claim.sentence = (f"the source score did not rise with training in {a_d} of {len(duration_pairs)} "
                          f"consecutive checkpoint pairs; the higher rank forgot at least as much in {a_r} of "
                          f"{len(rank_pairs)} adjacent-rank pairs")
    return claim


def regularization(study: Study) -> Claim:
    claim = Claim("regularization", "LoRA regularizes more than weight decay and attention dropout: at comparable "
                  "learning, LoRA forgets less than regularized full finetuning.",
                  "For each full-FT run with weight decay or attention dropout (above plain full FT's), at each "
                  "duration: among LoRA checkpoints of the setting (any rank and duration, best LR) that learned at "
                  "least as much, agree if one has a higher source score; disagree if none has. A point no LoRA "
                  "checkpoint learned as much as is not comparable and not counted.")
    points = [r for r in study.points() if r.learning is not None and r.source is not None]
    plain = {id(r) for r in plain_full(points)}
    regularized = [r for r in points if r.method == "full" and id(r) not in plain]
    if not regularized:
        claim.sentence = "not enough data: no full-FT run with weight decay or attention dropout"
        return claim
    lora = [r for r in best_lr_rows(points) if r.method == "lora"]
    pairs, incomparable = [], []
    for r in regularized:
        peers = [p for p in lora if p.setting == r.setting and p.learning >= r.learning]
        if not peers:
            incomparable.append({"run": r.run, "duration": r.duration, "learning": r.learning})
            continue
        better = max(peers, key=lambda p: p.source)
        pairs.append({"setting": r.setting, "regularized": r.group, "duration": r.duration, "learning": r.learning,
                      "source": r.source, "lora": f"{better.group} @ {_fmt(better.duration)}",
                      "lora_learning": better.learning, "lora_source": better.source,
                      "agree": better.source > r.source})
    best_lora = max((p.learning for p in lora), default=None)
    empty = (f"not enough data: no LoRA checkpoint learned as much as any regularized full-FT checkpoint "
             f"(best LoRA learning {_fmt(best_lora)} vs regularized {_fmt(min(r.learning for r in regularized))}); "
             "train higher ranks or longer" if lora else "not enough data: no LoRA run with learning and source scores")
    _counted(claim, pairs, "a LoRA checkpoint that learned at least as much forgot less than regularized full FT in "
             "{a} of {n} comparisons" + (f" ({len(incomparable)} regularized checkpoints learned more than every "
                                          "LoRA one, not counted)" if incomparable else ""), empty)
    claim.numbers["incomparable"] = incomparable
    return claim


def diversity(study: Study) -> Claim:
    claim = Claim("diversity", "Generations collapse under finetuning: full FT has the fewest unique outputs per "
                  "problem, LoRA lies between full FT and the base model.",
                  "Unique outputs per problem (mean over problems), best LR of each group. At each duration: agree "
                  "if full FT < each LoRA rank; against the base: agree if each finetuned checkpoint < base.")
    rows, full = _selected(study, lambda r: r.diversity is not None and r.diversity.unique_mean is not None)
    pairs = []
    for r in rows:
        if r.method == "lora" and (r.setting, r.duration) in full:
            f = full[r.setting, r.duration].diversity.unique_mean
            pairs.append({"setting": r.setting, "duration": r.duration, "lower": "full FT", "higher": r.group,
                          "unique_lower": f, "unique_higher": r.diversity.unique_mean,
                          "agree": f < r.diversity.unique_mean})
    for r in rows:
        base = study.base_of(r.setting)
        if base and base.diversity and base.diversity.unique_mean is not None:
            pairs.append({"setting": r.setting, "duration": r.duration, "lower": r.group, "higher": "base",
                          "unique_lower": r.diversity.unique_mean, "unique_higher": base.diversity.unique_mean,
                          "agree": r.diversity.unique_mean < base.diversity.unique_mean})
    has_base = any(p["higher"] == "base" for p in pairs)
    return _counted(claim, pairs, "the ordering full FT < LoRA < base held in {a} of {n} comparisons of unique "
                    "outputs per problem" + ("" if has_base else " (the base model's diversity is not measured)"),
                    "not enough data: no diversity measured to compare (full FT with LoRA, or a checkpoint with the base)")


def delta_rank(study: Study) -> Claim:
    claim = Claim("delta_rank", "Full finetuning's weight change ΔW has a rank 10-100x the LoRA ranks used "
                  "(k90 = rank explaining 90% of ΔW's spectrum).",
                  "For each full-FT checkpoint with a spectrum and each LoRA rank r of the study: agree if the "
                  "mean k90 over matrices >= 10·r.")
    ranks = sorted({r.rank for r in study.points() if r.method == "lora" and r.rank is not None})
    full = [r for r in study.points() if r.method == "full" and r.spectrum and r.spectrum.k90_mean is not None]
    if not ranks or not full:
        claim.sentence = ("not enough data: " + ("no full-FT checkpoint has a spectrum.json" if not full else
                                                 "no LoRA run to compare ranks with"))
        return claim
    pairs = [{"run": r.run, "checkpoint": r.checkpoint, "duration": r.duration, "k90_mean": r.spectrum.k90_mean,
              "lora_rank": k, "ratio": r.spectrum.k90_mean / k, "agree": r.spectrum.k90_mean >= 10 * k}
             for r in full for k in ranks]
    k90s = [r.spectrum.k90_mean for r in full]
    _counted(claim, pairs, f"full FT's mean k90 was {_fmt(min(k90s))}-{_fmt(max(k90s))} over {len(full)} "
             f"checkpoints, against LoRA ranks {', '.join(map(str, ranks))}: at least 10x in {{a}} of {{n}} "
             "checkpoint-rank pairs", "")
    return claim


def best_lr(study: Study) -> Claim:
    claim = Claim("best_lr", "LoRA's best learning rate is about 10x full finetuning's.",
                  "Per setting, each group's best LR (results.best_lrs) among at least two LRs tried; for each "
                  "LoRA group: agree if best LoRA LR / best plain-full-FT LR is within [3, 30] (10x, give or take "
                  "half an order of magnitude). A best LR at the edge of its sweep is flagged.")
    points = study.points()
    lrs: dict[tuple[str, str], set[float]] = {}
    for r in points:
        lrs.setdefault((r.setting, r.group), set()).add(r.lr)
    best = {key: lr for key, lr in best_lrs(points).items() if len(lrs[key]) >= 2}
    full_groups = {(r.setting, r.group) for r in plain_full(points)}
    pairs = []
    for (setting, group), lr in sorted(best.items()):
        if group.startswith("LoRA"):
            for fkey in sorted(k for k in full_groups if k[0] == setting and k in best):
                ratio = lr / best[fkey]
                edge = [g for g, value in ((group, lr), (fkey[1], best[fkey]))
                        if value in (min(lrs[setting, g]), max(lrs[setting, g]))]
                pairs.append({"setting": setting, "lora": group, "lora_best_lr": lr, "full_best_lr": best[fkey],
                              "ratio": ratio, "at_sweep_edge": edge, "agree": 3 <= ratio <= 30})
    text = "best LoRA LR / best full-FT LR within 3-30x in {a} of {n} comparisons"
    if pairs:
        text += " (ratios " + ", ".join(f"{p['lora']} {p['ratio']:.3g}x" for p in pairs) + ")"
        if any(p["at_sweep_edge"] for p in pairs):
            text += "; some best LRs sit at the edge of their sweep, so the true best may lie beyond it"
    return _counted(claim, pairs, text, "not enough data: needs at least two learning rates for plain full FT and "
                    "for a LoRA group, with learning scores")


CHECKS = (learns_less, forgets_less, forgetting_order, regularization, diversity, delta_rank, best_lr)


def check_claims(study: Study) -> list[Claim]:
    """One Claim per finding of the paper, in the paper's order."""
    return [check(study) for check in CHECKS]

