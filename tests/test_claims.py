"""The claims check on hand-made studies: every finding can come out supported, contradicted, mixed or not
enough data, and the decision rules pick the comparisons the docstrings say."""

import pytest

from ftlab.report.claims import CHECKS, check_claims, verdict
from ftlab.results.rows import Diversity, Row, Spectrum, Study, best_lrs


def row(run: str, method: str = "full", d: float = 1.0, learning: float | None = None,
        source: float | None = None, rank: int | None = None, lr: float = 1e-3, **kw) -> Row:
    if method == "lora" and rank is None:
        rank = 4
    return Row(run=run, checkpoint=f"epochs-{d:g}", method=method, setting="ift: math @ tiny", rank=rank,
               alpha=2.0 * rank if rank else None, targets="all" if method == "lora" else "", lr=lr,
               duration=d, learning=learning, source=source, **kw)


def claim(study: Study, cid: str):
    return next(c for c in check_claims(study) if c.id == cid)


def test_verdict():
    assert [verdict(2, 0), verdict(0, 2), verdict(1, 1), verdict(0, 0)] == [
        "supported", "contradicted", "mixed", "not enough data"]


def test_one_claim_per_finding_and_all_empty_is_not_enough_data():
    claims = check_claims(Study("s", rows=[row("only", learning=0.5, source=0.5)]))
    assert [c.id for c in claims] == [c.__name__ for c in CHECKS]
    assert len(claims) == 7
    assert {c.status for c in claims} == {"not enough data"}
    assert all(c.sentence.startswith("not enough data") and c.rule for c in claims)


def test_learns_and_forgets_less():
    full = [row("f", d=d, learning=0.5 * d, source=0.6 - 0.1 * d) for d in (1, 2)]
    lora = [row("l", "lora", d=d, learning=0.4 * d, source=0.6 - 0.05 * d) for d in (1, 2)]
    study = Study("s", rows=full + lora)
    assert claim(study, "learns_less").status == "supported"
    assert claim(study, "learns_less").numbers["agree"] == 2
    assert claim(study, "forgets_less").status == "supported"
    assert "at duration 2: full FT 1 vs LoRA r=4 0.8" in claim(study, "learns_less").sentence
    # LoRA learns more and forgets more: both contradicted
    lora = [row("l", "lora", d=d, learning=0.6 * d, source=0.6 - 0.2 * d) for d in (1, 2)]
    study = Study("s", rows=full + lora)
    assert claim(study, "learns_less").status == "contradicted"
    assert claim(study, "forgets_less").status == "contradicted"
    # matched at one duration only: mixed, with counts
    lora = [row("l", "lora", d=1, learning=0.4, source=0.55), row("l", "lora", d=2, learning=1.2, source=0.3)]
    c = claim(Study("s", rows=full + lora), "learns_less")
    assert c.status == "mixed" and "1 of 2" in c.sentence


def test_comparisons_use_each_groups_best_lr():
    full = [row("f", d=1, learning=0.5, source=0.5)]
    good = [row("l-good", "lora", d=1, learning=0.45, source=0.55, lr=1e-2)]
    bad = [row("l-bad", "lora", d=1, learning=0.1, source=0.4, lr=1e-4)]  # worse LR: not the one compared
    study = Study("s", rows=full + good + bad)
    assert best_lrs(study.rows)[("ift: math @ tiny", "LoRA r=4")] == 1e-2
    c = claim(study, "forgets_less")
    assert c.status == "supported" and c.numbers["comparisons"][0]["lora_source"] == 0.55


def test_regularized_full_ft_is_not_plain_full_ft():
    plain = [row("f", d=1, learning=0.5, source=0.5)]
    wd = [row("f-wd", d=1, learning=0.9, source=0.1, weight_decay=0.1)]  # would contradict if taken as plain
    lora = [row("l", "lora", d=1, learning=0.4, source=0.6)]
    assert claim(Study("s", rows=plain + wd + lora), "learns_less").status == "supported"


def test_forgetting_order():
    rows = []
    for rank, gentle in ((1, 0.03), (4, 0.06), (None, 0.1)):
        method = "full" if rank is None else "lora"
        rows += [row(f"{method}{rank}", method, d=d, rank=rank, learning=0.1 * d, source=0.6 - gentle * d)
                 for d in (1, 2, 4)]
    c = claim(Study("s", rows=rows), "forgetting_order")
    assert c.status == "supported"
    assert (len(c.numbers["duration"]), len(c.numbers["rank"])) == (6, 6)  # 3 runs x 2 steps; 3 durations x 2
    # rank order reversed (r=1 forgets the most) while duration still agrees: mixed
    rows = [row("r1", "lora", d=d, rank=1, learning=0.1, source=0.6 - 0.2 * d) for d in (1, 2)]
    rows += [row("r4", "lora", d=d, rank=4, learning=0.1, source=0.6 - 0.1 * d) for d in (1, 2)]
    c = claim(Study("s", rows=rows), "forgetting_order")
    assert c.status == "mixed" and c.numbers["agree"] == 2 and c.numbers["disagree"] == 2
    # forgetting shrinks with training and the higher rank forgets less: contradicted
    rows = [row("r1", "lora", d=d, rank=1, learning=0.1, source=0.3 + 0.1 * d) for d in (1, 2)]
    rows += [row("r4", "lora", d=d, rank=4, learning=0.1, source=0.5 + 0.1 * d) for d in (1, 2)]
    assert claim(Study("s", rows=rows), "forgetting_order").status == "contradicted"


def test_regularization():
    plain = [row("f", d=1, learning=0.5, source=0.4)]
    wd = [row("f-wd", d=1, learning=0.48, source=0.41, weight_decay=1e-4)]
    drop = [row("f-drop", d=1, learning=0.47, source=0.42, attention_dropout=0.1)]
    lora = [row("l", "lora", d=d, learning=0.25 * d, source=0.6 - 0.05 * d) for d in (1, 2)]
    study = Study("s", rows=plain + wd + drop + lora)
    c = claim(study, "regularization")
    assert c.status == "supported" and c.numbers["agree"] == 2
    assert all(p["lora"] == "LoRA r=4 @ 2" for p in c.numbers["comparisons"])
    # LoRA that learned as much forgot more: contradicted
    lora = [row("l", "lora", d=d, learning=0.25 * d, source=0.6 - 0.2 * d) for d in (1, 2)]
    assert claim(Study("s", rows=plain + wd + drop + lora), "regularization").status == "contradicted"
    # no LoRA learned as much: not comparable, so not enough data (with the reason)
    lora = [row("l", "lora", d=1, learning=0.2, source=0.6)]
    c = claim(Study("s", rows=plain + wd + lora), "regularization")
    assert c.status == "not enough data" and "no LoRA checkpoint learned as much" in c.sentence
    assert claim(Study("s", rows=plain + lora), "regularization").sentence == (
        "not enough data: no full-FT run with weight decay or attention dropout")


def _div(unique: float) -> Diversity:
    return Diversity(task="math", n=10, problems=5, unique_mean=unique, unique_pass_mean=unique / 2,
                     unique_fail_mean=unique / 2, pass_at_k={1: 0.2, 10: 0.5})


def test_diversity():
    from ftlab.results.rows import BaseResult

    base = [BaseResult("f", "ift: math @ tiny", learning=0.05, learning_tasks=["math"], source=0.6,
                       scores={"math/exact_match_strict": 0.05}, diversity=_div(8))]
    rows = [row("f", learning=0.5, diversity=_div(2)), row("l", "lora", learning=0.4, diversity=_div(5))]
    c = claim(Study("s", rows=rows, bases=base), "diversity")
    assert c.status == "supported" and c.numbers["agree"] == 3  # full < LoRA, full < base, LoRA < base
    rows = [row("f", learning=0.5, diversity=_div(6)), row("l", "lora", learning=0.4, diversity=_div(5))]
    c = claim(Study("s", rows=rows, bases=base), "diversity")
    assert c.status == "mixed" and c.numbers["disagree"] == 1
    c = claim(Study("s", rows=rows), "diversity")  # no base diversity: full vs LoRA only, and it says so
    assert c.status == "contradicted" and "the base model's diversity is not measured" in c.sentence
    assert claim(Study("s", rows=[row("f", learning=0.5)]), "diversity").status == "not enough data"


def test_delta_rank():
    full = [row("f", d=d, learning=0.5, spectrum=Spectrum(k90_mean=k)) for d, k in ((1, 40.0), (2, 60.0))]
    lora1 = [row("l1", "lora", rank=1, learning=0.3)]
    lora16 = [row("l16", "lora", rank=16, learning=0.3)]
    assert claim(Study("s", rows=full + lora1), "delta_rank").status == "supported"
    c = claim(Study("s", rows=full + lora1 + lora16), "delta_rank")
    assert c.status == "mixed" and (c.numbers["agree"], c.numbers["disagree"]) == (2, 2)
    assert "40-60" in c.sentence
    assert claim(Study("s", rows=full + lora16), "delta_rank").status == "contradicted"
    assert "no LoRA run" in claim(Study("s", rows=full), "delta_rank").sentence
    assert "spectrum.json" in claim(Study("s", rows=lora1 + [row("f", learning=0.5)]), "delta_rank").sentence


@pytest.mark.parametrize("lora_best, status", [(1e-2, "supported"), (1e-3, "contradicted")])
def test_best_lr(lora_best, status):
    rows = [row("f-hi", lr=1e-3, learning=0.5), row("f-lo", lr=1e-4, learning=0.3)]
    for lr in (1e-3, 1e-2):
        rows.append(row(f"l-{lr}", "lora", lr=lr, learning=0.4 if lr == lora_best else 0.2))
    c = claim(Study("s", rows=rows), "best_lr")
    assert c.status == status
    assert c.numbers["comparisons"][0]["ratio"] == pytest.approx(lora_best / 1e-3)
    single = [r for r in rows if r.run != "f-lo"]  # one full-FT LR: no sweep to take a best from
    assert claim(Study("s", rows=single), "best_lr").status == "not enough data"


def test_best_lr_mixed_across_ranks():
    rows = [row("f-hi", lr=1e-3, learning=0.5), row("f-lo", lr=1e-4, learning=0.3)]
    for rank, best in ((1, 1e-2), (4, 1e-3)):
        rows += [row(f"l{rank}-{lr}", "lora", rank=rank, lr=lr, learning=0.4 if lr == best else 0.2)
                 for lr in (1e-3, 1e-2)]
    c = claim(Study("s", rows=rows), "best_lr")
    assert c.status == "mixed" and "LoRA r=1 10x" in c.sentence
