"""The `jaxlm` command line: a thin layer over the Python API.

jaxlm train CONFIG [section.key=value ...]
jaxlm generate WORKDIR [--prompt TEXT | --prompt-file FILE] [--temperature T] ...
jaxlm describe MODEL_OR_CONFIG [section.key=value ...] [--params]
jaxlm checkpoint list DIR | inspect DIR/STEP | export DIR/STEP OUT.safetensors

`jaxlm train` exits with code 75 (`PREEMPTED_EXIT_CODE`) after checkpointing on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

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


def _read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise JaxlmError(f"prompt file not found: {path}")
        return [line for line in path.read_text().splitlines() if line.strip()]
    return [sys.stdin.read()]


class _Printer:
    """Prints a single generation as its tokens arrive from the device loop."""

    def __init__(self, tokenizer, prompt: str):
        self.tokenizer, self.printed = tokenizer, ""
        self.prompt_ids, self.ids = [tokenizer.bos_id, *tokenizer.encode(prompt)], []

    def __call__(self, step, tokens) -> None:
        from jaxlm.generate import continuation

        token = int(tokens[0])
        if token in (self.tokenizer.eos_id, self.tokenizer.pad_id):
            return
        self.ids.append(token)
        text = continuation(self.tokenizer, self.prompt_ids, self.ids)
        print(text[len(self.printed) :], end="", flush=True)
        self.printed = text


def _generate(args) -> None:
    from jaxlm.config import SampleConfig
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    prompts = _read_prompts(args)
    cfg, params, tokenizer = load_for_inference(Path(args.workdir))
    sample = SampleConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        seed=args.seed,
    )
    if len(prompts) == 1 and args.num_beams == 1:  # stream tokens as they come
        print(prompts[0], end="", flush=True)
        generate_text(
            cfg.model, params, tokenizer, prompts, sample, stream=_Printer(tokenizer, prompts[0])
        )
        print()
        return
    texts = generate_text(cfg.model, params, tokenizer, prompts, sample)
    for prompt, text in zip(prompts, texts, strict=True):
        print(prompt + text)


def _eval(args) -> None:
    from jaxlm.inference import evaluate_workdir

    metrics = evaluate_workdir(Path(args.workdir), args.files, args.batches)
    text = json.dumps(metrics, indent=2)
    print(text)
    output = Path(args.output) if args.output else Path(args.workdir) / "eval.json"
    output.write_text(text + "\n")


def _checkpoint_dir(path: str) -> Path:
    """A run's `checkpoints` folder, given it or the workdir that holds it."""
    directory = Path(path)
    return directory / "checkpoints" if (directory / "checkpoints").is_dir() else directory


def _checkpoint_list(args) -> None:
    from jaxlm.checkpoint import TMP_MARK, read_meta, step_directories

    for step_dir in step_directories(_checkpoint_dir(args.directory)):
        if TMP_MARK in step_dir.name:
            print(f"{step_dir.name.split('.')[0]:>8}  unfinished  {step_dir.name}")
            continue
        try:
            meta = read_meta(step_dir)
        except JaxlmError:
            print(f"{step_dir.name:>8}  unreadable")
            continue
        metrics = " ".join(f"{k}={v:.6g}" for k, v in sorted(meta.get("metrics", {}).items()))
        print(f"{step_dir.name:>8}  complete  {metrics}".rstrip())


def _checkpoint_inspect(args) -> None:
    from jaxlm.checkpoint import array_metadata, read_meta

    step_dir = Path(args.step_dir)
    meta = read_meta(step_dir)
    print(f"step: {meta['step']}")
    print(f"data batches consumed: {meta['data_batches_consumed']}")
    for name, value in sorted(meta.get("metrics", {}).items()):
        print(f"{name}: {value:.6g}")
    arrays = array_metadata(step_dir)
    width = max(len(name) for name in arrays)
    for name, (shape, dtype) in arrays.items():
        print(f"{name:<{width}}  {dtype:<8} {shape}")
    params = sum(
        int(np.prod(shape)) for name, (shape, _) in arrays.items() if name.startswith("params.")
    )
    print(f"parameters: {params}")


def _checkpoint_export(args) -> None:
    from safetensors.numpy import save_file

    from jaxlm.checkpoint import restore_numpy

    params = restore_numpy(Path(args.step_dir))
    save_file({name: np.ascontiguousarray(value) for name, value in params.items()}, args.output)
    print(f"wrote {len(params)} parameter arrays to {args.output}")


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
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus; 1 = off")
    generate.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    generate.add_argument("--num-beams", type=int, default=1, help="> 1 = beam search")
    generate.add_argument("--length-penalty", type=float, default=1.0, help="beam search")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=_generate)

    evaluate = commands.add_parser("eval", help="evaluate a trained model's latest checkpoint")
    evaluate.add_argument("workdir", help="the training workdir (config, tokenizer, checkpoints)")
    evaluate.add_argument(
        "--files", nargs="+", help="text files or globs (default: the run's held-out split)"
    )
    evaluate.add_argument("--batches", type=int, default=0, help="0 = the whole dataset")
    evaluate.add_argument("--output", help="metrics JSON (default: WORKDIR/eval.json)")
    evaluate.set_defaults(run=_eval)

    checkpoint = commands.add_parser("checkpoint", help="list, inspect and export checkpoints")
    actions = checkpoint.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="steps, whether complete, stored metrics")
    listing.add_argument("directory", help="a checkpoints folder or a training workdir")
    listing.set_defaults(run=_checkpoint_list)
    inspect = actions.add_parser("inspect", help="step, metrics, array paths, shapes, dtypes")
    inspect.add_argument("step_dir", help="DIR/STEP")
    inspect.set_defaults(run=_checkpoint_inspect)
    export = actions.add_parser("export", help="the parameters as a safetensors file")
    export.add_argument("step_dir", help="DIR/STEP")
    export.add_argument("output", help="OUT.safetensors (names joined by '.')")
    export.set_defaults(run=_checkpoint_export)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"jaxlm: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    from jaxlm.train.preemption import PREEMPTED_EXIT_CODE, Preempted

    warnings.formatwarning = _one_line_warning
    args = build_parser().parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
