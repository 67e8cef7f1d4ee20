"""Paired bootstrap intervals and verdicts: right where the effect is known, calibrated where there is none."""

import numpy as np
import pytest

from ftlab.analysis.statistics import Interval, classify, paired_difference, spearman, spearman_interval


def binary(n, p, rng):
    return (rng.random(n) < p).astype(float)


def test_a_clear_effect_agrees_the_opposite_disagrees_none_is_inconclusive():
    rng = np.random.default_rng(1)
    a = binary(400, 0.4, rng)
    better = np.where(rng.random(400) < 0.25, 1.0, a)  # b solves a quarter of what a missed, keeps the rest
    d = paired_difference(a, better)
    assert d.estimate == pytest.approx(better.mean() - a.mean())
    assert d.low > 0 and d.verdict(+1) == "agree" and d.verdict(-1) == "disagree"
    same = paired_difference(a, a.copy())
    assert same.estimate == 0 and same.verdict(+1) == "inconclusive"
    assert paired_difference(better, a).verdict(+1) == "disagree"


def test_intervals_cover_a_null_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(150):
        a, b = binary(120, 0.5, rng), binary(120, 0.5, rng)  # no true difference
        d = paired_difference(a, b, n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += d.low <= 0 <= d.high
    assert 0.88 <= hits / 150 <= 0.995


def test_pairing_narrows_the_interval_when_the_arms_share_difficulty():
    rng = np.random.default_rng(3)
    difficulty = rng.random(300)
    a = (difficulty < 0.5).astype(float)
    b = (difficulty < 0.55).astype(float)  # the same easy problems and a few more: perfectly correlated arms
    paired = paired_difference(a, b)
    independent = paired_difference(a, b[rng.permutation(300)])
    assert paired.high - paired.low < 0.5 * (independent.high - independent.low)
    assert paired.verdict(+1) == "agree"


def test_token_weighted_metrics_are_ratios_of_sums():
    rng = np.random.default_rng(4)
    tokens = rng.integers(5, 50, 80).astype(float)
    a, b = rng.random(80) + 2.0, rng.random(80) + 2.1  # per-document mean losses
    d = paired_difference(a, b, weights=tokens)
    assert d.estimate == pytest.approx((b * tokens).sum() / tokens.sum() - (a * tokens).sum() / tokens.sum())


def test_seeds_widen_the_interval_by_the_variation_across_training_runs():
    rng = np.random.default_rng(5)
    base = binary(500, 0.5, rng)
    one = paired_difference(base, np.where(rng.random(500) < 0.1, 1.0, base))
    # three seeds per arm whose outcomes move together by a run-level shift: seed variance dominates
    a = np.stack([np.where(rng.random(500) < s, 1.0, base) for s in (0.0, 0.1, 0.2)])
    b = np.stack([np.where(rng.random(500) < s, 1.0, base) for s in (0.05, 0.15, 0.25)])
    seeded = paired_difference(a, b)
    assert seeded.seeds == 3 and one.seeds == 1
    assert seeded.se > 2 * one.se


def test_mde_is_2_8_standard_errors():
    assert Interval(0.1, 0.0, 0.2, 0.05, 100).mde == pytest.approx(0.05 * 2.801585)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    rng = np.random.default_rng(6)
    x = rng.random(30)
    strong = spearman_interval(x, x + 0.05 * rng.random(30))
    assert strong.low > 0.8
    noise = spearman_interval(x, rng.random(30))
    assert noise.low < 0 < noise.high


def test_classify():
    assert classify([]) == ("not enough data", {"agree": 0, "disagree": 0, "inconclusive": 0})
    assert classify(["inconclusive"] * 3)[0] == "inconclusive"
    assert classify(["agree", "inconclusive"])[0] == "supported"
    assert classify(["disagree", "inconclusive"])[0] == "contradicted"
    assert classify(["agree", "disagree", "inconclusive"]) == ("mixed", {"agree": 1, "disagree": 1,
                                                                         "inconclusive": 1})


def test_a_comparison_over_several_tasks_averages_their_differences():
    from ftlab.analysis.statistics import Part, paired_difference_of

    rng = np.random.default_rng(7)
    a1, a2 = binary(200, 0.3, rng), binary(50, 0.6, rng)
    b1 = np.where(rng.random(200) < 0.3, 1.0, a1)
    b2 = a2.copy()
    d = paired_difference_of([Part(a1, b1), Part(a2, b2)])
    assert d.estimate == pytest.approx(((b1.mean() - a1.mean()) + 0.0) / 2)
    assert d.n == 250 and d.low > 0
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference_of([Part(a1, b1), Part(np.stack([a2, a2]), b2)])


def test_a_level_interval_is_the_score_with_its_bootstrap_spread():
    from ftlab.analysis.statistics import level_interval

    rng = np.random.default_rng(8)
    values = binary(400, 0.3, rng)
    i = level_interval([(values, None)])
    assert i.estimate == pytest.approx(values.mean()) and i.low < values.mean() < i.high
    assert i.se == pytest.approx(values.std(ddof=1) / np.sqrt(400), rel=0.15)  # the bootstrap SE of a mean


def test_holm_keeps_what_survives_the_step_down():
    from ftlab.analysis.statistics import holm

    assert holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 <= 0.05/3; 0.03 > 0.05/2 stops the rest
    assert holm([0.001, 0.02, 0.04]) == [True, True, True]  # 0.001 <= .0167, 0.02 <= .025, 0.04 <= .05
    assert holm([]) == [] and holm([0.2]) == [False]


def test_a_paired_difference_carries_its_bootstrap_p():
    rng = np.random.default_rng(9)
    a = binary(300, 0.4, rng)
    assert paired_difference(a, np.where(rng.random(300) < 0.3, 1.0, a)).p < 0.001
    assert paired_difference(a, a.copy()).p == 1.0


def test_student_t_without_scipy():
    from ftlab.analysis.statistics import t_quantile, t_sf

    for df, q in ((1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157), (30, 2.042272)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-5)
        assert t_sf(q, df) == pytest.approx(0.025, abs=1e-7)
    assert t_quantile(0.975, float("inf")) == pytest.approx(1.959964, abs=1e-6)
    assert t_sf(-1.0, 4) == pytest.approx(1 - t_sf(1.0, 4))


def test_three_seeds_add_the_run_to_run_variance_with_a_t_interval_and_two_do_not():
    """Run shifts as large as the effect: with 3 seeds per arm they are estimated (Welch's df, a t interval); with 2
    the interval is the evaluation noise alone, and says so (runs False)."""
    rng = np.random.default_rng(11)
    doc = rng.random(200)

    def arm(level, seeds):
        return np.stack([doc + level + 0.05 * rng.standard_normal() + 0.1 * rng.standard_normal(200)
                         for _ in range(seeds)])

    three = paired_difference(arm(0.0, 3), arm(0.05, 3))
    assert three.runs and three.seeds == 3 and 2 <= three.df < 30
    assert three.high - three.estimate == pytest.approx(three.estimate - three.low)
    from ftlab.analysis.statistics import t_quantile
    assert three.high - three.low == pytest.approx(2 * t_quantile(0.975, three.df) * three.se)
    two = paired_difference(arm(0.0, 2), arm(0.05, 2))
    assert not two.runs and two.df == float("inf") and two.se < three.se
    base = paired_difference(arm(0.0, 1), arm(0.05, 3), fixed=(True, False))  # a base model: no run variance
    assert base.runs and base.seeds == 3


def test_a_contrast_of_three_arms_on_the_same_documents():
    from ftlab.analysis.statistics import contrast

    rng = np.random.default_rng(12)
    a, b, c = (rng.random(150) + k for k in (0.0, 0.5, 0.6))
    i = contrast([([a[None], b[None], c[None]], None)], (0.25, -1.25, 1.0))  # c - b - 0.25 (b - a)
    assert i.estimate == pytest.approx(c.mean() - b.mean() - 0.25 * (b.mean() - a.mean()))
    d = paired_difference(b, c)
    assert contrast([([b[None], c[None]], None)], (-1.0, 1.0)).estimate == pytest.approx(d.estimate)


def test_holm_never_counts_a_test_without_a_p():
    from ftlab.analysis.statistics import holm

    assert holm([float("nan"), 0.001]) == [False, True]


def test_classify_rules_for_equivalences_and_orderings():
    assert classify(["agree", "inconclusive"], "all")[0] == "inconclusive"
    assert classify(["agree", "agree"], "all")[0] == "supported"
    assert classify(["disagree", "inconclusive"], "all")[0] == "contradicted"
    assert classify(["agree", "inconclusive", "inconclusive"], "most")[0] == "inconclusive"
    assert classify(["agree", "agree", "inconclusive"], "most")[0] == "supported"
    assert classify(["agree", "disagree", "agree"], "most")[0] == "mixed"
