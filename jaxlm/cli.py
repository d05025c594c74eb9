"""The `jaxlm` command line: a thin layer over the Python API.

jaxlm train CONFIG [section.key=value ...]
jaxlm generate WORKDIR [--prompt TEXT | --prompt-file FILE] [--temperature T] ...
jaxlm describe MODEL_OR_CONFIG [section.key=value ...] [--params]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.errors import JaxlmError


def _train(args) -> None:
    from jaxlm.config import load_config
    from jaxlm.train.trainer import train

    train(load_config(args.config, args.overrides))


def _describe(args) -> None:
    from jaxlm.config import load_config
    from jaxlm.models.summary import abstract_params, count_parameters, parameter_table

    m = load_config(args.config, args.overrides).model
    print(f"model: {args.config} ({m.family})")
    print(
        f"  layers {m.num_layers}"
        + (f" + {m.decoder_layers} decoder" if m.family == "seq2seq" else "")
        + f", embed {m.embed_dim}, heads {m.num_heads} x {m.resolved_head_dim}"
        + (f" (kv heads {m.num_kv_heads})" if m.num_kv_heads else "")
        + f", mlp {m.mlp_dim} ({m.activation}), {m.norm_position}-{m.norm}"
    )
    print(
        f"  vocab {m.vocab_size} (padded to {m.padded_vocab_size}), max length {m.max_len}, "
        f"{m.position_embedding} positions, tied embeddings: {m.tie_embeddings}"
        + (f", heads: {', '.join(m.heads) or 'none'}" if m.family == "bert" else "")
    )
    print(f"  compute {m.dtype}, params {m.param_dtype}, remat {m.remat_policy}")
    boxed = abstract_params(m)
    print(parameter_table(m, boxed) if args.params else f"parameters: {count_parameters(m, boxed)}")


def _generate(args) -> None:
    from jaxlm.config import SampleConfig
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    if args.prompt is not None:
        prompts = [args.prompt]
    elif args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise JaxlmError(f"prompt file not found: {path}")
        prompts = [line for line in path.read_text().splitlines() if line.strip()]
    else:
        prompts = [sys.stdin.read()]
    cfg, params, tokenizer = load_for_inference(Path(args.workdir))
    sample = SampleConfig(
        prompts=prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    for prompt, text in zip(
        prompts, generate_text(cfg.model, params, tokenizer, prompts, sample), strict=True
    ):
        print(prompt + text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a config")
    train.add_argument("config", help="a YAML file or a preset name")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides")
    train.set_defaults(run=_train)

    describe = commands.add_parser("describe", help="print a model's architecture and size")
    describe.add_argument("config", help="a preset name (gpt2-small, bert-base, ...) or YAML file")
    describe.add_argument("overrides", nargs="*", help="section.key=value overrides")
    describe.add_argument("--params", action="store_true", help="list every parameter")
    describe.set_defaults(run=_describe)

    generate = commands.add_parser("generate", help="sample text from a trained model")
    generate.add_argument("workdir", help="the training workdir (config, tokenizer, checkpoints)")
    source = generate.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="prompt text (default: read standard input)")
    source.add_argument("--prompt-file", help="a file with one prompt per line")
    generate.add_argument("--max-new-tokens", type=int, default=100)
    generate.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    generate.add_argument("--top-k", type=int, default=0, help="0 = no top-k filtering")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except JaxlmError as e:
        print(f"jaxlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
