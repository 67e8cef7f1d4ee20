"""The `ftlab` command.

    ftlab train CONFIG [key=value ...] --out DIR   train one run (resumes if DIR holds a killed run)
    ftlab pretrain CONFIG --out DIR                the embedded default's base model, reproducibly
    ftlab eval MODEL_OR_RUN --tasks ...            evaluate a model, an adapter, or every checkpoint of a run
    ftlab report STUDY [--out FILE] [--forgetting-budget X]   an HTML report on every run below STUDY, CSV/JSON
    ftlab spectrum [BASE] FINETUNED --out FILE     the spectrum of ΔW per layer and module (model, adapter or run)
    ftlab merge-check RUN_OR_ADAPTER [--tasks ...] each LoRA checkpoint merged (fp32, bf16) against its adapter
    ftlab run EXP.yaml [key=value ...] --out DIR   a whole study: grid, train, evaluate, analyse, report
    ftlab plan EXP_OR_CONFIG [key=value ...] [--gpu h100] [--nproc N]   inputs checked; memory, steps, GPU-hours
    ftlab status DIR                               what a study has done, is running, failed and has left
    ftlab demo [--full] [--out DIR]                the whole study on the embedded default, ending in the report

The entry point: the only place that sets process-wide state (process_settings). Each command imports the modules
it needs when it runs, so one command does not pay for another's dependencies.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ftlab.errors import DiskFull, FtlabError, TrainingError
from ftlab.io import check_writable, disk_full, no_space, remove_unfinished


def _launch(args: argparse.Namespace) -> int:
    """ftlab train --nproc N: the same command under torchrun (one machine, N processes)."""
    import subprocess

    from ftlab.distributed import launch_command

    command = launch_command(args.nproc, args.config, args.overrides, args.out)
    print(f"ftlab: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command)


def _train(args: argparse.Namespace) -> int:
    from ftlab.config import load_config
    from ftlab.train import train

    cfg = load_config(args.config, args.overrides, out=args.out)  # a bad config stops here, before any launch
    if args.nproc > 1:
        from ftlab.distributed import check_supported
        from ftlab.plan.fit import check_run

        check_supported(cfg)
        check_run(cfg, args.nproc)  # inputs and memory, before torchrun starts the processes
        return _launch(args)
    run = train(cfg)
    print(f"ftlab: done; {closing_line(run)}; run directory {run}")
    return 0


def closing_line(run) -> str:
    """Where a run ended, from its metrics log: steps, tokens, the last logged training loss and the held-out loss
    against the base's (step 0)."""
    from ftlab.rundir import read_metrics

    records = read_metrics(run)
    trained = [r for r in records if "loss" in r]
    held = [r for r in records if r.get("eval_loss") is not None]
    if not trained:
        return "no step logged"
    last = trained[-1]
    line = f"{last['step']:,} steps, {last['tokens']:,} tokens, training loss {last['loss']:.4f}"
    if held and held[-1]["step"] > 0:
        base = f" (base {held[0]['eval_loss']:.4f})" if held[0]["step"] == 0 else ""
        line += f", held-out loss {held[-1]['eval_loss']:.4f}{base}"
    return line


def _eval(args: argparse.Namespace) -> int:
    from ftlab.evaluate.targets import evaluate_target
    from ftlab.rundir import CheckpointFiles

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    written = evaluate_target(args.target, tasks, data_dir=args.data_dir, base=args.base, device=args.device,
                              batch_size=args.batch_size, limit=args.limit, isolation=args.isolation,
                              engine=args.engine, vllm_memory=args.vllm_memory)
    print("ftlab eval: results in " + ", ".join(str(CheckpointFiles(d).eval) for d in written))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from ftlab.pretrain import pretrain

    pretrain(args.config, args.overrides, args.out)
    return 0


def _report(args: argparse.Namespace) -> int:
    from ftlab.report import write_report

    page = write_report(args.study, args.out, args.forgetting_budget)
    print(f"ftlab report: {page} (numbers in {page.with_suffix('')}/)")
    return 0


def _spectrum(args: argparse.Namespace) -> int:
    from ftlab.analysis.spectrum import spectrum_target

    if len(args.paths) > 2:
        raise FtlabError(f"spectrum takes [BASE] FINETUNED, not {len(args.paths)} paths: {' '.join(args.paths)}")
    base, finetuned = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    spectrum_target(finetuned, base, out=args.out, top_k=args.top_k, epsilon=args.epsilon, method=args.method,
                    singular_values=args.singular_values, device=args.device)
    print(f"ftlab spectrum: written {args.out}")
    return 0


def _merge_check(args: argparse.Namespace) -> int:
    from ftlab.analysis.merge import Options, merge_check_target

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    written = merge_check_target(args.target, tasks, base=args.base, limit=args.limit,
                                 options=Options(args.data_dir, args.device, args.batch_size))
    print("ftlab merge-check: results in " + ", ".join(map(str, written)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ftlab.demo import run_demo

    run_demo(args.out, full=args.full)
    return 0


def _run(args: argparse.Namespace) -> int:
    from ftlab.experiment.study import failed_runs, run_experiment

    ray = None
    if args.backend == "ray":
        from ftlab.experiment.ray_backend import RayOptions

        ray = RayOptions(address=args.ray_address, gpus_per_run=args.gpus_per_run)
    elif args.ray_address is not None or args.gpus_per_run is not None:
        raise FtlabError("--ray-address and --gpus-per-run go with --backend ray")
    root = run_experiment(args.experiment, args.out, args.overrides, report=not args.no_report,
                          retry_failed=args.retry_failed, ray=ray, nproc=args.nproc)
    if not args.no_report:
        from ftlab.report.page import print_answer

        print_answer(root)
    failed = failed_runs(root)
    if failed:
        print(f"ftlab run: {len(failed)} run(s) failed:", file=sys.stderr)
        for name, reason in failed.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _plan(args: argparse.Namespace) -> int:
    from ftlab.plan.study import plan_command

    return plan_command(args.target, args.overrides, args.gpu, args.nproc)


def _status(args: argparse.Namespace) -> int:
    from ftlab.experiment.status import print_status

    return print_status(args.out)


def build_parser() -> argparse.ArgumentParser:
    from ftlab import __version__

    parser = argparse.ArgumentParser(prog="ftlab", description="LoRA versus full finetuning, side by side.")
    parser.add_argument("--version", action="version", version=f"ftlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a YAML config plus dotted overrides")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. method.rank=64 train.lr=2e-4")
    p.add_argument("--out", required=True, help="run directory (created; a killed run there resumes)")
    p.set_defaults(out_kind="dir")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this machine: FSDP through torchrun")
    p.set_defaults(func=_train)

    p = sub.add_parser("pretrain", help="make the embedded default's base model: tokenizer + tiny Llama")
    p.add_argument("config", help="YAML config, e.g. configs/base-tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.add_argument("--out", required=True, help="output directory (tokenizer/, run/, model/)")
    p.set_defaults(out_kind="dir")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("eval", help="evaluate a model, an adapter, or every checkpoint of a run")
    p.add_argument("target", help="model directory, adapter directory, or run directory")
    p.add_argument("--tasks", default="builtin", help="comma-separated tasks or suites (builtin, paper, "
                   "paper-forgetting, gsm8k, hellaswag, ..., lm_eval:<task>)")
    p.add_argument("--data-dir", help="folder holding the paper suite's original files (see README)")
    p.add_argument("--base", help="base model for an adapter (default: the one its adapter_config names)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="evaluate the first N documents of each task (a quick look)")
    p.add_argument("--isolation", choices=["auto", "os", "bwrap"], default="auto", help="what generated code "
                   "(humaneval) runs under: auto = the strongest that works here (bubblewrap, else unshare, else "
                   "the Python-level guard alone); os = refuse unless bubblewrap or unshare works; bwrap = refuse "
                   "unless bubblewrap works. Checked before any model is loaded")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="what the generation tasks (gsm8k, "
                   "humaneval, sampled math) sample on: hf = ftlab's own sampler on the transformers model; vllm = a "
                   "vLLM engine (pip install 'ftlab[vllm]'; LoRA checkpoints as LoRA requests on one engine per "
                   "base). Log-likelihood tasks run on transformers either way")
    p.add_argument("--vllm-memory", type=float, default=0.5, metavar="SHARE", help="with --engine vllm on a GPU: "
                   "the share of its memory the vLLM engine takes (the transformers model holds part of the rest)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("report", help="one self-contained HTML report on a study directory, with CSV/JSON")
    p.add_argument("study", help="study directory: run directories are found below it")
    p.add_argument("--out", help="the HTML file (default: STUDY/report.html; data in STUDY/report/)")
    p.set_defaults(out_kind="file")
    p.add_argument("--forgetting-budget", type=float, metavar="X",
                   help="the forgetting you allow: the source-loss rise over the base (nats/token) where the study "
                        "measured it, else the source-score drop; the report says which configuration learns most "
                        "within it")
    p.set_defaults(func=_report, loads_models=False)

    p = sub.add_parser("spectrum", help="the singular-value spectrum of ΔW = W_ft - W_base per layer and module",
                       usage="ftlab spectrum [BASE] FINETUNED --out FILE [options]")
    p.add_argument("paths", nargs="+", metavar="PATH", help="[BASE] FINETUNED: FINETUNED is a run, adapter or "
                   "model directory; BASE (a model directory) may be left out for a run or an adapter")
    p.add_argument("--out", required=True, help="the JSON file (a run also gets <checkpoint>/spectrum.json)")
    p.set_defaults(out_kind="file")
    p.add_argument("--singular-values", action="append", default=[], metavar="NAME_GLOB",
                   help="also store every singular value of matching weights (repeatable)")
    p.add_argument("--top-k", type=int, default=10, help="intruder dimensions among the top k (0: skip them)")
    p.add_argument("--epsilon", type=float, default=0.5, help="intruder threshold on max |cos|")
    p.add_argument("--method", default="auto", choices=["auto", "svd", "gram"], help="singular values of ΔW")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_spectrum)

    p = sub.add_parser("merge-check", help="each LoRA checkpoint merged into its base (fp32, bf16) against the "
                       "adapter: largest logit difference, each task's score change with its 95% interval")
    p.add_argument("target", help="a run directory (its LoRA checkpoints) or an adapter directory")
    p.add_argument("--tasks", help="comma-separated tasks or suites (default: those the checkpoint was evaluated on)")
    p.add_argument("--data-dir", help="folder holding the paper suite's original files (see README)")
    p.add_argument("--base", help="base model for an adapter (default: the one it names)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="the first N documents of each task")
    p.set_defaults(func=_merge_check)

    p = sub.add_parser("run", help="a whole study from an experiment file: train, evaluate, analyse, report")
    p.add_argument("experiment", help="experiment YAML (e.g. configs/demo.yaml, configs/paper/math-ift.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. settings.0.durations=[1,2]")
    p.add_argument("--out", required=True, help="study directory (created; the same command resumes it)")
    p.set_defaults(out_kind="dir")
    p.add_argument("--no-report", action="store_true", help="skip writing report.html at the end")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) each run trains on, sharded with FSDP "
                   "(local backend; the runs still go one after another)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where the runs train: local (one "
                   "after another, here) or ray (in parallel on a Ray cluster; pip install 'ftlab[ray]')")
    p.add_argument("--ray-address", help="the Ray cluster (ray.init address: host:port, ray://host:10001, auto); "
                   "default: RAY_ADDRESS, else a cluster started on this machine, else a new local one")
    p.add_argument("--gpus-per-run", type=float, help="GPUs each run asks Ray for, 0 to 1 (default: 1 when the "
                   "cluster has a GPU, else 0)")
    p.set_defaults(func=_run)

    p = sub.add_parser("plan", help="check every input and predict each run's memory, steps, tokens and "
                       "GPU-hours, before any training")
    p.add_argument("target", metavar="EXPERIMENT_OR_CONFIG", help="an experiment file (ftlab run's) or a run "
                   "config (ftlab train's)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as ftlab run or ftlab train takes them")
    p.add_argument("--gpu", help="the GPU each process has: h100, h200, a100, l40s or a memory size in GiB "
                   "(default: the experiment's gpus, else this machine's)")
    p.add_argument("--nproc", type=int, help="processes (GPUs) each run is sharded over with FSDP (default: the "
                   "experiment's gpus.per_run, else 1)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("status", help="what a study has done, is doing (and its ETA), has failed and has left; or a "
                       "training run's progress")
    p.add_argument("out", help="study directory, or a run directory (ftlab train --out)")
    p.set_defaults(func=_status, loads_models=False)  # reads the store: no torch, well under a second

    p = sub.add_parser("demo", help="the whole study on the embedded default (CPU, no network): summary + report")
    p.add_argument("--out", default="demo-out", help="the study directory (default: demo-out; a rerun resumes)")
    p.set_defaults(out_kind="dir")
    p.add_argument("--full", action="store_true", help="all four settings (code/math x IFT/CPT), not two")
    p.set_defaults(func=_demo)
    return parser


def process_settings() -> None:
    """What the `ftlab` process sets for itself: this is the one place (importing ftlab changes nothing global).
    The libraries' own progress bars and a warning off (progress.quiet_libraries); under torchrun, only rank 0's
    stdout is shown (progress and messages once; errors, on stderr, from every rank)."""
    from ftlab.distributed import launched
    from ftlab.progress import quiet_libraries

    quiet_libraries()
    # bitsandbytes (where installed, PEFT imports it) says on every import that its CPU backend found no hub kernel
    # for AVX512-BF16 inference; ftlab's 4-bit layers do not use that path (ftlab.model). vLLM's INFO lines (engine
    # configuration) are for its own server; its warnings stay.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if launched() and os.environ["RANK"] != "0":
        sys.stdout = open(os.devnull, "w")
    signal.signal(signal.SIGTERM, _terminated)  # `kill`, a scheduler's stop: as Ctrl-C, the run resumable


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after --out land here
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    if getattr(args, "loads_models", True):
        process_settings()
    try:
        if getattr(args, "out_kind", None) and args.out is not None:  # before anything is read or written
            check_writable(args.out, directory=args.out_kind == "dir")
        return args.func(args)
    except FtlabError as e:
        print(f"ftlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingError as e:
        print(f"ftlab: training stopped: {e}", file=sys.stderr)
        return e.exit_code
    except DiskFull as e:
        print(f"ftlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        remove_unfinished()
        print("ftlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ftlab status DIR | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except Exception as e:  # a full disk met outside ftlab's own writes (safetensors, a tokenizer's files)
        if not no_space(e):
            raise
        print(f"ftlab: error: {disk_full(e)}", file=sys.stderr)
        return 2
