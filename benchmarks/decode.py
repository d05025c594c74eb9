"""Greedy decoding speed on the CPU: `jaxlm.generate.generate` against the PyTorch reference.

    pip install -e '.[reference]'
    taskset -c 0,1 python benchmarks/decode.py --threads 2 [--batch-sizes 1,8,64]
        [--prompt-len 32] [--new-tokens 64] [--repeats 5] [--config demo] [--write]

Model: the config's GPT (default: the `demo` preset) with random-init float32 weights, the same
weights in both frameworks (benchmarks/torch_gpt.py, KV cache), the same random prompts.

Method: per batch size and framework, one warm-up call generating N = --new-tokens tokens and
one generating 1 token, then --repeats timed calls of each (alternating); T_N and T_1 are the
medians. A call of 1 token is the prefill plus per-call overhead, so the per-token decode
latency is (T_N - T_1) / (N - 1) and tokens/s = batch / latency. jaxlm is called only through
its public `generate`, so this works whatever its implementation (full recompute or KV cache);
the time JAX reports for tracing, lowering and XLA compilation (jax.monitoring compile events)
is that of the warm-up calls, and is subtracted from any timed call that compiles again.

Threads: torch gets --threads intra-op threads (torch.set_num_threads). XLA's CPU backend has no
reliable thread-count knob and uses every core the process may run on, so pin the process to
exactly --threads cores with `taskset`; the script warns when its CPU affinity differs. JAX runs
on the CPU (JAX_PLATFORMS=cpu unless already set). Run on an otherwise idle machine: with other
processes on its cores, multi-threaded torch (OpenMP) slows down tenfold or more.

--write saves the table and the machine's description to benchmarks/DECODE.md, as the section of
the config (replacing that config's earlier section, keeping the others).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_gpt  # noqa: E402

from jaxlm.bench.decode import CompileClock, greedy_decoder, measure  # noqa: E402
from jaxlm.bench.harness import cpu_model  # noqa: E402
from jaxlm.config import load_config  # noqa: E402
from jaxlm.models import init_params  # noqa: E402

REPORT = Path(__file__).resolve().parent / "DECODE.md"
TITLE = "# Greedy decoding on the CPU: jaxlm vs a PyTorch reference"


def machine_info(threads: int) -> list[str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, process affinity {affinity} cores",
        f"threads: torch {threads} (set_num_threads), XLA all cores of the affinity",
        f"python {platform.python_version()}, jax {jax.__version__}, "
        f"jaxlib {jaxlib.__version__}, torch {torch.__version__}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,8,64", help="comma-separated")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls; the median is kept")
    parser.add_argument("--config", default="demo", help="preset name or YAML path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help=f"save to {REPORT.name}")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2")
    return args


def format_table(rows: list[tuple[int, dict[str, dict[str, float]]]]) -> str:
    lines = [
        "| batch | jaxlm ms/token | torch ms/token | jaxlm/torch | jaxlm tokens/s "
        "| torch tokens/s | jaxlm T_1 ms | torch T_1 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch, r in rows:
        jl, tl = r["jaxlm"]["latency_s"], r["torch"]["latency_s"]
        lines.append(
            f"| {batch} | {1e3 * jl:.2f} | {1e3 * tl:.2f} | {jl / tl:.2f} | {batch / jl:,.0f} "
            f"| {batch / tl:,.0f} | {1e3 * r['jaxlm']['first_token_s']:.1f} "
            f"| {1e3 * r['torch']['first_token_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config).model
    if args.prompt_len + args.new_tokens > cfg.max_len:
        sys.exit(f"--prompt-len + --new-tokens exceeds the model's max_len={cfg.max_len}")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if affinity != args.threads:
        print(
            f"warning: XLA uses all {affinity} cores this process may run on, torch uses "
            f"{args.threads}: run under `taskset -c 0-{args.threads - 1}`",
            file=sys.stderr,
        )
    torch.set_num_threads(args.threads)

    params = jax.jit(lambda key: nn.unbox(init_params(cfg, key)))(jax.random.key(args.seed))
    model = torch_gpt.TorchGPT(torch_gpt.GPTConfig.from_model_config(cfg)).eval()
    torch_gpt.load_jaxlm_params(model, jax.tree.map(np.asarray, params))
    clock = CompileClock()
    rng = np.random.default_rng(args.seed)

    rows = []
    for batch in args.batch_sizes:
        prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len))
        prompt_list, prompt_tensor = prompts.tolist(), torch.from_numpy(prompts)

        def run_torch(n: int, prompt_tensor=prompt_tensor) -> torch.Tensor:
            return torch_gpt.generate(model, prompt_tensor, n)

        results = {}
        for name, run in (
            ("jaxlm", greedy_decoder(cfg, params, prompt_list)),
            ("torch", run_torch),
        ):
            print(f"batch {batch}: {name} ...", file=sys.stderr, flush=True)
            results[name] = measure(run, args.new_tokens, args.repeats, clock)
        rows.append((batch, results))

    table = format_table(rows)
    settings = (
        f"model: `{args.config}` config ({cfg.num_layers} layers, embed {cfg.embed_dim}, "
        f"{cfg.num_heads} heads, vocab {cfg.vocab_size}), float32, greedy; prompt "
        f"{args.prompt_len} tokens, {args.new_tokens} new tokens, median of {args.repeats}"
    )
    compile_note = ", ".join(f"batch {batch}: {r['jaxlm']['compile_s']:.2f} s" for batch, r in rows)
    notes = [
        settings,
        "ms/token: (T_N - T_1) / (N - 1), prefill and compilation excluded (method in "
        "benchmarks/decode.py); tokens/s = batch / latency; ratio > 1: jaxlm is slower; "
        "T_1: a call generating 1 token (prefill and per-call overhead)",
        f"jaxlm tracing and compilation in the first `generate` calls, excluded: {compile_note}",
    ]
    print(table)
    print("\n".join(notes))
    if args.write:
        command = "python benchmarks/decode.py " + " ".join(argv or sys.argv[1:])
        lines = [""] + [f"- {line}" for line in machine_info(args.threads) + notes]
        lines += ["", f"`{command.strip()}`", "", table, ""]
        write_section(REPORT, f"`{args.config}`", "\n".join(lines))
        print(f"wrote {REPORT}", file=sys.stderr)


def write_section(report: Path, heading: str, body: str) -> None:
    """Put `body` under `## heading` in `report`: in place of that heading's section, or last."""
    text = report.read_text() if report.exists() else f"{TITLE}\n"
    head, *parts = text.split("\n## ")
    sections = dict(part.split("\n", 1) for part in parts)  # heading -> body, in order
    sections[heading] = body
    parts = [f"{name}\n{text}" for name, text in sections.items()]
    report.write_text("\n## ".join([head.rstrip("\n") + "\n", *parts]))


if __name__ == "__main__":
    main()
