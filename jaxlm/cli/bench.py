"""`jaxlm bench CONFIG [section.key=value ...] [--steps N] [--warmup N] [--json PATH]
[--reference torch|none]`: training speed; with `--decode [--batch-sizes 1,8] [--prompt-len N]
[--new-tokens N] [--repeats N]`, greedy decoding latency instead."""

from __future__ import annotations

import argparse
import sys


def batch_sizes(text: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64]; an argparse type, so a bad list is a one-line usage error."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list like 1,8,64")
    return sizes


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr)


def run(args) -> None:
    """The benchmark, its compile times cold even where JAX_COMPILATION_CACHE_DIR names a
    persistent cache: the cache is off while it runs, and as it was afterwards (the resets make
    JAX look at the setting again, should the process have compiled before)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    cache_enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        _benchmark(args)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_enabled)
        compilation_cache.reset_cache()


def _benchmark(args) -> None:
    import json
    from pathlib import Path

    from jaxlm.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.decode:
        from jaxlm.bench.decode import decode_benchmark, format_decode_report

        report = decode_benchmark(
            cfg.model,
            args.batch_sizes,
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            seed=cfg.train.seed,
            log=log,
        )
        print(format_decode_report(report))
    else:
        from jaxlm.bench.harness import run_benchmark
        from jaxlm.bench.report_text import format_report

        report = run_benchmark(
            cfg,
            steps=args.steps,
            warmup=args.warmup,
            reference=args.reference,
            config_name=" ".join([args.config, *args.overrides]),
            profile=args.profile or "",
            log=log,
        )
        print(format_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def register(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="time the train step (tokens/s, MFU, memory; optionally beside PyTorch) or decoding",
    )
    parser.add_argument("config", help="a YAML file or a preset name (family gpt)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="afterwards, trace 3 more jaxlm train steps with the JAX profiler into DIR "
        "(TensorBoard's profile plugin or Perfetto reads it)",
    )
    parser.add_argument(
        "--reference",
        choices=("torch", "none"),
        default="none",
        help="also train the PyTorch reference GPT (CPU, needs torch); the two take turns",
    )
    decode = parser.add_argument_group("decoding latency (--decode)")
    decode.add_argument(
        "--decode", action="store_true", help="time greedy decoding instead of training"
    )
    decode.add_argument("--batch-sizes", type=batch_sizes, default=[1], help="e.g. 1,8,64")
    decode.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per row")
    decode.add_argument("--new-tokens", type=int, default=64, help="N of (T_N - T_1) / (N - 1)")
    decode.add_argument("--repeats", type=int, default=5, help="timed calls; medians are kept")
    parser.set_defaults(run=run)
