"""`jaxlm eval WORKDIR [--files ...] [--batches N] [--output FILE]`; BLEU and chrF for
translation runs (`--num-beams N`, `--no-bleu`, `--translations FILE`)."""

from __future__ import annotations

import json
from pathlib import Path

from jaxlm.cli.flags import at_least


def run(args) -> None:
    from jaxlm.inference import evaluate_workdir

    output = Path(args.output) if args.output else Path(args.workdir) / "eval.json"
    translations = Path(args.translations) if args.translations else None
    for path in (args.output, args.translations):  # their folders before the evaluation
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_workdir(
        Path(args.workdir),
        args.files,
        args.batches,
        bleu=args.bleu,
        num_beams=args.num_beams,
        translations=translations,
    )
    text = json.dumps(metrics, indent=2)
    print(text)
    output.write_text(text + "\n")


def register(commands) -> None:
    parser = commands.add_parser("eval", help="evaluate a trained model's latest checkpoint")
    parser.add_argument("workdir", help="the training workdir (config, tokenizer, checkpoints)")
    parser.add_argument(
        "--files",
        nargs="+",
        help="files or globs: text for runs on documents (causal or masked LM, span "
        "corruption), JSONL pairs for seq2seq and completion runs, conversations for chat runs "
        "(default: the run's held-out split)",
    )
    parser.add_argument("--batches", type=at_least(0), default=0, help="0 = the whole dataset")
    parser.add_argument("--output", help="metrics JSON (default: WORKDIR/eval.json)")
    bleu = parser.add_argument_group(
        "encoder-decoder runs: BLEU and chrF of the held-out translations"
    )
    bleu.add_argument(
        "--no-bleu", dest="bleu", action="store_false", help="skip translating the held-out split"
    )
    bleu.add_argument(
        "--num-beams", type=at_least(1), default=1, help="beam search width (default 1: greedy)"
    )
    bleu.add_argument("--translations", help="also write source, reference, translation as JSONL")
    parser.set_defaults(run=run)
