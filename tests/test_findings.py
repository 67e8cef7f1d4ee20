"""The side-study findings (ftlab.report.claims.sweeps) and LoRA Without Regret's (ftlab.report.claims.regret) on
studies with known effects: per-example values drawn with seeded numpy whose aggregates are exactly the levels set,
and synthetic training curves. Each check is supported for a clear effect in the paper's direction, inconclusive
for none, contradicted for the opposite and "not enough data" without the runs; plus the rules' edges."""

import zlib

import numpy as np
import pytest

from ftlab.report.claims.regret import (REGRET_CHECKS, parting_index, regret_attention_only,
                                        regret_best_lr_rank_independent, regret_loss_curves)
from ftlab.report.claims.sweeps import (SWEEP_CHECKS, alpha_2r_best, attention_only_worst, best_lr,
                                        high_rank_long_cpt, ift_forgets_more_than_cpt)
from ftlab.results.records import CurvePoint
from ftlab.results.study import BaseResult, Row, Study, TaskInfo

N = 200  # documents per task
TASKS = {"learn": TaskInfo("learn", "1", "perplexity", "learning", "token_accuracy"),
         "learn2": TaskInfo("learn2", "1", "perplexity", "learning", "token_accuracy"),
         "src": TaskInfo("src", "1", "choice", "forgetting", "acc"),
         "srcloss": TaskInfo("srcloss", "1", "perplexity", "source_loss", "loss")}
DIFFICULTY = np.random.default_rng(0).uniform(-0.2, 0.2, N)  # per-document, shared by every checkpoint (pairing)
TOKENS = np.random.default_rng(1).integers(10, 60, N).astype(float)  # source-loss weights


def docs(level: float, name: str, weights: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """N documents whose (weighted) mean is exactly `level`: shared difficulty plus this checkpoint's own noise."""
    w = np.ones(N) if weights is None else weights
    noise = np.random.default_rng(zlib.crc32(name.encode())).normal(0, 0.05, N)
    values = DIFFICULTY + noise
    values = values - (values * w).sum() / w.sum() + level
    return {f"d{j}": (float(values[j]), float(w[j])) for j in range(N)}


def row(setting: str = "s", method: str = "full", lr: float = 1e-3, d: float = 1.0, learn: float | None = None,
        source: float | None = None, loss: float | None = None, rank: int | None = None, alpha: float | None = None,
        targets: str = "all", regime: str = "ift", tokens: int | None = None, seed: int = 0, task: str = "learn",
        optimizer: str = "adamw", run: str | None = None, grp: str = "grid") -> Row:
    if method == "lora":
        rank = rank or 4
        alpha = 2.0 * rank if alpha is None else alpha
    run = run or f"{setting}/{grp}/{method}-r{rank}-a{alpha}-{targets}-{optimizer}-lr{lr:g}-s{seed}-d{d:g}"
    examples = {}
    if learn is not None:
        examples[f"{task}/token_accuracy"] = docs(learn, run + task)
    if source is not None:
        examples["src/acc"] = docs(source, run + "src")
    if loss is not None:
        examples["srcloss/loss"] = docs(loss, run + "loss", TOKENS)
    lora = method == "lora"
    return Row(run=run, checkpoint="final", method=method, setting=setting, grp=grp, rank=rank if lora else None,
               alpha=alpha if lora else None, targets=targets if lora else "", lr=lr,
               optimizer=optimizer, seed=seed, regime=regime, duration=d,
               duration_unit="tokens" if regime == "cpt" else "epochs", tokens=tokens, learning=learn,
               learning_tasks=[task] if learn is not None else [], source=source,
               source_tasks=["src"] if source is not None else [], source_loss=loss, examples=examples)


def base(setting: str, shift: float = 0.0) -> BaseResult:
    return BaseResult(run=f"(base)/{setting}", setting=setting, scores={"src/acc": 0.6 + shift},
                      examples={"src/acc": docs(0.6 + shift, "base-src"), "srcloss/loss": docs(2.5, "base", TOKENS)})


def study(rows: list[Row], bases: list[BaseResult] = (), curves: dict | None = None) -> Study:
    return Study("s", rows=rows, bases=list(bases), tasks=TASKS, curves=curves or {})


def test_each_check_names_itself_and_says_what_is_missing():
    claims = [check(study([row(learn=0.5)])) for check in SWEEP_CHECKS + REGRET_CHECKS]
    assert [c.id for c in claims] == [c.__name__ for c in SWEEP_CHECKS + REGRET_CHECKS]
    assert {c.status for c in claims} == {"not enough data"}
    assert all(c.sentence.startswith("not enough data: ") and len(c.sentence) > 40 and c.rule for c in claims)
    assert {c.source for c in claims} == {"Biderman et al. 2024", "Schulman et al. 2025"}


# ----------------------------------------------------------------------------- best LR: ~10x, independent of rank


def sweep(method: str, learning: dict[float, float], **kw) -> list[Row]:
    return [row(method=method, lr=lr, learn=v, **kw) for lr, v in learning.items()]


FULL = {1e-4: 0.30, 1e-3: 0.50, 1e-2: 0.20}  # best 1e-3


@pytest.mark.parametrize("lora, status, ratio", [
    ({1e-3: 0.30, 1e-2: 0.50, 1e-1: 0.20}, "supported", 10.0),  # the paper's 10x
    ({1e-4: 0.30, 1e-3: 0.50, 1e-2: 0.20}, "contradicted", 1.0),  # the same best LR as full FT
    ({1e-3: 0.40, 1e-2: 0.40, 1e-1: 0.40}, "inconclusive", None),  # LR makes no difference: the argmax is noise
])
def test_best_lr(lora, status, ratio):
    lionw = sweep("full", {1e-5: 0.2, 1e-4: 0.5}, optimizer="lionw")  # another optimizer: never compared with
    c = best_lr(study(sweep("full", FULL) + sweep("lora", lora) + lionw))
    assert c.status == status and len(c.comparisons) == 1
    h = c.headline
    assert h.detail["full_best_lr"] == 1e-3 and h.interval.low <= h.interval.estimate <= h.interval.high
    if ratio is not None:
        assert h.interval.estimate == pytest.approx(ratio) and h.detail["share_inside"] in (0.0, 1.0)
    else:
        assert 0.1 < h.detail["share_inside"] < 0.9
    assert any("grids step by 10x" in n for n in c.notes)
    assert any("contradicts the paper" in n for n in c.notes) == (status == "contradicted")


def test_best_lr_resamples_seeds():
    rows = [r for seed in (0, 1)
            for r in sweep("full", FULL, seed=seed) + sweep("lora", {1e-3: 0.3, 1e-2: 0.5, 1e-1: 0.2}, seed=seed)]
    c = best_lr(study(rows))
    assert c.status == "supported" and c.headline.interval.seeds == 2


def test_best_lr_at_the_edge_of_its_sweep_is_only_a_bound():
    """LoRA peaks at the highest LR tried: the ratio 10 is a lower bound, so "about 10x" is not resolved; a bound
    that alone lies outside the band still decides."""
    c = best_lr(study(sweep("full", FULL) + sweep("lora", {1e-3: 0.2, 3e-3: 0.3, 1e-2: 0.5})))
    assert c.status == "inconclusive" and c.headline.detail["at_sweep_edge"] == ["LoRA r=4"]
    assert c.headline.detail["share_inside"] == 0.0 and c.headline.detail["share_outside"] == 0.0
    assert c.headline.what.endswith(": a lower bound (edge of a sweep)")
    assert any("edge of its sweep" in n and "LoRA r=4 0.01 (highest of 3 tried" in n for n in c.notes)
    c = best_lr(study(sweep("full", FULL) + sweep("lora", {1e-1: 0.2, 3e-1: 0.3, 1.0: 0.5})))
    assert c.status == "contradicted"  # at least 1000x: outside [3, 30] whatever lies beyond the edge


def test_a_best_lr_is_fitted_between_the_grid_points_and_bounded_at_an_edge():
    from ftlab.report.claims.sweeps import fit_best
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    peak = 3e-3  # a parabola in log LR peaking between two grid points
    learning = np.array([0.5 - (np.log(lr) - np.log(peak)) ** 2 for lr in lrs])
    fitted, low, high = fit_best(lrs, learning)
    assert fitted == pytest.approx(peak) and low == high == fitted
    fitted, low, high = fit_best(lrs, np.array([0.1, 0.2, 0.3, 0.4]))  # still rising at the highest LR tried
    assert (fitted, low, high) == (1e-1, 1e-1, np.inf)
    fitted, low, high = fit_best(lrs, np.array([[0.4, 0.3, 0.2, 0.1]]))  # falling from the lowest
    assert (fitted[0], low[0], high[0]) == (1e-4, 0.0, 1e-4)


def test_best_lr_needs_two_lrs_each():
    c = best_lr(study([row(lr=1e-3, learn=0.5)] + sweep("lora", {1e-3: 0.3, 1e-2: 0.5})))
    assert c.status == "not enough data" and "swept: LoRA r=4 (s)" in c.sentence


def test_a_studys_lr_sweep_picks_the_lr_and_is_not_compared_otherwise():
    """An experiment's lr_sweep runs (grp lr-sweep, learning only, one duration) are the sweep; the grid trains at
    the LR they picked, and its own checkpoint at the sweep's duration is not one more point of the sweep."""
    rows = sweep("full", FULL, grp="lr-sweep") + sweep("lora", {1e-3: 0.3, 1e-2: 0.5, 1e-1: 0.2}, grp="lr-sweep")
    rows += [row(method="full", lr=1e-3, d=d, learn=0.1) for d in (1, 2)]  # would make 1e-4 full FT's best
    rows += [row(method="lora", targets=t, lr=1e-2, d=d, learn=0.5 if t == "all" else 0.3)
             for t in ("all", "attn") for d in (1, 2)]
    rows += [row(method="lora", targets="attn", lr=lr, learn=0.3, grp="lr-sweep") for lr in (1e-2, 1e-1)]
    c = best_lr(study(rows))
    assert c.status == "supported" and c.headline.detail["lora_lrs"] == [1e-3, 1e-2, 1e-1]
    assert c.headline.interval.estimate == pytest.approx(10.0)
    c = attention_only_worst(study(rows))
    assert c.status == "supported" and len(c.comparisons) == 2  # one per duration
    assert {x.interval.seeds for x in c.comparisons} == {1}  # the sweep's run at 1 epoch is not a second seed


def ladder(best: dict[int, float], flat: bool = False) -> list[Row]:
    """LoRA ranks, each swept over 1e-3, 1e-2, 1e-1 with its best at best[rank]."""
    return [row(method="lora", rank=k, lr=lr, learn=0.4 if flat else 0.5 if lr == b else 0.3)
            for k, b in best.items() for lr in (1e-3, 1e-2, 1e-1)]


@pytest.mark.parametrize("rows, status, spread", [
    (ladder({1: 1e-2, 4: 1e-2, 16: 1e-2}), "supported", 1.0),
    (ladder({1: 1e-3, 4: 1e-2, 16: 1e-1}), "contradicted", 100.0),
    (ladder({1: 0, 4: 0, 16: 0}, flat=True), "inconclusive", None),
])
def test_best_lr_independent_of_rank(rows, status, spread):
    c = regret_best_lr_rank_independent(study(rows + sweep("full", FULL)))
    assert c.status == status and len(c.comparisons) == 1
    if spread is not None:
        assert c.headline.interval.estimate == pytest.approx(spread)
    assert regret_best_lr_rank_independent(study(ladder({4: 1e-2}))).status == "not enough data"


# ----------------------------------------------------------------------------- alpha and target-module sweeps


@pytest.mark.parametrize("two_r, status", [(0.5, "supported"), (0.45, "inconclusive"), (0.3, "contradicted")])
def test_alpha_2r_best(two_r, status):
    rows = [row(method="lora", rank=4, alpha=a, learn=two_r if a == 8 else 0.45, lr=lr)
            for a in (4.0, 8.0, 16.0) for lr in (1e-3, 1e-2)]  # each alpha's best LR: ties go to 1e-3
    rows.append(row(method="lora", rank=16, learn=0.9))  # another rank: not part of the sweep
    c = alpha_2r_best(study(rows))
    assert c.status == status and c.counts == {
        "supported": {"agree": 2, "disagree": 0, "inconclusive": 0},
        "inconclusive": {"agree": 0, "disagree": 0, "inconclusive": 2},
        "contradicted": {"agree": 0, "disagree": 2, "inconclusive": 0}}[status]
    assert sorted(x.detail["alpha"] for x in c.comparisons) == [4.0, 16.0]
    without_2r = [r for r in rows if r.alpha != 8.0]
    assert alpha_2r_best(study(without_2r)).status == "not enough data"


@pytest.mark.parametrize("attn, status", [(0.3, "supported"), (0.45, "inconclusive"), (0.6, "contradicted")])
def test_attention_only(attn, status):
    rows = [row(method="lora", targets=t, learn=attn if t == "attn" else 0.45) for t in ("all", "mlp", "attn")]
    worst, regret = attention_only_worst(study(rows)), regret_attention_only(study(rows))
    assert (worst.status, regret.status) == (status, status)
    assert sorted(c.detail["targets"] for c in worst.comparisons) == ["all", "mlp"]
    assert [c.detail["targets"] for c in regret.comparisons] == ["all"]
    assert worst.headline.interval.estimate == pytest.approx(attn - 0.45)
    assert worst.mde is not None and 0 < worst.mde < 0.05
    no_attn = [r for r in rows if r.targets != "attn"]
    assert attention_only_worst(study(no_attn)).status == regret_attention_only(study(no_attn)).status == \
        "not enough data"


# ----------------------------------------------------------------------------- IFT forgets more than CPT


def regimes(ift_loss: float | None, ift_source: float = 0.5, cpt_tokens: tuple = (1000, 4000),
            ift_task: str = "learn") -> list[Row]:
    rows = []
    for method in ("full", "lora"):
        rows.append(row("ift", method, d=2, regime="ift", tokens=1000, learn=0.5, task=ift_task, source=ift_source,
                        loss=ift_loss))
        rows += [row("cpt", method, d=t, regime="cpt", tokens=t, learn=0.5, source=0.5, loss=None if ift_loss is
                     None else 2.8) for t in cpt_tokens]
    return rows


@pytest.mark.parametrize("ift_loss, status", [(3.0, "supported"), (2.8, "inconclusive"), (2.6, "contradicted")])
def test_ift_forgets_more_than_cpt(ift_loss, status):
    c = ift_forgets_more_than_cpt(study(regimes(ift_loss), [base("ift"), base("cpt")]))
    assert c.status == status and len(c.comparisons) == 4  # 2 groups x 2 CPT budgets >= 1000 tokens
    assert {x.instrument for x in c.comparisons} == {"source_loss"}
    assert c.headline.detail["cpt_tokens"] == 4000
    assert c.headline.interval.estimate == pytest.approx(ift_loss - 2.8)
    assert not any("confounded" in n for n in c.notes)


def test_ift_against_cpt_edges():
    bases = [base("ift"), base("cpt")]
    # no source loss: the source score; the target domains differ: said
    c = ift_forgets_more_than_cpt(study(regimes(None, ift_source=0.4, ift_task="learn2"), bases))
    assert c.status == "supported" and {x.instrument for x in c.comparisons} == {"source"}
    assert any("domain and regime are confounded" in n for n in c.notes)
    # only CPT budgets shorter than the IFT run: nothing to compare, and the sentence says why
    c = ift_forgets_more_than_cpt(study(regimes(3.0, cpt_tokens=(500,)), bases))
    assert c.status == "not enough data" and "trained on as many tokens" in c.sentence
    # different base models are not compared
    c = ift_forgets_more_than_cpt(study(regimes(3.0), [base("ift"), base("cpt", shift=0.1)]))
    assert c.status == "not enough data" and "different base models" in c.sentence


# ----------------------------------------------------------------------------- a high rank at a long CPT budget


def budgets(lora: float, long: int = 4500, full: tuple = (1000, 4500)) -> list[Row]:
    rows = [row("cpt", "full", d=t, regime="cpt", tokens=t, learn={1000: 0.3}.get(t, 0.5)) for t in full]
    rows += [row("cpt", "lora", rank=k, d=long, regime="cpt", tokens=long, learn=lora if k == 16 else 0.05)
             for k in (1, 16)]
    return rows


@pytest.mark.parametrize("lora, status", [(0.32, "supported"), (0.2, "inconclusive"), (0.1, "contradicted")])
def test_high_rank_long_cpt(lora, status):
    c = high_rank_long_cpt(study(budgets(lora)))  # margin: half of full FT's gain 0.3 -> 0.5
    assert c.status == status and len(c.comparisons) == 1
    h = c.headline
    assert (h.detail["rank"], h.detail["full_budget"], h.detail["lora_budget"]) == (16, 1000, 4500)
    assert h.detail["budget_ratio"] == pytest.approx(4.5) and h.detail["margin"] == pytest.approx(0.1)
    assert h.interval.estimate == pytest.approx(lora - 0.3)


def test_high_rank_long_cpt_budgets():
    c = high_rank_long_cpt(study(budgets(0.32, long=4000, full=(1000, 2000, 4000))))  # exactly 4x counts
    assert c.status == "supported" and c.headline.detail["budget_ratio"] == pytest.approx(4.0)
    flat = [r for r in budgets(0.32) if r.method == "lora"] + [row("cpt", "full", d=t, regime="cpt", tokens=t,
                                                                    learn=0.3) for t in (1000, 4500)]
    c = high_rank_long_cpt(study(flat))  # full FT gained nothing: margin 0, LoRA learned more
    assert c.status == "supported" and c.headline.detail["margin"] == 0 and "not positive" in " ".join(c.notes)
    assert c.headline.test == "margin" and c.headline.family == 1
    c = high_rank_long_cpt(study(budgets(0.32, full=(2000, 4500))))  # no full FT at <= T/4
    assert c.status == "not enough data" and "T/4 = 1,125" in c.sentence


# ----------------------------------------------------------------------------- where the loss curves part

STEPS = np.arange(1, 201)


def curve(gap_from: float | None, name: str) -> list[CurvePoint]:
    """A training curve: full FT's trend, plus a gap growing from step gap_from (None: never), plus its own noise."""
    noise = np.random.default_rng(zlib.crc32(name.encode())).normal(0, 0.02, len(STEPS))
    loss = 1 + 3 * np.exp(-STEPS / 40) + noise
    if gap_from is not None:
        loss += 0.004 * np.clip(STEPS - gap_from, 0, None)
    return [CurvePoint(name, int(s), int(s) * 100, float(v), None, 1e-3) for s, v in zip(STEPS, loss)]


def curves_study(parts: dict[int, float | None]) -> Study:
    rows = [row(method="full", lr=1e-3, learn=0.5, run="full")]
    curves = {"full": curve(None, "full")}
    for k, p in parts.items():
        rows.append(row(method="lora", rank=k, lr=1e-2, learn=0.5, run=f"lora{k}"))
        curves[f"lora{k}"] = curve(p, f"lora{k}")
    return study(rows, curves=curves)


@pytest.mark.parametrize("parts, status", [
    ({1: 60, 4: 120, 16: None}, "supported"),  # the higher the rank, the later it parts
    ({1: 100, 4: 100, 16: 100}, "inconclusive"),  # every rank parts at the same step
    ({1: None, 4: 120, 16: 60}, "contradicted"),
])
def test_loss_curves_part(parts, status):
    c = regret_loss_curves(curves_study(parts))
    assert c.status == status and len(c.comparisons) == 2
    found = c.comparisons[-1].detail["parting_step"]
    for k, p in parts.items():
        if p is None:
            assert found[str(k)] is None
        else:  # detected a little after the gap starts growing, well before the next rank's
            assert p <= found[str(k)] <= p + 20
    assert any(n.startswith("parting steps (s, 200 steps 1-200, window 20") for n in c.notes)


def test_curves_that_never_part_agree():
    c = regret_loss_curves(curves_study({1: None, 4: None}))
    assert c.status == "supported" and c.headline.detail["parting_step"] == {"1": None, "4": None}
    assert "r=1 never, r=4 never" in " ".join(c.notes)


def test_loss_curves_need_curves_and_two_ranks():
    s = curves_study({4: 60})
    c = regret_loss_curves(s)
    assert c.status == "not enough data" and any("r=4 at step" in n for n in c.notes)
    s.curves = {}
    assert "no training curve of plain full FT" in regret_loss_curves(s).sentence


def test_parting_index_rule():
    flat = np.zeros(50)
    step = np.where(np.arange(50) >= 30, 1.0, 0.0) + np.random.default_rng(0).normal(0, 0.01, 50)
    back = step.copy()
    back[45:] = 0  # rejoins before the end: never parted for good
    assert list(parting_index(np.stack([flat, step, back]), 5)) == [50, 28, 50]
