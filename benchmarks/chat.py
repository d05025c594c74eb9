"""A conversation's turns on the CPU: `ConversationCache.reply`, which runs only each turn's new
tokens, against `jaxlm.generate.generate` over the whole conversation.

    python benchmarks/chat.py [--config gpt2-small] [--max-len 1024] [--first 600] [--turns 6]
        [--turn-tokens 40] [--new-tokens 16] [--write]

Model: the config's GPT with random-init float32 weights and `model.max_len` set to --max-len.
The conversation starts as --first random tokens; each turn the model answers greedily with
--new-tokens tokens and the reply and --turn-tokens more random tokens (the next user turn) join
it. Per turn: the seconds `reply` takes (its first turn compiles its programs), and those of
`generate` on the same conversation called twice, the first call compiling whenever the prompt
enters a new bucket of lengths (`jaxlm.generate.bucket_length`), the second compiled. Both give
the same tokens (checked). --write saves the table to benchmarks/CHAT.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm.bench.harness import cpu_model  # noqa: E402
from jaxlm.config import SampleConfig, load_config  # noqa: E402
from jaxlm.decoding.conversation import ConversationCache  # noqa: E402
from jaxlm.generate import generate  # noqa: E402
from jaxlm.models import init_params  # noqa: E402

REPORT = Path(__file__).resolve().parent / "CHAT.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="gpt2-small")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--first", type=int, default=600, help="tokens of the first turn")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--turn-tokens", type=int, default=40, help="tokens of each later turn")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens of each reply")
    parser.add_argument("--write", action="store_true", help=f"save to {REPORT.name}")
    return parser.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    lengths = [f"model.max_len={args.max_len}", f"data.seq_len={args.max_len}"]
    cfg = load_config(args.config, lengths).model
    needed = args.first + args.turns * (args.new_tokens + args.turn_tokens)
    if needed > cfg.max_len:
        sys.exit(f"the conversation reaches {needed} tokens, past --max-len={cfg.max_len}")
    params = jax.jit(lambda key: nn.unbox(init_params(cfg, key)))(jax.random.key(0))
    greedy = SampleConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    rng = np.random.default_rng(0)
    conversation = rng.integers(0, cfg.vocab_size, args.first).tolist()
    chat, rows = ConversationCache(cfg, params), []
    for turn in range(args.turns):
        print(f"turn {turn + 1}: {len(conversation)} tokens ...", file=sys.stderr, flush=True)
        reply, cached_s = timed(lambda c=conversation: chat.reply(c, greedy, eos_id=-1))
        run = lambda c=conversation: generate(cfg, params, [c], greedy, eos_id=-1)[0]  # noqa: E731
        first, first_s = timed(run)
        again, again_s = timed(run)
        if not reply == first == again:
            sys.exit(f"turn {turn + 1}: the replies differ")
        rows.append(
            dict(
                tokens=len(conversation),
                reused=chat.reused,
                cached=cached_s,
                first=first_s,
                again=again_s,
            )
        )
        conversation += reply + rng.integers(0, cfg.vocab_size, args.turn_tokens).tolist()
    table = format_table(rows)
    print(table)
    if args.write:
        write_report(args, cfg, table, argv)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| turn | conversation tokens | reused from the cache | `reply` s "
        "| `generate` s, first call | `generate` s, again |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for turn, row in enumerate(rows, 1):
        lines.append(
            f"| {turn} | {row['tokens']} | {row['reused']} | {row['cached']:.2f} | "
            f"{row['first']:.2f} | {row['again']:.2f} |"
        )
    return "\n".join(lines)


def write_report(args, cfg, table: str, argv) -> None:
    command = "python benchmarks/chat.py " + " ".join(argv or sys.argv[1:])
    info = [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"python {platform.python_version()}, jax {jax.__version__}",
        f"model: `{args.config}` ({cfg.num_layers} layers, embed {cfg.embed_dim}, "
        f"{cfg.num_heads} heads, vocab {cfg.vocab_size}), max_len {cfg.max_len}, float32, greedy "
        f"replies of {args.new_tokens} tokens; turns of {args.turn_tokens} tokens after a first "
        f"of {args.first}",
    ]
    body = ["# A conversation's turns on the CPU: the conversation cache vs generate", ""]
    body += [f"- {line}" for line in info] + ["", f"`{command.strip()}`", "", table, ""]
    REPORT.write_text("\n".join(body))
    print(f"wrote {REPORT}", file=sys.stderr)


if __name__ == "__main__":
    main()
