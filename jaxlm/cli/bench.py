"""`jaxlm bench CONFIG [section.key=value ...] [--steps N] [--warmup N] [--json PATH]
[--reference torch|none]`."""

from __future__ import annotations


def run(args) -> None:
    import json
    import sys
    from pathlib import Path

    from jaxlm.bench.harness import format_report, run_benchmark
    from jaxlm.config import load_config

    cfg = load_config(args.config, args.overrides)
    report = run_benchmark(
        cfg,
        steps=args.steps,
        warmup=args.warmup,
        reference=args.reference,
        config_name=" ".join([args.config, *args.overrides]),
        log=lambda message: print(f"bench: {message}", file=sys.stderr),
    )
    print(format_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def register(commands) -> None:
    parser = commands.add_parser(
        "bench", help="time the train step: tokens/s, MFU, memory; optionally beside PyTorch"
    )
    parser.add_argument("config", help="a YAML file or a preset name (family gpt)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    parser.add_argument(
        "--reference",
        choices=("torch", "none"),
        default="none",
        help="also train the PyTorch reference GPT (CPU, needs torch); the two take turns",
    )
    parser.set_defaults(run=run)
