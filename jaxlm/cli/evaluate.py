"""`jaxlm eval WORKDIR [--files ...] [--batches N] [--output FILE]`."""

from __future__ import annotations

import json
from pathlib import Path

from jaxlm.cli.flags import at_least


def run(args) -> None:
    from jaxlm.inference import evaluate_workdir

    metrics = evaluate_workdir(Path(args.workdir), args.files, args.batches)
    text = json.dumps(metrics, indent=2)
    print(text)
    output = Path(args.output) if args.output else Path(args.workdir) / "eval.json"
    output.write_text(text + "\n")


def register(commands) -> None:
    parser = commands.add_parser("eval", help="evaluate a trained model's latest checkpoint")
    parser.add_argument("workdir", help="the training workdir (config, tokenizer, checkpoints)")
    parser.add_argument(
        "--files", nargs="+", help="text files or globs (default: the run's held-out split)"
    )
    parser.add_argument("--batches", type=at_least(0), default=0, help="0 = the whole dataset")
    parser.add_argument("--output", help="metrics JSON (default: WORKDIR/eval.json)")
    parser.set_defaults(run=run)
