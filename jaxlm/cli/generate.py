"""`jaxlm generate WORKDIR [--prompt TEXT | --prompt-file FILE] [--chat [--system TEXT]]
[strategy flags]`."""

from __future__ import annotations

import sys
from pathlib import Path

from jaxlm.errors import JaxlmError


def _read_prompts(args) -> list[str]:
    if args.prompt:
        return args.prompt
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise JaxlmError(f"prompt file not found: {path}")
        prompts = [line for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise JaxlmError(f"no prompts in {path} (one a line)")
        return prompts
    if sys.stdin.isatty():
        print("jaxlm: reading the prompt from standard input; end it with Ctrl-D", file=sys.stderr)
    return [sys.stdin.read()]


def conversation(prompt: str, system: str | None) -> list[dict[str, str]]:
    """One user turn, after the system prompt when there is one."""
    turns = [{"role": "system", "content": system}] if system is not None else []
    return [*turns, {"role": "user", "content": prompt}]


class Printer:
    """Prints a single generation as its tokens arrive from the device loop, after the prompt
    when it is a text (a conversation's reply is printed alone)."""

    def __init__(self, tokenizer, prompt, stops: tuple[int, ...]):
        from jaxlm.generate import encode_prompt

        self.tokenizer, self.printed = tokenizer, ""
        self.prompt = prompt if isinstance(prompt, str) else ""
        self.hidden = {*stops, tokenizer.pad_id}  # ends of rows, and the padding after them
        self.prompt_ids = encode_prompt(tokenizer, prompt)
        self.ids = []

    def __call__(self, step, tokens) -> None:
        from jaxlm.generate import continuation

        if step == 0:
            print(self.prompt, end="", flush=True)
        token = int(tokens[0])
        if token in self.hidden:
            return
        self.ids.append(token)
        text = continuation(self.tokenizer, self.prompt_ids, self.ids)
        print(text[len(self.printed) :], end="", flush=True)
        self.printed = text


def sample_settings(args):
    """The decoding flags as a `SampleConfig`, checked (stop tokens: see `with_stop_tokens`)."""
    from jaxlm.config import SampleConfig, validate_sample

    sample = SampleConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        num_beams=getattr(args, "num_beams", 1),
        length_penalty=getattr(args, "length_penalty", 1.0),
        seed=args.seed,
    )
    validate_sample(sample, name=lambda field: "--" + field.replace("_", "-"))
    return sample


def with_stop_tokens(sample, args, cfg):
    """`sample` ending rows at `--stop-token`s, else at the workdir's `sample.stop_tokens`."""
    import dataclasses

    stops = cfg.sample.stop_tokens if args.stop_token is None else args.stop_token
    return dataclasses.replace(sample, stop_tokens=stops)


def chat_model(cfg, option: str) -> None:
    if cfg.model.family != "gpt":
        raise JaxlmError(f"{option} needs a gpt model, not {cfg.model.family}")


def run(args) -> None:
    from jaxlm.decoding.cache import unstack_layers
    from jaxlm.generate import generate_text, stop_ids
    from jaxlm.inference import load_for_inference

    sample = sample_settings(args)
    if args.system is not None and not args.chat:
        raise JaxlmError("--system is the system prompt of a conversation: add --chat")
    prompts = _read_prompts(args)
    cfg, params, tokenizer = load_for_inference(Path(args.workdir))
    if args.chat:
        chat_model(cfg, "--chat")
        prompts = [conversation(prompt, args.system) for prompt in prompts]
    sample = with_stop_tokens(sample, args, cfg)
    printer = Printer(tokenizer, prompts[0], stop_ids(tokenizer, sample))
    params = unstack_layers(params)  # split here, the stacked weights are freed
    if len(prompts) == 1 and args.num_beams == 1 and cfg.model.family == "gpt":  # streamed
        generate_text(cfg.model, params, tokenizer, prompts, sample, stream=printer)
        print()
        return
    texts = generate_text(cfg.model, params, tokenizer, prompts, sample)
    joint = " -> " if cfg.model.family == "seq2seq" else ""
    for prompt, text in zip(prompts, texts, strict=True):
        if args.chat:  # the user's turn, then the reply
            print(f"> {prompt[-1]['content']}\n{text}")
        else:
            print(prompt + joint + text)


def register(commands) -> None:
    parser = commands.add_parser("generate", help="sample text from a trained model")
    parser.add_argument("workdir", help="the training workdir (config, tokenizer, checkpoints)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--prompt",
        action="append",
        help="prompt text; repeat for several (default: read standard input)",
    )
    source.add_argument("--prompt-file", help="a file with one prompt per line")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="each prompt is a user's turn, framed by the tokenizer's chat template (instruct "
        "models); prints the replies",
    )
    parser.add_argument("--system", help="with --chat: the system prompt before each turn")
    add_sampling_flags(parser)
    parser.add_argument("--num-beams", type=int, default=1, help="> 1 = beam search")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam search")
    parser.set_defaults(run=run)


def add_sampling_flags(parser) -> None:
    """The flags of `sample_settings` and `with_stop_tokens` but beam search's."""
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = no top-k filtering")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus; 1 = off")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    parser.add_argument(
        "--stop-token",
        action="append",
        help="a token besides EOS that ends a row; repeat for several (default: the workdir's "
        "sample.stop_tokens)",
    )
    parser.add_argument("--seed", type=int, default=0)
