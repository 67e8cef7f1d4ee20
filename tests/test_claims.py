"""The paper's findings checked with intervals, on synthetic studies whose effects are known: per-example values drawn
with seeded generators (300 documents of 0/1 scores, per-document source losses weighted by tokens, unique outputs
per problem), so each verdict must come out as built: a clear effect in the paper's direction -> supported, none ->
inconclusive, the opposite -> contradicted, both -> mixed, no data -> not enough data."""

import zlib

import numpy as np
import pytest

from ftlab.report.claims import paper as findings_paper
from ftlab.report.claims import CHECKS, Claim, check_claims
from ftlab.results.study import BaseResult, Diversity, MatrixSpectrum, Row, Spectrum, Study, TaskInfo

SETTING = "ift: math @ tiny"
N, PROBLEMS = 300, 60
TASKS = {"math": TaskInfo("math", "1", "gsm8k", "learning", "exact_match_strict"),
         "source_cloze": TaskInfo("source_cloze", "1", "choice", "forgetting", "acc"),
         "source_loss": TaskInfo("source_loss", "1", "perplexity", "source_loss", "loss")}
_rng = np.random.default_rng(0)
HARD_TARGET, HARD_SOURCE = _rng.random(N), _rng.random(N)  # each document's difficulty, shared by every checkpoint
TOKENS = _rng.integers(20, 200, N).astype(float)
BASE_LOSS = 2.0 + _rng.random(N)
DOCS = [f"d{i}" for i in range(N)]


def measure(m, learn, keep, rise, unique, noise: int):
    """Fill a row or base with per-example values: accuracy learn/keep on the target/source tasks, source loss the
    base's plus `rise`, `unique` outputs per problem; each checkpoint its own noise around them."""
    rng = np.random.default_rng(noise)
    if learn is not None:
        m.learning_tasks = ["math"]
        hit = (HARD_TARGET + 0.15 * rng.standard_normal(N) < learn).astype(float)
        m.examples["math/exact_match_strict"] = {d: (v, 1.0) for d, v in zip(DOCS, hit)}
        m.learning = float(hit.mean())
    if keep is not None:
        m.source_tasks = ["source_cloze"]
        hit = (HARD_SOURCE + 0.15 * rng.standard_normal(N) < keep).astype(float)
        m.examples["source_cloze/acc"] = {d: (v, 1.0) for d, v in zip(DOCS, hit)}
        m.source = float(hit.mean())
    if rise is not None:
        loss = BASE_LOSS + rise + 0.05 * rng.standard_normal(N)
        m.examples["source_loss/loss"] = {d: (v, w) for d, v, w in zip(DOCS, loss, TOKENS)}
        m.source_loss = float((loss * TOKENS).sum() / TOKENS.sum())
    if unique is not None:
        per = np.clip(unique + rng.standard_normal(PROBLEMS), 1, 10)
        m.diversity = Diversity(task="math_sampled", n=10, problems=PROBLEMS, unique_mean=float(per.mean()),
                                per_problem={f"p{i}": float(u) for i, u in enumerate(per)})
    m.scores = {"math/exact_match_strict": m.learning or 0.0}
    return m


BASE = measure(BaseResult("base", SETTING), 0.05, 0.6, 0.0, 8.0, noise=1)


def ckpt(method="full", *, learn=0.5, keep=0.45, rise=0.3, unique=None, rank=None, d=1.0, lr=1e-4, seed=0,
         run=None, setting=SETTING, optimizer="adamw", **kw) -> Row:
    """A checkpoint (the final one of its own run unless `run` names a shared one)."""
    rank = rank or (4 if method == "lora" else None)
    run = run or f"{method}-r{rank}-lr{lr:g}-wd{kw.get('weight_decay', 0):g}-{optimizer}/d{d:g}"
    row = Row(run=run, checkpoint=f"epochs-{d:g}", method=method, setting=setting, rank=rank,
              alpha=kw.pop("alpha", 2.0 * rank if rank else None), targets="all" if rank else "", lr=lr, seed=seed,
              optimizer=optimizer, duration=d, **kw)
    measure(row, learn, keep, rise, unique, zlib.crc32(f"{run}/{setting}/{d}/{seed}".encode()))
    row.base_source, row.base_source_loss = BASE.source, BASE.source_loss
    row.forgetting = None if row.source is None else BASE.source - row.source
    return row


def study(*rows: Row, base: bool = True) -> Study:
    return Study("s", rows=list(rows), bases=[BASE] if base else [], tasks=TASKS)


def claim(s: Study, check) -> Claim:
    return check(s)


# ----------------------------------------------------------------------------- the registry


def test_registry_and_no_data():
    assert CHECKS[:len(findings_paper.PAPER_CHECKS)] == findings_paper.PAPER_CHECKS
    lone = Study("s", rows=[Row(run="r", checkpoint="final", method="full", setting=SETTING, learning=0.5)])
    claims = check_claims(lone)
    assert len(claims) == len(CHECKS)
    for c in claims[:len(findings_paper.PAPER_CHECKS)]:
        assert c.status == "not enough data" and c.sentence.startswith("not enough data: ") and c.rule
        assert c.source.endswith("Biderman et al. 2024") and c.counts == {"agree": 0, "disagree": 0,
                                                                            "inconclusive": 0}
    # pairs exist but no per-example values: says so rather than guessing from the means
    bare = [Row(run=m, checkpoint="final", method=m, rank=4 if m == "lora" else None, setting=SETTING, duration=1.0,
                learning=x) for m, x in (("full", 0.5), ("lora", 0.3))]
    c = findings_paper.learns_less(Study("s", rows=bare))
    assert c.status == "not enough data" and "1 pair to compare, but none with per-example learning" in c.sentence


# ----------------------------------------------------------------------------- LoRA against plain full FT

FULL = dict(learn=0.5, keep=0.45, rise=0.3)
PAPERS_WAY = dict(learn=0.35, keep=0.55, rise=0.1)  # LoRA learns less and forgets less
NO_EFFECT = FULL
OPPOSITE = dict(learn=0.65, keep=0.35, rise=0.5)


@pytest.mark.parametrize("lora, status", [(PAPERS_WAY, "supported"), (NO_EFFECT, "inconclusive"),
                                          (OPPOSITE, "contradicted")])
def test_lora_against_full_ft(lora, status):
    s = study(ckpt(**FULL), ckpt("lora", **lora))
    for check, instrument in ((findings_paper.learns_less, "learning"), (findings_paper.forgets_less, "source"),
                              (findings_paper.forgets_less_loss, "source_loss")):
        c = claim(s, check)
        assert c.status == status, (check.__name__, c.sentence)
        assert c.instrument == c.headline.instrument == instrument and c.mde > 0
        h = c.headline
        assert h.what == "LoRA r=4 vs full FT at 1 epoch" and h.interval.low <= h.interval.estimate <= h.interval.high
        assert c.sentence.startswith(f"{h.text()}; {c.counts['agree']} agree, {c.counts['disagree']} disagree")
        assert f"detectable {c.mde:.2g}" in c.sentence and "fewer than 3 training seeds" in " ".join(c.notes)
        assert "rests on evaluation noise only (1 training seed, fewer than 3)" in c.sentence
        assert (status == "contradicted") == any(n.startswith("this study contradicts the paper here: LoRA r=4")
                                                 for n in c.notes)
    assert claim(s, findings_paper.learns_less).headline.interval.estimate == pytest.approx(
        s.rows[1].learning - s.rows[0].learning)


def test_both_directions_are_mixed_and_say_where():
    s = study(ckpt(**FULL), ckpt("lora", rank=1, **PAPERS_WAY), ckpt("lora", rank=16, **OPPOSITE))
    c = claim(s, findings_paper.forgets_less_loss)
    assert c.status == "mixed" and c.counts == {"agree": 1, "disagree": 1, "inconclusive": 0}
    assert any(n.startswith("this study contradicts the paper in 1 of 2 comparisons: LoRA r=16") for n in c.notes)


def test_each_group_at_its_best_lr_and_regularized_full_ft_is_not_plain():
    rows = [ckpt(**FULL), ckpt("lora", lr=1e-3, **PAPERS_WAY),
            ckpt("lora", lr=1e-5, learn=0.1, keep=0.3, rise=0.6),  # a worse LR: not the one compared
            ckpt(weight_decay=0.1, learn=0.1, keep=0.7, rise=0.0)]  # regularized full FT: not plain full FT
    for check in (findings_paper.learns_less, findings_paper.forgets_less, findings_paper.forgets_less_loss):
        c = claim(study(*rows), check)
        assert c.status == "supported" and len(c.comparisons) == 1, c.sentence


def test_comparisons_stay_within_one_optimizer():
    rows = [ckpt(learn=0.5), ckpt(learn=0.2, optimizer="lionw"),
            ckpt("lora", learn=0.35), ckpt("lora", learn=0.1, optimizer="lionw")]
    c = claim(study(*rows), findings_paper.learns_less)
    assert c.status == "supported" and c.counts["agree"] == 2  # LoRA AdamW vs LionW full FT would disagree
    assert sorted((x.detail["arm_a"], x.detail["arm_b"]) for x in c.comparisons) == [
        ("full FT", "LoRA r=4"), ("full FT lionw", "LoRA r=4 lionw")]


def test_seeds_widen_the_interval():
    one = claim(study(ckpt(**FULL), ckpt("lora", learn=0.42)), findings_paper.learns_less)
    # three training seeds per arm whose outcomes differ from run to run by as much as the effect
    rows = [ckpt(learn=0.5 + s, seed=i) for i, s in enumerate((-0.08, 0.0, 0.08))]
    rows += [ckpt("lora", learn=0.42 + s, seed=i) for i, s in enumerate((0.08, -0.08, 0.0))]
    seeded = claim(study(*rows), findings_paper.learns_less)
    assert one.status == "supported" and seeded.headline.interval.seeds == 3
    width = [c.headline.interval.high - c.headline.interval.low for c in (one, seeded)]
    assert width[1] > 1.5 * width[0]
    assert not any("fewer than 3 training seeds" in n for n in seeded.notes)
    assert seeded.headline.interval.runs and "variation between training runs included" in seeded.sentence



def test_lr_sweep_runs_are_never_seeds_of_a_grid_arm():
    """An LR sweep's run at the picked LR and the sweep's duration shares the grid arm's group, LR and duration;
    pooled, it would be a second seed (and, with no source loss, hide the arm's forgetting). One selection
    (select.analysed) keeps it out of every comparison, figure and the advice."""
    from ftlab.report.measures import Measures
    from ftlab.report.select import arms_by_kind, best_arms, reference_arms
    sweep = [ckpt("lora", lr=lr, d=1.0, learn=x, keep=None, rise=None, grp="lr-sweep", run=f"sweep-lora-{lr:g}")
             for lr, x in ((1e-4, 0.45), (1e-3, 0.2))]
    sweep += [ckpt(lr=1e-4, d=1.0, learn=0.6, keep=None, rise=None, grp="lr-sweep", run="sweep-full")]
    grid = [ckpt(d=d, grp="grid") for d in (1.0, 2.0)] + [ckpt("lora", d=d, grp="grid", **PAPERS_WAY)
                                                          for d in (1.0, 2.0)]
    s = study(*sweep, *grid)
    assert all(len(a.rows) == 1 and a.rows[0].grp == "grid" for a in best_arms(s))
    assert all(a.rows[0].grp == "grid" for arms in reference_arms(s).values() for a in arms)
    assert all(a.rows[0].grp == "grid" for kinds in arms_by_kind(s).values() for k in kinds.values() for a in k)
    for check in (findings_paper.learns_less, findings_paper.forgets_less_loss):
        c = claim(s, check)
        assert len(c.comparisons) == 2 and {x.interval.seeds for x in c.comparisons} == {1}, c.sentence
    growth = claim(s, findings_paper.forgetting_grows_with_duration)
    assert len(growth.comparisons) == 2  # full FT and LoRA, 1 -> 2 epochs: none lost to a sweep run's missing loss
    m = Measures(s)
    assert all(m.point(a).record()["seeds"] == 1 for a in best_arms(s))


# ----------------------------------------------------------------------------- forgetting with duration and rank


def test_forgetting_grows_across_separate_runs():
    """The paper's protocol: each epoch count a separate run (no run has two checkpoints)."""
    runs = [ckpt(d=d, rise=0.1 * d, keep=0.6 - 0.05 * d) for d in (1, 2, 4)]
    assert len({r.run for r in runs}) == 3
    c = claim(study(*runs), findings_paper.forgetting_grows_with_duration)
    assert c.status == "supported" and c.counts["agree"] == 2 and c.instrument == "source_loss"
    assert c.headline.what == "full FT at 4 epochs vs 2 epochs"
    # without per-document source loss, the source score decides (lower = more forgotten)
    runs = [ckpt(d=d, rise=None, keep=0.6 - 0.1 * d) for d in (1, 2)]
    c = claim(study(*runs), findings_paper.forgetting_grows_with_duration)
    assert c.status == "supported" and c.headline.instrument == "source" and c.headline.interval.estimate < 0
    # the source loss falls with training: contradicted, and the note says where
    c = claim(study(*[ckpt(d=d, rise=0.5 - 0.1 * d) for d in (1, 2)]), findings_paper.forgetting_grows_with_duration)
    assert c.status == "contradicted" and "this study contradicts the paper here: full FT at 2 epochs" in c.notes[-1]
    # no effect, and different LRs are never paired
    c = claim(study(ckpt(d=1, lr=1e-4), ckpt(d=2, lr=1e-4), ckpt(d=2, lr=1e-3, rise=0.9)),
              findings_paper.forgetting_grows_with_duration)
    assert c.status == "inconclusive" and len(c.comparisons) == 1
    assert "no configuration evaluated at two durations" in claim(
        study(ckpt(d=1), ckpt(d=2, lr=1e-3)), findings_paper.forgetting_grows_with_duration).sentence


def test_both_instruments_are_named_when_used():
    rows = [ckpt(d=d, rise=0.1 * d) for d in (1, 2)] + [ckpt("lora", d=d, rise=None, keep=0.6 - 0.1 * d)
                                                       for d in (1, 2)]
    c = claim(study(*rows), findings_paper.forgetting_grows_with_duration)
    assert c.status == "supported" and c.headline.instrument == "source_loss"
    assert "source loss in 1 comparisons, on the source score in 1" in c.sentence


def test_forgetting_ordered_by_rank():
    rows = [ckpt("lora", rank=k, rise=x) for k, x in ((1, 0.05), (4, 0.15), (16, 0.25))] + [ckpt(rise=0.35)]
    rows.append(ckpt("lora", rank=4, alpha=4.0, rise=0.9))  # not the paper's alpha: the plain r=4 stands for rank 4
    c = claim(study(*rows), findings_paper.forgetting_ordered_by_rank)
    assert c.status == "supported" and c.counts["agree"] == 3
    assert [x.what for x in c.comparisons] == ["full FT vs LoRA r=16 at 1 epoch", "LoRA r=16 vs LoRA r=4 at 1 epoch",
                                               "LoRA r=4 vs LoRA r=1 at 1 epoch"]
    assert c.headline is c.comparisons[0] and "3 of 3 links resolved" in c.sentence
    # ranks that forget alike and full FT above them all: one link of three is no ordering
    flat = [ckpt("lora", rank=k, rise=0.15) for k in (1, 4, 16)] + [ckpt(rise=0.35)]
    c = claim(study(*flat), findings_paper.forgetting_ordered_by_rank)
    assert c.status == "inconclusive" and c.counts["agree"] == 1 and "1 of 3 links resolved" in c.sentence
    reversed_ = [ckpt("lora", rank=k, rise=x) for k, x in ((1, 0.35), (4, 0.25))]
    assert claim(study(*reversed_), findings_paper.forgetting_ordered_by_rank).status == "contradicted"
    assert claim(study(ckpt("lora")), findings_paper.forgetting_ordered_by_rank).status == "not enough data"


# ----------------------------------------------------------------------------- regularization at matched duration


def test_regularization_equivalence_has_a_margin_fixed_in_advance():
    plain, wd = ckpt(**FULL), ckpt(weight_decay=1e-4, **FULL)
    c = claim(study(plain, wd), findings_paper.regularization)
    assert c.status == "supported" and c.counts["agree"] == 2, c.sentence
    learning, forgetting = c.comparisons
    assert (learning.instrument, forgetting.instrument) == ("learning", "source_loss")
    assert {x.test for x in c.comparisons} == {"margin"} and all(x.family == 1 for x in c.comparisons)
    share = findings_paper.EQUIVALENCE_SHARE
    assert learning.detail["margin"] == pytest.approx(share * (plain.learning - BASE.learning), abs=0.02)
    assert learning.detail["margin_low"] < learning.detail["margin"] < learning.detail["margin_high"]
    assert c.headline is learning and "(margin " in c.sentence
    # weight decay that removes 40% of full FT's learning gain: changed beyond the margin, never "about as it was"
    gain = FULL["learn"] - 0.05
    far = ckpt(weight_decay=1e-4, learn=FULL["learn"] - 0.4 * gain, keep=0.45, rise=0.3)
    c = claim(study(plain, far), findings_paper.regularization)
    assert c.status in ("contradicted", "mixed") and c.comparisons[0].verdict == "disagree"
    # one comparison inside the margin and one undecided: an equivalence needs every one
    c = claim(study(plain, ckpt(weight_decay=1e-4, learn=FULL["learn"] - 0.2 * gain, keep=0.45, rise=0.3)),
              findings_paper.regularization)
    assert c.status != "supported"
    # without a base model there is no margin: not enough data, never supported
    c = claim(study(plain, wd, base=False), findings_paper.regularization)
    assert c.status == "not enough data" and "no base model evaluated in" in c.sentence


def test_lora_forgets_less_than_regularized_full_ft():
    plain, wd = ckpt(**FULL), ckpt(weight_decay=1e-4, **FULL)
    c = claim(study(plain, wd, ckpt("lora", rank=16, learn=0.48, keep=0.55, rise=0.1)),
              findings_paper.lora_forgets_less_than_regularized)
    assert c.status == "supported" and c.headline.what == "LoRA r=16 vs full FT wd=0.0001 at 1 epoch"
    assert c.headline.test == "difference"
    c = claim(study(plain, wd, ckpt("lora", rank=16, rise=0.6)), findings_paper.lora_forgets_less_than_regularized)
    assert c.status == "contradicted" and c.comparisons[-1].verdict == "disagree"
    assert claim(study(plain), findings_paper.lora_forgets_less_than_regularized).status == "not enough data"


def test_regularization_never_crosses_durations():
    rows = [ckpt(d=1, **FULL), ckpt(d=1, weight_decay=1e-4, **FULL),
            ckpt("lora", rank=16, d=2, learn=0.6, keep=0.6, rise=0.0)]  # LoRA only at another duration
    c = claim(study(*rows), findings_paper.regularization)
    assert len(c.comparisons) == 2 and {x.detail["duration"] for x in c.comparisons} == {1.0}
    assert claim(study(*rows), findings_paper.lora_forgets_less_than_regularized).status == "not enough data"
    c = claim(study(ckpt(d=2), ckpt(d=1, weight_decay=1e-4), ckpt("lora", d=2)), findings_paper.regularization)
    assert c.status == "not enough data" and "at the regularized runs' durations" in c.sentence
    assert "no full-FT run with weight decay" in claim(study(ckpt(), ckpt("lora")),
                                                      findings_paper.regularization).sentence


# ----------------------------------------------------------------------------- diversity


def test_diversity():
    c = claim(study(ckpt(unique=2.0), ckpt("lora", unique=5.0)), findings_paper.diversity)
    assert c.status == "supported" and c.counts["agree"] == 3  # full < LoRA, full < base, LoRA < base
    assert c.instrument == "unique" and c.headline.interval.n == PROBLEMS
    c = claim(study(ckpt(unique=6.0), ckpt("lora", unique=3.0)), findings_paper.diversity)
    assert c.status == "mixed" and c.counts == {"agree": 2, "disagree": 1, "inconclusive": 0}
    c = claim(study(ckpt(unique=6.0), ckpt("lora", unique=3.0), base=False), findings_paper.diversity)
    assert c.status == "contradicted" and any("base model's diversity is not measured" in n for n in c.notes)
    assert claim(study(ckpt(), ckpt("lora")), findings_paper.diversity).status == "not enough data"


# ----------------------------------------------------------------------------- ΔW's rank


def spectrum(k90: float, width: int = 400) -> Spectrum:
    return Spectrum(k90_mean=k90, matrices=[MatrixSpectrum("q", shape=[width, width], k90=k90),
                                            MatrixSpectrum("up", shape=[2 * width, width], k90=k90)])


def test_delta_rank_counts_ranks_up_to_a_fiftieth_of_the_width():
    loras = [ckpt("lora", rank=k) for k in (1, 4, 8, 16)]
    c = claim(study(ckpt(spectrum=spectrum(60.0)), *loras), findings_paper.delta_rank)
    # width 400: r <= 8 counted (thresholds 10, 40, 80), r=16 reported only
    assert c.status == "mixed" and c.counts == {"agree": 2, "disagree": 1, "inconclusive": 0}
    assert [x.detail["threshold"] for x in c.comparisons] == [10, 40, 80]
    assert c.headline.what == "full FT at 1 epoch vs r=8" and c.headline.interval.estimate == -20
    assert c.headline.interval.low == c.headline.interval.high == -20  # one seed: no sampling noise
    assert "r=16 met k90 >= 160 in 0 of 1" in c.sentence and "mean k90 60-60" in c.sentence
    assert claim(study(ckpt(spectrum=spectrum(90.0)), *loras), findings_paper.delta_rank).status == "supported"
    assert claim(study(ckpt(spectrum=spectrum(5.0)), *loras), findings_paper.delta_rank).status == "contradicted"


def test_delta_rank_threshold_is_capped_by_the_width():
    # r=32 at width 400: 10 r = 320 exceeds what a full-rank change reaches; the threshold is width/2 = 200
    c = claim(study(ckpt(spectrum=spectrum(210.0)), ckpt("lora", rank=4), ckpt("lora", rank=32)),
              findings_paper.delta_rank)
    assert "r=32 met k90 >= 200 in 1 of 1" in c.sentence and c.status == "supported" and len(c.comparisons) == 1
    # only ranks above width/50: nothing counted, the reported ones still in the sentence
    c = claim(study(ckpt(spectrum=spectrum(20.0, width=64)), ckpt("lora", rank=4)), findings_paper.delta_rank)
    assert c.status == "not enough data" and "r=4 met k90 >= 32 in 0 of 1" in c.sentence


def test_delta_rank_per_setting_and_with_seeds():
    other = ckpt("lora", rank=1, setting="cpt: code @ tiny")  # another setting's rank is not compared
    c = claim(study(ckpt(spectrum=spectrum(60.0)), other), findings_paper.delta_rank)
    assert c.status == "not enough data" and "no LoRA run in a setting" in c.sentence
    seeds = [ckpt(seed=i, spectrum=spectrum(k)) for i, k in enumerate((50.0, 70.0))]
    c = claim(study(*seeds, ckpt("lora", rank=4)), findings_paper.delta_rank)
    i = c.headline.interval  # mean 60, se 10, t(1) = 12.7: the interval over two seeds spans the threshold 40
    assert c.status == "inconclusive" and i.seeds == 2 and i.estimate == 20 and i.low < 0 < i.high
    assert "no full-FT checkpoint has a spectrum" in claim(study(ckpt(), ckpt("lora")),
                                                           findings_paper.delta_rank).sentence


# ----------------------------------------------------------------------------- KL to the base


@pytest.mark.parametrize("kl, status", [((1, 2, 3, 4, 5, 6), "supported"), ((6, 5, 4, 3, 2, 1), "contradicted"),
                                        ((3, 6, 1, 5, 2, 4), "inconclusive")])
def test_kl_predicts_forgetting(kl, status):
    """Six training runs (seeds) of full FT, one checkpoint each: independent, so rho is read over six points."""
    rows = [ckpt(seed=i, rise=0.1 * (i + 1), kl=float(k)) for i, k in enumerate(kl)]
    c = claim(study(*rows), findings_paper.kl_predicts_forgetting)
    assert c.status == status and c.headline.instrument == "rho"
    assert c.headline.what == f"KL vs source-loss rise over 6 checkpoints of 6 runs within full ({SETTING})"
    assert c.mde is None and "detectable" not in c.sentence  # a correlation has no detectable effect here
    few = claim(study(*rows[:3]), findings_paper.kl_predicts_forgetting)
    assert few.status == "not enough data" and f"{SETTING}: 3 checkpoints, runs per method full 3" in few.sentence


def test_kl_checkpoints_of_one_run_are_not_independent():
    """Three runs with three checkpoints each: nine points, but three clusters: not enough runs to read rho over;
    and across methods rho is read within each (full FT and LoRA differ in both KL and forgetting)."""
    rows = [ckpt(seed=s, d=d, rise=0.1 * d, kl=float(d)) for s in range(3) for d in (1, 2, 3)]
    assert claim(study(*rows), findings_paper.kl_predicts_forgetting).status == "not enough data"
    # within each method no relation; between methods a big one: pooled, it would read as a correlation
    rng = np.random.default_rng(3)
    rows = [ckpt(m, seed=s, rise=(0.5 if m == "full" else 0.1) + 0.01 * rng.random(),
                 kl=(5.0 if m == "full" else 1.0) + rng.random()) for m in ("full", "lora") for s in range(5)]
    c = claim(study(*rows), findings_paper.kl_predicts_forgetting)
    assert c.status == "inconclusive" and c.headline.detail["methods"] == ["full", "lora"]


def test_a_grid_of_null_comparisons_stays_inconclusive_after_holms_correction():
    """36 LoRA-vs-full pairs with no true difference: at 95% each, a couple would look significant by chance and
    turn the claim mixed or contradicted; corrected over the family, the claim stays inconclusive."""
    rows = []
    for d in range(1, 10):
        rows.append(ckpt(learn=0.5, d=d))
        rows += [ckpt("lora", learn=0.5, rank=r, d=d) for r in (1, 4, 16, 64)]
    c = claim(study(*rows), findings_paper.learns_less)
    assert len(c.comparisons) == 36 and c.status == "inconclusive", c.sentence
    assert "Holm-corrected" in c.sentence
    chance = [x for x in c.comparisons if x.interval.low > 0 or x.interval.high < 0]  # what 95% alone would call
    assert len(chance) >= 1 and all("Holm" in x.detail["holm"] for x in chance)  # 3 with these seeds
    assert all(x.verdict == "inconclusive" for x in c.comparisons)
