"""The `ftlab` command.

    ftlab train CONFIG [key=value ...] --out DIR   train one run (resumes if DIR holds a killed run)
    ftlab pretrain CONFIG --out DIR                the embedded default's base model, reproducibly
    ftlab eval MODEL_OR_RUN --tasks ...            evaluate a model, an adapter, or every checkpoint of a run
    ftlab demo [--out DIR]                         full FT and LoRA side by side on the tiny example
"""

from __future__ import annotations

import argparse
import sys

from ftlab.errors import FtlabError, TrainingError


def _train(args: argparse.Namespace) -> int:
    from ftlab.config import load_config
    from ftlab.train import train

    cfg = load_config(args.config, args.overrides, out=args.out)
    run = train(cfg)
    print(f"ftlab: done; run directory {run}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ftlab.evaluate.checkpoints import evaluate_target

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    written = evaluate_target(args.target, tasks, data_dir=args.data_dir, base=args.base, device=args.device,
                              batch_size=args.batch_size, limit=args.limit)
    print("ftlab eval: results in " + ", ".join(str(d / "eval.json") for d in written))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from ftlab.pretrain import pretrain

    pretrain(args.config, args.overrides, args.out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ftlab.demo import run_demo

    run_demo(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftlab", description="LoRA versus full finetuning, side by side.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a YAML config plus dotted overrides")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. method.rank=64 train.lr=2e-4")
    p.add_argument("--out", required=True, help="run directory (created; a killed run there resumes)")
    p.set_defaults(func=_train)

    p = sub.add_parser("pretrain", help="make the embedded default's base model: tokenizer + tiny Llama")
    p.add_argument("config", help="YAML config, e.g. configs/base-tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.add_argument("--out", required=True, help="output directory (tokenizer/, run/, model/)")
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
    p.set_defaults(func=_eval)

    p = sub.add_parser("demo", help="full FT and LoRA side by side on the tiny example, with a summary")
    p.add_argument("--out", default="demo-out", help="where the runs go (default: demo-out)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after --out land here
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        return args.func(args)
    except FtlabError as e:
        print(f"ftlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingError as e:
        print(f"ftlab: training stopped: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ftlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
