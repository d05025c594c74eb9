"""`jaxlm chat WORKDIR [--system TEXT] [sampling flags]`: a conversation with an instruct model,
one user turn a line of standard input, each reply streamed as it is generated; the oldest turns
give way when the conversation outgrows the model's length. The key/value cache stays from turn
to turn (`jaxlm.decoding.conversation`): a turn runs only its own tokens through the model."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

from jaxlm.cli.generate import (
    Printer,
    add_sampling_flags,
    chat_model,
    sample_settings,
    with_stop_tokens,
)


def _user_turns(interactive: bool) -> Iterator[str]:
    """The non-blank lines of standard input, after a `> ` prompt on a terminal, until its end."""
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def _within(tokenizer, messages: list[dict], max_len: int, room: int) -> list[dict]:
    """`messages` with their oldest turns (after a system prompt) dropped, an exchange at a
    time, until the conversation leaves `room` tokens to reply in within `max_len` (or only its
    last turn is left)."""
    from jaxlm.generate import encode_prompt

    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    while len(turns) > 1 and len(encode_prompt(tokenizer, system + turns)) + room > max_len:
        reply = next((i for i, m in enumerate(turns) if m["role"] == "assistant"), 0)
        turns = turns[reply + 1 :]
        print(f"jaxlm: dropped the oldest turns to fit model.max_len={max_len}", file=sys.stderr)
    return system + turns


def run(args) -> None:
    from jaxlm.decoding.conversation import ConversationCache
    from jaxlm.generate import continuation, stop_ids, without_stop
    from jaxlm.inference import load_for_inference

    sample = sample_settings(args)
    cfg, params, tokenizer = load_for_inference(Path(args.workdir))
    chat_model(cfg, "jaxlm chat")
    sample = with_stop_tokens(sample, args, cfg)
    stops = stop_ids(tokenizer, sample)
    conversation = ConversationCache(cfg.model, params)  # each turn runs only its new tokens
    messages = [] if args.system is None else [{"role": "system", "content": args.system}]
    for turn, text in enumerate(_user_turns(sys.stdin.isatty())):
        messages.append({"role": "user", "content": text})
        messages = _within(tokenizer, messages, cfg.model.max_len, sample.max_new_tokens)
        printer = Printer(tokenizer, messages, stops)
        new = conversation.reply(
            printer.prompt_ids,
            dataclasses.replace(sample, seed=sample.seed + turn),
            eos_id=stops,
            pad_id=tokenizer.pad_id,
            stream=printer,
        )
        print(flush=True)
        reply = continuation(tokenizer, printer.prompt_ids, without_stop(new, stops))
        messages.append({"role": "assistant", "content": reply})


def register(commands) -> None:
    parser = commands.add_parser(
        "chat", help="talk with an instruct model: a user turn a line, replies streamed"
    )
    parser.add_argument(
        "workdir", help="the workdir of a model whose tokenizer has a chat template"
    )
    parser.add_argument("--system", help="the system prompt of the conversation")
    add_sampling_flags(parser)
    parser.set_defaults(run=run)
