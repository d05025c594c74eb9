"""The `jaxlm` command line: a thin layer over the Python API, one module per command.

jaxlm train CONFIG [section.key=value ...]
jaxlm generate WORKDIR [--prompt TEXT | --prompt-file FILE] [--chat] [--temperature T] ...
jaxlm chat WORKDIR [--system TEXT] [--temperature T] ...
jaxlm eval WORKDIR [--files ...]
jaxlm describe MODEL_OR_CONFIG [section.key=value ...] [--params] [--mesh AXIS=SIZE,...]
jaxlm compile CONFIG [section.key=value ...] [--mesh AXIS=SIZE,...] [--topology NAME]
jaxlm checkpoint list DIR | inspect CHECKPOINT | export CHECKPOINT OUT.safetensors
jaxlm tokenizer train --files GLOB... --output PATH.model --vocab-size N | encode MODEL TEXT
jaxlm data tokenize CONFIG_OR_FILES... --output PATH | show CONFIG [section.key=value ...]
jaxlm convert SRC DST --to jaxlm|hf [--step N]
jaxlm bench CONFIG [section.key=value ...] [--steps N] [--json PATH] [--reference torch]

`jaxlm train` exits with code 75 (`PREEMPTED_EXIT_CODE`) after checkpointing on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from jaxlm.cli import (
    bench,
    chat,
    checkpoint,
    compile,
    convert,
    data,
    describe,
    evaluate,
    generate,
    tokenizer,
    train,
)
from jaxlm.errors import JaxlmError
from jaxlm.host_memory import keep_freed_memory_on_cpu

COMMANDS = (
    train,
    generate,
    chat,
    evaluate,
    describe,
    compile,
    checkpoint,
    tokenizer,
    data,
    convert,
    bench,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; `section.key=value` overrides may also follow the flags
    (`jaxlm bench demo --steps 5 model.dtype=bfloat16`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if extra and (overrides != extra or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"jaxlm: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory_on_cpu()  # before anything imports JAX
    from jaxlm.train.preemption import PREEMPTED_EXIT_CODE, Preempted

    warnings.formatwarning = _one_line_warning
    args = parse(argv)
    try:
        args.run(args)
    except Preempted as e:
        print(f"jaxlm: {e}; run the same command again to resume", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except JaxlmError as e:
        print(f"jaxlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of the output stopped early (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
