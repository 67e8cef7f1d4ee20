"""`ftlab run` studies: the paper presets expand to the paper's grid, bad input fails before training, a CPT branch
equals its budget trained from scratch, a study runs end to end, survives kill -9 at any stage with the same
results, records a failing run and goes on, refuses a second runner, and checks its tracking backend.

Everything runs on a 1-layer, width-32 Llama on CPU with one torch thread: the in-process reference study and the
`python -m ftlab run` subprocesses must reduce in the same order for their stores to compare equal, and two threads
on a shared 2-core machine were about 8x slower.
"""

import fcntl
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftlab.cli import main
from ftlab.config import RunConfig, from_dict
from ftlab.errors import ConfigError, FtlabError
from ftlab.experiment.spec import load_experiment, parse_experiment, plan_runs, same_training
from ftlab.experiment.status import study_status
from ftlab.results.store import Store
from ftlab.experiment.study import LOCK, _check_tasks, run_experiment, sweep_picks
from ftlab.optim import lr_factor

ROOT = Path(__file__).resolve().parents[1]

# Two settings x (full, LoRA r=2): IFT durations as checkpoints of one run; CPT budgets 1536 and 5120 tokens, i.e.
# 6 and 20 steps of 8 x 32 tokens, so the 1536 branch restarts from the long run's state at step 5 (6 - 0.2 * 6).
SMALL = """
name: small
model:
  name: tiny
  tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 320}
defaults:
  train: {optimizer: adamw, global_batch: 8, micro_batch: 8, seed: 0, warmup: 1}
  data: {eval_max_examples: 8}
  output: {resume_every: 2}
settings:
  - name: math-ift
    data: {regime: ift, path: "builtin:math-ift", seq_len: 320}
    durations: [0.005, 0.01]      # epochs: 2 and 4 steps of 8 examples
    durations_as: checkpoints
    learning: [math_loss]
    lr: {full: 1.0e-3, lora: 1.0e-2}
  - name: code-cpt
    data: {regime: cpt, path: "builtin:code-cpt", seq_len: 32}
    durations: [1536, 5120]       # tokens
    learning: [code_loss]
    lr: {full: 1.0e-3, lora: 1.0e-2}
methods:
  - {name: full}
  - {name: lora, ranks: [2]}
forgetting: [source_cloze]
eval: {limit: 4}
analyses: {spectrum: true, kl: true, kl_prompts: 2, diversity: []}
"""
IFT_FULL = "math-ift/full/epochs-0.01"
LONG = {"full": "code-cpt/full/tokens-5120", "lora": "code-cpt/lora-r2/tokens-5120"}
BRANCH = {"full": "code-cpt/full/tokens-1536", "lora": "code-cpt/lora-r2/tokens-1536"}
MODULES = 7  # q, k, v, o, gate, up, down of the one layer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted study of SMALL (with its report): (experiment file, study dir, plans)."""
    root = tmp_path_factory.mktemp("reference")
    exp = root / "small.yaml"
    exp.write_text(SMALL)
    out = root / "study"
    run_experiment(exp, out)
    return exp, out, plan_runs(load_experiment(exp), out)


def dump(out: Path, volatile: bool = False) -> dict:
    store = Store(out / "results.sqlite")
    try:
        return store.dump(volatile)
    finally:
        store.close()


def records(path: Path) -> list[dict]:
    """The JSON lines of a log; a line still being written (by a process we poll) is left out."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


# ----------------------------------------------------------------------------- 1. the paper presets

# PAPER.md's grid: seq len, global batch, LR per method, durations.
CPT_BUDGETS = [2.5e8, 5e8, 1e9, 2e9, 4e9, 8e9, 1.6e10, 2e10]
PAPER = {
    "code-ift": dict(regime="ift", seq_len=4096, batch=192, wd=0.0, durations=[1, 2, 4, 8, 16],
                     lr={"full": 5e-5, "lora-r16": 2e-4, "lora-r64": 2e-4, "lora-r256": 1e-4}),
    "math-ift": dict(regime="ift", seq_len=1024, batch=768, wd=0.0, durations=[1, 2, 4, 8, 16],
                     lr={"full": 1e-5, "lora-r16": 1e-4, "lora-r64": 1e-4, "lora-r256": 5e-5}),
    "code-cpt": dict(regime="cpt", seq_len=4096, batch=192, wd=1e-6, durations=CPT_BUDGETS,
                     lr={"full": 1e-5, "lora-r16": 1e-5, "lora-r64": 1e-5, "lora-r256": 1e-5}),
    "math-cpt": dict(regime="cpt", seq_len=4096, batch=192, wd=0.0, durations=CPT_BUDGETS,
                     lr={"full": 1e-5, "lora-r16": 4e-5, "lora-r64": 4e-5, "lora-r256": 4e-5}),
}


def preset(name: str, tmp_path: Path):
    exp = load_experiment(ROOT / "configs" / "paper" / f"{name}.yaml")
    _check_tasks(exp)  # the task names resolve, as `ftlab run` checks before training
    return plan_runs(exp, tmp_path)


def check_paper_run(plan, alpha_sweep: bool = False) -> None:
    """What every run of every preset shares: the paper's optimizer and LoRA settings."""
    t, m = plan.cfg.train, plan.cfg.method
    assert plan.cfg.model.name == "meta-llama/Llama-2-7b-hf"
    assert (t.optimizer, t.betas, t.grad_clip) == ("lionw", [0.9, 0.95], 1.0), plan.name
    # IFT: cosine to 1% of the peak (alpha_f 0.01); CPT: cooldown to zero (alpha_f_cooldown 0)
    assert t.min_lr_ratio == {"ift": 0.01, "cpt": 0.0}[plan.cfg.data.regime], plan.name
    if m.name == "lora":
        assert plan.method.startswith(f"lora-r{m.rank}")
        assert m.dropout == 0.05
        if not alpha_sweep:  # the alpha sweep sets alpha; everywhere else alpha = 2r
            assert m.alpha is None and plan.cfg.lora_alpha() == 2 * m.rank, plan.name
    if plan.cfg.data.regime == "ift":
        assert (t.schedule, t.warmup, t.tokens, t.checkpoints) == ("cosine", 0.1, None, []), plan.name
        assert plan.durations == [t.epochs]  # each duration a separate run with its own schedule
        assert plan.cfg.data.packing  # the authors' step count implies packed examples (see code-ift.yaml)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_grid_presets_expand_to_the_papers_grid(name, tmp_path):
    paper = PAPER[name]
    plans = preset(name, tmp_path)
    assert {p.group for p in plans} == {"grid"}
    assert sorted({p.method for p in plans}) == sorted(paper["lr"])
    assert len(plans) == 4 * len(paper["durations"]) == {"ift": 20, "cpt": 32}[paper["regime"]]
    for p in plans:
        check_paper_run(p)
        cfg = p.cfg
        assert p.lr == cfg.train.lr == paper["lr"][p.method], p.name
        assert (cfg.data.regime, cfg.data.seq_len, cfg.train.global_batch) == (paper["regime"], paper["seq_len"],
                                                                               paper["batch"])
        assert cfg.train.weight_decay == paper["wd"]
        assert cfg.method.targets == "all"
        assert cfg.output.dir == str(tmp_path / "runs" / p.name)
    for method in paper["lr"]:
        runs = [p for p in plans if p.method == method]
        assert sorted(d for p in runs for d in p.durations) == sorted(paper["durations"])
        if paper["regime"] == "cpt":
            check_cpt_branches(runs, paper, schedules=method == "full")  # steps are the same for every method


def test_presets_carry_the_papers_details(tmp_path):
    code_cpt = load_experiment(ROOT / "configs" / "paper" / "code-cpt.yaml")
    data = code_cpt.settings[0].data
    assert (data["path"], data["hub_data_dir"], data.get("hub_config")) == ("hub:bigcode/starcoderdata", "python", None)
    assert code_cpt.analyses.singular_values == ["model.layers.26.self_attn.q_proj.weight"]  # Fig S7: W_q, layer 26
    for name in ("code-cpt", "code-ift"):  # the paper's diversity analysis: HumanEval samples, pass@k at T=0.8
        plans = preset(name, tmp_path / name)
        assert all(p.diversity == ["humaneval", "humaneval_t08"] for p in plans), name
    from ftlab.evaluate.tasks import get_task

    t08 = get_task("humaneval_t08")
    assert (t08.temperature, t08.top_p, t08.samples, max(t08.ks)) == (0.8, 0.95, 256, 256)


def check_cpt_branches(runs, paper, schedules: bool) -> None:
    """One long WSD run of the largest budget; every shorter budget restarts from it at its own cooldown's start."""
    (long,) = [p for p in runs if p.branch_of is None]
    branches = [p for p in runs if p.branch_of is not None]
    assert long.durations == [2e10] and long.cfg.train.tokens == 2e10
    assert len(branches) == 7 and {b.branch_of for b in branches} == {long.name}
    per_step = paper["batch"] * paper["seq_len"]
    long_steps = math.ceil(2e10 / per_step)
    for b in [long, *branches]:
        t = b.cfg.train
        assert (t.schedule, t.cooldown, t.warmup, t.epochs) == ("wsd", 0.2, 1000, None), b.name  # t_warmup=1000ba
    inside_warmup = []
    for b in branches:
        budget = b.durations[0]
        steps = math.ceil(budget / per_step)
        assert b.cfg.train.tokens == budget and b.cfg.train.keep_states == []
        assert b.branch_step == steps - round(0.2 * steps)  # the start of the budget's cooldown
        # up to the restart the branch and the long run follow the same LR; from there the branch cools down
        assert not schedules or all(lr_factor(s, steps, b.cfg.train) == lr_factor(s, long_steps, long.cfg.train)
                   for s in range(b.branch_step))
        assert lr_factor(b.branch_step, steps, b.cfg.train) < lr_factor(b.branch_step, long_steps, long.cfg.train)
        assert lr_factor(steps - 1, steps, b.cfg.train) == 0.0  # cooled down to zero at its budget
        if b.branch_step < 1000:
            inside_warmup.append(budget)
    assert inside_warmup == [2.5e8, 5e8]  # 254 and 509 steps: they cool down from a partial warmup
    assert long.cfg.train.keep_states == sorted(b.branch_step for b in branches)


def test_regularization_preset(tmp_path):
    plans = preset("regularization", tmp_path)
    assert len(plans) == 35
    methods = {}
    for p in plans:
        check_paper_run(p)
        methods.setdefault(p.method, []).append(p)
    assert sorted(methods) == sorted(["full", "lora-r16", "lora-r256", "full-wd5e-05", "full-wd0.0001",
                                      "full-attndrop0.05", "full-attndrop0.1"])
    for label, runs in methods.items():
        assert sorted(p.durations[0] for p in runs) == [1, 2, 4, 8, 16], label
        for p in runs:
            wd = float(label.removeprefix("full-wd")) if "-wd" in label else 0.0
            drop = float(label.removeprefix("full-attndrop")) if "attndrop" in label else 0.0
            assert (p.cfg.train.weight_decay, p.cfg.model.attention_dropout) == (wd, drop), p.name
            assert p.lr == {"lora-r16": 2e-4, "lora-r256": 1e-4}.get(label, 5e-5), p.name  # code IFT's LRs
            assert p.group == ("grid" if label in ("full", "lora-r16", "lora-r256") else "regularization")
            assert (p.cfg.data.seq_len, p.cfg.train.global_batch) == (4096, 192)


def test_side_study_presets(tmp_path):
    lrs = [1e-5, 5e-5, 1e-4, 2e-4, 5e-4]
    sweep = preset("lr-sweep", tmp_path / "lr")
    for p in sweep:
        check_paper_run(p)
    by_method = {}
    for p in sweep:
        if p.group == "lr-sweep":
            by_method.setdefault(p.method, []).append(p.lr)
    # every method at every LR; the sweep's run at the grid's LR trains as the grid's run does (the study copies it)
    assert {m: sorted(v) for m, v in by_method.items()} == {m: lrs for m in ["full", "lora-r16", "lora-r64",
                                                                             "lora-r256"]}
    assert len(sweep) == 24 and all(p.durations == [2] for p in sweep)
    grid = [p for p in sweep if p.group == "grid"]
    assert all(sum(same_training(g, p) for p in sweep if p.group == "lr-sweep") == 1 for g in grid)

    alphas = preset("alpha-sweep", tmp_path / "alpha")
    assert sorted({(p.cfg.method.rank, p.cfg.lora_alpha()) for p in alphas}) == [
        (16, 16), (16, 32), (16, 64), (256, 256), (256, 512), (256, 1024)]
    assert len(alphas) == 18

    targets = preset("target-modules", tmp_path / "targets")
    assert sorted({(p.cfg.method.rank, p.cfg.method.targets) for p in targets}) == sorted(
        (r, t) for r in (16, 256) for t in ("all", "mlp", "attn"))
    assert len(targets) == 18
    for p in alphas:
        check_paper_run(p, alpha_sweep=True)
    for p in targets:
        check_paper_run(p)
    for p in alphas + targets:  # r=256 at 1e-4 (the paper's loss spikes at 2e-4), whatever its alpha or targets
        assert p.lr == (1e-4 if p.cfg.method.rank == 256 else 2e-4), p.name


def test_alpha_none_is_2r_in_the_peft_model():
    from ftlab.methods import apply_method
    from ftlab.model import build_tiny

    cfg = RunConfig()
    cfg.model.tiny.hidden_size, cfg.model.tiny.intermediate_size, cfg.model.tiny.layers = 32, 64, 1
    cfg.method.name, cfg.method.rank = "lora", 2
    assert cfg.method.alpha is None
    model = apply_method(build_tiny(cfg.model.tiny)[0], cfg)
    scalings = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert scalings == {2.0}  # alpha / r = 2r / r


# ----------------------------------------------------------------------------- 2. bad input


def _cases():
    def edit(fn):
        data = yaml.safe_load(SMALL)
        fn(data)
        return data

    return {
        "unknown key": (edit(lambda d: d["settings"][0].update(learnig=["math_loss"])),
                        r"settings\[0\]\.learnig.*did you mean 'settings\[0\]\.learning'"),
        "unknown run key": (edit(lambda d: d["defaults"]["train"].update(lrr=1)),
                            r"train\.lrr.*did you mean 'train\.lr'"),
        "empty methods": (edit(lambda d: d.update(methods=[])), r"methods: the grid is empty"),
        "empty settings": (edit(lambda d: d.update(settings=[])), r"settings: the experiment has no settings"),
        "duplicate method": (edit(lambda d: d["methods"].append({"name": "lora", "ranks": [2]})),
                             r"duplicate method 'lora-r2'"),
        "missing data": (edit(lambda d: d["settings"][1]["data"].update(path="nowhere.jsonl")),
                         r"data\.path: nowhere\.jsonl does not exist"),
        "unknown task": (edit(lambda d: d["settings"][1].update(learning=["code_los"])),
                         r"settings\[code-cpt\].*unknown task 'code_los'"),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_bad_input_fails_before_any_training(case, tmp_path, capsys):
    data, message = _cases()[case]
    exp = tmp_path / "bad.yaml"
    exp.write_text(yaml.safe_dump(data))
    out = tmp_path / "study"
    with pytest.raises(FtlabError, match=message):  # the checks `ftlab run` makes before anything else
        spec = load_experiment(exp)
        plan_runs(spec, out)
        _check_tasks(spec)
    with pytest.raises(FtlabError, match=message):
        run_experiment(exp, out)
    capsys.readouterr()
    assert main(["run", str(exp), "--out", str(out)]) == 2
    assert "ftlab: error:" in capsys.readouterr().err
    assert not out.exists()  # not even the study directory, let alone a run


# ----------------------------------------------------------------------------- 3. CPT branches


@pytest.mark.parametrize("method", ["full", "lora"])
def test_cpt_branch_equals_its_budget_trained_from_scratch(reference, tmp_path, method):
    from ftlab.train import train

    _, out, plans = reference
    branch = out / "runs" / BRANCH[method]
    plan = next(p for p in plans if p.name == BRANCH[method])
    assert plan.branch_of == LONG[method] and plan.branch_step == 5
    # the branch really restarted from the long run's kept state: it logged no step before the restart
    assert (out / "runs" / LONG[method] / "kept" / "step-00000005").is_dir()
    assert min(r["step"] for r in records(branch / "metrics.jsonl") if "loss" in r) == 6

    cfg = from_dict(RunConfig, yaml.safe_load((branch / "config.yaml").read_text()))
    cfg.output.dir = str(tmp_path / "scratch")
    scratch = train(cfg)
    assert min(r["step"] for r in records(scratch / "metrics.jsonl") if "loss" in r) == 1
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(branch / "final" / weights), load_file(scratch / "final" / weights)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ----------------------------------------------------------------------------- 4. end to end


def test_study_end_to_end_and_a_second_run_trains_nothing(reference, capsys):
    exp, out, plans = reference
    assert len(plans) == 6
    store = Store(out / "results.sqlite")
    try:
        runs = store.runs()
        assert set(runs) == {p.name for p in plans} | {"(base)/math-ift", "(base)/code-cpt"}
        assert {n: (r["status"], r["reason"]) for n, r in runs.items()} == {n: ("done", None) for n in runs}
        checkpoints = store.db.execute("SELECT run, name, duration, step, tokens FROM checkpoints").fetchall()
        metrics = store.db.execute("SELECT run, checkpoint, task, value FROM metrics").fetchall()
        spectra = store.db.execute("SELECT run, checkpoint, k90, rows, cols FROM spectra").fetchall()
        analyses = store.db.execute("SELECT run, checkpoint, kind, value FROM analyses").fetchall()
    finally:
        store.close()

    expected = {("(base)/math-ift", "base", 0.0), ("(base)/code-cpt", "base", 0.0)}
    for p in plans:
        names = [f"epochs-{d:g}" for d in p.durations[:-1]] + ["final"]
        expected |= {(p.name, n, d) for n, d in zip(names, p.durations)}
    assert {c[:3] for c in checkpoints} == expected and len(checkpoints) == len(expected)
    steps = {(c[0], c[1]): (c[3], c[4]) for c in checkpoints}
    assert steps[LONG["full"], "final"] == (20, 5120) and steps[BRANCH["lora"], "final"] == (6, 1536)
    assert steps[IFT_FULL, "epochs-0.005"][0] == 2 and steps[IFT_FULL, "final"][0] == 4

    for run, ckpt, _ in expected:
        learning = "math_loss" if run.startswith(("math", "(base)/math")) else "code_loss"
        assert {t for r, c, t, v in metrics if (r, c) == (run, ckpt) and v is not None} == {learning, "source_cloze"}, (
            run, ckpt)
    trained = expected - {e for e in expected if e[0].startswith("(base)")}
    for run, ckpt, _ in trained:
        mine = [s for s in spectra if s[:2] == (run, ckpt)]
        assert len(mine) == MODULES, (run, ckpt)
        if "lora-r2" in run:
            assert all(k90 <= 2 for _, _, k90, _, _ in mine)  # rank(ΔW) <= r
        kl = [json.loads(v) for r, c, kind, v in analyses if (r, c, kind) == (run, ckpt, "kl")]
        assert len(kl) == 1 and kl[0]["kl"] > 0 and kl[0]["texts"] == 2, (run, ckpt)
    assert len(analyses) == len(trained)
    # KL of a full-FT checkpoint analysed after LoRA ones is measured against the plain base (not base + adapter)
    from ftlab.analysis.kl import kl_divergence, target_prompts
    from ftlab.evaluate.targets import Evaluator
    from ftlab.model import prepare_base

    evaluator = Evaluator(prepare_base(plans[0].cfg.model, out / "base"), "cpu")
    tuned = evaluator.load(out / "runs" / LONG["full"] / "final")
    fresh = kl_divergence(evaluator.model, tuned, evaluator.tokenizer, target_prompts("code", 2))["kl"]
    stored = next(json.loads(v)["kl"] for r, c, kind, v in analyses if (r, c, kind) == (LONG["full"], "final", "kl"))
    assert stored == pytest.approx(fresh, rel=1e-6)

    assert "code-cpt/lora-r2/tokens-1536" in (out / "report.html").read_text()
    rows = {r["run"]: r for r in study_status(out)}
    for p in plans:
        assert rows[p.name]["status"] == "done"
        assert rows[p.name]["checkpoints"] == f"{len(p.durations)}/{len(p.durations)}"

    # the same command again: every run is done, nothing trains, evaluates or writes to the store
    logs = sorted(glob.glob(str(out / "runs" / "**" / "metrics.jsonl"), recursive=True))
    assert len(logs) == 6
    before = dump(out, volatile=True), {f: os.stat(f).st_mtime_ns for f in logs}
    capsys.readouterr()
    run_experiment(exp, out)
    printed = capsys.readouterr().out
    assert "[1/6]" not in printed and "trainable" not in printed and "ftlab eval" not in printed
    assert (dump(out, volatile=True), {f: os.stat(f).st_mtime_ns for f in logs}) == before


# ----------------------------------------------------------------------------- 5. kill -9 at any stage


def start(exp: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "ftlab", "run", str(exp), "--out", str(out), "--no-report"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out.parent)


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the study ended (exit {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no kill point within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def checkpoint_files(out: Path, name: str) -> set[str]:
    """<run>/final/NAME and <run>/checkpoints/*/NAME of every run (not the base results copied beside them)."""
    runs = out / "runs" / "**"
    return set(glob.glob(str(runs / "final" / name), recursive=True)) | set(
        glob.glob(str(runs / "checkpoints" / "*" / name), recursive=True))


def test_sigkill_at_every_stage_resumes_to_the_uninterrupted_results(reference, tmp_path):
    exp, ref_out, _ = reference
    out, log = tmp_path / "study", tmp_path / "log.txt"

    # (a) mid-training of the first run (an IFT run with a checkpoint at half its 4 steps)
    first = out / "runs" / IFT_FULL
    proc = start(exp, out, log)
    kill_when(proc, lambda: any("loss" in r for r in records(first / "metrics.jsonl")), log)
    assert not (first / "final").exists()
    assert [(r["run"], r["status"]) for r in study_status(out) if r["status"] != "left"] == [(IFT_FULL, "interrupted")]

    # (a') mid-training of a CPT long run, past the state its branch restarts from (step 5 of 20; step 6 is logged
    # after it is kept)
    long = out / "runs" / LONG["full"]
    proc = start(exp, out, log)
    kill_when(proc, lambda: any(r.get("step", 0) >= 6 for r in records(long / "metrics.jsonl")), log)
    assert (long / "kept" / "step-00000005").is_dir() and not (long / "final").exists()

    # (b) mid-evaluation: the first of the long run's two tasks is in its eval.json, the checkpoint not yet stored
    proc = start(exp, out, log)
    kill_when(proc, lambda: (long / "final" / "eval.json").exists(), log)
    assert (LONG["full"], "final") not in {(r, c) for r, c, *_ in dump(out)["checkpoints"]}

    # (c) mid-analysis: a checkpoint's spectrum is written, its KL not yet
    spectra = checkpoint_files(out, "spectrum.json")
    proc = start(exp, out, log)
    kill_when(proc, lambda: checkpoint_files(out, "spectrum.json") - spectra, log)
    assert len(dump(out)["analyses"]) < len(dump(ref_out)["analyses"])

    proc = start(exp, out, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert {r["status"] for r in study_status(out)} == {"done", "base"}
    resumed, uninterrupted = dump(out), dump(ref_out)
    for table in uninterrupted:  # the rows that differ, if any
        assert sorted(set(resumed[table]) ^ set(uninterrupted[table])) == [], table
    assert resumed == uninterrupted
    # and what the report makes of them: the same study, claims and figures (the study's own directory aside)
    from ftlab.report import write_report

    pages = []
    for study in (out, ref_out):
        write_report(study)
        data = json.loads((study / "report" / "results.json").read_text())
        data["study"].pop("root")
        for row in data["study"]["rows"]:
            row.pop("cost")  # wall time, speed, memory: what training cost this time
        data["figures"] = [f for f in data["figures"] if f["id"] != "cost"]
        pages.append(data)
    assert pages[0]["study"] == pages[1]["study"]
    assert pages[0] == pages[1]


# ----------------------------------------------------------------------------- 6. a failing run


FAILING = """
name: failing
model: {name: tiny, tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 64}}
defaults:
  train: {global_batch: 8, micro_batch: 8, warmup: 1, lr: 1.0e-3}
  data: {regime: ift, seq_len: 32}
settings:
  - {name: short, data: {path: short.jsonl}, durations: [1]}
  - {name: long, data: {path: long.jsonl}, lr: {full: 1.0e+30}, durations: [1]}   # diverges: a non-finite loss
methods: [{name: full}]
forgetting: [source_cloze]
eval: {limit: 2}
analyses: {spectrum: false, kl: false, diversity: []}
"""


def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path, capsys):
    for name, prompt in (("short", "Say hi: "), ("long", "Say hey: ")):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"prompt": f"{prompt}{i}\n", "completion": "hi"}) + "\n" for i in range(12)))
    exp, out = tmp_path / "failing.yaml", tmp_path / "study"
    exp.write_text(FAILING)
    run_experiment(exp, out, report=False)
    runs = store_runs(out)
    status = {name: (r["status"], r["reason"]) for name, r in runs.items()}
    assert status["short/full/epochs-1"] == ("done", None)
    assert status["long/full/epochs-1"][0] == "failed"
    reason = status["long/full/epochs-1"][1]
    assert reason.startswith("TrainingError:") and "non-finite loss" in reason
    assert "TrainingError" in (out / "runs" / "long/full/epochs-1" / "failure.txt").read_text()

    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "long/full/epochs-1" in x)
    assert "failed" in line and "non-finite loss" in line

    # without --retry-failed the failed run is left alone; with it, it is tried again (and fails again)
    run_experiment(exp, out, report=False)
    assert "] long/full/epochs-1" not in capsys.readouterr().out  # no "[2/2] long/..." start line
    assert store_runs(out) == runs
    run_experiment(exp, out, report=False, retry_failed=True)
    assert "[2/2] long/full/epochs-1" in capsys.readouterr().out
    again = store_runs(out)
    assert (again["long/full/epochs-1"]["status"], again["long/full/epochs-1"]["reason"]) == status["long/full/epochs-1"]
    assert again["long/full/epochs-1"]["updated"] > runs["long/full/epochs-1"]["updated"]  # updated: tried again
    assert again["short/full/epochs-1"] == runs["short/full/epochs-1"]


def store_runs(out: Path) -> dict[str, dict]:
    """The study's runs table by name, every column."""
    with Store(out / "results.sqlite") as store:
        return store.runs()



# ----------------------------------------------------------------------------- 7. one runner per study


def test_a_second_runner_and_another_experiment_are_refused(reference, tmp_path, capsys):
    exp, out, _ = reference
    before = dump(out, volatile=True)
    with open(out / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `ftlab run` holds it
        with pytest.raises(FtlabError, match="in use"):
            run_experiment(exp, out)
        assert main(["run", str(exp), "--out", str(out)]) == 2
        assert "in use" in capsys.readouterr().err
        assert {r["status"] for r in study_status(out)} == {"done", "base"}  # status reads while it is held

    other = tmp_path / "other.yaml"
    other.write_text(SMALL.replace("limit: 4", "limit: 3"))
    with pytest.raises(ConfigError, match="another experiment"):
        run_experiment(other, out)
    with pytest.raises(ConfigError, match="another experiment"):
        run_experiment(exp, out, ["eval.limit=3"])
    assert dump(out, volatile=True) == before


# ----------------------------------------------------------------------------- 8. tracking


def test_tensorboard_tracking_writes_the_training_curve(reference, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ftlab.experiment.spec import Tracking
    from ftlab.experiment.tracking import Tracker

    _, out, plans = reference
    plan = next(p for p in plans if p.name == LONG["lora"])
    tracker = Tracker(Tracking(backend="tensorboard"), tmp_path)
    tracker.log_run(plan, Path(plan.cfg.output.dir))
    tracker.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars(f"{plan.name}/loss")]
    expected = [(r["step"], r["loss"]) for r in records(Path(plan.cfg.output.dir) / "metrics.jsonl") if "loss" in r]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_a_tracking_backend_that_is_not_installed_fails_before_the_study_starts(tmp_path, capsys):
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed")
    except ImportError:
        pass
    exp, out = tmp_path / "small.yaml", tmp_path / "study"
    exp.write_text(SMALL)
    with pytest.raises(ConfigError, match=r"tracking\.backend: wandb is not installed"):
        run_experiment(exp, out, ["tracking.backend=wandb"])
    assert main(["run", str(exp), "tracking.backend=wandb", "--out", str(out)]) == 2
    assert "tracking.backend" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- 7. seeds and the LR sweep's pick


def test_seeds_train_every_run_once_per_seed(tmp_path):
    data = yaml.safe_load(SMALL)
    data["seeds"] = [0, 3]
    exp = parse_experiment(data, [], tmp_path, "seeded.yaml")
    plans = plan_runs(exp, tmp_path)
    single = plan_runs(parse_experiment(yaml.safe_load(SMALL), [], tmp_path, "small.yaml"), tmp_path)
    assert len(plans) == 2 * len(single)
    for seed in (0, 3):
        mine = [p for p in plans if p.name.endswith(f"/seed-{seed}")]
        assert sorted(p.name.removesuffix(f"/seed-{seed}") for p in mine) == sorted(p.name for p in single)
        assert all(p.cfg.train.seed == seed and p.cfg.output.dir.endswith(f"seed-{seed}") for p in mine)
        branch = next(p for p in mine if p.branch_of)  # a CPT budget restarts from the same seed's long run
        assert branch.branch_of == f"{LONG[branch.method.split('-')[0]]}/seed-{seed}"
    with pytest.raises(ConfigError, match="seeds"):
        plan_runs(parse_experiment({**data, "seeds": [1, 1]}, [], tmp_path, "x.yaml"), tmp_path)


SWEEP = """
name: sweep
model:
  name: tiny
  tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 2, intermediate_size: 64, max_position: 320}
defaults:
  train: {optimizer: adamw, global_batch: 8, micro_batch: 8, seed: 0, warmup: 1}
  data: {eval_max_examples: 8}
settings:
  - name: math-ift
    data: {regime: ift, path: "builtin:math-ift", seq_len: 320}
    durations: [0.005, 0.01]
    durations_as: checkpoints
    learning: [math_solution]
    lr: {full: sweep, lora: sweep}
methods:
  - {name: full}
  - {name: lora, ranks: [2]}
lr_sweep: {full: [1.0e-4, 3.0e-3], lora: [1.0e-4, 3.0e-2]}
forgetting: [source_cloze]
eval: {limit: 4}
analyses: {spectrum: false, kl: false, diversity: []}
"""


def test_the_grid_trains_at_the_lr_its_sweep_picked(tmp_path, capsys):
    exp, out = tmp_path / "sweep.yaml", tmp_path / "study"
    exp.write_text(SWEEP)
    first = plan_runs(load_experiment(exp), out)
    assert {p.name for p in first if p.waits_for_sweep} == {"math-ift/full/epochs-0.01", "math-ift/lora-r2/epochs-0.01"}
    assert sorted(p.name for p in first if p.group == "lr-sweep") == [
        "math-ift/full/lr0.0001/epochs-0.005", "math-ift/full/lr0.003/epochs-0.005",
        "math-ift/lora-r2/lr0.0001/epochs-0.005", "math-ift/lora-r2/lr0.03/epochs-0.005"]
    run_experiment(exp, out, report=False)
    with Store(out / "results.sqlite") as store:
        study, runs = store.study(), store.runs()
        picks = sweep_picks(store, first)
    swept = {(r.label, r.lr): r.learning for r in study.points() if r.grp == "lr-sweep"}
    for label in ("full", "lora-r2"):  # the LR whose sweep run learned most at 0.005 epochs
        best = max((lr for lbl, lr in swept if lbl == label), key=lambda lr: swept[label, lr])
        assert picks["math-ift", label] == best
        assert runs[f"math-ift/{label}/epochs-0.01"]["lr"] == best
        assert runs[f"math-ift/{label}/epochs-0.01"]["status"] == "done"
    assert {r["status"] for r in study_status(out)} == {"done", "base"}
    # the sweep's runs (trained first) are measured on learning only, the base on every task: it is the reference
    # of the grid's forgetting
    base = study.base_of("math-ift")
    assert base is not None and base.source is not None and base.learning is not None
    assert {k.split("/")[0] for r in study.points() if r.grp == "lr-sweep" for k in r.scores} == {"math_solution"}
    capsys.readouterr()
    run_experiment(exp, out, report=False)  # resumed: the same pick, nothing trains again
    assert "trainable" not in capsys.readouterr().out


def test_sweep_without_a_sweep_is_refused(tmp_path):
    data = yaml.safe_load(SWEEP)
    del data["lr_sweep"]
    with pytest.raises(ConfigError, match='settings\\[math-ift\\].lr.full: "sweep" needs an lr_sweep'):
        plan_runs(parse_experiment(data, [], tmp_path, "x.yaml"), tmp_path)


def test_a_run_that_trains_as_a_finished_one_is_copied_not_trained_again(tmp_path, capsys):
    data = yaml.safe_load(SWEEP)
    data["settings"][0].update(durations=[0.005], durations_as="runs", lr={"full": 3.0e-3})
    data["methods"] = [{"name": "full"}]
    data["lr_sweep"] = {"full": [1.0e-4, 3.0e-3]}
    exp, out = tmp_path / "twin.yaml", tmp_path / "study"
    exp.write_text(yaml.safe_dump(data))
    run_experiment(exp, out, report=False)
    printed = capsys.readouterr().out
    grid, twin = out / "runs" / "math-ift/full/epochs-0.005", out / "runs" / "math-ift/full/lr0.003/epochs-0.005"
    assert printed.count("already complete") == 1 and f"already complete: {twin}" in printed  # a copy: no step
    assert f"{twin.relative_to(out / 'runs')} trains as math-ift/full/epochs-0.005 did: copied from it" in printed
    assert (grid / "metrics.jsonl").read_text() == (twin / "metrics.jsonl").read_text()
    assert torch.equal(load_file(grid / "final" / "model.safetensors")["model.embed_tokens.weight"],
                       load_file(twin / "final" / "model.safetensors")["model.embed_tokens.weight"])
    runs = store_runs(out)
    assert runs["math-ift/full/lr0.003/epochs-0.005"]["grp"] == "lr-sweep"
    assert runs["math-ift/full/lr0.003/epochs-0.005"]["status"] == "done"
